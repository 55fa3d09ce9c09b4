"""Noise-level estimation (`--sigma-n auto`): how close each estimator comes, and what restoring with it costs.

Two parts (docs/blind.md §1):

* `--part estimators`: every candidate of engine.ESTIMATORS (wavelet MAD with Haar / db2 / db4,
  weak-textured-patch PCA, eigenvalue-tail PCA) on centre crops of CBSD68 and McMaster, for the
  measurements of every task (denoising y = x + n, Gaussian and motion deblurring with a
  non-circular blur, SR ×4 by bicubic downsampling, inpainting with a 50 % random mask and with a
  box, the estimate taken on observed pixels only), σ_n in 0.005 … 0.2, stored as floats, 16-bit
  or 8-bit (clipped and rounded, as an image file holds them). Reported: the relative error
  (σ̂ − σ_n) / σ_n per estimator, task, storage and σ_n (mean, median, mean absolute, worst).
* `--part restore`: DiffPIR with the bundled prior and its per-task defaults, each measurement
  restored three times, with the true σ_n, with engine.estimate_sigma_n's estimate and with the
  model's fixed default σ_n for the task (what a user who gives none gets today); PSNR of each.

  python -m diffpir_rt.benchmarks.noise_level --part estimators --data /work/shared/data/testsets --out benchmarks/results/noise_level
  python -m diffpir_rt.benchmarks.noise_level --part restore --data /work/shared/data/testsets --out benchmarks/results/noise_level
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import ESTIMATORS, ModelSource, degrade, estimate_sigma_n, get_task
from diffpir_rt.errors import DiffPIRError

from . import harness, metrics

logger = logging.getLogger("benchmarks.noise_level")

OUT = Path("noise-level-results")
SIGMAS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
STORAGE = ("float", "16bit", "8bit")
#: The restoration part's noise levels.
RESTORE_SIGMAS = (0.0, 0.01, 0.02, 0.05, 0.1)
NOISE_SEED = 7000
RESTORE_SEED = 0


def load_crops(data: Path, dataset: str, count: int, size: int, margin: int = 0) -> list[tuple[str, np.ndarray]]:
    """The first `count` images of a test set (sorted), centre crops of (size + 2 margin)², float64 [0, 1]."""
    from PIL import Image

    folder = data / dataset
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".bmp"))
    if not files:
        raise DiffPIRError(f"--data {data}: no images in {folder}")
    out = []
    side = size + 2 * margin
    for path in files[:count]:
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
        h, w = img.shape[:2]
        top, left = (h - side) // 2, (w - side) // 2
        out.append((f"{dataset}/{path.stem}", np.ascontiguousarray(img[top : top + side, left : left + side])))
    return out


def _noise_only(x: np.ndarray, inner: np.ndarray, rng: np.random.RandomState, margin: int) -> tuple[np.ndarray, Any]:
    return inner, {}


def _camera_blur(kernel: np.ndarray) -> Any:
    """A blur of the crop with its rim (a camera's blur, not circular), cropped back to the inner image."""

    def make(x: np.ndarray, inner: np.ndarray, rng: np.random.RandomState, margin: int) -> tuple[np.ndarray, Any]:
        import scipy.ndimage as ndi

        h, w = inner.shape[:2]
        blurred = ndi.convolve(x, kernel[..., None], mode="reflect")
        return blurred[margin : margin + h, margin : margin + w], {"kernel": kernel}

    return make


def _bicubic_x4(x: np.ndarray, inner: np.ndarray, rng: np.random.RandomState, margin: int) -> tuple[np.ndarray, Any]:
    return degrade.bicubic_downsample(inner, 4), {"scale": 4}


def _holes(kind: str) -> Any:
    def make(x: np.ndarray, inner: np.ndarray, rng: np.random.RandomState, margin: int) -> tuple[np.ndarray, Any]:
        h, w = inner.shape[:2]
        seed = int(rng.randint(1 << 30))
        mask = degrade.random_mask(h, w, seed=seed) if kind == "random" else degrade.box_mask(h, w, seed=seed, box=h // 2, margin=h // 16)
        return inner, {"mask": mask}

    return make


#: scenario -> (the engine task that restores it, what makes its noiseless measurement and the task's inputs,
#: the boundary the restoration runs with: "auto" (the product's photo model) for a blur of a larger scene,
#: None (the operator as given) where the measurement is the operator's own). Scenario ids are this
#: benchmark's own: a task may appear under several (two blurs, two masks).
SCENARIOS: dict[str, tuple[str, Any, Optional[str]]] = {
    "noise_only": ("denoise", _noise_only, None),
    "blur_gaussian": ("deblur", _camera_blur(degrade.gaussian_kernel_std(2.0, 25)), "auto"),
    "blur_motion": ("deblur", _camera_blur(degrade.motion_kernel(0, 61)), "auto"),
    "sr_x4": ("sr", _bicubic_x4, None),
    "holes_random": ("inpaint", _holes("random"), None),
    "holes_box": ("inpaint", _holes("box"), None),
}
TASKS = tuple(SCENARIOS)
RESTORE_TASKS = ("noise_only", "blur_gaussian", "sr_x4", "holes_random")


def measurement(scenario: str, x: np.ndarray, sigma: float, rng: np.random.RandomState, margin: int) -> tuple[np.ndarray, Optional[np.ndarray], Any]:
    """(y (h, w, 3) before storage, mask (h, w) or None, the engine operator that restores it).

    x is the crop with a `margin` rim; blur uses the rim, every other scenario the inner crop.
    Noise is added last, unclipped (and zero where a mask hides the pixel); storage comes after.
    """
    if scenario not in SCENARIOS:
        raise DiffPIRError(f"--tasks {scenario}: expected one of {', '.join(SCENARIOS)}")
    task, make, _ = SCENARIOS[scenario]
    inner = x[margin : x.shape[0] - margin, margin : x.shape[1] - margin] if margin else x
    clean, inputs = make(x, inner, rng, margin)
    mask = inputs.get("mask")
    y = clean + rng.normal(0.0, sigma, clean.shape)
    if mask is not None:
        y = y * mask[..., None]
    return y, mask, get_task(task).operator(**inputs)


def store(y: np.ndarray, storage: str) -> np.ndarray:
    """y as an image file holds it: clipped to [0, 1] and rounded to 8 or 16 bits; 'float' keeps it."""
    if storage == "float":
        return y
    levels = 255.0 if storage == "8bit" else 65535.0
    return np.round(np.clip(y, 0.0, 1.0) * levels) / levels


def to_tensor(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1)))[None]


# ----------------------------------------------------------------------------- part 1: estimators


def run_estimators(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    margin = 32
    for dataset in args.datasets:
        images = load_crops(args.data, dataset, args.images, args.size, margin)
        for i, (name, x) in enumerate(images):
            for task in args.tasks:
                for s_index, sigma in enumerate(args.sigmas):
                    rng = np.random.RandomState(NOISE_SEED + 1000 * i + 10 * s_index)
                    y, mask, _ = measurement(task, x, sigma, rng, margin)
                    m = None if mask is None else torch.from_numpy(mask)
                    for storage in args.storage:
                        yt = to_tensor(store(y, storage))
                        for est in args.estimators:
                            start = time.perf_counter()
                            value = float(ESTIMATORS[est](yt, m)[0])
                            seconds = time.perf_counter() - start
                            rows.append({"image": name, "task": task, "sigma_n": sigma, "storage": storage, "estimator": est,
                                         "estimate": value, "relative_error": (value - sigma) / sigma, "seconds": seconds})  # fmt: skip
            logger.info("%s done (%d rows)", name, len(rows))
    summary = summarise_estimators(rows)
    document = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "noise-level estimators: relative error (estimate - sigma_n) / sigma_n",
            "datasets": {d: f"first {args.images} images (sorted), centre crops {args.size}²" for d in args.datasets},
            "tasks": {
                "noise_only": "y = x + n", "blur_gaussian": "Gaussian std 2 (25²), scipy 'reflect' blur of a crop with a 32-px rim, cropped",
                "blur_motion": "engine.degrade.motion_kernel(0, 61), blurred likewise", "sr_x4": "engine.degrade.bicubic_downsample x4, then n",
                "holes_random": "50 % random mask, estimate on observed pixels", "holes_box": "box of half the side, estimate on observed pixels",
            },
            "storage": "float: as drawn; 16bit / 8bit: clipped to [0, 1] and rounded (the 8-bit quantisation alone adds 0.00113 std)",
            "noise_seed": f"{NOISE_SEED} + 1000 image index + 10 sigma index",
            "command": "python -m diffpir_rt.benchmarks.noise_level " + " ".join(args.argv),
        },
        "summary": summary,
        "runs": rows,
    }  # fmt: skip
    harness.write_json(args.out / "estimators.json", document)
    (args.out / "estimators.md").write_text(estimators_markdown(document))
    if {"pca_weak_texture_mp", "mad_haar"} <= set(args.estimators):
        engine_rollup(document, args.out)
    return document


def engine_rollup(document: dict[str, Any], out: Path) -> dict[str, Any]:
    """What `--sigma-n auto` itself reports: engine.estimate_sigma_n is the edge-corrected weak-texture
    PCA with the Haar MAD where the PCA declines (too few fully observed patches), so its error
    is read off the two estimators' rows of the same measurements (no second run); writes
    <out>/engine_estimate.{json,md}. Needs both estimators in the run."""
    import math

    rows = document["runs"]
    index = {(r["image"], r["task"], r["sigma_n"], r["storage"], r["estimator"]): r["estimate"] for r in rows}
    combined = []
    for (image, task, sigma, storage, est), value in index.items():
        if est != "pca_weak_texture_mp" or (image, task, sigma, storage, "mad_haar") not in index:
            continue
        fallback = not math.isfinite(value)
        estimate = index[(image, task, sigma, storage, "mad_haar")] if fallback else value
        combined.append({"image": image, "task": task, "sigma_n": sigma, "storage": storage, "estimate": estimate,
                         "relative_error": (estimate - sigma) / sigma, "fallback": fallback})  # fmt: skip
    sigmas = sorted({c["sigma_n"] for c in combined})
    summary, lines = [], ["| storage | scenario | " + " | ".join(f"σ {s:g}" for s in sigmas) + " |", "|---|---|" + "---|" * len(sigmas)]
    for storage in [s for s in STORAGE if any(c["storage"] == s for c in combined)]:
        for task in ["all", *[t for t in TASKS if any(c["task"] == t for c in combined)]]:
            cells = []
            for sigma in sigmas:
                group = [c for c in combined if c["storage"] == storage and c["sigma_n"] == sigma and task in ("all", c["task"])]
                e = np.asarray([c["relative_error"] for c in group])
                summary.append({"storage": storage, "task": task, "sigma_n": sigma, "n": int(e.size), "mean": float(e.mean()),
                                "mean_abs": float(np.abs(e).mean()), "worst": float(e[np.argmax(np.abs(e))]),
                                "fallbacks": sum(c["fallback"] for c in group)})  # fmt: skip
                cells.append(f"{np.abs(e).mean():.3f} ({e.mean():+.3f})")
            lines.append(f"| {storage} | {'**all**' if task == 'all' else task} | " + " | ".join(cells) + " |")
    result = {"what": "engine.estimate_sigma_n: pca_weak_texture_mp, mad_haar where it declines (from the rows of estimators.json)",
              "meta": document["meta"], "summary": summary, "rows": combined}  # fmt: skip
    harness.write_json(out / "engine_estimate.json", result)
    (out / "engine_estimate.md").write_text("\n".join([
        "# `--sigma-n auto` (engine.estimate_sigma_n): relative error (σ̂ − σ_n) / σ_n", "",
        f"- {result['what']}", f"- data: {document['meta']['datasets']}; measurements and command: estimators.md", "",
        "Mean absolute relative error (mean signed error in brackets), per storage and scenario.", "", *lines]) + "\n")  # fmt: skip
    return result


def summarise_estimators(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        dataset = r["image"].split("/")[0]
        for key in ((r["estimator"], dataset, r["task"], r["storage"], r["sigma_n"]), (r["estimator"], dataset, "all", r["storage"], r["sigma_n"])):
            groups.setdefault(key, []).append(r["relative_error"])
    out = []
    for (est, dataset, task, storage, sigma), errors in groups.items():
        e = np.asarray(errors)
        finite = e[np.isfinite(e)]
        out.append({"estimator": est, "dataset": dataset, "task": task, "storage": storage, "sigma_n": sigma, "n": int(e.size),
                    "failed": int(e.size - finite.size), "mean": float(finite.mean()) if finite.size else None,
                    "median": float(np.median(finite)) if finite.size else None,
                    "mean_abs": float(np.abs(finite).mean()) if finite.size else None,
                    "worst": float(finite[np.argmax(np.abs(finite))]) if finite.size else None})  # fmt: skip
    return out


def estimators_markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    summary = document["summary"]
    estimators = sorted({r["estimator"] for r in summary})
    sigmas = sorted({r["sigma_n"] for r in summary})
    lines = [
        "# Noise-level estimators: relative error (σ̂ − σ_n) / σ_n",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, load average {meta['load_average']}",
        f"- data: {meta['datasets']}",
        f"- measurements: {meta['tasks']}",
        f"- storage: {meta['storage']}",
        f"- reproduce: `{meta['command']}`",
        "",
    ]
    for dataset in sorted({r["dataset"] for r in summary}):
        for storage in [s for s in STORAGE if any(r["storage"] == s for r in summary)]:
            lines += [f"## {dataset}, {storage}: mean absolute relative error, all tasks pooled (mean signed error in brackets)", "",
                      "| estimator | " + " | ".join(f"σ {s:g}" for s in sigmas) + " |", "|---" * (len(sigmas) + 1) + "|"]  # fmt: skip
            for est in estimators:
                cells = []
                for s in sigmas:
                    r = next((r for r in summary if (r["estimator"], r["dataset"], r["task"], r["storage"], r["sigma_n"]) == (est, dataset, "all", storage, s)), None)
                    cells.append("–" if r is None or r["mean_abs"] is None else f"{r['mean_abs']:.3f} ({r['mean']:+.3f})")
                lines.append(f"| {est} | " + " | ".join(cells) + " |")
            lines.append("")
    for dataset in sorted({r["dataset"] for r in summary}):
        lines += [f"## {dataset}, per task, 8-bit: mean absolute relative error", ""]
        tasks = [t for t in TASKS if any(r["task"] == t for r in summary)]
        for task in tasks:
            lines += [f"**{task}**", "", "| estimator | " + " | ".join(f"σ {s:g}" for s in sigmas) + " |", "|---" * (len(sigmas) + 1) + "|"]
            for est in estimators:
                cells = []
                for s in sigmas:
                    r = next((r for r in summary if (r["estimator"], r["dataset"], r["task"], r["storage"], r["sigma_n"]) == (est, dataset, task, "8bit", s)), None)
                    cells.append("–" if r is None or r["mean_abs"] is None else f"{r['mean_abs']:.3f} ({r['mean']:+.3f})" + (f" ✗{r['failed']}" if r["failed"] else ""))
                lines.append(f"| {est} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- part 2: restoration


def run_restore(args: argparse.Namespace) -> dict[str, Any]:
    from diffpir_rt.runtime import Restorer

    restorer = Restorer(ModelSource(), device="cpu", threads=args.threads, notify=lambda line: logger.info("%s", line))
    rows: list[dict[str, Any]] = []
    margin = 32
    for dataset in args.datasets:
        images = load_crops(args.data, dataset, args.images, args.size, margin)
        for i, (name, x) in enumerate(images):
            gt = x[margin:-margin, margin:-margin]
            for task in args.tasks:
                engine_task = SCENARIOS[task][0]
                for s_index, sigma in enumerate(args.sigmas):
                    rng = np.random.RandomState(NOISE_SEED + 1000 * i + 10 * s_index)
                    y, mask, op = measurement(task, x, sigma, rng, margin)
                    yt = to_tensor(store(y, "8bit")).float()
                    m = None if mask is None else torch.from_numpy(mask)
                    estimate = float(estimate_sigma_n(yt, m)[0])
                    default = restorer.default_sigma_n(engine_task)
                    row: dict[str, Any] = {"image": name, "task": task, "sigma_n": sigma, "estimate": estimate, "default": default, "psnr": {}}
                    for arm, value in (("true", sigma), ("auto", estimate), ("default", default)):
                        config = restorer.config(engine_task, sigma_n=min(1.0, max(0.0, value)))
                        start = time.perf_counter()
                        out = restorer.restore(yt, op, config, seed=RESTORE_SEED, boundary=SCENARIOS[task][2])[0].permute(1, 2, 0).double().numpy()
                        row["psnr"][arm] = metrics.psnr(metrics.to_uint8(gt), metrics.to_uint8(out))
                        row.setdefault("seconds", {})[arm] = round(time.perf_counter() - start, 2)
                    rows.append(row)
                    p = row["psnr"]
                    print(f"[I] {name} {task:15s} σ {sigma:<5g} est {estimate:.4f}  true {p['true']:.2f} auto {p['auto']:.2f} "
                          f"default({default:g}) {p['default']:.2f}", flush=True)  # fmt: skip
    document = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "DiffPIR restored with the true sigma_n, the estimate (engine.estimate_sigma_n) and the model's fixed default",
            "model": ModelSource().to_dict(), "runtime": restorer.describe()["path"],
            "datasets": {d: f"first {args.images} images (sorted), centre crops {args.size}²" for d in args.datasets},
            "storage": "8bit", "restore_seed": RESTORE_SEED,
            "command": "python -m diffpir_rt.benchmarks.noise_level " + " ".join(args.argv),
        },
        "summary": summarise_restore(rows),
        "runs": rows,
    }  # fmt: skip
    harness.write_json(args.out / "restore.json", document)
    (args.out / "restore.md").write_text(restore_markdown(document))
    return document


def summarise_restore(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["sigma_n"]), []).append(r)
        groups.setdefault((r["task"], "all"), []).append(r)
    out = []
    for (task, sigma), rs in groups.items():
        mean = {arm: float(np.mean([r["psnr"][arm] for r in rs])) for arm in ("true", "auto", "default")}
        out.append({"task": task, "sigma_n": sigma, "n": len(rs), **{f"psnr_{k}": v for k, v in mean.items()},
                    "auto_minus_true": mean["auto"] - mean["true"], "auto_minus_default": mean["auto"] - mean["default"],
                    "estimate_mean": float(np.mean([r["estimate"] for r in rs]))})  # fmt: skip
    return out


def restore_markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        "# Restoring with the estimated σ_n: DiffPIR, bundled prior, per-task defaults",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, path {meta['runtime']['name']}, "
        f"load average {meta['load_average']}",
        f"- data: {meta['datasets']}, measurements stored as 8-bit; seed {meta['restore_seed']}",
        "- boundary: " + ", ".join(f"{name} {boundary or 'as given'}" for name, (_, _, boundary) in SCENARIOS.items()),
        f"- reproduce: `{meta['command']}`",
        "",
        "| task | σ_n | images | mean estimate | PSNR true σ_n | PSNR auto | PSNR default | auto − true | auto − default |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["summary"]:
        sigma = r["sigma_n"] if r["sigma_n"] == "all" else f"{r['sigma_n']:g}"
        lines.append(f"| {r['task']} | {sigma} | {r['n']} | {r['estimate_mean']:.4f} | {r['psnr_true']:.2f} | {r['psnr_auto']:.2f} | "
                     f"{r['psnr_default']:.2f} | {r['auto_minus_true']:+.2f} | {r['auto_minus_default']:+.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.noise_level", description=__doc__.split("\n\n")[0],
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--part", choices=("estimators", "restore", "rollup"), default="estimators",
                        help="rollup: engine_estimate.{json,md} from <out>/estimators.json, without running")  # fmt: skip
    parser.add_argument("--data", type=Path, default=Path("testsets"), help="the testsets folder holding CBSD68/ and McMaster/")
    parser.add_argument("--datasets", nargs="+", default=["McMaster", "CBSD68"])
    parser.add_argument("--images", type=cliargs.positive_int, default=10, help="first N images of each set (sorted)")
    parser.add_argument("--size", type=cliargs.positive_int, default=256, help="centre crops of size x size")
    parser.add_argument("--tasks", nargs="+", default=None, choices=TASKS)
    parser.add_argument("--sigmas", nargs="+", type=float, default=None)
    parser.add_argument("--storage", nargs="+", default=list(STORAGE), choices=STORAGE)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = harness.parse_script_args(parser, argv)
    if args.tasks is None:
        args.tasks = list(TASKS if args.part == "estimators" else RESTORE_TASKS)
    if args.sigmas is None:
        args.sigmas = list(SIGMAS if args.part == "estimators" else RESTORE_SIGMAS)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "rollup":
        return engine_rollup(json.loads((args.out / "estimators.json").read_text()), args.out)
    return run_estimators(args) if args.part == "estimators" else run_restore(args)


def main(argv: Optional[list[str]] = None) -> int:
    code, _ = harness.run_script(argv, parse_args, run)
    return code if code is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
