"""Reduced precision on the CPU, measured: the UNet in int8 (ONNX Runtime) and bf16 (torch)
against the fp32 default path, for restoration quality and speed.

    python -m diffpir_rt.benchmarks.precision --testset /path/to/CBSD68 --images 4 --crop 128 \
        --out benchmarks/results/precision_cpu

Arms (the same bundled prior or checkpoint in each):
  fp32   Restorer(): the default CPU path (ONNX Runtime, fp32 graph), the baseline
  int8   Restorer on the int8 graph quantised from that fp32 export (export.quantize_onnx)
  bf16   Restorer(backend="torch", precision="bf16"): channels-last + SDPA in bf16

For every task (deblur/gaussian, sr/x4, inpaint/random, denoise at sigma_n 0.05, the official
protocol's measurements of benchmarks.protocol on centre crops) and image, each arm restores
the same measurement with the same seed, in rotating order so machine load falls on all arms
alike; PSNR against the ground truth and against the fp32 arm's output, and wall time per
restoration. A UNet-only pass times one call of each arm's denoiser, interleaved. The
decision rule of the int8 arm: the default only if it is >= 1.3x faster than fp32 on every
task's restorations and loses <= 0.1 dB on every task; otherwise opt-in. JSON first, then
markdown; the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from diffpir_rt import cliargs
from diffpir_rt.engine import ModelSource, cpu_flags, cpu_native_bf16
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer

from . import harness, metrics
from .protocol import Scenario, load_images, make_measurement

logger = logging.getLogger("benchmarks.precision")

ARMS = ("fp32", "int8", "bf16")
BASELINE = "fp32"
SCENARIOS = ("deblur/gaussian", "sr/x4", "inpaint/random", "denoise")
#: The issue's rule for making int8 the default: this much faster, at most this much worse.
MIN_SPEEDUP, MAX_LOSS_DB = 1.3, 0.1


def int8_graph(source: ModelSource, work: Path, calibration: tuple[Path, ...] = ()) -> tuple[Path, dict[str, Any]]:
    """The int8 graph of `source` as `cached_onnx(precision="int8")` makes it: the fp32 export,
    then `quantize_onnx` with the default settings (or the given calibration images)."""
    from diffpir_rt.engine import read_sidecar
    from diffpir_rt.export import OnnxExportConfig, export_onnx, quantize_onnx

    checkpoint = source.path if source.kind == "checkpoint" else None
    fp32 = export_onnx(checkpoint, work / "fp32.onnx", OnnxExportConfig(dynamic_batch=True, dynamic_size=True),
                       arch=source.arch if source.kind != "bundled" else None, random_weights=source.kind == "random",
                       seed=source.seed)  # fmt: skip
    int8 = quantize_onnx(fp32, work / "int8.onnx", images=calibration)
    return int8, read_sidecar(int8, "onnx")


def make_arms(source: ModelSource, names: list[str], threads: int, work: Path,
              calibration: tuple[Path, ...]) -> tuple[dict[str, Restorer], dict[str, Any]]:  # fmt: skip
    arms: dict[str, Restorer] = {}
    info: dict[str, Any] = {}
    for name in names:
        if name == "fp32":
            arms[name] = Restorer(source, device="cpu", threads=threads)
        elif name == "bf16":
            arms[name] = Restorer(source, device="cpu", backend="torch", precision="bf16", threads=threads)
        elif name == "int8":
            path, record = int8_graph(source, work, calibration)
            arms[name] = Restorer(ModelSource("onnx", path), device="cpu", threads=threads)
            info["int8"] = {"quantization": record["quantization"], "parity": record["parity"]}
        else:
            raise DiffPIRError(f"--arms {name}: expected some of {', '.join(ARMS)}")
        info.setdefault("paths", {})[name] = arms[name].describe()["path"]
    torch.set_num_threads(threads)  # each Restorer sets it; keep the run's
    return arms, info


def unet_times(arms: dict[str, Restorer], size: int, rounds: int, pause_s: float) -> dict[str, Any]:
    """One UNet call of each arm's denoiser at size x size, interleaved per round (t = 500)."""
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(1, 3, size, size, generator=generator)
    t = torch.full((1,), 500, dtype=torch.int64)
    def run_unet(restorer: Restorer) -> Any:
        with torch.inference_mode():  # as the loop calls it: no autograd records in the torch arms
            return restorer.denoiser(x_t, t)

    calls: dict[str, Callable[[], Any]] = {name: (lambda r=r: run_unet(r)) for name, r in arms.items()}
    for call in calls.values():
        call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        order = list(calls)[round_ % len(calls):] + list(calls)[: round_ % len(calls)]
        for name in order:
            time.sleep(pause_s)  # let the previous arm's worker threads stop spinning
            start = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - start) * 1e3)
    base = statistics.median(samples[BASELINE]) if BASELINE in samples else None
    return {name: {"median_ms": statistics.median(s), "samples_ms": [round(v, 2) for v in s],
                   "speedup_vs_fp32": base / statistics.median(s) if base else None} for name, s in samples.items()}  # fmt: skip


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    source = ModelSource("checkpoint", args.checkpoint, args.arch) if args.checkpoint else ModelSource()
    started = time.monotonic()
    document: dict[str, Any] = {
        "meta": harness.environment(torch.device("cpu")) | {
            "load_average_at_start": harness.load_average(),
            "cpu_model": _cpu_model(),
            "cpu_native_bf16": cpu_native_bf16(),
            "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))),
            "model": source.to_dict(),
            "threads": args.threads,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "calibration"}
            | {"calibration": [str(p) for p in args.calibration]},
            "rule": f"int8 becomes the default only if >= {MIN_SPEEDUP}x faster and <= {MAX_LOSS_DB} dB worse on every task",
            "command": "python -m diffpir_rt.benchmarks.precision " + " ".join(args.argv),
        },
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="diffpir-precision-") as folder:
        arms, info = make_arms(source, list(args.arms), args.threads, Path(folder), tuple(args.calibration))
        document["meta"]["arms"] = info
        document["unet"] = unet_times(arms, args.crop, args.unet_rounds, args.pause)
        images = load_images(args.testset, crop=args.crop, limit=args.images)
        rotation = 0
        for name in args.scenarios:
            spec = Scenario.named(name, args.sigma_n, random_p=0.5)
            for image in images:
                m = make_measurement(spec, image, seed=0)
                config = arms[BASELINE if BASELINE in arms else next(iter(arms))].config(spec.task, steps=args.steps)
                outputs: dict[str, np.ndarray] = {}
                seconds: dict[str, float] = {}
                order = list(arms)[rotation % len(arms):] + list(arms)[: rotation % len(arms)]
                rotation += 1
                for arm in order:
                    time.sleep(args.pause)
                    start = time.perf_counter()
                    x = arms[arm].restore(m.y_tensor(), m.operator, config, seed=m.seed, boundary="circular")
                    seconds[arm] = time.perf_counter() - start
                    outputs[arm] = metrics.to_uint8(x[0].permute(1, 2, 0).double().numpy())
                gt = metrics.to_uint8(m.gt)
                for arm, out in outputs.items():
                    row = {"scenario": spec.key, "image": image.name, "arm": arm, "seconds": seconds[arm],
                           "psnr": metrics.psnr(gt, out, m.border)}  # fmt: skip
                    if BASELINE in outputs and arm != BASELINE:
                        same = np.array_equal(out, outputs[BASELINE])
                        row["psnr_vs_fp32"] = None if same else metrics.psnr(outputs[BASELINE], out, m.border)
                        row["within_1_level_of_fp32"] = float(
                            (np.abs(out.astype(np.int16) - outputs[BASELINE].astype(np.int16)) <= 1).mean())
                    document["results"].append(row)
                logger.info("%s %s: %s", spec.key, image.name, ", ".join(f"{a} {seconds[a]:.2f} s" for a in arms))
                harness.write_json(args.out / "precision.json", document)
    document["summary"] = summarise(document["results"], list(arms))
    document["meta"]["load_average_at_end"] = harness.load_average()
    document["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    harness.write_json(args.out / "precision.json", document)
    (args.out / "precision.md").write_text(markdown(document))
    return document


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def summarise(results: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    """Per scenario and arm: mean PSNR, its change against fp32, median seconds and the speedup;
    and the decision of each reduced-precision arm under the int8 rule."""
    table: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(r["scenario"] for r in results):
        rows = {arm: [r for r in results if r["scenario"] == key and r["arm"] == arm] for arm in arms}
        base = rows.get(BASELINE)
        entry = {}
        for arm, mine in rows.items():
            psnr = float(np.mean([r["psnr"] for r in mine]))
            seconds = statistics.median(r["seconds"] for r in mine)
            entry[arm] = {"psnr": psnr, "median_s": seconds, "images": len(mine)}
            if base and arm != BASELINE:
                entry[arm]["delta_db"] = psnr - float(np.mean([r["psnr"] for r in base]))
                entry[arm]["speedup"] = statistics.median(r["seconds"] for r in base) / seconds
                vs = [r["psnr_vs_fp32"] for r in mine if r.get("psnr_vs_fp32") is not None]
                entry[arm]["psnr_vs_fp32"] = float(np.mean(vs)) if vs else None
                entry[arm]["within_1_level_of_fp32"] = float(np.mean([r["within_1_level_of_fp32"] for r in mine]))
        table[key] = entry
    decisions = {}
    for arm in arms:
        if arm == BASELINE or not all(arm in e and "speedup" in e[arm] for e in table.values()):
            continue
        fast = all(e[arm]["speedup"] >= MIN_SPEEDUP for e in table.values())
        close = all(e[arm]["delta_db"] >= -MAX_LOSS_DB for e in table.values())
        decisions[arm] = {"faster_enough": fast, "quality_kept": close, "default": fast and close,
                          "worst_delta_db": min(e[arm]["delta_db"] for e in table.values()),
                          "least_speedup": min(e[arm]["speedup"] for e in table.values())}  # fmt: skip
    return {"table": table, "decisions": decisions}


def markdown(document: dict[str, Any]) -> str:
    meta, summary = document["meta"], document["summary"]
    arms = [a for a in ARMS if a in meta["arms"]["paths"]]
    lines = [
        f"# Reduced precision on the CPU: {meta['model'].get('kind')} prior, {meta['cpu_model']}",
        "",
        f"- {meta['date_utc']}, commit {meta['git_commit']}, torch {meta['torch']}, {meta['threads']} thread(s) per arm, "
        f"native bf16: {meta['cpu_native_bf16']} ({', '.join(f for f in meta['cpu_flags'] if 'bf16' in f or 'amx' in f or 'vnni' in f)})",
        f"- load average (1/5/15 min) {meta['load_average_at_start']} at start, {meta['load_average_at_end']} at end "
        "(2 cores shared with other jobs: ratios are interleaved, absolute times are not a quiet machine's)",
        f"- {meta['args']['images']} CBSD68 centre crops of {meta['args']['crop']}², {meta['args']['steps']} steps, "
        f"sigma_n {meta['args']['sigma_n']}, official-protocol measurements; arms in rotating order per image",
        f"- rule: {meta['rule']}",
        f"- rerun: `{meta['command']}`",
        "",
        "| task | " + " | ".join(f"{a} PSNR" for a in arms) + " | " + " | ".join(f"{a} Δ dB / × speed / PSNR vs fp32" for a in arms if a != BASELINE) + " |",
        "|---|" + "---|" * (2 * len(arms) - 1),
    ]
    for key, entry in summary["table"].items():
        cells = [f"{entry[a]['psnr']:.2f}" for a in arms]
        for a in arms:
            if a == BASELINE:
                continue
            e = entry[a]
            vs = "identical" if e.get("psnr_vs_fp32") is None else f"{e['psnr_vs_fp32']:.1f} dB"
            cells.append(f"{e['delta_db']:+.3f} / {e['speedup']:.2f}× / {vs}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    unet = document.get("unet", {})
    if unet:
        lines += ["", f"UNet alone, one call at {meta['args']['crop']}², interleaved, median of {meta['args']['unet_rounds']}:", "",
                  "| arm | median ms | × fp32 |", "|---|---|---|"]  # fmt: skip
        for a in arms:
            u = unet[a]
            lines.append(f"| {a} | {u['median_ms']:.1f} | {u['speedup_vs_fp32']:.2f} |" if u["speedup_vs_fp32"] else f"| {a} | {u['median_ms']:.1f} | – |")
    lines += ["", "| arm | default by the rule? | least speedup | worst Δ dB |", "|---|---|---|---|"]
    for arm, d in summary["decisions"].items():
        lines.append(f"| {arm} | {'yes' if d['default'] else 'no'} | {d['least_speedup']:.2f}× | {d['worst_delta_db']:+.3f} |")
    int8 = meta["arms"].get("int8")
    if int8:
        q, p = int8["quantization"], int8["parity"]
        lines += ["", f"int8 graph: {q['format']}, {q['weights']}, activations {q['activations']}, ops {', '.join(q['ops'])}; "
                  f"calibrated on {q['calibration']['x0']} at {len(q['calibration']['timesteps'])} timesteps "
                  f"({q['calibration']['timesteps'][0]}..{q['calibration']['timesteps'][-1]}), {q['config']['method']}; "
                  f"relative RMS error of eps vs fp32 {p['relative_rms_error']:.3g} on held-out inputs."]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(prog="python -m diffpir_rt.benchmarks.precision", description=__doc__.split("\n\n")[0],
                                   formatter_class=cliargs.DefaultsFormatter)  # fmt: skip
    parser.add_argument("--testset", type=Path, required=True, help="folder of ground-truth images (e.g. CBSD68)")
    parser.add_argument("--images", type=cliargs.positive_int, default=4, help="first N images of the folder")
    parser.add_argument("--crop", type=cliargs.positive_int, default=128, help="centre crop side")
    parser.add_argument("--steps", type=cliargs.positive_int, default=20, help="DiffPIR steps")
    parser.add_argument("--sigma-n", type=float, default=0.05, help="measurement noise")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), help="protocol scenarios")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms; fp32 is the baseline")
    parser.add_argument("--checkpoint", type=Path, default=None, help="torch weights (default: the bundled prior)")
    parser.add_argument("--arch", default=None, help="arch of --checkpoint")
    parser.add_argument("--calibration", type=Path, nargs="*", default=[], help="int8 calibration images (default: drawn by the model)")
    parser.add_argument("--threads", type=cliargs.positive_int, default=1, help="CPU threads of every arm")
    parser.add_argument("--unet-rounds", type=cliargs.positive_int, default=7, help="rounds of the UNet-only pass")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between timed runs (worker threads settle)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_cpu"), help="output folder")
    return harness.parse_script_args(parser, argv)


main = harness.script_main(parse_args, run)


if __name__ == "__main__":
    raise SystemExit(main())
