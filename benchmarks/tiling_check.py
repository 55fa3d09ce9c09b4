"""Seams check: the same restoration with the UNet on tiles and on the whole image.

A McMaster image is resized to SIZE x SIZE (500 -> 512 by default, bicubic), degraded
(SR x4 with the bicubic kernel, or the official Gaussian deblur kernel; sigma_n = the
model's default, a fixed noise seed), and restored twice by the product's runtime
(`Restorer`, the path `diffpir restore` takes on this machine) with the same seed: once
with `tile="off"` and once with `tile=TILE, overlap=OVERLAP`. The two differ only in how
the UNet sees the image. Reported per image and task: PSNR / SSIM against the ground
truth for both (the target: tiled within 0.2 dB of untiled), PSNR of tiled against
untiled, and the PSNR against the ground truth in the strips around the tile seams
(+-8 px of every boundary between tiles) and away from them, so that a seam that cost
quality would show as a lower strip PSNR. A grid PNG shows ground truth, untiled, tiled
and |tiled - untiled| (x4), full images and a crop around a seam crossing.

  python -m diffpir_rt.benchmarks.tiling_check                       # writes to benchmarks/results/size_cpu/
  python -m diffpir_rt.benchmarks.tiling_check --images 1 5 --tasks sr deblur --tile 128 --overlap 16
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffpir_rt.engine import TASKS, ModelSource, get_task
from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer

from . import harness, metrics

logger = logging.getLogger("benchmarks.tiling_check")

#: $DIFFPIR_TESTSETS/McMaster, else the project's shared/data/testsets/McMaster (as `diffpir eval`).
DATA = Path(os.environ.get("DIFFPIR_TESTSETS") or "testsets") / "McMaster"
OUT = Path("tiling-results")
SEAM_HALF_WIDTH = 8
NOISE_SEED = 0
RESTORE_SEED = 1


def load_image(folder: Path, name: str, size: int) -> torch.Tensor:
    """(3, size, size) in [0, 1]: the image resized (bicubic) to size x size."""
    from PIL import Image

    path = next((p for p in sorted(folder.iterdir()) if p.stem == name), None) if folder.is_dir() else None
    if path is None:
        raise DiffPIRError(f"--images {name}: no such image in {folder}")
    with Image.open(path) as im:
        im = im.convert("RGB").resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def seam_mask(height: int, width: int, rows: list[int], cols: list[int], tile: tuple[int, int]) -> np.ndarray:
    """(H, W) True within SEAM_HALF_WIDTH of a boundary between tiles (a tile's start or end inside the image)."""
    mask = np.zeros((height, width), dtype=bool)
    for starts, extent, length, axis in ((rows, tile[0], height, 0), (cols, tile[1], width, 1)):
        edges = {s for s in starts if s > 0} | {s + extent for s in starts if s + extent < length}
        for e in edges:
            lo, hi = max(0, e - SEAM_HALF_WIDTH), min(length, e + SEAM_HALF_WIDTH)
            if axis == 0:
                mask[lo:hi, :] = True
            else:
                mask[:, lo:hi] = True
    return mask


def seam_centre(starts: list[int], extent: int, length: int) -> int:
    """The middle of the band two tiles share nearest the image's centre (where they blend)."""
    bands = [(b + a + extent) // 2 for a, b in zip(starts, starts[1:])]
    return min(bands, key=lambda c: abs(c - length // 2)) if bands else length // 2


def masked_psnr(gt: np.ndarray, out: np.ndarray, mask: np.ndarray) -> float:
    diff = gt.astype(np.float64)[mask] - out.astype(np.float64)[mask]
    mse = float(np.mean(diff**2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def problem(task: str, x: torch.Tensor, sigma_n: float) -> tuple[Any, torch.Tensor]:
    """The task's seeded synthetic operator (engine.Task.synthetic_operator) and its noisy measurement of x."""
    op = get_task(task).synthetic_operator(*x.shape[-2:])
    g = torch.Generator().manual_seed(NOISE_SEED)
    y = op.forward(x[None].double()).float()
    return op, y + sigma_n * torch.randn(y.shape, generator=g)


def to_hwc_uint8(x: torch.Tensor) -> np.ndarray:
    return metrics.to_uint8(x.detach().cpu().permute(1, 2, 0).numpy())


def grid_png(path: Path, panels: list[tuple[str, np.ndarray]], crop: tuple[int, int, int]) -> None:
    """Row 1: the full images; row 2: the crop (top, left, side) around a seam crossing, x3."""
    from PIL import Image, ImageDraw

    top, left, side = crop
    full = panels[0][1].shape[0]
    scale, gap, label = max(1, full // side), 6, 16
    cell = max(full, side * scale)
    canvas = Image.new("RGB", (len(panels) * (cell + gap) - gap, 2 * (cell + label + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, image) in enumerate(panels):
        x0 = i * (cell + gap)
        draw.text((x0 + 2, 2), name, fill="black")
        whole = Image.fromarray(image)
        canvas.paste(whole, (x0, label))
        d = ImageDraw.Draw(canvas)
        d.rectangle([x0 + left, label + top, x0 + left + side - 1, label + top + side - 1], outline=(255, 255, 0))
        part = Image.fromarray(image[top:top + side, left:left + side]).resize((side * scale, side * scale), Image.NEAREST)
        y0 = cell + label + gap
        draw.text((x0 + 2, y0 + 2), f"{name}, crop x{scale}: two tile seams cross at its centre", fill="black")
        canvas.paste(part, (x0, y0 + label))
    canvas.save(path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = ModelSource()
    kwargs = {"device": "cpu", "threads": args.threads, "notify": lambda line: logger.info("%s", line)}
    whole = Restorer(source, tile="off", **kwargs)
    tiled = Restorer(source, tile=args.tile, overlap=args.overlap, **kwargs)
    rows: list[dict[str, Any]] = []
    args.out_dir.mkdir(parents=True, exist_ok=True)
    grid_written: Optional[Path] = None
    for name in args.images:
        x = load_image(args.data, name, args.size)
        gt = to_hwc_uint8(x)
        for task in args.tasks:
            config = whole.config(task, steps=args.steps)
            op, y = problem(task, x, config.sigma_n)
            outs, seconds = {}, {}
            for label, restorer in (("untiled", whole), ("tiled", tiled)):
                start = time.perf_counter()
                outs[label] = restorer.restore(y, op, config, seed=RESTORE_SEED, boundary="circular")[0]
                seconds[label] = time.perf_counter() - start
            record = tiled.describe()["tiling"]
            if not record.get("used"):
                raise DiffPIRError(f"--tile {args.tile}: the {args.size}² image was not tiled")
            plan = tiled.tiling.wrap(tiled.denoiser).plan(args.size, args.size)
            mask = seam_mask(args.size, args.size, list(plan.rows), list(plan.cols), (plan.tile_h, plan.tile_w))
            a, b = to_hwc_uint8(outs["untiled"]), to_hwc_uint8(outs["tiled"])
            border = get_task(task).shave(op)  # SR shaves sf pixels (docs/algorithm.md §9)
            row = {
                "image": f"McMaster/{name}", "task": task, "size": args.size, "steps": args.steps,
                "psnr_untiled": metrics.psnr(gt, a, border), "psnr_tiled": metrics.psnr(gt, b, border),
                "ssim_untiled": metrics.ssim(gt, a, border), "ssim_tiled": metrics.ssim(gt, b, border),
                "psnr_tiled_vs_untiled": metrics.psnr(a, b),
                "psnr_seam_strips_untiled": masked_psnr(gt, a, mask), "psnr_seam_strips_tiled": masked_psnr(gt, b, mask),
                "psnr_away_untiled": masked_psnr(gt, a, ~mask), "psnr_away_tiled": masked_psnr(gt, b, ~mask),
                "seam_strip_fraction": float(mask.mean()),
                "seconds_untiled": seconds["untiled"], "seconds_tiled": seconds["tiled"],
                "tiling": record,
            }  # fmt: skip
            row["delta_db"] = row["psnr_tiled"] - row["psnr_untiled"]
            rows.append(row)
            print(f"[I] {row['image']} {task}: untiled {row['psnr_untiled']:.2f} dB, tiled {row['psnr_tiled']:.2f} dB "
                  f"(Δ {row['delta_db']:+.3f}), seam strips {row['psnr_seam_strips_untiled']:.2f} -> "
                  f"{row['psnr_seam_strips_tiled']:.2f} dB, tiled vs untiled {row['psnr_tiled_vs_untiled']:.1f} dB", flush=True)
            if grid_written is None:
                diff = np.clip(np.abs(b.astype(np.int16) - a.astype(np.int16)) * 4, 0, 255).astype(np.uint8)
                centre_r = seam_centre(list(plan.rows), plan.tile_h, args.size)
                centre_c = seam_centre(list(plan.cols), plan.tile_w, args.size)
                side = min(128, args.size)
                top = int(np.clip(centre_r - side // 2, 0, args.size - side))
                left = int(np.clip(centre_c - side // 2, 0, args.size - side))
                grid_written = args.out_dir / "seams_grid.png"
                grid_png(grid_written, [("ground truth", gt), ("untiled", a), ("tiled", b), ("|tiled - untiled| x4", diff)],
                         (top, left, side))  # fmt: skip
    document = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "tiled vs untiled restoration (docs/algorithm.md §12)", "model": source.to_dict(),
            "tile": args.tile, "overlap": args.overlap, "seam_half_width": SEAM_HALF_WIDTH,
            "noise_seed": NOISE_SEED, "restore_seed": RESTORE_SEED, "data": str(args.data),
            "resize": f"bicubic to {args.size}x{args.size}",
            "command": " ".join(["python -m diffpir_rt.benchmarks.tiling_check", *args.argv]),
        },
        "results": rows,
        "max_abs_delta_db": max(abs(r["delta_db"]) for r in rows) if rows else None,
    }  # fmt: skip
    harness.write_json(args.out_dir / "seams.json", document)
    (args.out_dir / "seams.md").write_text(markdown(document, grid_written))
    return document


def markdown(document: dict[str, Any], grid: Optional[Path]) -> str:
    meta = document["meta"]
    lines = [
        f"# Tiled vs untiled restoration ({meta['model']['label']}, tile {meta['tile']}, overlap {meta['overlap']})",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['torch_threads']} thread(s)",
        f"- McMaster images resized {meta['resize']}; measurement noise seed {meta['noise_seed']}, restoration seed "
        f"{meta['restore_seed']} for both runs; PSNR/SSIM on uint8 (SR shaves 4 px)",
        f"- seam strips: pixels within ±{meta['seam_half_width']} px of a boundary between tiles",
        f"- reproduce: `{meta['command']}`",
        "",
        "| image | task | PSNR untiled | PSNR tiled | Δ dB | SSIM untiled | SSIM tiled | seam strips untiled → tiled | "
        "away from seams untiled → tiled | tiled vs untiled | tiles | s untiled / tiled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["results"]:
        t = r["tiling"]
        lines.append(
            f"| {r['image']} | {r['task']} | {r['psnr_untiled']:.2f} | {r['psnr_tiled']:.2f} | {r['delta_db']:+.3f} | "
            f"{r['ssim_untiled']:.4f} | {r['ssim_tiled']:.4f} | {r['psnr_seam_strips_untiled']:.2f} → {r['psnr_seam_strips_tiled']:.2f} | "
            f"{r['psnr_away_untiled']:.2f} → {r['psnr_away_tiled']:.2f} | {r['psnr_tiled_vs_untiled']:.1f} dB | "
            f"{t['tiles']} of {t['tile'][0]}² | {r['seconds_untiled']:.0f} / {r['seconds_tiled']:.0f} |"
        )
    worst = document["max_abs_delta_db"]
    if worst is not None:
        lines += ["", f"Largest |Δ| {worst:.3f} dB (target: within 0.2 dB): {'met' if worst <= 0.2 else 'NOT met'}."]
    if grid is not None:
        lines += ["", f"![seams]({grid.name})"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.tiling_check", description=__doc__.split("\n\n")[0],
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA, help="McMaster folder")
    parser.add_argument("--images", nargs="+", default=["1", "5"], help="image names (file stems)")
    parser.add_argument("--tasks", nargs="+", default=["sr", "deblur"], choices=tuple(TASKS))
    parser.add_argument("--size", type=cliargs.positive_int, default=512, help="images are resized to size x size")
    parser.add_argument("--steps", type=cliargs.num_steps, default=20)
    parser.add_argument("--tile", type=cliargs.positive_int, default=128)
    parser.add_argument("--overlap", type=cliargs.non_negative_int, default=16)
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--out-dir", type=Path, default=OUT)
    return harness.parse_script_args(parser, argv)


def main(argv: Optional[list[str]] = None) -> int:
    code, document = harness.run_script(argv, parse_args, run)
    if code is not None:
        return code
    worst = document["max_abs_delta_db"]
    return 0 if worst is not None and worst <= 0.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
