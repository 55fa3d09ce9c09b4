"""CPU UNet latency: torch eager fp32 vs ONNX Runtime fp32, one forward (x_t, t) -> eps.

    python -m diffpir_rt.benchmarks.unet_latency --arch ffhq_10m --size 256 --repeats 5 --out benchmarks/results/

Public API only: random weights are saved as a checkpoint, loaded by
`ModelSource.load_torch()`, exported by `export_onnx` and run by
`make_denoiser_from(ModelSource("onnx", ...))`, so both sides hold the same weights. Each
configuration gets the same thread count; candidates are timed interleaved
(one call of each per round), so load from other processes hits them alike.
Reports the median and p90 of the rounds after warm-up, with the ratio to torch;
JSON first, markdown derived from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diffpir_rt.engine import DEFAULT_CHECKPOINT_ARCH, ModelSource, build_unet, make_denoiser_from, physical_cores
from diffpir_rt.export import OnnxExportConfig, export_onnx

RESULT_NAME = "unet_latency"


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _summary(times: list[float]) -> dict[str, Any]:
    return {
        "median_s": float(np.median(times)),
        "p90_s": float(np.percentile(times, 90)),
        "min_s": float(np.min(times)),
        "times_s": [round(t, 4) for t in times],
    }


def bench_arch(
    arch: str, size: int, batch: int, repeats: int, warmup: int, threads: int, work: Path, gap_s: float = 0.5
) -> list[dict[str, Any]]:
    """Time torch eager and ONNX Runtime on one arch and size; one dict per candidate."""
    from safetensors.torch import save_file

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in build_unet(arch).state_dict().items()}
    checkpoint = work / f"{arch}.safetensors"
    save_file(state, str(checkpoint))
    del state

    start = time.perf_counter()
    onnx_path = export_onnx(
        checkpoint, work / f"{arch}.onnx", OnnxExportConfig(dynamic_batch=True, dynamic_size=True, height=size, width=size), arch=arch
    )
    export_s = time.perf_counter() - start
    record = json.loads(Path(str(onnx_path) + ".json").read_text())

    torch_model = ModelSource("checkpoint", checkpoint, arch).load_torch()
    start = time.perf_counter()
    ort_model = make_denoiser_from(ModelSource("onnx", onnx_path), threads=threads)
    session_s = time.perf_counter() - start
    candidates: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "torch eager fp32": torch_model,
        "onnxruntime fp32": ort_model,
    }

    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(batch, 3, size, size, generator=generator)
    t = torch.full((batch,), 500, dtype=torch.int64)
    outputs = {name: model(x_t, t) for name, model in candidates.items()}  # first call: warm-up 1
    for _ in range(warmup - 1):
        for model in candidates.values():
            model(x_t, t)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, model in candidates.items():
            # Let the other runtime's worker threads stop spinning (OpenMP blocktime, ORT spin-wait)
            # before timing this one: on 2 cores they would otherwise eat into its time.
            time.sleep(gap_s)
            start = time.perf_counter()
            model(x_t, t)
            times[name].append(time.perf_counter() - start)
    max_abs = float((outputs["onnxruntime fp32"] - outputs["torch eager fp32"]).abs().max())

    base = float(np.median(times["torch eager fp32"]))
    rows = []
    for name, samples in times.items():
        row = {"arch": arch, "size": size, "batch": batch, "candidate": name, **_summary(samples)}
        row["speedup_vs_torch"] = base / row["median_s"]
        if name.startswith("onnxruntime"):
            row.update(
                {"provider": ort_model.describe()["provider"], "session_init_s": round(session_s, 3),
                 "export_s": round(export_s, 2), "max_abs_diff_vs_torch": max_abs,
                 "export_parity_passed": record["parity"]["passed"]}
            )
        rows.append(row)
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"# UNet latency on CPU: torch eager vs ONNX Runtime ({result['date']})",
        "",
        f"- CPU: {env['cpu_model']} ({env['physical_cores']} physical cores, {env['logical_cpus']} logical; "
        f"{', '.join(env['cpu_flags']) or 'no AVX flags'})",
        f"- threads: torch intra-op {result['threads']['torch_intra_op']}, onnxruntime intra-op "
        f"{result['threads']['ort_intra_op']} / inter-op {result['threads']['ort_inter_op']}, graph optimization ORT_ENABLE_ALL",
        f"- versions: torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, "
        f"onnx {env['versions']['onnx']}, python {env['versions']['python']}",
        f"- {result['settings']['repeats']} timed rounds after {result['settings']['warmup']} warm-up, candidates "
        f"interleaved per round ({result['settings']['gap_s']} s pause before each call); random weights (seed 0), "
        f"batch {result['settings']['batch']}, t = 500",
        f"- load average (1/5/15 min) at start {env['load_average_at_start']}, at end {env['load_average_at_end']} "
        "(other processes share these cores)",
        "",
        "| arch | size | backend | median (s) | p90 (s) | speedup vs torch (median) | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["results"]:
        diff = f"{row['max_abs_diff_vs_torch']:.1e}" if "max_abs_diff_vs_torch" in row else ""
        lines.append(
            f"| {row['arch']} | {row['size']}² | {row['candidate']} | {row['median_s']:.4f} | {row['p90_s']:.4f} | "
            f"{row['speedup_vs_torch']:.2f}× | {diff} |"
        )
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m diffpir_rt.benchmarks.unet_latency",
        description="CPU latency of one UNet forward: torch eager fp32 vs ONNX Runtime fp32 (ORT_ENABLE_ALL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--arch", default=DEFAULT_CHECKPOINT_ARCH, help="main UNet preset")
    parser.add_argument("--size", type=int, default=256, help="main image size (square)")
    parser.add_argument("--small-arch", default="tiny", help="small UNet preset also measured ('' to skip)")
    parser.add_argument("--small-size", type=int, default=64, help="image size for --small-arch")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (>= 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (>= 1)")
    parser.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: physical cores)")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds of pause before each timed call")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder for JSON + markdown")
    args = parser.parse_args(argv)
    if args.repeats < 5 or args.warmup < 1:
        parser.error("--repeats must be >= 5 and --warmup >= 1")

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    configs = [(args.arch, args.size)] + ([(args.small_arch, args.small_size)] if args.small_arch else [])
    rows = []
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="unet_latency_") as work:
        for arch, size in configs:
            print(f"[I] {arch} at {size}x{size}: export, warm-up, {args.repeats} rounds ...", file=sys.stderr)
            rows += bench_arch(arch, size, args.batch, args.repeats, args.warmup, threads, Path(work), args.gap)

    result = {
        "benchmark": RESULT_NAME,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "physical_cores": physical_cores(),
            "logical_cpus": os.cpu_count(),
            "load_average_at_start": load_at_start,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "onnxruntime": _version("onnxruntime"), "onnx": _version("onnx")},
        },
        "threads": {"torch_intra_op": torch.get_num_threads(), "ort_intra_op": threads, "ort_inter_op": 1},
        "settings": {"repeats": args.repeats, "warmup": args.warmup, "batch": args.batch, "gap_s": args.gap},
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{RESULT_NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = to_markdown(result)
    (args.out / f"{RESULT_NAME}.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
