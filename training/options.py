"""What a training run is asked for: its recipe, its stage and the command line that sets them.

Apart from the training code (training/train.py) so that `diffpir train --help` and argument
errors answer without importing torch; the run itself is `train.train(recipe, stage)`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from diffpir_rt.engine import ARCH_PRESETS, resolve_arch
from diffpir_rt.errors import DiffPIRError

LOSS_WEIGHTINGS = ("uniform", "min_snr")
LR_SCHEDULES = ("constant", "cosine")

@dataclass(frozen=True)
class Recipe:
    """Everything that defines the optimisation; stored in the checkpoint, fixed across resumes.

    Attributes:
        arch: a name in `ARCH_PRESETS`.
        crop: square training crop side (pixels); a multiple of the arch's size_multiple.
        batch_size: crops per step.
        lr: AdamW peak learning rate, reached after `warmup_steps` (linear warmup), then
            constant or, with lr_schedule "cosine", a cosine from lr to lr * lr_min_ratio over
            lr_cycle_steps, restarting at lr every cycle (warm restarts).
        weight_decay: AdamW decoupled weight decay.
        grad_clip: max global gradient L2 norm.
        ema_decay: EMA decay; the effective decay is min(ema_decay, (1 + n) / (10 + n)).
        var_loss_weight: weight of the zero-target MSE on the variance channels.
        rot90: also rotate crops by multiples of 90 degrees (flips are always on).
        seed: seeds the init and the one generator that draws crops, t and eps.
        loss_weighting: "uniform" (every t weighs 1 in the eps-MSE) or "min_snr"
            (weight min(SNR_t, gamma) / SNR_t: the min-SNR-gamma weighting of Hang et al. 2023
            for eps-prediction, which stops the nearly noise-free timesteps from dominating).
        min_snr_gamma: gamma of the min-SNR weighting.
        lr_schedule: "constant" or "cosine" (see lr).
        lr_cycle_steps: length of one cosine cycle in steps (after warmup).
        lr_min_ratio: the cosine's floor as a fraction of lr.
    """

    arch: str = "compact_fast"
    crop: int = 64
    batch_size: int = 8
    lr: float = 4e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    var_loss_weight: float = 1e-3
    rot90: bool = True
    seed: int = 0
    loss_weighting: str = "uniform"
    min_snr_gamma: float = 5.0
    lr_schedule: str = "constant"
    lr_cycle_steps: int = 4000
    lr_min_ratio: float = 0.05

    def __post_init__(self) -> None:
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise DiffPIRError(f"loss_weighting: expected one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DiffPIRError(f"lr_schedule: expected one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_cycle_steps < 1:
            raise DiffPIRError(f"lr_cycle_steps: expected >= 1, got {self.lr_cycle_steps}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise DiffPIRError(f"lr_min_ratio: expected 0 <= lr_min_ratio <= 1, got {self.lr_min_ratio}")
        if not (math.isfinite(self.min_snr_gamma) and self.min_snr_gamma > 0):
            raise DiffPIRError(f"min_snr_gamma: expected a finite number > 0, got {self.min_snr_gamma}")
        _, config = resolve_arch(self.arch)
        if self.crop < 1 or self.crop % config.size_multiple:
            raise DiffPIRError(
                f"crop: expected a positive multiple of {config.size_multiple} for arch {self.arch!r}, got {self.crop}"
            )
        for name in ("batch_size",):
            if getattr(self, name) < 1:
                raise DiffPIRError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise DiffPIRError(f"warmup_steps: expected >= 0, got {self.warmup_steps}")
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise DiffPIRError(f"{name}: expected a finite number > 0, got {value}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise DiffPIRError(f"ema_decay: expected 0 <= ema_decay < 1, got {self.ema_decay}")
        for name in ("weight_decay", "var_loss_weight"):
            if not getattr(self, name) >= 0:
                raise DiffPIRError(f"{name}: expected >= 0, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stage:
    """Options of one training stage (one process); free to change between resumes.

    Attributes:
        data: folder of training images.
        out: run folder (checkpoint, logs).
        device: torch device string.
        threads: torch intra-op threads (None: torch's default).
        max_steps: stop when the total step count reaches this (None: no limit).
        max_minutes: stop after this much wall time in this stage (None: no limit).
        max_cpu_minutes: stop when the run's total CPU time (all stages, this process's user +
            system time) reaches this; unlike wall time it does not grow when other work
            shares the cores, so arms of a recipe study get equal compute.
        checkpoint_minutes: checkpoint period in wall minutes.
        log_every: steps per row of loss.csv.
        resume: continue from <out>/checkpoint.pt.
        progress: show a tqdm bar.
        init_weights: a new run starts from these weights (model and EMA) instead of a
            random init, so a lost run folder never throws away the shipped training.
    """

    data: str
    out: str
    device: str = "cpu"
    threads: Optional[int] = None
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    max_cpu_minutes: Optional[float] = None
    checkpoint_minutes: float = 10.0
    log_every: int = 10
    resume: bool = False
    progress: bool = True
    init_weights: Optional[str] = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise DiffPIRError(f"threads: expected >= 1, got {self.threads}")
        if self.max_steps is not None and self.max_steps < 0:
            raise DiffPIRError(f"max_steps: expected >= 0, got {self.max_steps}")
        for name in ("max_minutes", "max_cpu_minutes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise DiffPIRError(f"{name}: expected > 0, got {value}")
        if not self.checkpoint_minutes > 0:
            raise DiffPIRError(f"checkpoint_minutes: expected > 0, got {self.checkpoint_minutes}")
        if self.log_every < 1:
            raise DiffPIRError(f"log_every: expected >= 1, got {self.log_every}")


TRAIN_EXAMPLE = """example (CPU, one core, in 2-hour stages):
  diffpir train --data ../shared/data/trainsets/BSDS432 --out runs/prior \\
      --arch compact_fast --threads 1 --max-minutes 125
  diffpir train --data ../shared/data/trainsets/BSDS432 --out runs/prior \\
      --resume --threads 1 --max-minutes 120
  diffpir train export --checkpoint runs/prior/checkpoint.pt --name compact_fast_bsd432
"""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def nonneg_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def train_parser() -> argparse.ArgumentParser:
    defaults = Recipe()
    parser = argparse.ArgumentParser(
        prog="diffpir train",
        description="Train a small guided-diffusion UNet prior (DDPM eps-objective, linear 1000-step "
        "schedule) on random crops. Subcommand 'export' writes the bundled weights. "
        "Recipe flags (marked *) default to the values shown for a new run and to the checkpoint's on --resume.",
        epilog=TRAIN_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="folder of training images (jpg/png/...)")
    parser.add_argument("--out", required=True, help="run folder: checkpoint.pt, loss.csv, loss.png, train_log.json")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--max-minutes", type=positive_float, default=None, help="wall-time limit of this stage")
    parser.add_argument("--max-cpu-minutes", type=positive_float, default=None,
                        help="stop when the run's total CPU time reaches this (equal budgets for recipe arms)")
    parser.add_argument("--max-steps", type=positive_int, default=None, help="stop at this total step count")
    parser.add_argument("--checkpoint-minutes", type=positive_float, default=10.0, help="checkpoint period (default: 10)")
    parser.add_argument("--log-every", type=positive_int, default=10, help="steps per loss.csv row (default: 10)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--init-weights", default=None,
                        help="start a new run from these weights (e.g. the shipped prior) instead of a random init")
    recipe = parser.add_argument_group("recipe (*)")
    recipe.add_argument("--arch", choices=sorted(ARCH_PRESETS), default=None, help=f"UNet preset (default: {defaults.arch})")
    recipe.add_argument("--crop", type=positive_int, default=None, help=f"crop side in pixels (default: {defaults.crop})")
    recipe.add_argument("--batch-size", type=positive_int, default=None, help=f"crops per step (default: {defaults.batch_size})")
    recipe.add_argument("--lr", type=positive_float, default=None, help=f"peak AdamW lr (default: {defaults.lr})")
    recipe.add_argument("--warmup-steps", type=int, default=None, help=f"linear lr warmup (default: {defaults.warmup_steps})")
    recipe.add_argument("--weight-decay", type=nonneg_float, default=None, help=f"AdamW weight decay (default: {defaults.weight_decay})")
    recipe.add_argument("--grad-clip", type=positive_float, default=None, help=f"max grad norm (default: {defaults.grad_clip})")
    recipe.add_argument("--ema-decay", type=nonneg_float, default=None, help=f"EMA decay (default: {defaults.ema_decay})")
    recipe.add_argument("--var-loss-weight", type=nonneg_float, default=None,
                        help=f"weight of the variance channels' zero-target MSE (default: {defaults.var_loss_weight})")
    recipe.add_argument("--no-rot90", dest="rot90", action="store_false", default=None, help="no 90-degree rotations")
    recipe.add_argument("--seed", type=int, default=None, help=f"init and data/noise seed (default: {defaults.seed})")
    recipe.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=None,
                        help=f"eps-MSE weight over timesteps (default: {defaults.loss_weighting})")
    recipe.add_argument("--min-snr-gamma", type=positive_float, default=None,
                        help=f"gamma of --loss-weighting min_snr (default: {defaults.min_snr_gamma})")
    recipe.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                        help=f"after warmup: constant, or cosine cycles with warm restarts (default: {defaults.lr_schedule})")
    recipe.add_argument("--lr-cycle-steps", type=positive_int, default=None,
                        help=f"steps per cosine cycle (default: {defaults.lr_cycle_steps})")
    recipe.add_argument("--lr-min-ratio", type=nonneg_float, default=None,
                        help=f"cosine floor as a fraction of --lr (default: {defaults.lr_min_ratio})")
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffpir train export",
        description="Write a checkpoint's EMA weights as fp16 safetensors into the weights folder, with "
        "bundled_prior.json and MODEL_CARD.md (task defaults kept from the previous card).",
        epilog="example (from a source checkout, to ship new weights):\n  diffpir train export --checkpoint "
        "runs/prior/checkpoint.pt --name compact_fast_bsd432 --weights-dir engine/weights",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (<out>/checkpoint.pt)")
    parser.add_argument("--name", default="compact_fast_bsd432", help="weights file stem (default: %(default)s)")
    parser.add_argument("--task-defaults", type=Path, default=None,
                        help="per-task defaults (JSON from `diffpir train tune`); unset: the previous card's")
    parser.add_argument("--curve", type=Path, default=None, help="quality vs training time (JSON from `diffpir train curve`)")
    parser.add_argument("--quality", type=Path, default=None, help="a markdown section of measured quality for the card")
    parser.add_argument("--weights-dir", required=True,
                        help="destination folder; engine/weights of a source checkout replaces the shipped prior")
    return parser
