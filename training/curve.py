"""The training curve: restoration quality of training checkpoints on fixed held-out crops.

Loss values say little about restoration; this measures what the prior is for. Each
checkpoint's EMA weights restore the same official-protocol measurements of the same
held-out crops (never training images) with the same DiffPIR settings and seed, so points
along a run, and runs on different hardware, are comparable:

    diffpir train curve --data DIR --checkpoints runs/prior/snapshots/*.pt --out curve.json

Protocol: CBSD68 images 10-17 (sorted), centre crops 128x128, seed = image index. The curve's
task is Gaussian deblurring at sigma_n 0.05 with the kernel of each image's index; `--tasks`
adds SR x4 (sigma_n 0.05), random 50% inpainting (noiseless) and denoising (sigma_n 0.1), the
four tasks a new prior must beat the classical methods on. DiffPIR runs with fixed settings per
task (the first shipped prior's tuned values), so every checkpoint is measured alike.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from diffpir_rt.engine import (
    DiffPIRConfig,
    ModelSource,
    OutputPlan,
    check_input_file,
    get_task,
    make_measurement,
    read_image,
    write_text,
)
from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer

#: The curve's fixed protocol (see the module docstring).
FIRST_IMAGE, NUM_IMAGES, CROP = 10, 8, 128
#: task -> (measurement options, DiffPIR settings)
TASK_PROTOCOL: dict[str, tuple[dict[str, Any], DiffPIRConfig]] = {
    "deblur": ({"kernel": "gaussian"}, DiffPIRConfig(lam=3.0, zeta=1.0, sigma_n=0.05, steps=20)),
    "sr": ({"scale": 4}, DiffPIRConfig(lam=3.0, zeta=1.0, sigma_n=0.05, steps=20)),
    "inpaint": ({"mask": "random"}, DiffPIRConfig(lam=1.0, zeta=1.0, sigma_n=0.0, steps=20)),
    "denoise": ({}, DiffPIRConfig(lam=3.0, zeta=1.0, sigma_n=0.1, steps=20)),
}


def held_out_crops(folder: Path, first: int = FIRST_IMAGE, count: int = NUM_IMAGES) -> list[tuple[int, np.ndarray]]:
    """(index, (H, W, 3) float64 centre crop) of images first..first+count-1 of the sorted folder."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".tif", ".bmp"))
    chosen = files[first : first + count]
    if len(chosen) < count:
        raise DiffPIRError(f"--data {folder}: needs at least {first + count} images (CBSD68 has 68)")
    crops = []
    for offset, path in enumerate(chosen):
        x = read_image(path).permute(1, 2, 0).numpy().astype(np.float64)
        h, w = x.shape[:2]
        top, left = (h - CROP) // 2, (w - CROP) // 2
        crops.append((first + offset, x[top : top + CROP, left : left + CROP]))
    return crops


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    a8 = np.round(np.clip(a, 0, 1) * 255)
    b8 = np.round(np.clip(b, 0, 1) * 255)
    mse = float(np.mean((a8 - b8) ** 2))
    return 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")


def weights_of(checkpoint: Path, folder: Path) -> tuple[ModelSource, dict[str, Any]]:
    """A model source for a training checkpoint's EMA weights (or an exported .safetensors)."""
    if checkpoint.suffix == ".safetensors":
        return ModelSource("checkpoint", checkpoint, "compact_fast"), {"step": None, "train_hours": None}
    from .train import Recipe, read_checkpoint

    state = read_checkpoint(checkpoint)
    recipe = Recipe(**state["recipe"])
    from safetensors.torch import save_file

    path = folder / f"{checkpoint.stem}.safetensors"
    save_file({k: v.float().contiguous() for k, v in state["ema"].items()}, str(path))
    info = {"step": int(state["step"]), "train_hours": float(state["train_seconds"]) / 3600.0,
            "cpu_hours": float(state.get("cpu_seconds", state["train_seconds"])) / 3600.0,
            "devices": sorted({s.get("device", "?") for s in state.get("stages", [])})}  # fmt: skip
    return ModelSource("checkpoint", path, recipe.arch), info


def task_psnr(restorer: Restorer, crops: Sequence[tuple[int, np.ndarray]], task: str, config: DiffPIRConfig,
              options: dict[str, Any]) -> float:
    """Mean PSNR (uint8) of DiffPIR with `config` on the official measurement of `task` (with
    `options`) of each crop; noise, kernel, mask and sampler seeded by the crop's index; SR shaves 4 px."""
    scores = []
    for index, x in crops:
        m = make_measurement(task, x, sigma_n=config.sigma_n, noise_seed=2**20 + index, kernel_index=index,
                             mask_seed=index, **options)  # fmt: skip
        y = torch.from_numpy(np.ascontiguousarray(m.y.transpose(2, 0, 1), dtype=np.float32))[None]
        out = restorer.restore(y, m.operator, config, seed=index, boundary="circular")[0].permute(1, 2, 0).double().numpy()
        shave = get_task(task).shave(m.operator)
        scores.append(psnr_uint8(out[shave : out.shape[0] - shave, shave : out.shape[1] - shave],
                                 x[shave : x.shape[0] - shave, shave : x.shape[1] - shave]))  # fmt: skip
    return float(np.mean(scores))


#: The validation loss's timesteps: evenly spaced over the chain, so every noise level counts alike.
VAL_TIMESTEPS = tuple(range(25, 1000, 50))


@torch.no_grad()
def validation_loss(source: ModelSource, crops: Sequence[tuple[int, np.ndarray]], device: str = "cpu") -> float:
    """Mean eps-MSE of the weights on the held-out crops at fixed timesteps and fixed noise (seeded by the
    crop's index and t): the training objective on images never trained on. Unlike restoration PSNR it
    is nearly free of sampling noise, so small differences between checkpoints show."""
    from diffpir_rt.engine import linear_schedule

    model = source.load_torch(device=device)
    alpha_bar = linear_schedule().alpha_bar
    losses = []
    for index, x in crops:
        x0 = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))[None].to(device) * 2 - 1
        generator = torch.Generator().manual_seed(index)
        for t in VAL_TIMESTEPS:
            eps = torch.randn(x0.shape, generator=generator).to(device)
            x_t = float(np.sqrt(alpha_bar[t])) * x0 + float(np.sqrt(1 - alpha_bar[t])) * eps
            losses.append(float(torch.mean((model(x_t, torch.tensor([t], device=device)) - eps) ** 2)))
    return float(np.mean(losses))


def evaluate(source: ModelSource, crops: Sequence[tuple[int, np.ndarray]], task: str = "deblur", device: str = "cpu") -> float:
    """The curve's point for one task: task_psnr with the protocol's fixed settings."""
    options, config = TASK_PROTOCOL[task]
    return task_psnr(Restorer(source, device=device, notify=lambda line: None), crops, task, config, options)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cliargs.OneLineParser(prog="diffpir train curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="the CBSD68 folder (held-out images)")
    parser.add_argument("--checkpoints", nargs="+", required=True, type=Path, help="training checkpoints or .safetensors")
    parser.add_argument("--out", required=True, type=cliargs.output_path, help="JSON file of the curve's points")
    parser.add_argument("--device", default="cpu", help="device (default: %(default)s)")
    parser.add_argument("--tasks", nargs="+", default=["deblur"], choices=tuple(TASK_PROTOCOL),
                        help="tasks to measure (default: deblur, the curve's)")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        check_input_file(path, "--checkpoints")
    plan = OutputPlan(args.checkpoints)
    plan.add(args.out, "--out", suffixes=(".json",))
    crops = held_out_crops(args.data)
    points = []
    with tempfile.TemporaryDirectory() as folder:
        for path in args.checkpoints:
            source, info = weights_of(path, Path(folder))
            scores = {f"{task}_psnr": round(evaluate(source, crops, task, args.device), 3) for task in args.tasks}
            scores["val_loss"] = round(validation_loss(source, crops, args.device), 6)
            points.append({"checkpoint": str(path), **info, **scores})
            print(json.dumps(points[-1]), flush=True)
    protocol = {"images": f"sorted {args.data.name}[{FIRST_IMAGE}:{FIRST_IMAGE + NUM_IMAGES}]", "crop": CROP,
                "seed": "image index", "tasks": {t: {"measurement": TASK_PROTOCOL[t][0], "config": TASK_PROTOCOL[t][1].to_dict()}
                                                 for t in args.tasks}}  # fmt: skip
    with plan.transaction():
        write_text(args.out, json.dumps({"protocol": protocol, "points": points}, indent=2) + "\n")
    return 0
