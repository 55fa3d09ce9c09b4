"""Train the bundled prior: a small guided-diffusion UNet on natural images.

DDPM eps-objective on the linear 1000-step schedule of docs/algorithm.md §2.1 (uniform t, MSE
on eps). The learn_sigma channels v are kept (so the 6-channel contract of §11 is
unchanged) but trained with a small zero-target MSE: DiffPIR never reads them, and
v = 0 means GD's variance halfway (in log) between beta_t and beta_tilde_t.

Two commands, one module:

    diffpir train --data DIR --out runs/prior ...   # train / --resume
    diffpir train export --checkpoint runs/prior/checkpoint.pt

Training state lives in one file, ``<out>/checkpoint.pt`` (model, EMA, optimizer,
step, RNG state, recipe), written atomically every few minutes, at the end of a
stage and on SIGTERM/SIGINT; a resumed run continues bit for bit. Beside it:
``loss.csv``, ``loss.png`` and ``train_log.json`` (hours, steps, devices, loss).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import math
import os
import platform
import sys
import time
from collections import deque
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.engine import (
    BETA_END,
    BETA_START,
    NUM_TRAIN_TIMESTEPS,
    DEFAULT_METHOD,
    TASKS,
    config_class,
    AttentionBlock,
    ResBlock,
    UNetModel,
    build_unet,
    check_input_file,
    linear_schedule,
    load_unet,
    resolve_arch,
    sha256_file,
)

from .options import Recipe, Stage

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "diffpir-rt-train/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: final_loss = mean eps-MSE over this many most recent steps.
LOSS_WINDOW = 500
BSDS_NOTE = (
    "Berkeley Segmentation Dataset images (BSDS500 minus the 68 CBSD68 test images, 'BSD432'); "
    "BSDS terms: non-commercial research and educational use. Weights trained on it inherit that note."
)


# ----------------------------------------------------------------------------- data


def load_images(folder: str | os.PathLike[str], min_side: int = 1) -> list[np.ndarray]:
    """All images of a folder as (H, W, 3) uint8 arrays, sorted by file name.

    Raises:
        DiffPIRError: missing folder, no images, or an image smaller than min_side.
    """
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DiffPIRError(f"data {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DiffPIRError(f"data {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for path in paths:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"), dtype=np.uint8)  # writable, for torch.from_numpy
        if min(array.shape[:2]) < min_side:
            raise DiffPIRError(f"data {path}: {array.shape[1]}x{array.shape[0]} is smaller than the crop {min_side}")
        images.append(np.ascontiguousarray(array))
    return images


def draw_crops(
    images: Sequence[np.ndarray], batch_size: int, crop: int, rot90: bool, generator: torch.Generator
) -> Tensor:
    """A batch of random crops with random flips (and 90-degree rotations).

    Every random choice comes from `generator`, in a fixed order, so a saved
    generator state reproduces the batch stream exactly.

    Returns:
        (B, 3, crop, crop) uint8.
    """
    out = torch.empty(batch_size, 3, crop, crop, dtype=torch.uint8)
    for b in range(batch_size):
        index = int(torch.randint(len(images), (1,), generator=generator))
        image = images[index]
        height, width = image.shape[:2]
        top = int(torch.randint(height - crop + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop + 1, (1,), generator=generator))
        flip, quarter_turns = torch.randint(2, (1,), generator=generator), torch.randint(4, (1,), generator=generator)
        patch = torch.from_numpy(image[top : top + crop, left : left + crop]).permute(2, 0, 1)
        if int(flip):
            patch = patch.flip(-1)
        if rot90 and int(quarter_turns):
            patch = torch.rot90(patch, int(quarter_turns), dims=(1, 2))
        out[b] = patch
    return out


# ----------------------------------------------------------------------------- model


def zero_init_outputs(unet: UNetModel) -> UNetModel:
    """Zero the last conv of every residual branch and of the network, as GD does at init.

    Every block then starts as the identity and the net predicts eps = 0, which
    makes the first steps stable. (unet.py keeps PyTorch's default init on purpose.)
    """
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, ResBlock):
                module.out_layers[-1].weight.zero_()
                module.out_layers[-1].bias.zero_()
            elif isinstance(module, AttentionBlock):
                module.proj_out.weight.zero_()
                module.proj_out.bias.zero_()
        unet.out[-1].weight.zero_()
        unet.out[-1].bias.zero_()
    return unet


def init_unet(arch: str, seed: int) -> UNetModel:
    """A freshly initialised UNet; the init is seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return zero_init_outputs(build_unet(arch))


# ----------------------------------------------------------------------------- trainer


class Trainer:
    """Holds one run's state: model, EMA, optimizer, generator, step.

    Args:
        recipe: the optimisation recipe.
        images: training images, (H, W, 3) uint8 each.
        device: where the model trains.
    """

    def __init__(self, recipe: Recipe, images: Sequence[np.ndarray], device: str | torch.device = "cpu") -> None:
        self.recipe = recipe
        self.images = images
        self.device = torch.device(device)
        self.model = init_unet(recipe.arch, recipe.seed).to(self.device).train()
        # The EMA is a float32 copy of every parameter (the UNet has no buffers).
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=recipe.lr, betas=(0.9, 0.999), weight_decay=recipe.weight_decay
        )
        # One CPU generator for crops, t and eps: CPU draws are identical on any device.
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.step = 0
        self.train_seconds = 0.0
        self.cpu_seconds = 0.0
        self.stages: list[dict[str, Any]] = []
        self.recent_losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        schedule = linear_schedule()
        self.sqrt_alpha_bar = torch.tensor(np.sqrt(schedule.alpha_bar), dtype=torch.float32, device=self.device)
        self.sqrt_one_minus_alpha_bar = torch.tensor(
            np.sqrt(1.0 - schedule.alpha_bar), dtype=torch.float32, device=self.device
        )
        self.snr = torch.tensor(schedule.alpha_bar / (1.0 - schedule.alpha_bar), dtype=torch.float32, device=self.device)

    def lr_at(self, step: int) -> float:
        """Linear warmup over warmup_steps, then constant or cosine cycles with warm restarts."""
        recipe = self.recipe
        warmup = recipe.warmup_steps
        if step < warmup:
            return recipe.lr * (step + 1) / warmup
        if recipe.lr_schedule == "constant":
            return recipe.lr
        phase = ((step - warmup) % recipe.lr_cycle_steps) / recipe.lr_cycle_steps
        floor = recipe.lr * recipe.lr_min_ratio
        return floor + 0.5 * (recipe.lr - floor) * (1.0 + math.cos(math.pi * phase))

    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-sample weight of the eps-MSE at timesteps t, shape (B,)."""
        if self.recipe.loss_weighting == "uniform":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        snr = self.snr[t]
        return torch.clamp(snr, max=self.recipe.min_snr_gamma) / snr

    def ema_decay_at(self, step: int) -> float:
        """EMA warmup: a short average early on, recipe.ema_decay later (step = updates so far)."""
        return min(self.recipe.ema_decay, (1.0 + step) / (10.0 + step))

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the losses and the grad norm."""
        recipe = self.recipe
        crops = draw_crops(self.images, recipe.batch_size, recipe.crop, recipe.rot90, self.generator)
        t = torch.randint(NUM_TRAIN_TIMESTEPS, (recipe.batch_size,), generator=self.generator)
        eps = torch.randn(crops.shape, generator=self.generator)
        x0 = crops.to(self.device, torch.float32) / 127.5 - 1.0  # [0, 255] -> model range [-1, 1]
        eps, t = eps.to(self.device), t.to(self.device)
        # q(x_t | x0) = N(sqrt(alpha_bar_t) x0, (1 - alpha_bar_t) I)   (docs/algorithm.md §2.1)
        x_t = self.sqrt_alpha_bar[t].view(-1, 1, 1, 1) * x0 + self.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1) * eps

        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        out = self.model(x_t, t)
        channels = self.model.config.in_channels
        per_sample = torch.mean((out[:, :channels] - eps) ** 2, dim=(1, 2, 3))
        loss_eps = per_sample.mean()  # logged unweighted, so arms of different weightings compare
        loss = loss_eps if recipe.loss_weighting == "uniform" else torch.mean(self.loss_weights(t) * per_sample)
        loss_var = out.new_zeros(())
        if out.shape[1] > channels:
            loss_var = torch.mean(out[:, channels:] ** 2)
            loss = loss + recipe.var_loss_weight * loss_var
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), recipe.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        values = {"loss_eps": loss_eps.item(), "loss_var": loss_var.item(), "grad_norm": grad_norm.item()}
        self.recent_losses.append(values["loss_eps"])
        return values

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.ema_decay_at(self.step)
        params = self.model.state_dict()
        keys = list(self.ema)
        torch._foreach_lerp_([self.ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - decay)

    @property
    def final_loss(self) -> Optional[float]:
        return float(np.mean(self.recent_losses)) if self.recent_losses else None

    @torch.no_grad()
    def init_from_weights(self, path: str | os.PathLike[str]) -> None:
        """Copy exported (e.g. fp16 safetensors) weights into the model and the EMA."""
        source = load_unet(path, self.recipe.arch, device="cpu", dtype=torch.float32).unet.state_dict()
        self.model.load_state_dict(source, strict=True)
        for key, value in source.items():
            self.ema[key].copy_(value)

    # -- checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "recipe": self.recipe.to_dict(),
            "arch_config": resolve_arch(self.recipe.arch)[1].as_dict(),
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "train_seconds": self.train_seconds,
            "cpu_seconds": self.cpu_seconds,
            "stages": self.stages,
            "recent_losses": list(self.recent_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        for key, value in state["ema"].items():
            self.ema[key].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.cpu_seconds = float(state.get("cpu_seconds", state["train_seconds"]))
        self.stages = list(state["stages"])
        self.recent_losses = deque((float(x) for x in state["recent_losses"]), maxlen=LOSS_WINDOW)

    def save(self, path: Path) -> None:
        """Write the checkpoint atomically (temp file + os.replace)."""
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A training checkpoint, loaded without executing pickled code.

    Raises:
        DiffPIRError: missing or unreadable file, or not a checkpoint of this trainer.
    """
    path = check_input_file(path, "checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise DiffPIRError(f"checkpoint {path}: not a readable training checkpoint ({exc.__class__.__name__})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise DiffPIRError(f"checkpoint {path}: expected a {CHECKPOINT_FORMAT!r} training checkpoint")
    return state


# ----------------------------------------------------------------------------- logs


LOSS_COLUMNS = ("step", "loss_eps", "loss_var", "grad_norm", "lr", "train_seconds", "cpu_seconds")


def _truncate_csv(path: Path, last_step: int) -> None:
    """Drop rows logged after the checkpoint being resumed (they will be logged again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = [row for row in csv.DictReader(f) if int(row["step"]) <= last_step]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=LOSS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_losses(csv_path: Path, png_path: Path) -> None:
    """loss.csv -> loss.png (log-scale eps MSE and a moving average); skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'diffpir-rt[bench]'); no loss plot")
        return
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    steps = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss_eps"]) for r in rows])
    window = max(1, min(50, len(loss) // 10))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="eps MSE (per log row)")
    ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"moving average ({window} rows)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("eps MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model})"


def train_log(trainer: Trainer, data: str, num_images: int) -> dict[str, Any]:
    return {
        "arch": trainer.recipe.arch,
        "arch_config": resolve_arch(trainer.recipe.arch)[1].as_dict(),
        "params": sum(p.numel() for p in trainer.model.parameters()),
        "recipe": trainer.recipe.to_dict(),
        "steps": trainer.step,
        "crops_seen": trainer.step * trainer.recipe.batch_size,
        "train_hours": trainer.train_seconds / 3600.0,
        "cpu_hours": trainer.cpu_seconds / 3600.0,
        "devices": sorted({s["device"] for s in trainer.stages}),
        "final_loss": trainer.final_loss,
        "final_loss_note": f"mean eps-MSE of the online model over the last <= {LOSS_WINDOW} steps",
        "data": {"path": data, "images": num_images, "note": BSDS_NOTE},
        "objective": "DDPM eps-MSE, uniform t in 0..999, linear betas 1e-4..0.02; "
        "variance channels: zero-target MSE x var_loss_weight",
        "stages": trainer.stages,
    }


# ----------------------------------------------------------------------------- train


def _recipe_and_state(recipe: Optional[Recipe], stage: Stage) -> tuple[Recipe, Optional[dict[str, Any]]]:
    """The run's recipe and, on resume, its checkpoint (a resumed run keeps its recipe)."""
    out = Path(stage.out)
    ckpt_path = out / CHECKPOINT_NAME
    if not stage.resume:
        if ckpt_path.exists():
            raise DiffPIRError(f"out {out}: already holds {CHECKPOINT_NAME}; pass --resume or choose another --out")
        if recipe is None:
            raise DiffPIRError("recipe: required for a new run")
        return recipe, None
    state = read_checkpoint(ckpt_path)
    stored = Recipe(**state["recipe"])
    if recipe is not None and recipe != stored:
        diff = {f.name: (getattr(recipe, f.name), getattr(stored, f.name)) for f in fields(Recipe)
                if getattr(recipe, f.name) != getattr(stored, f.name)}  # fmt: skip
        raise DiffPIRError(f"resume {ckpt_path}: recipe differs from the checkpoint's (given, stored): {diff}")
    return stored, state


def _open_trainer(recipe: Recipe, state: Optional[dict[str, Any]], stage: Stage) -> Trainer:
    """The trainer on its device: the checkpoint's state, or a new run (from init weights if given)."""
    if stage.threads is not None:
        torch.set_num_threads(stage.threads)
    device = torch.device(stage.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffPIRError(f"device: {stage.device!r} requested but CUDA is not available")
    images = load_images(stage.data, min_side=recipe.crop)
    Path(stage.out).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(recipe, images, device)
    if state is not None:
        trainer.load_state_dict(state)
        logger.info("resumed %s at step %d", Path(stage.out) / CHECKPOINT_NAME, trainer.step)
    elif stage.init_weights is not None:
        trainer.init_from_weights(stage.init_weights)
        logger.info("new run initialised from %s", stage.init_weights)
    return trainer


def _stage_record(trainer: Trainer, stage: Stage, resumed: bool) -> dict[str, Any]:
    """This stage's entry of the run's history (train_log.json, the model card)."""
    return {
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
        "device": _device_name(trainer.device),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        "data": str(stage.data),
        "images": len(trainer.images),
        "from_step": trainer.step,
        **({"init_weights": str(stage.init_weights)} if not resumed and stage.init_weights else {}),
        "to_step": trainer.step,
        "seconds": 0.0,
    }


class _LossLog:
    """loss.csv: one row per `every` steps, the means of the steps since the last row."""

    def __init__(self, path: Path, every: int, step: int) -> None:
        self.path, self.every = path, every
        _truncate_csv(path, step)  # rows after the checkpoint being resumed will be logged again
        if not path.is_file():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(LOSS_COLUMNS)
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, trainer: Trainer, values: dict[str, float]) -> Optional[float]:
        """Accumulate a step; returns the row's mean eps loss when a row was written."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1
        if trainer.step % self.every:
            return None
        row = {k: self.sums[k] / self.count for k in ("loss_eps", "loss_var", "grad_norm")}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=LOSS_COLUMNS).writerow(
                {"step": trainer.step, **{k: f"{v:.6g}" for k, v in row.items()},
                 "lr": f"{trainer.lr_at(trainer.step - 1):.6g}", "train_seconds": f"{trainer.train_seconds:.1f}",
                 "cpu_seconds": f"{trainer.cpu_seconds:.1f}"}  # fmt: skip
            )
        self.sums, self.count = {}, 0
        return row["loss_eps"]


def _stage_over(trainer: Trainer, stage: Stage, started: float, stop: Optional[Callable[[], bool]]) -> bool:
    """Whether the stage ends before the next step: a step, wall-time or CPU-time budget, or a stop request."""
    if stage.max_steps is not None and trainer.step >= stage.max_steps:
        return True
    if stage.max_minutes is not None and time.monotonic() - started >= 60.0 * stage.max_minutes:
        return True
    if stage.max_cpu_minutes is not None and trainer.cpu_seconds >= 60.0 * stage.max_cpu_minutes:
        return True
    if stop is not None and stop():
        logger.warning("stop requested at step %d; checkpointing", trainer.step)
        return True
    return False


def train(recipe: Optional[Recipe], stage: Stage, stop: Optional[Callable[[], bool]] = None) -> Trainer:
    """Run one training stage; returns the trainer after its final checkpoint.

    Args:
        recipe: the recipe of a new run; on resume None (use the checkpoint's) or
            equal to the checkpoint's.
        stage: this stage's options.
        stop: polled every step; True ends the stage early (with a checkpoint).

    Raises:
        DiffPIRError: bad data, a missing checkpoint on resume, an existing one
            without resume, or a recipe that differs from the checkpoint's.
    """
    recipe, state = _recipe_and_state(recipe, stage)
    trainer = _open_trainer(recipe, state, stage)
    out = Path(stage.out)
    log = _LossLog(out / "loss.csv", stage.log_every, trainer.step)
    record = _stage_record(trainer, stage, resumed=state is not None)
    trainer.stages.append(record)

    def checkpoint() -> None:
        record["to_step"] = trainer.step
        record["ended"] = _dt.datetime.now().isoformat(timespec="seconds")
        trainer.save(out / CHECKPOINT_NAME)
        _write_json(out / "train_log.json", train_log(trainer, stage.data, len(trainer.images)))
        plot_losses(log.path, out / "loss.png")

    from tqdm.auto import tqdm

    bar = tqdm(total=stage.max_steps, initial=trainer.step, unit="step", disable=not stage.progress,
               mininterval=1.0 if sys.stderr.isatty() else 60.0, dynamic_ncols=True)  # fmt: skip
    started = last_tick = last_ckpt = time.monotonic()
    last_cpu = time.process_time()
    try:  # a failure mid-step leaves the last periodic checkpoint as it was
        while not _stage_over(trainer, stage, started, stop):
            values = trainer.train_step()
            if not math.isfinite(values["loss_eps"]):
                raise FloatingPointError(f"loss is {values['loss_eps']} at step {trainer.step}; not checkpointed")
            now, cpu_now = time.monotonic(), time.process_time()
            trainer.train_seconds += now - last_tick
            trainer.cpu_seconds += cpu_now - last_cpu  # CPU time: unaffected by other work sharing the cores
            record["seconds"] += now - last_tick
            last_tick, last_cpu = now, cpu_now
            bar.update(1)
            loss = log.add(trainer, values)
            if loss is not None:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if now - last_ckpt >= 60.0 * stage.checkpoint_minutes:
                checkpoint()
                last_ckpt = time.monotonic()
    finally:
        bar.close()
    checkpoint()
    return trainer


# ----------------------------------------------------------------------------- export


@torch.no_grad()
def fp16_roundtrip_error(config_arch: str, fp32_state: dict[str, Tensor], fp16_path: Path, seed: int = 0) -> dict[str, Any]:
    """max |eps(fp16-rounded weights) - eps(fp32 weights)|, both computed in fp32.

    Inputs: x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps at several t, with a
    smooth random x0 (B=2, the arch's training size), the regime DiffPIR evaluates the prior in.
    """

    reference = build_unet(config_arch)
    reference.load_state_dict(fp32_state, strict=True)
    reference.eval()
    rounded = load_unet(fp16_path, config_arch, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    size = resolve_arch(config_arch)[1].image_size
    x0 = torch.rand(2, 3, 8, 8, generator=generator) * 2 - 1
    x0 = torch.nn.functional.interpolate(x0, size=size, mode="bicubic")
    x0 = x0.clamp(-1, 1)
    schedule = linear_schedule()
    worst, per_t = 0.0, {}
    for t in (999, 500, 200, 50, 10, 0):
        eps = torch.randn(x0.shape, generator=generator)
        ab = float(schedule.alpha_bar[t])
        x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        tt = torch.full((2,), t, dtype=torch.int64)
        diff = float((reference(x_t, tt)[:, :3] - rounded(x_t, tt)).abs().max())
        per_t[str(t)] = diff
        worst = max(worst, diff)
    return {"max_abs_eps_diff": worst, "per_t": per_t, "input": f"B=2, {size}x{size}, smooth random x0 noised to t"}


def _model_card_markdown(card: dict[str, Any]) -> str:
    training = card["training"]
    lines = [
        f"# Bundled prior: `{card['name']}`",
        "",
        "A small unconditional guided-diffusion UNet (eps-prediction, learned-variance output "
        "kept for the 6-channel contract) trained by this project with `diffpir train`, so "
        "`diffpir restore` works offline without a third-party checkpoint.",
        "",
        "| field | value |",
        "|---|---|",
        f"| weights | `{card['weights']}` ({card['bytes'] / 1e6:.2f} MB, {card['dtype']}) |",
        f"| sha256 | `{card['sha256']}` |",
        f"| arch | `{card['arch']}` ({card['params'] / 1e6:.2f} M parameters) |",
        f"| schedule | {card['schedule']['type']}, T={card['schedule']['num_timesteps']}, "
        f"beta {card['schedule']['beta_start']}..{card['schedule']['beta_end']} |",
        f"| objective | {training['objective']} |",
        f"| data | {training['data']['images']} images, `{training['data']['path']}` |",
        f"| training | {training['steps']} steps x batch {training['recipe']['batch_size']} crops of "
        f"{training['recipe']['crop']}², {training['train_hours']:.2f} h on {', '.join(training['devices'])}"
        + (f", continuing `{training['continued_from']['weights']}` ({training['continued_from']['train_hours']:.2f} h): "
           f"{training['total_train_hours']:.2f} h in all" if training.get("continued_from") else "") + " |",
        f"| final loss | {training['final_loss']:.4f} (eps MSE, online model, last {LOSS_WINDOW} steps) |",
        f"| fp16 export | max abs eps difference vs fp32 weights: {card['fp16_check']['max_abs_eps_diff']:.2e} |",
        f"| exported | {card['exported']} from step {card['checkpoint_step']} (EMA weights) |",
        "",
        "## Licence and intended use",
        "",
        card["licence_note"],
        "",
        "## Task defaults",
        "",
        f"Used by `diffpir restore --method {card.get('defaults_method', DEFAULT_METHOD)}` with this prior for the "
        "parameters not given (each row's source says how it was chosen):",
        "",
    ]
    columns = [k for k in next(iter(card["task_defaults"].values()), {}) if k not in ("source", "psnr_by_steps")]
    lines += ["| task | " + " | ".join(columns) + " | PSNR by steps (tuning crops) | source |",
              "|---|" + "---|" * (len(columns) + 2)]  # fmt: skip
    for task, d in card["task_defaults"].items():
        by_steps = ", ".join(f"{n}: {v:.2f}" for n, v in (d.get("psnr_by_steps") or {}).items()) or "–"
        lines.append(f"| {task} | " + " | ".join(str(d.get(c, "")) for c in columns) + f" | {by_steps} | {d['source']} |")
    if card.get("quality"):
        lines += ["", "## Measured quality", "", card["quality"]]
    if card.get("study"):
        lines += ["", "## Recipe study and training data", "", card["study"]]
    if card.get("curve"):
        protocol, points = card["curve"]["protocol"], card["curve"]["points"]
        tasks = [key for key in points[0] if key.endswith("_psnr")]
        lines += ["", "## Training curve", "",
                  f"PSNR (dB) on held-out crops ({protocol['images']}, {protocol['crop']}², fixed DiffPIR settings per task, "
                  "`diffpir train curve`) against training time:", "",
                  "| weights | CPU hours (this run) | " + " | ".join(t.removesuffix("_psnr") for t in tasks) + " |",
                  "|---|---|" + "---|" * len(tasks)]  # fmt: skip
        for point in points:
            hours = "–" if point.get("train_hours") is None else f"{point['train_hours']:.2f}"
            lines.append(f"| `{Path(point['checkpoint']).name}` | {hours} | " + " | ".join(f"{point[t]:.2f}" for t in tasks) + " |")
    lines += [
        "",
        "## Reproduce / re-export",
        "",
        "```",
        "diffpir train --data trainsets/BSDS432 --out runs/prior --init-weights engine/weights/<previous>.safetensors "
        f"--arch {card['arch']} --lr 2e-4 --warmup-steps 100 --threads 1",
        "diffpir train --data trainsets/BSDS432 --out runs/prior --resume --threads 1 --max-minutes 120",
        "diffpir train tune --data testsets/CBSD68 --weights W.safetensors --out defaults.json",
        "diffpir train curve --data testsets/CBSD68 --tasks deblur sr inpaint denoise --checkpoints ... --out curve.json",
        f"diffpir train export --checkpoint runs/prior/checkpoint.pt --name {card['name']} --weights-dir engine/weights "
        "--task-defaults defaults.json --curve curve.json",
        "```",
        "",
    ]
    return "\n".join(lines)


def _write_fp16_weights(ema: dict[str, Tensor], path: Path, arch: str, step: int) -> None:
    """The EMA weights as fp16 safetensors, atomically, readable by everyone (the file ships)."""
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    # One metadata key: safetensors writes several in random order, which would change the hash.
    save_file({k: v.half().contiguous() for k, v in ema.items()}, str(tmp),
              metadata={"diffpir_rt": json.dumps({"arch": arch, "step": step, "dtype": "float16"})})  # fmt: skip
    os.chmod(tmp, 0o644)  # safetensors writes 0600
    os.replace(tmp, path)


def _placeholder_defaults() -> dict[str, dict[str, Any]]:
    """The default method's official per-task values, marked as not tuned for this prior."""
    method = config_class(DEFAULT_METHOD)
    return {
        task.name: {**method.for_task(task.name, task.default_sigma_n).field_values(),
                    "source": f"placeholder, not tuned for this prior: {method.defaults_source}"}
        for task in TASKS.values() if task.name in method.tasks
    }  # fmt: skip


def _training_section(state: dict[str, Any], recipe: Recipe, previous: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The card's account of the training: recipe, steps, hours, devices, data, stages, and the
    previous prior's training when this run continued it (counted in total_train_hours)."""
    stages = state["stages"]
    recent = [float(x) for x in state["recent_losses"]]
    data_path = stages[-1].get("data") if stages else None
    section: dict[str, Any] = {
        "program": "diffpir train (training/train.py)",
        "objective": f"DDPM eps-MSE over t in 0..999 ({recipe.loss_weighting} weighting); variance channels: "
        f"zero-target MSE x {recipe.var_loss_weight} (DiffPIR reads only eps)",
        "recipe": recipe.to_dict(),
        "steps": int(state["step"]),
        "crops_seen": int(state["step"]) * recipe.batch_size,
        "train_hours": float(state["train_seconds"]) / 3600.0,
        "cpu_hours": float(state.get("cpu_seconds", state["train_seconds"])) / 3600.0,
        "devices": sorted({s["device"] for s in stages}),
        "threads": sorted({s["threads"] for s in stages}),
        "final_loss": float(np.mean(recent)) if recent else None,
        "data": {"path": data_path or "trainsets/BSDS432", "images": stages[-1].get("images") if stages else None},
        "stages": stages,
    }
    if stages and stages[0].get("init_weights") and previous is not None:
        # A run started from the previous prior's weights continues its training: say so, and count it.
        before = previous.get("training", {})
        hours = before.get("total_train_hours", before.get("train_hours"))
        section["continued_from"] = {"weights": previous.get("weights"), "sha256": previous.get("sha256"),
                                     "steps": before.get("steps"), "train_hours": hours, "devices": before.get("devices")}  # fmt: skip
        section["total_train_hours"] = section["train_hours"] + float(hours or 0)
    return section


def export_prior(
    checkpoint: str | os.PathLike[str],
    name: str,
    weights_dir: str | os.PathLike[str],
    task_defaults: Optional[dict[str, dict[str, Any]]] = None,
    curve: Optional[dict[str, Any]] = None,
    quality: Optional[str] = None,
) -> dict[str, Any]:
    """Write the checkpoint's EMA weights as fp16 safetensors plus the model card.

    Writes `<weights_dir>/<name>.safetensors`, `bundled_prior.json` and `MODEL_CARD.md`.
    A previous card's weights file of another name is removed.

    Args:
        checkpoint: a training checkpoint (`<out>/checkpoint.pt`).
        name: weights file stem.
        weights_dir: destination folder (engine/weights of a source checkout ships them).
        task_defaults: per-task values of the default method (with a "source" each); default:
            the previous card's, else the method's official values as placeholders.
        curve: `diffpir train curve` output (quality against training time), for the card.
        quality: a markdown section of measured quality, for the card.

    Returns:
        The model card.
    """
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise DiffPIRError(f"name: expected a plain file stem, got {name!r}")
    state = read_checkpoint(Path(checkpoint))
    recipe = Recipe(**state["recipe"])
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    card_path = weights_dir / "bundled_prior.json"
    previous = json.loads(card_path.read_text()) if card_path.is_file() else None

    ema = {k: v.float().contiguous() for k, v in state["ema"].items()}
    weights_path = weights_dir / f"{name}.safetensors"
    _write_fp16_weights(ema, weights_path, recipe.arch, int(state["step"]))
    if task_defaults is None:
        task_defaults = previous["task_defaults"] if previous is not None and "task_defaults" in previous else _placeholder_defaults()
    card = {
        "name": name,
        "weights": weights_path.name,
        "arch": recipe.arch,
        "arch_config": state["arch_config"],
        "params": sum(v.numel() for v in ema.values()),
        "dtype": "float16",
        "bytes": weights_path.stat().st_size,
        "sha256": sha256_file(weights_path),
        "schedule": {"type": "linear", "num_timesteps": NUM_TRAIN_TIMESTEPS, "beta_start": BETA_START,
                     "beta_end": BETA_END, "doc": "docs/algorithm.md §2.1"},  # fmt: skip
        "training": _training_section(state, recipe, previous),
        "licence_note": BSDS_NOTE,
        "fp16_check": fp16_roundtrip_error(recipe.arch, ema, weights_path),
        "checkpoint_step": int(state["step"]),
        "exported": _dt.datetime.now().isoformat(timespec="seconds"),
        "task_defaults": task_defaults,
        "defaults_method": DEFAULT_METHOD,
        **({"curve": curve} if curve is not None else {}),
        **({"quality": quality} if quality is not None else {}),
    }
    card = json.loads(json.dumps(card))  # what readers of the JSON see (tuples -> lists)
    _write_json(card_path, card)
    (weights_dir / "MODEL_CARD.md").write_text(_model_card_markdown(card))
    if previous is not None and previous.get("weights") not in (None, weights_path.name):
        stale = weights_dir / previous["weights"]
        if stale.is_file() and stale.parent == weights_dir:
            stale.unlink()
            logger.info("removed the previous bundled weights %s", stale)
    return card


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`diffpir train ...` (training/cli.py parses the arguments before this module loads)."""
    from .cli import run_train

    return run_train(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
