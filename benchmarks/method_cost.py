"""What one step of each method costs, in forward calls of the same UNet (docs/methods.md, "Cost per step").

A gradient-free method's step is one UNet call plus its closed-form data step; DPS's is one
call with autograd on, then the gradient of its residual norm back through the UNet to x_t
(one vector-Jacobian product: no second forward). The target: a gradient step
within 3.5 forward calls. Measured on the bundled prior with the torch fast path (channels-last,
fused attention, fp32: the UNet DPS runs on, since exported graphs give no gradients), one
thread, process CPU time, medians over interleaved rounds, per image size:

- forward: one UNet call under no_grad (eps and the learned variance where a method reads it);
- forward+VJP: the same call with autograd on, then torch.autograd.grad of a scalar of eps
  with respect to x_t (what DPS's step does besides elementwise work);
- per method: a whole restoration of its first task (e.g. deblurring; inpainting for RePaint) with --steps
  budget, divided by its UNet calls: the cost of a step, as a multiple of the forward call.

  python -m diffpir_rt.benchmarks.method_cost --out benchmarks/results/method_cost
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import METHODS, ModelSource, build_method, config_class, get_task
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer

from . import harness

logger = logging.getLogger("benchmarks.method_cost")

OUT = Path("method-cost-results")
TARGET = 3.5


def cpu_ms(fn: Callable[[], Any]) -> float:
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def problem(method: str, size: int) -> tuple[str, Any, torch.Tensor]:
    """(task, operator, y) of a seeded problem on the method's first task."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, size, size, generator=g)
    task = get_task(config_class(method).tasks[0])
    op = task.synthetic_operator(size, size)
    y = op.forward(x.double()).float()
    y = y + 0.05 * torch.randn(y.shape, generator=g)
    return task.name, op, y


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    restorer = Restorer(ModelSource(), backend="torch", precision="fp32", device="cpu", threads=args.threads, tile="off",
                        notify=lambda line: logger.info("%s", line))  # fmt: skip
    model = restorer.denoiser
    path = restorer.describe()["path"]
    rows: list[dict[str, Any]] = []
    for size in args.sizes:
        x = torch.randn(1, 3, size, size)
        t = torch.full((1,), 500, dtype=torch.int64)

        def forward() -> None:
            with torch.no_grad():
                model.eps_and_variance(x, t)

        def forward_vjp() -> None:
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                eps, _ = model.eps_and_variance(xg, t)
                torch.autograd.grad(eps.square().sum(), xg)

        arms: dict[str, Callable[[], Any]] = {"forward": forward, "forward+VJP": forward_vjp}
        calls: dict[str, int] = {}
        for name in args.methods:
            task, op, y = problem(name, size)
            try:
                config = restorer.config(task, name, steps=args.steps, sigma_n=0.05)
            except DiffPIRError as e:  # a budget this method's defaults cannot take (e.g. ILVR's range_t)
                logger.info("%s: skipped (%s)", name, e)
                continue
            calls[name] = sum(1 for s in build_method(config).steps() if s.t is not None)
            # circular: the UNet runs on the same grid as the forward arm (an extended domain would not)
            arms[name] = lambda op=op, y=y, config=config: restorer.restore(y, op, config, seed=0, boundary="circular")
        samples: dict[str, list[float]] = {a: [] for a in arms}
        names = list(arms)
        for r in range(args.repeats + 1):
            for name in names[r % len(names):] + names[: r % len(names)]:
                ms = cpu_ms(arms[name])
                if r:
                    samples[name].append(ms)
        med = {a: statistics.median(v) for a, v in samples.items()}
        fwd = med["forward"]
        for name, ms in med.items():
            per_call = ms / calls.get(name, 1)
            rows.append({"size": size, "arm": name, "ms": round(ms, 1), "unet_calls": calls.get(name, 1),
                         "ms_per_step": round(per_call, 1), "forwards_per_step": round(per_call / fwd, 2),
                         "load_1min": harness.load_average()[0]})  # fmt: skip
            logger.info("%4d² %-12s %.0f ms per step (%d calls): %.2f forward calls", size, name, per_call, calls.get(name, 1),
                        per_call / fwd)  # fmt: skip
    document = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "cost per step of each method, in forward calls of the same UNet", "target": TARGET,
            "path": f"{path['name']} ({path['backend']}, {path['precision']})", "steps": args.steps, "repeats": args.repeats,
            "command": "python -m diffpir_rt.benchmarks.method_cost " + " ".join(args.argv),
        },
        "rows": rows,
    }  # fmt: skip
    harness.write_json(args.out / "results.json", document)
    (args.out / "results.md").write_text(markdown(document))
    return document


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    sizes = sorted({r["size"] for r in document["rows"]})
    arms = list(dict.fromkeys(r["arm"] for r in document["rows"]))
    cell = {(r["size"], r["arm"]): r for r in document["rows"]}
    lines = [
        "# Cost per step of each method, in forward calls of the same UNet",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']} ({meta['cpu_count']} cores), "
        f"{meta['torch_threads']} thread(s); UNet: bundled prior, {meta['path']}; load average {meta['load_average']}",
        f"- process CPU time, medians over {meta['repeats']} interleaved rounds after a warm-up; restorations of "
        f"{meta['steps']} steps (budget), per UNet call; reproduce: `{meta['command']}`",
        "",
        "| arm | " + " | ".join(f"{s}²: ms per step (× forward)" for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for arm in arms:
        cells = [f"{cell[(s, arm)]['ms_per_step']:.0f} (×{cell[(s, arm)]['forwards_per_step']:.2f})" if (s, arm) in cell else "–" for s in sizes]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.method_cost", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    restoring = [name for name, (config, _) in METHODS.items() if config.tasks]
    parser.add_argument("--methods", nargs="+", default=restoring, choices=restoring)
    parser.add_argument("--sizes", nargs="+", type=cliargs.positive_int, default=[64, 256])
    parser.add_argument("--steps", type=cliargs.num_steps, default=25, help="each restoration's budget (--steps)")
    parser.add_argument("--repeats", type=cliargs.positive_int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--out", type=Path, default=OUT, help="results folder")
    return harness.parse_script_args(parser, argv)


main = harness.script_main(parse_args, run)


if __name__ == "__main__":
    raise SystemExit(main())
