"""Tune a prior's per-task DiffPIR defaults on held-out crops (never training images).

A grid over lambda and zeta per task, 20 steps, on the tuning crops (CBSD68 images 0-2,
centre 128x128: disjoint from the training set and from the curve's images); the best mean
PSNR wins, and a task keeps the official values when they win. Then the number of steps: with
the chosen lambda and zeta, each of STEP_CHOICES; a task takes the fewest steps within
STEPS_WITHIN_DB of its best, since every step is a UNet call the user waits for (inpainting
needs more steps than deblurring). The result is what `diffpir train export --task-defaults
FILE` writes into the model card:

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
#: The step counts tried once lambda and zeta are chosen, and how much PSNR fewer steps may give up.
STEP_CHOICES = (20, 50, 100)
STEPS_WITHIN_DB = 0.1
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
        by_steps = {STEPS: best}
        for steps in STEP_CHOICES:
            if steps not in by_steps:
                config = DiffPIRConfig(lam=lam, zeta=zeta, sigma_n=sigma_n, steps=steps)
                by_steps[steps] = task_psnr(restorer, crops, task, config, TASKS[task][0])
        steps = fewest_steps(by_steps)
        progress(f"{task}: steps " + ", ".join(f"{n}: {v:.2f} dB" for n, v in sorted(by_steps.items())) + f" -> {steps}")
        table[task] = {"lam": lam, "zeta": zeta, "steps": steps, "sigma_n": sigma_n,
                       "psnr_by_steps": {str(n): round(v, 3) for n, v in sorted(by_steps.items())},
                       "source": f"tuned for this prior on CBSD68 centre crops ({TUNE_IMAGES} images, {CROP}x{CROP}, "
                                 f"never training images): lambda in {list(LAMBDAS)}, zeta in {list(ZETAS)} at {STEPS} steps, "
                                 f"then the fewest of {list(STEP_CHOICES)} steps within {STEPS_WITHIN_DB} dB of the best"}  # fmt: skip
    return table


def fewest_steps(psnr_by_steps: dict[int, float], within: float = STEPS_WITHIN_DB) -> int:
    """The smallest step count whose PSNR is within `within` dB of the best."""
    best = max(psnr_by_steps.values())
    return min(n for n, v in psnr_by_steps.items() if v >= best - within)


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
