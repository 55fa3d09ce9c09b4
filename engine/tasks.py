"""The task registry: one vocabulary, and for each task its operator, its official
measurement and its default hyperparameters.

Four tasks: deblur, sr, inpaint, denoise. Every entry point goes through here:
`operator_from_files` turns a user's kernel / mask files into the operator
(`diffpir restore`, the service), `make_measurement` makes the official-protocol
measurement of a clean image (`diffpir degrade`, the quality benchmark), and
`defaults_for` gives the hyperparameters (official, or a prior's tuned ones).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from diffpir_rt.errors import DiffPIRError

TASKS = ("deblur", "sr", "inpaint", "denoise")
SR_SCALES = (2, 3, 4)
#: What each task reads from the user besides the measurement.
TASK_INPUTS: dict[str, tuple[str, ...]] = {
    "deblur": ("kernel",),
    "sr": ("kernel", "scale"),
    "inpaint": ("mask",),
    "denoise": (),
}
#: Named kernels and masks of the official protocol (a file path is the alternative).
KERNEL_NAMES = ("gaussian", "motion")
MASK_NAMES = ("box", "random")


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


#: The official DiffPIR values, for the guided-diffusion checkpoints (docs/algorithm.md).
OFFICIAL_DEFAULTS: dict[str, TaskDefaults] = {
    "deblur": TaskDefaults(7.0, 0.3, 100, 0.05, "official DiffPIR: main_ddpir_deblur.py / configs/deblur.yaml"),
    # The official SR script sweeps lambda over 2..12 with zeta 0.25; 7 is the sweep's centre.
    "sr": TaskDefaults(7.0, 0.25, 100, 0.05, "official DiffPIR: main_ddpir_sisr.py (lambda sweep 2..12, centre)"),
    "inpaint": TaskDefaults(1.0, 1.0, 20, 0.0, "official DiffPIR: main_ddpir_inpainting.py / configs/inpaint.yaml"),
    # Not in the official code: the deblur values, with the engine's usual 20 steps.
    "denoise": TaskDefaults(7.0, 0.3, 20, 0.05, "not in the official code; deblur's lambda/zeta, 20 steps"),
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise DiffPIRError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    return task


def defaults_for(task: str, tuned: dict[str, dict[str, Any]] | None = None) -> TaskDefaults:
    """The defaults of `task`: `tuned` (a model card's per-task table) when it has the task."""
    check_task(task)
    if tuned and task in tuned:
        entry = {**OFFICIAL_DEFAULTS[task].to_dict(), **tuned[task]}
        return TaskDefaults(**{k: entry[k] for k in ("lam", "zeta", "steps", "sigma_n", "source")})
    return OFFICIAL_DEFAULTS[task]


def check_inputs(task: str, **given: Any) -> None:
    """Refuse a kernel, mask or scale given to a task that does not use it (never ignore it silently)."""
    check_task(task)
    stray = [name for name, value in given.items() if value is not None and name not in TASK_INPUTS[task]]
    if stray:
        uses = ", ".join(f"--{n}" for n in TASK_INPUTS[task]) or "no extra input"
        raise DiffPIRError(f"--{stray[0]}: does not apply to --task {task} (it takes {uses})")


# ----------------------------------------------------------------------------- operators


def build_operator(
    task: str, kernel: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None, scale: Optional[int] = None
):
    """The operator of `task` from arrays: a (kh, kw) kernel, an (H, W) mask, an SR scale.

    SR without a kernel uses the official bicubic-equivalent kernel of its scale.
    """
    from .operators import Deblur, Denoise, Inpaint, SuperResolution

    check_inputs(task, kernel=kernel, mask=mask, scale=scale)
    if task == "deblur":
        if kernel is None:
            raise DiffPIRError("--task deblur needs --kernel (a .npy, .png or .mat blur kernel)")
        return Deblur(kernel)
    if task == "sr":
        return SuperResolution(4 if scale is None else scale, kernel)
    if task == "inpaint":
        if mask is None:
            raise DiffPIRError("--task inpaint needs --mask (an image, nonzero = observed)")
        return Inpaint(mask)
    return Denoise()


def operator_from_files(
    task: str,
    kernel: Optional[Path] = None,
    kernel_index: Optional[int] = None,
    mask: Optional[Path] = None,
    scale: Optional[int] = None,
):
    """The operator of `task` from the user's files (checked, small)."""
    from .degrade import load_kernel
    from .imageio import read_mask

    check_inputs(task, kernel=kernel, mask=mask, scale=scale)
    if kernel_index is not None and kernel is None:
        raise DiffPIRError("--kernel-index: applies to a --kernel file")
    return build_operator(
        task,
        kernel=None if kernel is None else load_kernel(kernel, kernel_index),
        mask=None if mask is None else read_mask(mask)[0].numpy(),
        scale=scale,
    )


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True, eq=False)
class Degradation:
    """An official-protocol measurement y = H(x) + n and what made it.

    Attributes:
        y: (h, w, C) float64 in [0, 1] plus noise, unclipped.
        operator: the operator that inverts it.
        kernel: the blur kernel used (deblur), else None; mask: (H, W) 1 = observed, else None.
    """

    y: np.ndarray
    operator: Any
    kernel: Optional[np.ndarray]
    mask: Optional[np.ndarray]


def make_measurement(
    task: str,
    x: np.ndarray,
    *,
    sigma_n: float,
    noise_seed: int,
    kernel: Union[str, np.ndarray] = "gaussian",
    kernel_index: int = 0,
    kernel_size: int = 61,
    scale: int = 4,
    mask: Union[str, np.ndarray] = "random",
    mask_seed: int = 0,
    box: int = 128,
    box_margin: int = 16,
    random_p: float = 0.5,
) -> Degradation:
    """The official DiffPIR measurement of a clean (H, W, C) float64 image in [0, 1].

    Deblur: a named kernel ('gaussian' or 'motion', drawn for image `kernel_index` as the
    official scripts seed it) or an array, circular blur of the 8-bit image. SR: MATLAB
    bicubic downsampling by `scale`. Inpaint: a named mask ('box', 'random', seeded by
    `mask_seed`) or an array. Then additive N(0, sigma_n^2) noise seeded by `noise_seed`.
    """
    from . import degrade

    check_task(task)
    height, width = x.shape[:2]
    kernel_used = mask_used = None
    if task == "deblur":
        if isinstance(kernel, str):
            if kernel not in KERNEL_NAMES:
                raise DiffPIRError(f"--kernel {kernel}: expected one of {', '.join(KERNEL_NAMES)} or a kernel file")
            draw = degrade.gaussian_kernel if kernel == "gaussian" else degrade.motion_kernel
            kernel_used = draw(kernel_index, kernel_size)
        else:
            kernel_used = np.asarray(kernel, dtype=np.float64)
        kh, kw = kernel_used.shape
        if kh > height or kw > width:
            raise DiffPIRError(f"kernel: {kw}x{kh} is larger than the {width}x{height} image")
        y = degrade.blur_image(x, kernel_used)
    elif task == "sr":
        if scale not in SR_SCALES:
            raise DiffPIRError(f"--scale {scale}: expected one of {SR_SCALES}")
        if height < scale or width < scale:
            raise DiffPIRError(f"image: {width}x{height} is smaller than the scale {scale}; expected at least {scale}x{scale}")
        if height % scale or width % scale:
            raise DiffPIRError(
                f"image: {width}x{height} is not divisible by the scale {scale}; crop it to "
                f"{width - width % scale}x{height - height % scale} first"
            )
        y = degrade.bicubic_downsample(x, scale)
    elif task == "inpaint":
        if isinstance(mask, str):
            if mask not in MASK_NAMES:
                raise DiffPIRError(f"--mask {mask}: expected one of {', '.join(MASK_NAMES)} or a mask image")
            if mask == "box":
                mask_used = degrade.box_mask(height, width, seed=mask_seed, box=box, margin=box_margin)
            else:
                mask_used = degrade.random_mask(height, width, seed=mask_seed, p=random_p)
        else:
            mask_used = np.asarray(mask, dtype=np.float64)
            if mask_used.shape != (height, width):
                raise DiffPIRError(
                    f"mask: size {mask_used.shape[1]}x{mask_used.shape[0]} does not match the {width}x{height} image"
                )
        y = x * mask_used[..., None]
    else:
        y = x.copy()
    y = degrade.add_noise(np.asarray(y, dtype=np.float64), sigma_n, seed=noise_seed)
    operator = build_operator(
        task,
        kernel=kernel_used,
        mask=mask_used,
        scale=scale if task == "sr" else None,
    )
    return Degradation(y, operator, kernel_used, mask_used)
