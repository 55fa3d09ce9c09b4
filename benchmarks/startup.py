"""The user's wall clock: each command as a user runs it, in a fresh process, start-up included.

For `diffpir --version`, `diffpir restore --help`, an argument error, an input error and a real
restoration (the default path and `--reference`), runs every command `--repeats` times,
interleaved (command 1, 2, ..., then again), and reports medians of the wall time; for the
restorations also the sampling time the run record gives and the rest (start-up: imports, model
load, ONNX Runtime session, file io). The photo is a 256² crop blurred with reflecting borders
(not the circular model the restoration could assume), so the default boundary handling runs.

    python -m diffpir_rt.benchmarks.startup --image PHOTO --out benchmarks/results/startup --repeats 5
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from diffpir_rt import cliargs

from . import harness

#: The photo's blur (the issue's user case): a 19x19 Gaussian, std 3, reflecting borders, noise 0.03.
KERNEL_SIZE, KERNEL_STD, SIGMA_N, CROP = 19, 3.0, 0.03, 256


def make_photo(source: Path, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """y.png (a 256² crop, blurred with reflecting borders, noisy, 8-bit) and k.npy."""
    from scipy.ndimage import convolve

    from diffpir_rt.engine import read_image, write_image

    x = read_image(source).numpy()
    _, height, width = x.shape
    top, left = (height - CROP) // 2, (width - CROP) // 2
    x = x[:, top : top + CROP, left : left + CROP].astype(np.float64)
    r = np.arange(KERNEL_SIZE) - KERNEL_SIZE // 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * KERNEL_STD**2))
    k /= k.sum()
    y = np.stack([convolve(c, k, mode="reflect") for c in x])
    y = y + SIGMA_N * np.random.default_rng(seed).standard_normal(y.shape)
    import torch

    photo = write_image(folder / "y.png", torch.from_numpy(np.clip(y, 0, 1).astype(np.float32)))
    kernel = folder / "k.npy"
    np.save(kernel, k.astype(np.float32))
    return photo, kernel


def commands(photo: Path, kernel: Path, folder: Path, threads: Optional[int]) -> dict[str, list[str]]:
    exe = [sys.executable, "-m", "diffpir_rt"]
    restore = [*exe, "restore", "--task", "deblur", "--input", str(photo), "--kernel", str(kernel), "--sigma-n", str(SIGMA_N),
               "--steps", "20", "--quiet", *(["--threads", str(threads)] if threads else [])]  # fmt: skip
    return {
        "--version": [*exe, "--version"],
        "restore --help": [*exe, "restore", "--help"],
        "argument error": [*exe, "restore", "--task", "deblur", "--input", str(photo), "--output", str(folder / "e.png"), "--lam", "-1"],
        "input error": [*exe, "restore", "--task", "deblur", "--input", str(folder / "missing.png"), "--kernel", str(kernel),
                        "--output", str(folder / "e.png")],  # fmt: skip
        "restore (default path)": [*restore, "--output", str(folder / "default.png")],
        # auto picks bf16 on a CPU with native bf16 arithmetic; the fp32 path is held to 1/255
        "restore --dtype fp32": [*restore, "--output", str(folder / "fp32.png"), "--dtype", "fp32"],
        "restore --reference": [*restore, "--output", str(folder / "reference.png"), "--reference"],
    }


def agreement(folder: Path) -> dict[str, dict[str, float]]:
    """Each faster path's output against --reference: the share of 8-bit values within one level, and the largest gap."""
    from PIL import Image

    reference = np.asarray(Image.open(folder / "reference.png"), dtype=np.int16)
    out = {}
    for name in ("default", "fp32"):
        diff = np.abs(np.asarray(Image.open(folder / f"{name}.png"), dtype=np.int16) - reference)
        out[name] = {"within_1_level": float(np.mean(diff <= 1)), "max_levels": int(diff.max())}
    return out


def run_once(argv: list[str], output: Optional[Path]) -> dict[str, Any]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    row: dict[str, Any] = {"wall": wall, "exit": done.returncode}
    if output is not None:
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[2:5])}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
        record = json.loads(output.with_name(output.name + ".json").read_text())
        row.update(sampling=record["seconds"], path=record["runtime"]["path"]["name"],
                   precision=record["runtime"]["path"]["precision"])  # fmt: skip
        row["startup"] = wall - row["sampling"]
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, type=Path, help="a photo (at least 256x256) the test photo is cropped from")
    parser.add_argument("--out", required=True, type=Path, help="folder for startup.json and startup.md")
    parser.add_argument("--repeats", type=cliargs.positive_int, default=5, help="runs of each command, interleaved (default: %(default)s)")
    parser.add_argument("--threads", type=cliargs.thread_count, default=None, help="--threads of the restorations (default: theirs)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        photo, kernel = make_photo(args.image, folder)
        runs = commands(photo, kernel, folder, args.threads)
        # a first, untimed restore: the ONNX export and its optimised graph are made once per weights
        for warm in ("restore (default path)", "restore --dtype fp32"):
            subprocess.run(runs[warm], capture_output=True)
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, command in runs.items():
                output = Path(command[command.index("--output") + 1]) if name.startswith("restore ") and "--help" not in name else None
                rows[name].append(run_once(command, output))
                print(json.dumps({"command": name, **rows[name][-1]}), flush=True)
        agree = agreement(folder)
    summary = {}
    for name, values in rows.items():
        entry = {"wall": statistics.median(v["wall"] for v in values), "exit": values[0]["exit"]}
        if "sampling" in values[0]:
            entry.update(sampling=statistics.median(v["sampling"] for v in values),
                         startup=statistics.median(v["startup"] for v in values), path=values[0]["path"],
                         precision=values[0]["precision"])  # fmt: skip
        summary[name] = entry
    gain = summary["restore --reference"]["wall"] / summary["restore (default path)"]["wall"]
    gain_fp32 = summary["restore --reference"]["wall"] / summary["restore --dtype fp32"]["wall"]
    record = {"summary": summary, "runs": rows, "user_gain": gain, "user_gain_fp32": gain_fp32, "agreement": agree, "repeats": args.repeats, "photo": args.image.name,
              "blur": f"{KERNEL_SIZE}x{KERNEL_SIZE} Gaussian std {KERNEL_STD}, reflecting borders, sigma_n {SIGMA_N}",
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_average": harness.load_average()},
              "versions": harness.environment(__import__("torch").device("cpu"))}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "startup.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# The user's wall clock ({args.repeats} interleaved runs each, medians; load {record['machine']['load_average']})", "",
             "| command | wall (s) | sampling (s) | the rest: start-up, io (s) | path |", "|---|---|---|---|---|"]  # fmt: skip
    for name, e in summary.items():
        lines.append(f"| {name} | {e['wall']:.2f} | {e.get('sampling', float('nan')):.2f} | {e.get('startup', float('nan')):.2f} | "
                     f"{e.get('path', '–')} {e.get('precision', '')} |")  # fmt: skip
    lines += ["", f"User's gain over --reference, wall clock with start-up: default path **{gain:.2f}×**, "
              f"--dtype fp32 **{gain_fp32:.2f}×**", ""]
    lines += [f"- {name} against --reference: {a['within_1_level']:.2%} of 8-bit values within one level, largest gap "
              f"{a['max_levels']} levels" for name, a in agree.items()]  # fmt: skip
    (args.out / "startup.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
