"""Blind deblurring (`--kernel auto`): restoring with an estimated kernel against the true kernel and a guess.

Every case is one test image (a centre crop), one kernel and one noise level. The measurement:

- circular: the crop blurred circularly (the engine's Deblur.forward, as the official protocol),
  plus N(0, σ_n²) noise (seeded, unclipped);
- scene: the crop cut from the blur of a crop `MARGIN` px larger on every side (a camera's blur:
  the frame's border was blurred with the scene outside it), plus the same noise; every arm then
  restores it with the boundary-aware extended domain (engine.ExtendedDeblur).

Kernels: the 8 motion kernels of Levin et al. 2009 (Levin09.mat), each shifted by whole pixels
so that its centre of mass is at its centre (a blind estimate is defined up to a shift; this is
the convention the estimator follows), and isotropic Gaussians of the given widths, 31 × 31.

Arms, all DiffPIR with the bundled prior through the product's CPU path (runtime.Restorer):
- true: non-blind, the true kernel;
- guess: non-blind, a generic Gaussian of std 2 px (what a user without `--kernel auto` would try);
- blind: engine.prepare_blind (the coarse-to-fine kernel estimate) then the blind_diffpir method
  (the kernel refined inside the loop), same steps.

Reported per case and as means per kernel family and σ_n: PSNR (uint8, docs/algorithm.md §9)
and the same after the best alignment by whole pixels within ±2 (a blind result is defined up to
the kernel's shift; all arms are aligned the same way), the kernel estimate's normalised error
‖k̂ − k‖ / ‖k‖ (as is, and at its best shift within ±2), and seconds per restoration. Cases are
appended to <out>/runs.jsonl as they finish, so an interrupted run resumes and arms can run apart.

  python -m diffpir_rt.benchmarks.blind --data /work/shared/data/testsets --out benchmarks/results/blind
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
from diffpir_rt.engine import BlindDiffPIRConfig, Deblur, ExtendedDeblur, ModelSource, degrade, kernel_error, prepare_blind
from diffpir_rt.errors import DiffPIRError

from diffpir_rt.runtime import LEVIN_FILE

from . import harness, metrics
from .noise_level import load_crops

logger = logging.getLogger("benchmarks.blind")

OUT = Path("blind-results")
MOTION = tuple(f"levin{i}" for i in range(8))
GAUSSIAN = ("gauss1.0", "gauss3.0", "gauss5.0")
SIGMAS = (0.01, 0.05)
ARMS = ("true", "guess", "blind")
GUESS_STD = 2.0
MARGIN = 32
NOISE_SEED = 9000
RESTORE_SEED = 0
SHIFT = 2
TARGET_TRUE_DB = 1.5
TARGET_GUESS_DB = 2.0
TARGET_TIME = 2.0


def centred(k: np.ndarray) -> np.ndarray:
    """k (sum 1) shifted by whole pixels so its centre of mass is its centre pixel, on an odd square."""
    k = k / k.sum()
    n = max(k.shape)
    yy, xx = np.mgrid[: k.shape[0], : k.shape[1]]
    dy, dx = int(round((k * yy).sum() - (n - 1) / 2)), int(round((k * xx).sum() - (n - 1) / 2))
    size = n + 2 * max(abs(dy), abs(dx))
    size += 1 - size % 2
    out = np.zeros((size, size))
    top, left = (size - k.shape[0]) // 2 - dy, (size - k.shape[1]) // 2 - dx
    out[top : top + k.shape[0], left : left + k.shape[1]] = k
    return out


def kernel_for(name: str, data: Path, size: int) -> np.ndarray:
    if name.startswith("levin"):
        # the engine's package data (engine/data/README.md), the same file the web page's presets read
        path = degrade.BICUBIC_KERNELS_FILE.with_name(LEVIN_FILE)
        return centred(degrade.load_kernel(path, int(name[5:])).astype(np.float64))
    if name.startswith("gauss"):
        return degrade.gaussian_kernel_std(float(name[5:]), size).astype(np.float64)
    raise DiffPIRError(f"--kernels {name}: expected levin0..levin7 or gaussSTD")


def family(name: str) -> str:
    return "motion" if name.startswith("levin") else "gaussian"


def measure(kind: str, big: np.ndarray, k: np.ndarray, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth, measurement), (size, size, 3) float64; big has a MARGIN rim around the crop."""
    import scipy.ndimage as ndi

    gt = big[MARGIN:-MARGIN, MARGIN:-MARGIN]
    if kind == "circular":
        blurred = Deblur(k).forward(torch.from_numpy(gt.transpose(2, 0, 1).copy())[None])[0].numpy().transpose(1, 2, 0)
    else:  # a camera's blur: the frame of the blurred scene (MARGIN >= the kernel's radius)
        blurred = ndi.convolve(big, k[..., None], mode="reflect")[MARGIN:-MARGIN, MARGIN:-MARGIN]
    noise = np.random.RandomState(seed).normal(0.0, sigma, gt.shape)
    return gt, blurred + noise


def psnr_pair(gt: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """PSNR (uint8) as is, and at the best alignment by whole pixels within ±SHIFT (frame less SHIFT px)."""
    a, b = metrics.to_uint8(gt), metrics.to_uint8(out)
    raw = metrics.psnr(a, b)
    s = SHIFT
    best = max(metrics.psnr(a[s:-s, s:-s], np.roll(b, (dy, dx), axis=(0, 1))[s:-s, s:-s])
               for dy in range(-s, s + 1) for dx in range(-s, s + 1))  # fmt: skip
    return raw, best


def pad_to(k: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, size))
    o = (size - k.shape[0]) // 2
    out[o : o + k.shape[0], o : o + k.shape[1]] = k
    return out


def run_case(restorer: Any, case: dict[str, Any], arm: str, y: torch.Tensor, k: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """One arm on one measurement: the image, seconds and (blind) the kernel."""
    boundary = "circular" if case["measurement"] == "circular" else "extend"
    sigma = case["sigma_n"]
    out: dict[str, Any] = {}
    start = time.perf_counter()
    if arm == "blind":
        op = prepare_blind(y, args.kernel_size, boundary, sigma_n=sigma, multiple=16)
        out["estimate_seconds"] = time.perf_counter() - start
        config = BlindDiffPIRConfig(**{**BlindDiffPIRConfig.for_task("deblur", sigma).field_values(), "steps": args.steps,
                                       "kernel_size": args.kernel_size, **args.blind})  # fmt: skip
    else:
        kernel = k if arm == "true" else degrade.gaussian_kernel_std(GUESS_STD, args.kernel_size)
        op = Deblur(kernel) if boundary == "circular" else ExtendedDeblur(Deblur(kernel), multiple=16)
        config = restorer.config("deblur", sigma_n=sigma, steps=args.steps)
    image = restorer.restore(y, op, config, seed=RESTORE_SEED, boundary=None)[0]
    out["seconds"] = time.perf_counter() - start
    out["image"] = image.permute(1, 2, 0).double().numpy()
    out["config"] = config.to_dict()
    if arm == "blind":
        out["kernel"] = op.estimate.kernel()[0].numpy()
        out["initial_kernel"] = op.kernel[0].numpy()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from diffpir_rt.runtime import Restorer

    torch.set_num_threads(args.threads)
    restorer = Restorer(ModelSource(), device="cpu", threads=args.threads, notify=lambda line: logger.info("%s", line))
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    done = set()
    if log.is_file():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            # the non-blind arms do not depend on the blind arm's settings: one row serves every tag
            done.add((r["measurement"], r["image"], r["kernel"], r["sigma_n"], r["arm"], r.get("tag", "") if r["arm"] == "blind" else ""))
    kernels_dir = args.out / "kernels"
    kernels_dir.mkdir(exist_ok=True)
    images = load_crops(args.data, args.dataset, args.first + args.images, args.size, MARGIN)[args.first :]
    kernels = {kname: kernel_for(kname, args.data, args.kernel_size) for kname in args.kernels}
    # image-major order: an interrupted run has covered every kernel and noise level evenly
    for i, (name, big) in enumerate(images):
        for k_index, (kname, k) in enumerate(kernels.items()):
            for s_index, sigma in enumerate(args.sigmas):
                case = {"measurement": args.measurement, "image": name, "kernel": kname, "sigma_n": sigma}
                seed = NOISE_SEED + 1000 * k_index + 100 * s_index + i
                gt, y_np = measure(args.measurement, big, k, sigma, seed)
                y = torch.from_numpy(np.ascontiguousarray(y_np.transpose(2, 0, 1))).float()[None]
                for arm in args.arms:
                    if (args.measurement, name, kname, sigma, arm, args.tag if arm == "blind" else "") in done:
                        continue
                    result = run_case(restorer, case, arm, y, k, args)
                    raw, aligned = psnr_pair(gt, result["image"])
                    row = {**case, "arm": arm, "tag": args.tag, "psnr": raw, "psnr_aligned": aligned,
                           "psnr_measurement": psnr_pair(gt, y_np)[0], "seconds": round(result["seconds"], 3),
                           "config": result["config"], "load_average": harness.load_average(), "noise_seed": seed}  # fmt: skip
                    if arm == "blind":
                        truth = torch.from_numpy(k)
                        for key, kernel in (("kernel", result["kernel"]), ("initial_kernel", result["initial_kernel"])):
                            est = torch.from_numpy(kernel)
                            row[f"{key}_error"] = float(kernel_error(est, truth)[0])
                            row[f"{key}_error_shifted"] = float(kernel_error(est, truth, SHIFT)[0])
                        row["estimate_seconds"] = round(result["estimate_seconds"], 3)
                        stem = f"{args.measurement}_{Path(name).name}_{kname}_{sigma:g}{('_' + args.tag) if args.tag else ''}"
                        np.save(kernels_dir / f"{stem}.npy", result["kernel"].astype(np.float32))
                    if args.save_images:
                        np.save(kernels_dir / f"img_{args.measurement}_{Path(name).name}_{kname}_{sigma:g}_{arm}.npy",
                                metrics.to_uint8(result["image"]))  # fmt: skip
                    with open(log, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(f"[I] {args.measurement} {name} {kname} σ {sigma:g} {arm:5s} PSNR {raw:.2f} (aligned {aligned:.2f})"
                          + (f" kernel error {row['kernel_error']:.3f}" if arm == "blind" else "") + f" {row['seconds']:.1f} s", flush=True)  # fmt: skip
    return summarise_files(args)


# ----------------------------------------------------------------------------- summary


def summarise_files(args: argparse.Namespace) -> dict[str, Any]:
    """Summary of every row of <out>/runs.jsonl (all measurements and arms run so far) -> results.json, summary.md."""
    rows = [json.loads(line) for line in (args.out / "runs.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["arm"] != "blind" or r.get("tag", "") == args.tag]  # the blind rows of this tag
    summary = summarise(rows)
    document = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "blind deblurring: DiffPIR with the estimated kernel vs the true kernel and a Gaussian guess (std 2)",
            "model": ModelSource().to_dict(), "dataset": args.dataset, "images": f"sorted {args.dataset}[{args.first}:{args.first + args.images}]",
            "size": args.size, "steps": args.steps, "kernel_size": args.kernel_size, "sigmas": list(args.sigmas),
            "kernels": f"{', '.join(sorted({r['kernel'] for r in rows}))} (Levin09 motion kernels centred on their centre of mass; "
                       f"Gaussians gaussSTD on {args.kernel_size}x{args.kernel_size})",
            "noise_seed": f"{NOISE_SEED} + 1000 kernel index + 100 sigma index + image index", "restore_seed": RESTORE_SEED,
            "alignment": f"PSNR aligned: best whole-pixel shift within ±{SHIFT}, frame less {SHIFT} px, for every arm",
            "targets": {"blind - true (dB)": -TARGET_TRUE_DB, "blind - guess (dB)": TARGET_GUESS_DB, "time blind / true": TARGET_TIME},
            "command": _run_command(args),
        },
        "summary": summary,
        "runs": rows,
    }  # fmt: skip
    harness.write_json(args.out / "results.json", document)
    (args.out / "summary.md").write_text(markdown(document))
    return document


def _run_command(args: argparse.Namespace) -> str:
    """The command that ran the cases: this one, or for --summary-only / --figure the one results.json names."""
    previous = args.out / "results.json"
    if (args.summary_only or args.figure) and previous.is_file():
        return json.loads(previous.read_text())["meta"]["command"]
    return "python -m diffpir_rt.benchmarks.blind " + " ".join(args.argv)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (measurement, family, σ_n): the arms' mean PSNRs over the cases every arm finished."""
    cases: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        cases.setdefault((r["measurement"], r["image"], r["kernel"], r["sigma_n"]), {})[r["arm"]] = r
    groups: dict[tuple, list[dict[str, dict[str, Any]]]] = {}
    for (measurement, _, kname, sigma), arms in cases.items():
        if all(a in arms for a in ARMS):
            for key in ((measurement, family(kname), sigma), (measurement, kname, sigma)):
                groups.setdefault(key, []).append(arms)
    out = []
    for (measurement, group, sigma), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] not in ("motion", "gaussian"), kv[0][1], kv[0][2])):
        entry: dict[str, Any] = {"measurement": measurement, "group": group, "sigma_n": sigma, "cases": len(members)}
        for arm in ARMS:
            entry[f"psnr_{arm}"] = float(np.mean([m[arm]["psnr"] for m in members]))
            entry[f"psnr_aligned_{arm}"] = float(np.mean([m[arm]["psnr_aligned"] for m in members]))
        entry["psnr_measurement"] = float(np.mean([m["true"]["psnr_measurement"] for m in members]))
        entry["blind_minus_true"] = entry["psnr_blind"] - entry["psnr_true"]
        entry["blind_minus_guess"] = entry["psnr_blind"] - entry["psnr_guess"]
        entry["aligned_blind_minus_true"] = entry["psnr_aligned_blind"] - entry["psnr_aligned_true"]
        entry["aligned_blind_minus_guess"] = entry["psnr_aligned_blind"] - entry["psnr_aligned_guess"]
        entry["kernel_error"] = float(np.mean([m["blind"]["kernel_error"] for m in members]))
        entry["kernel_error_shifted"] = float(np.mean([m["blind"]["kernel_error_shifted"] for m in members]))
        entry["initial_kernel_error_shifted"] = float(np.mean([m["blind"]["initial_kernel_error_shifted"] for m in members]))
        entry["seconds_true"] = float(np.median([m["true"]["seconds"] for m in members]))
        entry["seconds_blind"] = float(np.median([m["blind"]["seconds"] for m in members]))
        entry["time_ratio"] = float(np.median([m["blind"]["seconds"] / m["true"]["seconds"] for m in members]))
        out.append(entry)
    return out


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        "# Blind deblurring: estimated kernel vs true kernel vs a Gaussian guess",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']}, {meta['torch_threads']} thread(s), "
        f"load average at the end {meta['load_average']} (2 shared cores)",
        f"- images: {meta['images']}, centre crops {meta['size']}²; kernels: {meta['kernels']}; σ_n {meta['sigmas']}",
        f"- DiffPIR, bundled prior, {meta['steps']} steps, kernel support {meta['kernel_size']}; {meta['alignment']}",
        f"- reproduce: `{meta['command']}`",
        "",
        "Means over the cases every arm finished (PSNR dB, uint8; aligned in brackets). Targets: blind within "
        f"{TARGET_TRUE_DB} dB of true, ≥ {TARGET_GUESS_DB} dB above the guess, ≤ {TARGET_TIME}× the time.",
        "",
        "| measurement | kernels | σ_n | cases | blurred input | true kernel | guess (std 2) | blind | blind − true | blind − guess "
        "| kernel error (shifted) | first estimate's error (shifted) | s true / blind (×) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["summary"]:
        bold = "**" if r["group"] in ("motion", "gaussian") else ""
        lines.append(
            f"| {r['measurement']} | {bold}{r['group']}{bold} | {r['sigma_n']:g} | {r['cases']} | {r['psnr_measurement']:.2f} | "
            f"{r['psnr_true']:.2f} ({r['psnr_aligned_true']:.2f}) | {r['psnr_guess']:.2f} ({r['psnr_aligned_guess']:.2f}) | "
            f"{r['psnr_blind']:.2f} ({r['psnr_aligned_blind']:.2f}) | {r['blind_minus_true']:+.2f} ({r['aligned_blind_minus_true']:+.2f}) | "
            f"{r['blind_minus_guess']:+.2f} ({r['aligned_blind_minus_guess']:+.2f}) | {r['kernel_error']:.3f} ({r['kernel_error_shifted']:.3f}) | "
            f"{r['initial_kernel_error_shifted']:.3f} | {r['seconds_true']:.1f} / {r['seconds_blind']:.1f} ({r['time_ratio']:.2f}×) |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figure


def kernel_tile(k: np.ndarray, size: int) -> np.ndarray:
    """A kernel as an RGB tile: scaled to its peak, nearest-neighbour enlarged to size x size."""
    from PIL import Image

    grey = (255 * k / max(float(k.max()), 1e-12)).clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grey).resize((size, size), Image.NEAREST).convert("RGB"))


def figure(args: argparse.Namespace) -> Path:
    """One row per kernel family: blurred photo, true kernel, estimated kernel, blind result, true-kernel result.

    The case shown is the one whose blind PSNR is the family's median at σ_n = args.sigmas[0] (rerun here:
    same seed, same measurement)."""
    from PIL import Image, ImageDraw

    from diffpir_rt.runtime import Restorer

    rows = [json.loads(line) for line in (args.out / "runs.jsonl").read_text().splitlines()]
    sigma = args.sigmas[0]
    restorer = Restorer(ModelSource(), device="cpu", threads=args.threads, notify=lambda line: logger.info("%s", line))
    panels = []
    for fam in ("motion", "gaussian"):
        blind = sorted((r for r in rows if r["arm"] == "blind" and r.get("tag", "") == args.tag and family(r["kernel"]) == fam
                        and r["sigma_n"] == sigma and r["measurement"] == args.measurement), key=lambda r: r["psnr"])  # fmt: skip
        if not blind:
            continue
        r = blind[len(blind) // 2]
        images = {n: big for n, big in load_crops(args.data, r["image"].split("/")[0], 68, args.size, MARGIN)}
        k = kernel_for(r["kernel"], args.data, args.kernel_size)
        gt, y_np = measure(r["measurement"], images[r["image"]], k, r["sigma_n"], r["noise_seed"])
        y = torch.from_numpy(np.ascontiguousarray(y_np.transpose(2, 0, 1))).float()[None]
        case = {"measurement": r["measurement"], "sigma_n": r["sigma_n"]}
        got = run_case(restorer, case, "blind", y, k, args)
        true = run_case(restorer, case, "true", y, k, args)
        p_b, p_t = psnr_pair(gt, got["image"])[0], psnr_pair(gt, true["image"])[0]
        size = args.size
        panels.append([(f"{r['image']} {r['kernel']} noise {sigma:g}: blurred ({psnr_pair(gt, y_np)[0]:.1f} dB)", metrics.to_uint8(y_np)),
                       ("true kernel", kernel_tile(pad_to(k, args.kernel_size), size)),
                       (f"estimated (error {float(kernel_error(torch.from_numpy(got['kernel']), torch.from_numpy(k), SHIFT)[0]):.2f})",
                        kernel_tile(got["kernel"], size)),
                       (f"blind ({p_b:.1f} dB)", metrics.to_uint8(got["image"])),
                       (f"true kernel ({p_t:.1f} dB)", metrics.to_uint8(true["image"]))])  # fmt: skip
    label, gap = 14, 4
    width = 5 * (args.size + gap) - gap
    canvas = Image.new("RGB", (width, len(panels) * (args.size + label + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for row, panel in enumerate(panels):
        y0 = row * (args.size + label + gap)
        for c, (text, img) in enumerate(panel):
            x0 = c * (args.size + gap)
            draw.text((x0 + 2, y0 + 1), text[:48], fill="black")
            canvas.paste(Image.fromarray(img), (x0, y0 + label))
    path = args.out / "figure.png"  # the label font has no Greek letters: "noise" for σ_n
    canvas.save(path)
    return path


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.blind", description=__doc__.split("\n\n")[0],
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--data", type=Path, default=Path("testsets"), help="the testsets folder (CBSD68/, McMaster/); Levin's "
                        "kernels come with the engine")  # fmt: skip
    parser.add_argument("--dataset", default="CBSD68", help="CBSD68 (evaluation) or McMaster (tuning)")
    parser.add_argument("--first", type=int, default=0, help="index of the first image (sorted)")
    parser.add_argument("--images", type=cliargs.positive_int, default=20, help="images per kernel")
    parser.add_argument("--kernels", nargs="+", default=list(MOTION + GAUSSIAN))
    parser.add_argument("--sigmas", nargs="+", type=float, default=list(SIGMAS))
    parser.add_argument("--measurement", choices=("circular", "scene"), default="circular")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--size", type=cliargs.positive_int, default=256)
    parser.add_argument("--steps", type=cliargs.num_steps, default=20)
    parser.add_argument("--kernel-size", type=cliargs.positive_int, default=31)
    parser.add_argument("--blind", nargs="*", default=[], metavar="FIELD=VALUE", help="blind_diffpir settings to override")
    parser.add_argument("--tag", default="", help="a label kept with the rows (variants of the blind arm side by side)")
    parser.add_argument("--save-images", action="store_true")
    parser.add_argument("--summary-only", action="store_true", help="summarise <out>/runs.jsonl without running")
    parser.add_argument("--figure", action="store_true", help="draw <out>/figure.png from the finished runs (reruns 2 cases)")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = harness.parse_script_args(parser, argv)
    params = BlindDiffPIRConfig.params()
    blind: dict[str, Any] = {}
    for item in args.blind:
        name, _, text = item.partition("=")
        if name not in params:
            parser.error(f"--blind {item}: expected FIELD=VALUE with a field of blind_diffpir ({', '.join(params)})")
        blind[name] = params[name].parse(text)
    args.blind = blind
    return args


def main(argv: Optional[list[str]] = None) -> int:
    code, _ = harness.run_script(argv, parse_args, lambda a: figure(a) if a.figure else summarise_files(a) if a.summary_only else run(a))
    return code if code is not None else 0


if __name__ == "__main__":
    raise SystemExit(main())
