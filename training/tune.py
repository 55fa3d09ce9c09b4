"""Tune a prior's per-task DiffPIR defaults on held-out crops (never training images).

A grid over lambda and zeta per task, 20 steps, on the tuning crops (CBSD68 images 0-2,
centre 128x128: disjoint from the training set and from the curve's images); the best mean
PSNR wins, and a task keeps the official values when they win. The result is what
`diffpir train export --task-defaults FILE` writes into the model card:

    diffpir train tune --data DIR --weights W.safetensors --out defaults.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence


from diffpir_rt.engine import DiffPIRConfig, ModelSource, OutputPlan, check_input_file, write_text
from diffpir_rt import cliargs
from diffpir_rt.runtime import Restorer

from .curve import CROP, held_out_crops, task_psnr

TUNE_IMAGES = 3
LAMBDAS = (1.0, 2.0, 3.0, 5.0, 8.0)
ZETAS = (0.3, 0.6, 1.0)
STEPS = 20
#: task -> (measurement options, sigma_n), as the curve and the model card's table measure them.
TASKS: dict[str, tuple[dict[str, Any], float]] = {
    "deblur": ({"kernel": "gaussian"}, 0.05),
    "sr": ({"scale": 4}, 0.05),
    "inpaint": ({"mask": "random"}, 0.0),
    "denoise": ({}, 0.05),
}


def tune(weights: Path, folder: Path, arch: str = "compact_fast", progress=print) -> dict[str, dict[str, Any]]:
    """The best {lam, zeta, steps, sigma_n, source} per task for these weights."""
    restorer = Restorer(ModelSource("checkpoint", weights, arch), device="cpu", notify=lambda line: None)
    crops = held_out_crops(folder, 0, TUNE_IMAGES)
    table = {}
    for task, (_, sigma_n) in TASKS.items():
        results = []
        for lam in LAMBDAS:
            for zeta in ZETAS:
                config = DiffPIRConfig(lam=lam, zeta=zeta, sigma_n=sigma_n, steps=STEPS)
                results.append((task_psnr(restorer, crops, task, config, TASKS[task][0]), lam, zeta))
        best, lam, zeta = max(results)
        progress(f"{task}: lam {lam:g}, zeta {zeta:g}: {best:.2f} dB (grid of {len(results)})")
        table[task] = {"lam": lam, "zeta": zeta, "steps": STEPS, "sigma_n": sigma_n,
                       "source": f"tuned for this prior on CBSD68 centre crops ({TUNE_IMAGES} images, {CROP}x{CROP}, "
                                 f"{STEPS} steps; never training images): lambda in {list(LAMBDAS)}, zeta in {list(ZETAS)}"}  # fmt: skip
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cliargs.OneLineParser(prog="diffpir train tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="the CBSD68 folder (held-out images)")
    parser.add_argument("--weights", required=True, type=Path, help="the prior's weights (.safetensors)")
    parser.add_argument("--arch", default="compact_fast", help="its arch (default: %(default)s)")
    parser.add_argument("--out", required=True, type=cliargs.output_path, help="JSON file of the per-task defaults")
    args = parser.parse_args(argv)
    check_input_file(args.weights, "--weights")
    plan = OutputPlan([args.weights])
    plan.add(args.out, "--out", suffixes=(".json",))
    table = tune(args.weights, args.data, args.arch)
    with plan.transaction():
        write_text(args.out, json.dumps(table, indent=2) + "\n")
    return 0
