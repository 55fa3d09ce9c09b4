"""What the boundary-aware deblurring costs on the CPU, and how few PCG iterations it needs (docs/algorithm.md §11).

`--boundary extend` restores a photo on a grid larger than the frame and replaces the circular
data step by the masked one, a preconditioned conjugate-gradient (PCG) solve. Both cost time:
the UNet runs on more pixels, and the solve runs beside it. This script separates the two and
measures the solve's settings, on the cases below (256² crops, the bundled prior's defaults,
20 steps, seed 0):

- photo19: the reported photo case, McMaster/1 blurred with reflecting borders (scipy 'reflect')
  by a 19×19 Gaussian (std 3), σ_n 0.03: the grid grows to 288²;
- gauss61 / motion61: benchmarks/boundary.py's scene measurements (CBSD68/102061 cut from the
  blur of a larger crop, the official 61×61 Gaussian and motion kernels, σ_n 0.05): 320².

Parts (--parts):

- split: whole restorations, circular vs extend (each solver setting), with the UNet's and the
  masked data step's time summed over the run (wall and process CPU time): where the extended
  run's extra time goes.
- solve: per call, interleaved rounds, medians: the UNet at the frame's size and at the
  extended size, and one data step per solver setting, averaged over the run's own ρ schedule;
  the solve's share of a UNet call. The target: the solve ≤ 15 % of the UNet (docs/algorithm.md §11).
- convergence: for each step of a recorded run, the frame's RMS error (in 1/255) after
  n = 0 … 10 PCG iterations against the exact masked prox (float64, PCG to convergence), from
  the stateless start (the edgetaper extension) and from the carried one (the previous step's
  solution): how many iterations each part of the schedule needs.
- sweep: restoration PSNR (total, border strip, interior; benchmarks/boundary.py's regions) of
  every setting on the 3 images × 2 kernels × {scene, reflect} measurements of the boundary
  benchmark: what fewer iterations cost in quality (slow: 12 restorations per setting).

Settings: "stateless10" is the solver before the carried warm start (10 iterations from the
edgetaper extension at every step); "default" is engine.ExtendedDeblur's defaults; "carry<N>"
is the carried warm start with N iterations at every step.

  python -m diffpir_rt.benchmarks.boundary_cost --data /work/shared/data/testsets --out benchmarks/results/boundary_cost
  python -m diffpir_rt.benchmarks.boundary_cost --parts sweep --data /work/shared/data/testsets --out benchmarks/results/boundary_cost/sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import Deblur, ExtendedDeblur, MaskedFourierDataStep, ModelSource, degrade, sample
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer

from . import harness
from .boundary import DATA, IMAGES, KERNEL_SIZE, MARGIN, NOISE_SEED, SIGMA_N, kernel_for, load_crop, measure, region_psnr

logger = logging.getLogger("benchmarks.boundary_cost")

OUT = Path("boundary-cost-results")
PARTS = ("split", "solve", "convergence", "sweep")
#: name -> (image, kernel, measurement, sigma_n)
CASES: dict[str, tuple[str, str, str, float]] = {
    "photo19": ("McMaster/1", "gauss19", "reflect", 0.03),
    "gauss61": ("CBSD68/102061", "gaussian", "scene", SIGMA_N),
    "motion61": ("CBSD68/102061", "motion", "scene", SIGMA_N),
}
#: name -> ExtendedDeblur keyword arguments (multiple added per model)
SETTINGS: dict[str, dict[str, Any]] = {
    "stateless10": {"iters": 10, "early_iters": 10, "carry": False},
    "default": {},
    "carry2": {"iters": 2, "early_iters": 2},
    "carry3": {"iters": 3, "early_iters": 3},
    "carry5": {"iters": 5, "early_iters": 5},
    "early3e-4": {"early_rho": 3e-4},
    "early1e-4": {"early_rho": 1e-4},
}
RESTORE_SEED = 0
STEPS = 20
CONVERGENCE_ITERS = 10
EXACT_ITERS = 400


def kernel(name: str) -> np.ndarray:
    return degrade.gaussian_kernel_std(3.0, 19) if name == "gauss19" else kernel_for(name)


def problem(data: Path, case: str, size: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray, float]:
    """(y (1, 3, size, size) float32, the ground truth (size, size, 3), the kernel, sigma_n) of a case."""
    name, kname, kind, sigma_n = CASES[case]
    big = load_crop(data, name, size + 2 * MARGIN)
    gt = big[MARGIN:-MARGIN, MARGIN:-MARGIN]
    k = kernel(kname)
    noise = np.random.RandomState(NOISE_SEED).normal(0.0, sigma_n, gt.shape)
    y = measure(kind, gt, big, k, noise)
    return torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1), dtype=np.float32))[None], gt, k, sigma_n


# --------------------------------------------------------------------------- instruments


class Clock:
    """Wall and process-CPU seconds and calls, summed per name."""

    def __init__(self) -> None:
        self.totals: dict[str, list[float]] = {}

    def time(self, name: str, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        entry = self.totals.setdefault(name, [0.0, 0.0, 0])
        entry[0] += time.perf_counter() - wall
        entry[1] += time.process_time() - cpu
        entry[2] += 1
        return out

    def report(self) -> dict[str, dict[str, float]]:
        return {k: {"wall_s": round(w, 4), "cpu_s": round(c, 4), "calls": n} for k, (w, c, n) in self.totals.items()}


class TimedModel:
    """The denoiser, its calls timed (size multiple passed through)."""

    def __init__(self, model: Any, clock: Clock) -> None:
        self.model, self.clock = model, clock
        self.size_multiple = getattr(model, "size_multiple", 1)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.clock.time("unet", lambda: self.model(x, t))


@dataclasses.dataclass(frozen=True)
class TimedMaskedStep(MaskedFourierDataStep):
    """The masked data step, its solves timed."""

    clock: Optional[Clock] = None

    def __call__(self, x0: torch.Tensor, rho: Any) -> torch.Tensor:
        return self.clock.time("data step", lambda: super(TimedMaskedStep, self).__call__(x0, rho))


class TimedExtendedDeblur(ExtendedDeblur):
    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def data_step(self, y: torch.Tensor) -> MaskedFourierDataStep:
        step = super().data_step(y)
        return TimedMaskedStep(**{f.name: getattr(step, f.name) for f in dataclasses.fields(step)}, clock=self.clock)


def operator(k: np.ndarray, multiple: int, setting: str, clock: Optional[Clock] = None) -> ExtendedDeblur:
    kwargs = dict(SETTINGS[setting], multiple=multiple)
    return ExtendedDeblur(Deblur(k), **kwargs) if clock is None else TimedExtendedDeblur(Deblur(k), clock=clock, **kwargs)


def median_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall ms, process-CPU ms) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


# --------------------------------------------------------------------------- parts


def part_split(args: argparse.Namespace, model: Any, restorer: Restorer) -> list[dict[str, Any]]:
    """Whole restorations, rounds interleaving circular and every setting; per-run sums."""
    rows = []
    for case in args.cases:
        y, _, k, sigma_n = problem(args.data, case, args.size)
        config = restorer.config("deblur", steps=args.steps, sigma_n=sigma_n)
        arms = ["circular", *args.settings]
        samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        for round_ in range(args.repeats + 1):  # round 0 warms up (first calls at each size)
            for arm in arms[round_ % len(arms):] + arms[: round_ % len(arms)]:
                clock = Clock()
                op = Deblur(k) if arm == "circular" else operator(k, model.size_multiple, arm, clock)
                clock.time("total", lambda: sample(TimedModel(model, clock), op, y, config, seed=RESTORE_SEED))
                if round_:
                    samples[arm].append(clock.report() | {"load_1min": harness.load_average()[0]})
        for arm in arms:
            runs = samples[arm]
            med = {f"{part}_{unit}": statistics.median(r[part][unit] for r in runs if part in r) if any(part in r for r in runs) else 0.0
                   for part in ("total", "unet", "data step") for unit in ("wall_s", "cpu_s")}  # fmt: skip
            rows.append({"case": case, "arm": arm, "runs": len(runs), **{k: round(v, 3) for k, v in med.items()},
                         "unet_calls": runs[0]["unet"]["calls"], "loads": [r["load_1min"] for r in runs]})  # fmt: skip
            logger.info("split %s %-12s total %.2f s cpu (unet %.2f, data step %.2f)", case, arm, med["total_cpu_s"],
                        med["unet_cpu_s"], med["data step_cpu_s"])  # fmt: skip
    return rows


def part_solve(args: argparse.Namespace, model: Any, restorer: Restorer) -> list[dict[str, Any]]:
    """Per call, interleaved: UNet at the frame and extended sizes, one data step per setting
    (the run's own ρ schedule, one solve at each ρ in order, averaged)."""
    rows = []
    for case in args.cases:
        y, _, k, sigma_n = problem(args.data, case, args.size)
        config = restorer.config("deblur", steps=args.steps, sigma_n=sigma_n)
        rhos = [float(v) for v in _rhos(restorer, config)]
        shape = ExtendedDeblur(Deblur(k), multiple=model.size_multiple).image_shape(y.shape)
        t = torch.full((1,), 500, dtype=torch.int64)
        frame, extended = torch.randn(y.shape), torch.randn(shape)
        x0 = ExtendedDeblur(Deblur(k), multiple=model.size_multiple).extend(y).clamp(0, 1)
        steps = {s: operator(k, model.size_multiple, s).data_step(y) for s in args.settings}

        def run_schedule(step: MaskedFourierDataStep) -> None:
            step.begin_loop()
            for rho in rhos:
                step(x0, rho)

        arms: dict[str, Callable[[], Any]] = {"unet frame": lambda: model(frame, t), "unet extended": lambda: model(extended, t)}
        arms.update({f"solve {s}": (lambda step=step: run_schedule(step)) for s, step in steps.items()})
        timings: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}
        with torch.no_grad():
            for round_ in range(args.repeats + 1):
                names = list(arms)
                for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                    wall, cpu = median_cpu(arms[name])
                    if round_:
                        per = len(rhos) if name.startswith("solve") else 1
                        timings[name].append((wall / per, cpu / per))
        med = {a: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for a, v in timings.items()}
        unet_cpu = med["unet extended"][1]
        for name, (wall, cpu) in med.items():
            rows.append({"case": case, "arm": name, "grid": list(shape[-2:]) if name != "unet frame" else list(y.shape[-2:]),
                         "wall_ms": round(wall, 2), "cpu_ms": round(cpu, 2),
                         "share_of_unet_extended": round(cpu / unet_cpu, 4) if name.startswith("solve") else None,
                         "load_1min": harness.load_average()[0]})  # fmt: skip
            logger.info("solve %s %-18s %.1f ms cpu (%.1f ms wall)%s", case, name, cpu, wall,
                        f", {100 * cpu / unet_cpu:.1f} % of the extended UNet call" if name.startswith("solve") else "")  # fmt: skip
    return rows


def _rhos(restorer: Restorer, config: Any) -> list[float]:
    from diffpir_rt.engine import build_method

    return [step["rho"] for step in build_method(config).steps()]


def part_convergence(args: argparse.Namespace, model: Any, restorer: Restorer) -> list[dict[str, Any]]:
    """Per step of a recorded default run: frame RMS error (1/255) after n iterations vs the exact prox."""
    rows = []
    for case in args.cases:
        y, _, k, sigma_n = problem(args.data, case, args.size)
        config = restorer.config("deblur", steps=args.steps, sigma_n=sigma_n)
        calls: list[tuple[torch.Tensor, float]] = []

        @dataclasses.dataclass(frozen=True)
        class Recording(MaskedFourierDataStep):
            def __call__(self, x0: torch.Tensor, rho: Any) -> torch.Tensor:
                calls.append((x0.clone(), float(rho)))
                return super().__call__(x0, rho)

        class RecordingDeblur(ExtendedDeblur):
            def data_step(self, y: torch.Tensor) -> MaskedFourierDataStep:
                step = super().data_step(y)
                return Recording(**{f.name: getattr(step, f.name) for f in dataclasses.fields(step)})

        sample(model, RecordingDeblur(Deblur(k), multiple=model.size_multiple), y, config, seed=RESTORE_SEED)
        y64 = y.double()
        base = ExtendedDeblur(Deblur(k), multiple=model.size_multiple).data_step(y64)
        top, left, (h, w) = base.top, base.left, y.shape[-2:]
        exact_step = dataclasses.replace(base, iters=EXACT_ITERS, early_iters=EXACT_ITERS, carry=False)
        previous = {"stateless": None, "carried": None}
        for index, (x0, rho) in enumerate(calls):
            x0 = x0.double()
            exact = exact_step(x0, rho)
            row: dict[str, Any] = {"case": case, "step": index, "rho": rho}
            for start in ("stateless", "carried"):
                errors = []
                for n in range(CONVERGENCE_ITERS + 1):
                    step = dataclasses.replace(base, iters=n, early_iters=n, carry=True,
                                               warm_spectrum=base.y_ext_spectrum.clone())  # fmt: skip
                    if start == "carried" and previous["carried"] is not None:
                        step.warm_spectrum.copy_(previous["carried"])
                    out = step(x0, rho)
                    errors.append(float((out - exact)[..., top : top + h, left : left + w].pow(2).mean().sqrt()) * 255)
                    if n == base.iterations(rho) and start == "carried":
                        carried_next = step.warm_spectrum.clone()
                row[start] = [round(e, 3) for e in errors]
                if start == "carried":
                    previous["carried"] = carried_next  # the default schedule's own chain
            rows.append(row)
            logger.info("convergence %s step %2d rho %.1e stateless %s | carried %s", case, index, rho,
                        " ".join(f"{e:.2f}" for e in row["stateless"][::2]), " ".join(f"{e:.2f}" for e in row["carried"][::2]))  # fmt: skip
    return rows


def part_sweep(args: argparse.Namespace, model: Any, restorer: Restorer) -> list[dict[str, Any]]:
    """PSNR of every setting on the boundary benchmark's problems (benchmarks/boundary.py)."""
    rows = []
    for i, name in enumerate(IMAGES):
        big = load_crop(args.data, name, args.size + 2 * MARGIN)
        gt = big[MARGIN:-MARGIN, MARGIN:-MARGIN]
        noise = np.random.RandomState(NOISE_SEED + i).normal(0.0, args.sweep_sigma, gt.shape)
        for kname in ("gaussian", "motion"):
            k = kernel_for(kname)
            for kind in args.sweep_measurements:
                y = measure(kind, gt, big, k, noise)
                y = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1), dtype=np.float32))[None]
                config = restorer.config("deblur", steps=args.steps, sigma_n=args.sweep_sigma)
                for setting in args.settings:
                    out = sample(model, operator(k, model.size_multiple, setting), y, config, seed=RESTORE_SEED)
                    p = region_psnr(gt, out[0].permute(1, 2, 0).double().numpy(), KERNEL_SIZE // 2)
                    rows.append({"image": name, "kernel": kname, "measurement": kind, "setting": setting, **p})
                    logger.info("sweep %s %s %s %-12s total %.2f border %.2f interior %.2f", name, kname, kind, setting,
                                p["total"], p["border"], p["interior"])  # fmt: skip
    return rows


# --------------------------------------------------------------------------- the document


def summarise_sweep(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for kind in ("scene", "reflect", "all"):
            rs = [r for r in rows if r["setting"] == setting and kind in ("all", r["measurement"])]
            if not rs:
                continue
            mean = {key: float(np.mean([r[key] for r in rs])) for key in ("total", "border", "interior")}
            out.append({"setting": setting, "measurement": kind, "runs": len(rs), **mean, "gap": mean["border"] - mean["interior"]})
    return out


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        "# The cost of the boundary-aware deblurring (`--boundary extend`) on the CPU",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['cpu']} ({meta['cpu_count']} cores), "
        f"{meta['torch_threads']} thread(s); UNet: {meta['path']}; load average at the start {meta['load_average']}",
        f"- settings: {', '.join(f'{k} = {v}' for k, v in meta['settings'].items())}",
        f"- cases: {', '.join(f'{k} = {v}' for k, v in meta['cases'].items())}; {meta['steps']} steps, seed {RESTORE_SEED}",
        f"- reproduce: `{meta['command']}`",
        "- times: medians over interleaved rounds; CPU = process CPU time (what a loaded machine disturbs least), wall beside it",
    ]
    if document.get("split"):
        lines += ["", "## Where an extended restoration's time goes (per restoration, medians)", "",
                  "| case | arm | total CPU s | UNet CPU s | data step CPU s | rest CPU s | total wall s | UNet calls | 1-min loads |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in document["split"]:
            rest = r["total_cpu_s"] - r["unet_cpu_s"] - r["data step_cpu_s"]
            lines.append(f"| {r['case']} | {r['arm']} | {r['total_cpu_s']:.2f} | {r['unet_cpu_s']:.2f} | {r['data step_cpu_s']:.2f} | "
                         f"{rest:.2f} | {r['total_wall_s']:.2f} | {r['unet_calls']} | {', '.join(f'{v:.1f}' for v in r['loads'])} |")  # fmt: skip
    if document.get("solve"):
        lines += ["", "## Per call (medians): the UNet and one masked data step (mean over the run's ρ schedule)", "",
                  "| case | arm | grid | CPU ms | wall ms | share of the extended UNet call | 1-min load |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in document["solve"]:
            share = "" if r["share_of_unet_extended"] is None else f"{100 * r['share_of_unet_extended']:.1f} %"
            lines.append(f"| {r['case']} | {r['arm']} | {r['grid'][0]}×{r['grid'][1]} | {r['cpu_ms']:.1f} | {r['wall_ms']:.1f} | {share} | "
                         f"{r['load_1min']:.1f} |")  # fmt: skip
    if document.get("convergence"):
        lines += ["", "## Convergence over the schedule: frame RMS error (1/255) after n PCG iterations vs the exact prox", "",
                  "Stateless: from the edgetaper extension (the solver before); carried: from the previous step's solution "
                  "(the chain of the default schedule). n = 0, 1, 2, 3, 5, 10.", "",
                  "| case | step | ρ | stateless | carried |", "|---|---|---|---|---|"]  # fmt: skip
        for r in document["convergence"]:
            pick = lambda e: " / ".join(f"{e[n]:.2f}" for n in (0, 1, 2, 3, 5, 10))  # noqa: E731
            lines.append(f"| {r['case']} | {r['step']} | {r['rho']:.1e} | {pick(r['stateless'])} | {pick(r['carried'])} |")
    if document.get("sweep"):
        lines += ["", f"## Quality of each setting (σ_n {meta['sweep_sigma_n']}; means over 3 images × 2 kernels; PSNR dB; "
                  "border = outer 30 px)", "",
                  "| setting | measurement | runs | total | border | interior | gap |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in summarise_sweep(document["sweep"]):
            lines.append(f"| {r['setting']} | {r['measurement']} | {r['runs']} | {r['total']:.2f} | {r['border']:.2f} | "
                         f"{r['interior']:.2f} | {r['gap']:+.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    restorer = Restorer(ModelSource(), backend=args.backend, precision=args.precision, device="cpu", threads=args.threads,
                        notify=lambda line: logger.info("%s", line))  # fmt: skip
    model = restorer.denoiser
    path = restorer.describe()["path"]
    document: dict[str, Any] = {
        "meta": harness.environment(torch.device("cpu")) | {
            "what": "the boundary-aware deblurring's cost on the CPU (docs/algorithm.md §11)",
            "path": f"{path['name']} ({path['backend']}, {path['precision']})", "steps": args.steps, "size": args.size,
            "settings": {s: SETTINGS[s] or "engine defaults" for s in args.settings}, "sweep_sigma_n": args.sweep_sigma,
            "cases": {c: f"{CASES[c][0]} {CASES[c][2]} blur, {CASES[c][1]}, sigma_n {CASES[c][3]}" for c in args.cases},
            "command": "python -m diffpir_rt.benchmarks.boundary_cost " + " ".join(args.argv),
        },
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"split": part_split, "solve": part_solve, "convergence": part_convergence, "sweep": part_sweep}
    for part in args.parts:
        with torch.no_grad():
            document[part] = parts[part](args, model, restorer)
        document["meta"]["load_average_end"] = harness.load_average()
        harness.write_json(args.out / "results.json", document)
        (args.out / "results.md").write_text(markdown(document))
    return document


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.boundary_cost", description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--data", type=Path, default=DATA, help="the testsets folder holding CBSD68/ and McMaster/")
    parser.add_argument("--parts", nargs="+", default=["split", "solve", "convergence"], choices=PARTS)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=tuple(CASES))
    parser.add_argument("--settings", nargs="+", default=["stateless10", "default"], choices=tuple(SETTINGS))
    parser.add_argument("--sweep-sigma", type=float, default=SIGMA_N, help="the sweep's noise level (σ_n, [0, 1] units)")
    parser.add_argument("--sweep-measurements", nargs="+", default=["scene", "reflect"], choices=("scene", "reflect"))
    parser.add_argument("--size", type=cliargs.positive_int, default=256, help="centre crops of size x size")
    parser.add_argument("--steps", type=cliargs.num_steps, default=STEPS)
    parser.add_argument("--repeats", type=cliargs.positive_int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1)
    parser.add_argument("--backend", default="onnxruntime", help="the UNet's backend (the issue's default CPU path: onnxruntime)")
    parser.add_argument("--precision", default="fp32", help="the UNet's precision")
    parser.add_argument("--out", type=Path, default=OUT, help="results folder")
    args = harness.parse_script_args(parser, argv)
    if "sweep" in args.parts and args.data is None:
        raise DiffPIRError("--parts sweep: needs --data")
    return args


main = harness.script_main(parse_args, run)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
