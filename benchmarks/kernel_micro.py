"""Microbenchmark: each fused CuPy kernel against the torch composite it replaces.

Both paths are the public wrappers in diffpir_rt.kernels with impl="torch" / "cupy", on the
same inputs. Timed two ways: "graph" (K calls captured in a CUDA graph, replayed: the GPU
time the graph runtime pays, launch gaps gone) and "eager" (K calls back to back). Target:
>= 2x in graph mode. step_fourier includes the inverse FFT on both paths; the ifft2 row
times it alone, so the kernel-only ratio is (torch - ifft2) / (cupy - ifft2).
`min_bytes` counts each input read once and each output written once, and
GB/s is min_bytes over the CuPy time.

  python -m diffpir_rt.benchmarks.kernel_micro --device cuda --json OUT/kernels.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from diffpir_rt.engine import Deblur, Inpaint, StepCoefficients, SuperResolution, capture_cuda_graph, degrade, fused, linear_schedule
from diffpir_rt.kernels import cupy_problem

from . import harness

Case = tuple[Callable[[str], Any], int]  # (fn(impl), min_bytes)


def cases(batch: int, size: int, device: torch.device) -> dict[str, Case]:
    """name -> (call with an impl, minimal bytes moved by the fused kernel)."""
    g = torch.Generator(device=device).manual_seed(0)
    shape = (batch, 3, size, size)
    n = batch * 3 * size * size

    def randn(*s: int) -> torch.Tensor:
        return torch.randn(s, generator=g, device=device)

    x, eps, z = randn(*shape), randn(*shape), randn(*shape)
    c = StepCoefficients.at(linear_schedule(), 602, 541, 0.3)
    y = torch.rand(shape, generator=g, device=device)
    mask = (torch.rand((batch, size, size), generator=g, device=device) > 0.5).float().cpu().numpy()
    inpaint = Inpaint(mask).data_step(y)
    deblur = Deblur(degrade.gaussian_kernel(0, size=min(61, (size - 2) | 1))).data_step(y)
    sr = SuperResolution(4).data_step(y[..., ::4, ::4].contiguous())
    spectrum = torch.fft.fft2(torch.rand(shape, generator=g, device=device))
    correction = deblur.correction(spectrum, 1e-3)
    pixels = batch * size * size
    return {
        "predict_x0_01": (lambda impl: fused.predict_x0_01(x, eps, c, impl=impl), 3 * 4 * n),
        "step_mask": (lambda impl: fused.step_elementwise(x, eps, z, c, inpaint, 0.1, impl=impl), 5 * 4 * n + 4 * pixels),
        "fourier_correction_sf1": (lambda impl: fused.fourier_correction(deblur, spectrum, 1e-3, impl=impl),
                                   8 * n + 8 * n + 8 * n + 8 * pixels + 4 * pixels),  # fmt: skip
        "fourier_correction_sf4": (lambda impl: fused.fourier_correction(sr, spectrum, 1e-3, impl=impl),
                                   8 * n + 8 * n + 8 * n // 16 + 8 * pixels + 4 * pixels // 16),  # fmt: skip
        "step_fourier": (lambda impl: fused.step_fourier(x, eps, z, c, deblur, correction, impl=impl), 4 * 4 * n + 8 * n),
        "ifft2": (lambda impl: torch.fft.ifft2(correction), 16 * n),
    }


def per_call_ms(fn: Callable[[], Any], device: torch.device, mode: str, calls: int, repeats: int) -> float:
    """Median over repeats of the time per call, `calls` calls per timing."""

    def many() -> None:
        for _ in range(calls):
            fn()

    many()  # warm-up: module loads, FFT plans
    if mode == "graph":
        graph = capture_cuda_graph(many, device)
        graph.replay()
        run = graph.replay
    else:
        run = many
    return float(np.median([harness.time_ms(run, device)[0] / calls for _ in range(repeats)]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    has_cupy = device.type == "cuda" and cupy_problem() is None
    modes = ["graph", "eager"] if device.type == "cuda" else ["eager"]
    rows: list[dict[str, Any]] = []
    for batch in args.batches:
        for name, (fn, min_bytes) in cases(batch, args.size, device).items():
            row: dict[str, Any] = {"case": name, "batch": batch, "size": args.size, "min_bytes": min_bytes}
            for mode in modes:
                row[f"torch_ms_{mode}"] = per_call_ms(lambda: fn("torch"), device, mode, args.calls, args.repeats)
                if has_cupy and name != "ifft2":
                    cupy_ms = per_call_ms(lambda: fn("cupy"), device, mode, args.calls, args.repeats)
                    row[f"cupy_ms_{mode}"] = cupy_ms
                    row[f"speedup_{mode}"] = row[f"torch_ms_{mode}"] / cupy_ms
                    if mode == "graph":
                        row["cupy_gb_per_s"] = min_bytes / (cupy_ms / 1e3) / 1e9
            rows.append(row)
            print(f"[I] {name} b{batch}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
                  flush=True)  # fmt: skip
    for row in rows:  # kernel-only ratio for step_fourier, subtracting the shared inverse FFT
        if row["case"] == "step_fourier" and "cupy_ms_graph" in row:
            ifft = next(r for r in rows if r["case"] == "ifft2" and r["batch"] == row["batch"])["torch_ms_graph"]
            kernel_ms = row["cupy_ms_graph"] - ifft
            row["speedup_graph_excluding_ifft"] = (row["torch_ms_graph"] - ifft) / kernel_ms if kernel_ms > 0 else None
    return {"meta": harness.environment(device) | {"calls_per_timing": args.calls, "repeats": args.repeats,
                                                     "cupy": has_cupy}, "rows": rows}  # fmt: skip


def markdown(document: dict[str, Any]) -> str:
    meta = document["meta"]
    lines = [
        f"## Fused kernels vs torch composites ({meta.get('device_name', meta['device'])}, {meta['date_utc']})",
        "",
        "| case | batch | torch µs (graph) | CuPy µs (graph) | × (graph) | × excl. ifft | torch µs (eager) | CuPy µs (eager) | × (eager) | CuPy GB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def us(value: Optional[float]) -> str:
        return "–" if value is None else f"{1e3 * value:.1f}"

    def x(value: Optional[float]) -> str:
        return "–" if value is None else f"{value:.2f}"

    for r in document["rows"]:
        lines.append(
            f"| {r['case']} | {r['batch']} | {us(r.get('torch_ms_graph'))} | {us(r.get('cupy_ms_graph'))} | "
            f"{x(r.get('speedup_graph'))} | {x(r.get('speedup_graph_excluding_ifft'))} | {us(r.get('torch_ms_eager'))} | "
            f"{us(r.get('cupy_ms_eager'))} | {x(r.get('speedup_eager'))} | {x(r.get('cupy_gb_per_s'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.kernel_micro", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=20, help="calls per timing (captured together in graph mode)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    document = run(args)
    text = markdown(document)
    if args.json:
        harness.write_json(args.json, document)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
