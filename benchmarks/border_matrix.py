"""The border matrix: every method x task (deblurring, super-resolution) on real-photo measurements.

A photo is a window onto a larger scene, so its measurement is not circular. Here crops of
CBSD68 / McMaster photos are measured as a camera would measure them:

- deblur: the crop cut from the blur of a crop MARGIN px larger on every side (the official
  Gaussian kernel of image 0, std 6.3, on a KERNEL_SIZE window), plus N(0, SIGMA_N²) noise;
- sr: the larger crop bicubic-downscaled (MATLAB imresize, the official SR measurement) by
  the scale, the low-resolution frame cut out of it, plus noise.

Each method restores each measurement by the product's path (`run_requests`, as
`diffpir restore` runs it) with its defaults for the bundled prior (`--help --method NAME`),
a budget above --max-calls UNet calls scaled down to it (DPS, DMPS: 1000 steps), with
`--boundary auto` (the task's best real-photo model the method can run) and, for methods of
at most --slow-calls calls, also `--boundary taper` (where auto is extend: is the taper as
good?) and `--boundary circular` for comparison (--boundaries). Slower methods run on the first
--slow-images images, auto only.

Measured per run (uint8, docs/algorithm.md §9): PSNR in the outer 8 px and 16 px strips and in
the interior beyond 16 px; and the jump across each edge: the mean |row 1 - row 0| (and the
other three edges alike) against the largest such jump between neighbouring rows / columns
inside the image (its own statistics) and the ground truth's jump at that edge. The criterion
(a photo's border restored as well as its inside): both strips within 1 dB of the interior, and no edge jump beyond
max(the image's largest interior jump, the ground truth's edge jump).

  python -m diffpir_rt.benchmarks.border_matrix --data /work/shared/data/testsets --out benchmarks/results/boundary
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import BOUNDARIES, METHODS, ModelSource, degrade, get_task, restoration_names
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer, RestoreRequest, resolve_boundary, run_requests

from . import harness, metrics
from .boundary import DATA, MARGIN, load_crop, measure, region_psnr, to_chw

logger = logging.getLogger("benchmarks.border_matrix")

OUT = Path("border-matrix-results")
TASKS = ("deblur", "sr")
IMAGES = ("CBSD68/102061", "McMaster/1")
SIGMA_N = 0.05
KERNEL_SIZE = 33  # the official Gaussian of image 0 (std 6.3) on a 33x33 window: radius 16 < MARGIN
SCALE = 4
STRIPS = (8, 16)  # border strips (px from an edge); the interior is beyond the widest
TARGET_DB = 1.0
RESTORE_SEED = 0
NOISE_SEED = 2000
EDGES = ("top", "bottom", "left", "right")


# --------------------------------------------------------------------------- measurements


def sr_scene(big: np.ndarray, scale: int, margin: int) -> np.ndarray:
    """The low-resolution frame of a photo: the larger crop `big` downscaled by imresize (the official SR
    measurement), then its frame cut out: low-resolution pixel j covers high-resolution pixels
    [scale j, scale j + scale), so the frame at margin / scale is the measurement of big[margin:-margin]."""
    if margin % scale:
        raise DiffPIRError(f"margin: {margin} is not a multiple of the scale {scale}")
    low, m = degrade.bicubic_downsample(big, scale), margin // scale
    return low[m:-m, m:-m]


def deblur_scene(big: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The frame big[MARGIN:-MARGIN] as a camera blurs it (the blur of the larger crop, cut out), and the operator's inputs."""
    gt = big[MARGIN:-MARGIN, MARGIN:-MARGIN]
    k = degrade.gaussian_kernel(0, KERNEL_SIZE)
    return measure("scene", gt, big, k, np.zeros_like(gt)), {"kernel": k}


def sr_frame(big: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The low-resolution measurement of the frame big[MARGIN:-MARGIN], cut out of the larger crop's (`sr_scene`)."""
    return sr_scene(big, SCALE, MARGIN), {"scale": SCALE}


#: How each task's real-photo measurement is made (noise is added after).
MEASUREMENTS = {"deblur": deblur_scene, "sr": sr_frame}


def measurement(task: str, big: np.ndarray, seed: int) -> tuple[np.ndarray, Any]:
    """(y (h, w, C) float64, noisy, unclipped; the task's operator) for the frame big[MARGIN:-MARGIN]."""
    clean, inputs = MEASUREMENTS[task](big)
    noise = np.random.RandomState(seed).normal(0.0, SIGMA_N, clean.shape)
    return clean + noise, get_task(task).operator(**inputs)


# --------------------------------------------------------------------------- border statistics


def _steps(a: np.ndarray, axis: int) -> np.ndarray:
    """Mean |difference| between neighbouring rows (axis 0) or columns (axis 1), grey levels, one per pair."""
    return np.abs(np.diff(a, axis=axis)).mean(axis=tuple(i for i in range(a.ndim) if i != axis))


def edge_jumps(gt: np.ndarray, out: np.ndarray) -> dict[str, dict[str, float]]:
    """Per edge: the output's jump between the outermost row (column) and the next, the largest such jump
    between neighbouring rows (columns) of the output's interior (its own statistics, the outermost
    pair on each side excluded), its median, the ground truth's jump at that edge, and the ratio of the
    jump to max(interior max, ground truth's jump): > 1 is a jump beyond the image's own."""
    a, b = metrics.to_uint8(gt).astype(np.float64), metrics.to_uint8(out).astype(np.float64)
    result = {}
    for edge in EDGES:
        axis = 0 if edge in ("top", "bottom") else 1
        steps, truth = _steps(b, axis), _steps(a, axis)
        at = 0 if edge in ("top", "left") else -1
        interior = steps[1:-1]
        allowed = max(float(interior.max()), float(truth[at]))
        result[edge] = {"jump": float(steps[at]), "interior_max": float(interior.max()), "interior_median": float(np.median(interior)),
                        "truth": float(truth[at]), "ratio": float(steps[at]) / allowed if allowed > 0 else float("inf")}  # fmt: skip
    return result


def border_stats(gt: np.ndarray, out: np.ndarray) -> dict[str, Any]:
    """PSNR of the strips and the interior, their worst gap, and the edge jumps."""
    psnr = region_psnr(gt, out, max(STRIPS))  # border = the widest strip, interior beyond it, outer8 = 8 px
    strips = {"border8": psnr["outer8"], "border16": psnr["border"]}
    gap = min(strips.values()) - psnr["interior"]
    jumps = edge_jumps(gt, out)
    worst = max(j["ratio"] for j in jumps.values())
    return {"psnr": {**strips, "interior": psnr["interior"], "total": psnr["total"]}, "gap": gap, "jumps": jumps,
            "jump_ratio": worst, "pass": bool(gap >= -TARGET_DB and worst <= 1.0)}  # fmt: skip


# --------------------------------------------------------------------------- the run


def capped_steps(restorer: Restorer, task: str, method: str, max_calls: int) -> tuple[Optional[int], int]:
    """(the `steps` override that keeps the method's defaults within max_calls UNet calls, or None when they
    already are; the calls it then makes): the budget scaled down in proportion (DPS, DMPS: 1000 steps)."""
    config = restorer.configure(task, method, scale=SCALE, sigma_n=SIGMA_N).config
    calls = config.model_calls()
    if calls <= max_calls:
        return None, calls
    steps = max(1, getattr(config, type(config).budget) * max_calls // calls)
    return steps, restorer.configure(task, method, scale=SCALE, sigma_n=SIGMA_N, steps=steps).config.model_calls()


def plan(args: argparse.Namespace, restorer: Restorer) -> list[tuple[str, str, int, str, Optional[int]]]:
    """(task, method, image index, boundary, steps override) for every run, cheap methods first. A --boundary
    value that runs the same model as an earlier one for this method (auto = taper) is not run twice."""
    runs = []
    for task in args.tasks:
        # a method that estimates the operator itself (blind deblurring) is not given the known one
        methods = [m for m in restoration_names(task) if (args.methods is None or m in args.methods) and not METHODS[m][0].estimates]
        capped = {m: capped_steps(restorer, task, m, args.max_calls) for m in methods}
        for method in sorted(methods, key=lambda m: capped[m][1]):
            steps, calls = capped[method]
            slow = calls > args.slow_calls
            images = range(min(args.slow_images, len(args.images)) if slow else len(args.images))
            boundaries, models = [], set()
            for boundary in args.boundaries[:1] if slow else args.boundaries:
                model = _model_for(task, boundary, method)
                if model is not None and model not in models:
                    boundaries.append(boundary)
                    models.add(model)
            runs += [(task, method, i, boundary, steps) for i in images for boundary in boundaries]
    return runs


def _model_for(task: str, boundary: str, method: str) -> Optional[str]:
    """The model this --boundary runs for the method, or None when the method cannot take it (skipped)."""
    try:
        return resolve_boundary(task, boundary, method)
    except DiffPIRError:
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = ModelSource()
    restorer = Restorer(source, device="cpu", threads=args.threads, notify=lambda line: logger.info("%s", line))
    args.out.mkdir(parents=True, exist_ok=True)
    crops = [load_crop(args.data, name, args.size + 2 * MARGIN) for name in args.images]
    measurements = {(task, i): measurement(task, big, NOISE_SEED + i) for task in args.tasks for i, big in enumerate(crops)}
    runs = plan(args, restorer)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    outputs: dict[tuple[str, str, int, str], np.ndarray] = {}
    start_all = time.perf_counter()
    load_start = harness.load_average()
    for n, (task, method, i, boundary, steps) in enumerate(runs, 1):
        y, operator = measurements[(task, i)]
        gt = crops[i][MARGIN:-MARGIN, MARGIN:-MARGIN]
        overrides = {"sigma_n": SIGMA_N, **({"steps": steps} if steps is not None else {})}
        request = RestoreRequest(task, to_chw(y), operator, method, overrides, RESTORE_SEED,
                                 sources={"input": f"{args.images[i]} ({task} of the larger scene)"}, boundary=boundary)  # fmt: skip
        start = time.perf_counter()
        try:
            ((image, record),) = run_requests(restorer, [request])
        except DiffPIRError as e:  # a method that does not restore from a known operator (blind deblurring)
            skipped.append({"task": task, "method": method, "image": args.images[i], "boundary": boundary, "reason": str(e)})
            print(f"[I] [{n}/{len(runs)}] {task} {method} {args.images[i]} {boundary}: skipped ({e})", flush=True)
            continue
        seconds = time.perf_counter() - start
        out = image.permute(1, 2, 0).double().numpy()
        if out.shape != gt.shape:
            raise DiffPIRError(f"{method} {task}: output {out.shape} is not the ground truth's {gt.shape}")
        outputs[(task, method, i, boundary)] = out
        stats = border_stats(gt, out)
        rows.append({"task": task, "method": method, "image": args.images[i], "boundary": boundary, "boundary_ran": record["boundary"],
                     "model_calls": record["model_calls"], "capped": steps is not None, "seconds": round(seconds, 2), "config": record["config"],
                     "path": record["runtime"]["path"]["name"], "notes": record["notes"], **stats})  # fmt: skip
        p = stats["psnr"]
        eta = (time.perf_counter() - start_all) / n * (len(runs) - n)
        print(f"[I] [{n}/{len(runs)}] {task} {method:8s} {args.images[i]} {boundary:8s}-> {record['boundary']:8s} "
              f"border8 {p['border8']:.2f} border16 {p['border16']:.2f} interior {p['interior']:.2f} gap {stats['gap']:+.2f} "
              f"jump ratio {stats['jump_ratio']:.2f} {'pass' if stats['pass'] else 'FAIL'} ({seconds:.0f} s, ~{eta / 60:.0f} min left)",
              flush=True)  # fmt: skip
    summary = summarise(rows)
    figure = args.out / "border_matrix.png"
    strips_png(figure, args, crops, measurements, outputs)
    document = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "border matrix: every method x task on real-photo (non-circular) measurements (docs/algorithm.md §11)",
            "model": source.to_dict(), "runtime": restorer.describe()["path"], "size": args.size, "margin": MARGIN,
            "sigma_n": SIGMA_N, "deblur_kernel": f"engine.degrade.gaussian_kernel(0, {KERNEL_SIZE})",
            "sr": f"x{SCALE}, engine.degrade.bicubic_downsample of the larger crop, frame cut out", "noise_seed": f"{NOISE_SEED} + image index",
            "restore_seed": RESTORE_SEED, "data": str(args.data), "strips_px": list(STRIPS), "target_db": TARGET_DB,
            "max_calls": args.max_calls, "slow_calls": args.slow_calls, "slow_images": args.slow_images, "load_average_start": load_start,
            "load_average_end": harness.load_average(), "minutes": round((time.perf_counter() - start_all) / 60, 1),
            "command": "python -m diffpir_rt.benchmarks.border_matrix " + " ".join(args.argv),
        },
        "summary": summary,
        "runs": rows,
        "skipped": skipped,
    }  # fmt: skip
    document["target_met"] = all(r["pass"] for r in summary if r["boundary"] == "auto")
    harness.write_json(args.out / "border_matrix.json", document)
    (args.out / "border_matrix.md").write_text(markdown(document, figure))
    return document


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, method, boundary asked): means over the images of the PSNRs and the gap, the worst jump ratio."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], r["boundary"]), []).append(r)
    out = []
    for (task, method, boundary), rs in groups.items():
        mean = {key: float(np.mean([r["psnr"][key] for r in rs])) for key in ("border8", "border16", "interior", "total")}
        gap = float(np.mean([r["gap"] for r in rs]))
        ratio = max(r["jump_ratio"] for r in rs)
        out.append({"task": task, "method": method, "boundary": boundary, "boundary_ran": rs[0]["boundary_ran"], "images": len(rs),
                    **mean, "gap": gap, "worst_gap": min(r["gap"] for r in rs), "jump_ratio": ratio,
                    "worst_jump": max(max(j["jump"] for j in r["jumps"].values()) for r in rs),
                    "model_calls": rs[0]["model_calls"], "capped": rs[0]["capped"], "seconds": float(np.mean([r["seconds"] for r in rs])),
                    "pass": all(r["pass"] for r in rs)})  # fmt: skip
    return out


def strips_png(path: Path, args: argparse.Namespace, crops: list[np.ndarray], measurements: dict, outputs: dict) -> None:
    """The bottom-right corner (the last rows and columns, where a wrap-around shows) of the first image,
    enlarged x3, per task: ground truth, then each method with auto and circular."""
    from PIL import Image, ImageDraw

    corner, zoom, label, gap = 32, 3, 12, 4
    rows = []
    for task in args.tasks:
        gt = crops[0][MARGIN:-MARGIN, MARGIN:-MARGIN]
        cells = [("ground truth", gt)]
        for (t, method, i, boundary), out in outputs.items():
            if t == task and i == 0:
                cells.append((f"{method} {boundary}", out))
        rows.append((task, cells))
    side = corner * zoom
    columns = max(len(c) for _, c in rows)
    canvas = Image.new("RGB", (columns * (side + gap), len(rows) * (side + label + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (task, cells) in enumerate(rows):
        y0 = r * (side + label + gap)
        for c, (name, image) in enumerate(cells):
            x0 = c * (side + gap)
            tile = Image.fromarray(metrics.to_uint8(image[-corner:, -corner:])).resize((side, side), Image.NEAREST)
            canvas.paste(tile, (x0, y0 + label))
            draw.text((x0 + 1, y0), f"{task}: {name}"[:26], fill="black")
    canvas.save(path)


def markdown(document: dict[str, Any], figure: Optional[Path]) -> str:
    meta = document["meta"]
    lines = [
        "# Border matrix: every method x task on real-photo measurements",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['torch_threads']} thread(s), "
        f"path {meta['runtime']['name']}; model {meta['model']['label']}; load average {meta['load_average_start']} at start, "
        f"{meta['load_average_end']} at the end; {meta['minutes']} min",
        f"- images: {', '.join(sorted({r['image'] for r in document['runs']}))}, centre crops {meta['size']}² cut from crops "
        f"{meta['margin']} px larger; σ_n = {meta['sigma_n']} (seeded)",
        f"- deblur: the larger crop blurred by {meta['deblur_kernel']} (scipy 'reflect'), the frame cut out; sr: {meta['sr']}",
        f"- each method's defaults for the bundled prior (UNet calls in the table), seed {meta['restore_seed']}; budgets above "
        f"{meta['max_calls']} calls scaled down to it (calls marked *); methods of more than {meta['slow_calls']} calls on the "
        f"first {meta['slow_images']} image(s), the first --boundary only; a --boundary value that runs the same model as an "
        "earlier one (auto = taper) is not run twice",
        f"- strips: outer {meta['strips_px'][0]} and {meta['strips_px'][1]} px; interior beyond {meta['strips_px'][1]} px; "
        f"gap = min(strip) − interior; jump ratio = the worst edge's |outer row − next row| over max(the output's largest "
        f"interior row-to-row jump, the ground truth's jump there); pass = gap ≥ −{meta['target_db']:g} dB and ratio ≤ 1",
        f"- reproduce: `{meta['command']}`",
        "",
        "Means over the images (PSNR dB, uint8):",
        "",
        "| task | method | --boundary | ran | calls | border 8 | border 16 | interior | gap | jump ratio | pass | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(document["summary"], key=lambda r: (r["task"], r["method"], r["boundary"])):
        bold = "**" if r["boundary"] == "auto" else ""
        lines.append(
            f"| {r['task']} | {r['method']} | {bold}{r['boundary']}{bold} | {r['boundary_ran']} | {r['model_calls']}{'*' if r['capped'] else ''} | "
            f"{r['border8']:.2f} | {r['border16']:.2f} | {r['interior']:.2f} | {r['gap']:+.2f} | {r['jump_ratio']:.2f} | "
            f"{'yes' if r['pass'] else 'NO'} | {r['seconds']:.0f} |"
        )
    lines += ["", "Per image (edge jumps in grey levels: output / its interior max / ground truth, worst edge):", "",
              "| task | method | image | --boundary | ran | border 8 | border 16 | interior | gap | worst edge | pass |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in document["runs"]:
        p = r["psnr"]
        edge, j = max(r["jumps"].items(), key=lambda item: item[1]["ratio"])
        lines.append(f"| {r['task']} | {r['method']} | {r['image']} | {r['boundary']} | {r['boundary_ran']} | {p['border8']:.2f} | "
                     f"{p['border16']:.2f} | {p['interior']:.2f} | {r['gap']:+.2f} | {edge} {j['jump']:.1f} / {j['interior_max']:.1f} / "
                     f"{j['truth']:.1f} | {'yes' if r['pass'] else 'NO'} |")  # fmt: skip
    lines += ["", f"Criterion (auto, every method x task): {'met' if document['target_met'] else 'NOT met'}. Methods that "
              "estimate the operator themselves (blind deblurring) are not run: the matrix gives each method the known one."]
    for r in {(r["task"], r["method"], r["reason"]): r for r in document.get("skipped", [])}.values():
        lines.append(f"Not run: {r['task']} {r['method']} ({r['reason']}).")
    if figure is not None:
        lines += ["", f"Bottom-right corners ({figure.name}, first image, ×3):", "", f"![border strips]({figure.name})"]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.border_matrix", description=__doc__.split("\n\n")[0],
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA, help="the testsets folder holding CBSD68/ and McMaster/ (default: $DIFFPIR_TESTSETS, else ./testsets)")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), help="images as <set>/<file stem>")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=None, help="restoration methods (default: every method of each task)")
    parser.add_argument("--size", type=cliargs.positive_int, default=128, help="frames of size x size (a multiple of the SR scale)")
    parser.add_argument("--max-calls", type=cliargs.positive_int, default=200, help="a method's budget above this many UNet calls is scaled down to it")
    parser.add_argument("--slow-calls", type=cliargs.positive_int, default=150, help="methods of more UNet calls run on --slow-images images, auto only")
    parser.add_argument("--slow-images", type=cliargs.positive_int, default=2)
    parser.add_argument("--boundaries", nargs="+", default=["auto", "taper", "circular"], choices=BOUNDARIES,
                        help="--boundary values to run (slow methods: the first only; models a method cannot run are skipped)")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="results folder (default: ./border-matrix-results)")
    args = harness.parse_script_args(parser, argv)
    if args.size % SCALE:
        parser.error(f"--size {args.size}: expected a multiple of the SR scale {SCALE}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    code, document = harness.run_script(argv, parse_args, run)
    return code if code is not None else (0 if document["target_met"] else 1)


if __name__ == "__main__":
    raise SystemExit(main())
