"""Restoration tasks and their default hyperparameters (spec §8.1), defined once.

The official defaults apply to the guided-diffusion checkpoints (ffhq_10m,
imagenet256_uncond). The bundled prior ships its own tuned defaults in its model
card (engine/weights/), which ``defaults_for`` prefers when that prior is used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from diffpir_rt.errors import DiffPIRError

TASKS = ("deblur", "sr", "inpaint", "denoise")


@dataclass(frozen=True)
class TaskDefaults:
    """lam, zeta, steps and sigma_n for one task, with where they come from."""

    lam: float
    zeta: float
    steps: int
    sigma_n: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


OFFICIAL_DEFAULTS: dict[str, TaskDefaults] = {
    "deblur": TaskDefaults(7.0, 0.3, 100, 0.05, "spec §8.1: main_ddpir_deblur.py / configs/deblur.yaml"),
    # The official SR script sweeps lambda over 2..12 with zeta 0.25; 7 is the sweep's centre.
    "sr": TaskDefaults(7.0, 0.25, 100, 0.05, "spec §8.1: main_ddpir_sisr.py (lambda sweep 2..12, centre)"),
    "inpaint": TaskDefaults(1.0, 1.0, 20, 0.0, "spec §8.1: main_ddpir_inpainting.py / configs/inpaint.yaml"),
    # Not in the official code: the deblur values, with the engine's usual 20 steps.
    "denoise": TaskDefaults(7.0, 0.3, 20, 0.05, "not in the official code; deblur's lambda/zeta, 20 steps"),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise DiffPIRError(f"task: expected one of {TASKS}, got {task!r}")
    return task


def defaults_for(task: str, tuned: dict[str, dict[str, Any]] | None = None) -> TaskDefaults:
    """The defaults of `task`: `tuned` (a model card's per-task table) when it has the task."""
    check_task(task)
    if tuned and task in tuned:
        entry = {**OFFICIAL_DEFAULTS[task].to_dict(), **tuned[task]}
        return TaskDefaults(**{k: entry[k] for k in ("lam", "zeta", "steps", "sigma_n", "source")})
    return OFFICIAL_DEFAULTS[task]
