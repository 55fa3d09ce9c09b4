"""What budget each method needs with a given prior: PSNR against --steps, per method.

Every restoration method restores the same official-protocol measurements (one task it serves:
Gaussian deblurring at sigma_n 0.05 where it can, else random-mask inpainting) at a ladder of
budgets (`--steps`, which each method maps to its own iteration count), with the bundled prior
by default. A method's useful minimum is the smallest budget whose mean PSNR is within
`--within` dB of its best budget's: below it the user is warned (engine.configure), and the
method's declaration (`min_useful_steps`) is set from this table.

    python -m diffpir_rt.benchmarks.budgets --data DIR --images 2 --crop 128 --out benchmarks/results/method_budgets
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from diffpir_rt import cliargs
from diffpir_rt.engine import DiffPIRError, config_class, configure, get_task, restoration_names
from diffpir_rt.runtime import Restorer, add_runtime_flags, runtime_options

from . import harness, metrics
from .protocol import Scenario, load_images, make_measurement

#: The budgets tried (a method's default is always added; budgets its config refuses are skipped).
LADDER = (3, 5, 10, 20, 50, 100, 250, 500, 1000)


def scenario_for(method: str, image: Any = None) -> Scenario:
    """The method's first task at the task's default noise level, in its default variant, or the
    first of its variants whose measurement fits `image` (a 128² crop holds no 128² inpainting box)."""
    task = get_task(config_class(method).tasks[0])
    default = Scenario.named(task.name, task.default_sigma_n)
    if image is None or not task.variants:
        return default
    for variant in dict.fromkeys((default.variant, *task.variants)):
        scenario = Scenario.named(f"{task.name}/{variant}", task.default_sigma_n)
        try:
            make_measurement(scenario, image)
        except DiffPIRError:
            continue
        return scenario
    return default


def takes_budget(method: str, task: str, budget: int) -> bool:
    """Whether the method's config accepts this budget (a jump schedule or a refinement range
    may need a longer chain)."""
    try:
        configure(method, task, sigma_n=0.05, overrides={"steps": budget})
    except DiffPIRError:
        return False
    return True


def budgets_for(method: str, largest: int) -> list[int]:
    cls, task = config_class(method), scenario_for(method).task
    default = getattr(cls.for_task(task, 0.05), cls.budget)
    ladder = {b for b in LADDER if b <= largest and takes_budget(method, task, b)}
    return sorted(ladder | {min(default, largest)})


def measure(restorer: Restorer, method: str, images: Sequence[Any], budget: int) -> dict[str, Any]:
    spec = scenario_for(method, images[0])
    scores, seconds = [], []
    for image in images:
        m = make_measurement(spec, image)
        config = restorer.configure(spec.task, method, scale=spec.scale_or_none, sigma_n=spec.sigma_n, steps=budget).config
        start = time.perf_counter()
        x = restorer.restore(m.y_tensor(restorer.device), m.operator, config, seed=m.seed, boundary="circular")
        seconds.append(time.perf_counter() - start)
        out = x[0].permute(1, 2, 0).double().cpu().numpy()
        scores.append(metrics.psnr(metrics.to_uint8(m.gt), metrics.to_uint8(out), m.border))
    return {"method": method, "task": spec.label, "steps": budget, "model_calls": config.model_calls(),
            "psnr": float(np.mean(scores)), "seconds": float(np.mean(seconds))}  # fmt: skip


def useful_minimum(rows: Sequence[dict[str, Any]], within: float) -> Optional[int]:
    best = max(r["psnr"] for r in rows)
    good = [r["steps"] for r in rows if r["psnr"] >= best - within]
    return min(good) if good else None


def write_results(args: Any, rows: Sequence[dict[str, Any]], restorer: Restorer) -> None:
    """budgets.json and budgets.md in args.out: every row and each method's useful minimum."""
    minimum = {m: useful_minimum([r for r in rows if r["method"] == m], args.within) for m in dict.fromkeys(r["method"] for r in rows)}
    record = {"rows": list(rows), "useful_minimum": minimum, "within_db": args.within, "images": args.images, "crop": args.crop,
              "data": args.data.name, "runtime": restorer.describe(), "environment": harness.environment(restorer.device)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budgets.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# PSNR against the budget (--steps), {args.data.name} first {args.images} images, {args.crop}² crops", "",
             "| method | task | steps | UNet calls | PSNR (dB) | s / image |", "|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['method']} | {r['task']} | {r['steps']} | {r['model_calls']} | {r['psnr']:.2f} | {r['seconds']:.1f} |" for r in rows]
    lines += ["", f"Useful minimum (smallest budget within {args.within} dB of the best): "
              + ", ".join(f"{m} {v}" for m, v in minimum.items())]  # fmt: skip
    (args.out / "budgets.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.budgets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="a folder of test images (e.g. McMaster)")
    parser.add_argument("--images", type=cliargs.positive_int, default=2, help="first N images (default: %(default)s)")
    parser.add_argument("--crop", type=cliargs.positive_int, default=128, help="centre crop side (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=None, choices=restoration_names(), help="default: every restoration method")
    parser.add_argument("--largest", type=cliargs.positive_int, default=1000, help="largest budget tried (default: %(default)s)")
    parser.add_argument("--within", type=float, default=1.0, help="dB of the best that count as usable (default: %(default)s)")
    parser.add_argument("--out", required=True, type=Path, help="folder for budgets.json and budgets.md")
    add_runtime_flags(parser)
    args = parser.parse_args(argv)
    restorer = Restorer.from_options(runtime_options(args))
    images = load_images(args.data, args.crop, args.images)
    rows: list[dict[str, Any]] = []
    for method in args.methods or restoration_names():
        for budget in budgets_for(method, args.largest):
            rows.append(measure(restorer, method, images, budget))
            print(json.dumps(rows[-1]), flush=True)
        write_results(args, rows, restorer)  # after every method: a long run keeps what it measured
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
