"""This machine's own compute limit, measured: dense GEMM and convolution FLOP/s per precision.

`diffpir bench` runs this at the arms' thread count in the same run, so every CPU table can
say how far an arm is from what this CPU reaches on its best-suited dense kernel. FLOPs are
counted as torch.utils.flop_counter counts a UNet's (2 per multiply-add, the same closed
forms: 2mnk for a GEMM, 2 * B * C_out * H * W * C_in * k_h * k_w for a stride-1 "same"
convolution), so achieved / peak is a like-for-like fraction.

Kernels (each warmed up, then timed `repeats` times; FLOP/s of the median):
  fp32  torch matmul and conv2d (NCHW and channels-last); ONNX Runtime MatMul and Conv
  bf16  torch matmul and conv2d in bf16 (oneDNN: AMX / AVX512-BF16 where the CPU has them,
        emulated otherwise: `native` in the record says which)
  int8  ONNX Runtime MatMulInteger and QLinearConv (uint8 activations x int8 weights, the
        int8 arm's kernels); torch._int_mm
A precision's peak is its fastest kernel. Shapes are large enough to be compute-bound
(a 1024^3 GEMM, 64- and 128-channel 3x3 convolutions) and small enough to take well under a
second each.

    python -m diffpir_rt.benchmarks.peak --threads 1 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from diffpir_rt.engine import cpu_native_bf16

PRECISIONS = ("fp32", "bf16", "int8")
GEMM = (1024, 1024, 1024)  # m, n, k
#: (batch, C_in, C_out, H, W, kernel side): a wide low-resolution and a narrower high-resolution
#: 3x3 convolution, the two regimes of a UNet's levels.
CONVS = ((1, 128, 128, 64, 64, 3), (1, 64, 64, 128, 128, 3))


def gemm_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m x k) @ (k x n) product: one multiply and one add per term."""
    return 2 * m * n * k


def conv_flops(batch: int, c_in: int, c_out: int, height: int, width: int, kernel: int) -> int:
    """FLOPs of a stride-1 'same' convolution (output H x W), bias not counted (as flop_counter)."""
    return 2 * batch * c_out * height * width * c_in * kernel * kernel


@dataclass(frozen=True)
class KernelResult:
    """One timed kernel: what it is, its FLOPs per call, its median time and FLOP/s."""

    name: str
    precision: str
    library: str
    flops: int
    median_ms: float
    gflops: float


def time_kernel(fn: Callable[[], Any], flops: int, repeats: int, min_seconds: float) -> tuple[float, float]:
    """(median ms per call, GFLOP/s): warm up, then `repeats` timings of a loop of enough calls
    to take about `min_seconds` (so a 2 ms kernel is not timed by the clock's resolution)."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    calls = max(1, int(min_seconds / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    median = statistics.median(samples)
    return median * 1e3, flops / median / 1e9


# ----------------------------------------------------------------------------- kernels


def _torch_kernels(precision: str) -> list[tuple[str, Callable[[], Any], int]]:
    generator = torch.Generator().manual_seed(0)
    m, n, k = GEMM
    kernels: list[tuple[str, Callable[[], Any], int]] = []
    if precision == "int8":
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=generator)
        b = torch.randint(-128, 128, (k, n), dtype=torch.int8, generator=generator)
        if hasattr(torch, "_int_mm"):
            kernels.append((f"torch _int_mm {m}x{k}x{n}", lambda: torch._int_mm(a, b), gemm_flops(m, n, k)))
        return kernels
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    kernels.append((f"torch matmul {m}x{k}x{n}", lambda: torch.mm(a, b), gemm_flops(m, n, k)))
    for batch, c_in, c_out, height, width, side in CONVS:
        x = torch.randn(batch, c_in, height, width, generator=generator).to(dtype)
        w = torch.randn(c_out, c_in, side, side, generator=generator).to(dtype) * 0.05
        flops = conv_flops(batch, c_in, c_out, height, width, side)
        for layout, fmt in (("NCHW", torch.contiguous_format), ("channels-last", torch.channels_last)):
            xl, wl = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            label = f"torch conv2d {c_in}->{c_out} {side}x{side} at {height}x{width} {layout}"
            kernels.append((label, lambda xl=xl, wl=wl: torch.nn.functional.conv2d(xl, wl, padding=side // 2), flops))
    return kernels


def _ort_session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _ort_kernels(precision: str, threads: int) -> list[tuple[str, Callable[[], Any], int]]:
    """Single-node ONNX graphs: fp32 MatMul / Conv; int8 MatMulInteger / QLinearConv (u8 x s8)."""
    if precision == "bf16":
        return []  # ONNX Runtime's CPU provider has no bf16 GEMM/conv kernels on x86
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return []
    rng = np.random.default_rng(0)
    m, n, k = GEMM
    kernels: list[tuple[str, Callable[[], Any], int]] = []

    def graph(nodes: list[Any], inputs: list[Any], output: Any, initializers: list[Any]) -> Any:
        model = helper.make_model(helper.make_graph(nodes, "peak", inputs, [output], initializers),
                                  opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
        model.ir_version = min(model.ir_version, 8)
        return model

    if precision == "fp32":
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "b")
        model = graph([helper.make_node("MatMul", ["a", "b"], ["c"])],
                      [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                      helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n]), [b])  # fmt: skip
        session = _ort_session(model, threads)
        kernels.append((f"onnxruntime MatMul {m}x{k}x{n}", lambda: session.run(None, {"a": a}), gemm_flops(m, n, k)))
        for batch, c_in, c_out, height, width, side in CONVS:
            x = rng.standard_normal((batch, c_in, height, width), dtype=np.float32)
            w = numpy_helper.from_array(0.05 * rng.standard_normal((c_out, c_in, side, side), dtype=np.float32), "w")
            pad = side // 2
            model = graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4)],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, c_in, height, width])],
                          helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, c_out, height, width]), [w])  # fmt: skip
            conv = _ort_session(model, threads)
            kernels.append((f"onnxruntime Conv {c_in}->{c_out} {side}x{side} at {height}x{width}",
                            lambda conv=conv, x=x: conv.run(None, {"x": x}), conv_flops(batch, c_in, c_out, height, width, side)))  # fmt: skip
        return kernels

    # int8: uint8 activations, int8 weights (per output channel for the convolution), as the int8 arm runs
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    b = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "b")
    model = graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])],
                  [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                  helper.make_tensor_value_info("c", TensorProto.INT32, [m, n]), [b])  # fmt: skip
    session = _ort_session(model, threads)
    kernels.append((f"onnxruntime MatMulInteger u8xs8 {m}x{k}x{n}", lambda: session.run(None, {"a": a}), gemm_flops(m, n, k)))
    for batch, c_in, c_out, height, width, side in CONVS:
        x = rng.integers(0, 256, (batch, c_in, height, width), dtype=np.uint8)
        inits = [
            numpy_helper.from_array(rng.integers(-127, 128, (c_out, c_in, side, side), dtype=np.int8), "w"),
            numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
            numpy_helper.from_array(np.full(c_out, 0.001, np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(c_out, np.int8), "w_zero"),
            numpy_helper.from_array(np.array(0.05, np.float32), "y_scale"),
            numpy_helper.from_array(np.array(128, np.uint8), "y_zero"),
        ]
        pad = side // 2
        node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero"],
                                ["y"], pads=[pad] * 4)  # fmt: skip
        model = graph([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, [batch, c_in, height, width])],
                      helper.make_tensor_value_info("y", TensorProto.UINT8, [batch, c_out, height, width]), inits)  # fmt: skip
        conv = _ort_session(model, threads)
        kernels.append((f"onnxruntime QLinearConv u8xs8 {c_in}->{c_out} {side}x{side} at {height}x{width}",
                        lambda conv=conv, x=x: conv.run(None, {"x": x}), conv_flops(batch, c_in, c_out, height, width, side)))  # fmt: skip
    del onnx
    return kernels


def measure_peaks(
    threads: int, precisions: Sequence[str] = PRECISIONS, repeats: int = 5, min_seconds: float = 0.05
) -> dict[str, Any]:
    """Every kernel of `precisions` at `threads` threads (torch's count is restored afterwards).

    Returns:
        {"threads", "kernels": [KernelResult as dict], "peak": {precision: {"gflops", "kernel"}},
         "native_bf16"}.
    """
    before = torch.get_num_threads()
    results: list[KernelResult] = []
    try:
        torch.set_num_threads(threads)
        for precision in precisions:
            for library, kernels in (("torch", _torch_kernels(precision)), ("onnxruntime", _ort_kernels(precision, threads))):
                for name, fn, flops in kernels:
                    ms, gflops = time_kernel(fn, flops, repeats, min_seconds)
                    results.append(KernelResult(name, precision, library, flops, ms, gflops))
    finally:
        torch.set_num_threads(before)
    peak: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        mine = [r for r in results if r.precision == precision]
        if mine:
            best = max(mine, key=lambda r: r.gflops)
            peak[precision] = {"gflops": best.gflops, "kernel": best.name}
    return {"threads": threads, "kernels": [asdict(r) for r in results], "peak": peak, "native_bf16": cpu_native_bf16()}


def fraction(achieved_gflops: Optional[float], peaks: dict[str, Any], precision: str) -> Optional[float]:
    """achieved / the measured peak of `precision` (None when either is unknown)."""
    peak = peaks.get("peak", {}).get(precision, {}).get("gflops")
    return achieved_gflops / peak if achieved_gflops is not None and peak else None


def markdown_lines(peaks_by_threads: dict[int, dict[str, Any]]) -> list[str]:
    """The '## This machine's peak' section of a report."""
    if not peaks_by_threads:
        return []
    lines = ["", "## This machine's peak (measured in this run)", "",
             "Dense kernels at the arms' thread count; a precision's peak is its fastest kernel. "
             "FLOPs counted as torch.utils.flop_counter counts the UNet's (2 per multiply-add).", "",
             "| threads | precision | kernel | ms | GFLOP/s |", "|---|---|---|---|---|"]  # fmt: skip
    for threads, peaks in sorted(peaks_by_threads.items()):
        best = {(precision, p["kernel"]) for precision, p in peaks["peak"].items()}
        for r in peaks["kernels"]:
            mark = "**" if (r["precision"], r["name"]) in best else ""
            lines.append(f"| {threads} | {r['precision']} | {mark}{r['name']}{mark} | {r['median_ms']:.2f} | {r['gflops']:.1f} |")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    from diffpir_rt import cliargs

    parser = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.peak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", type=cliargs.positive_int, default=[1], help="thread counts")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--repeats", type=cliargs.positive_int, default=5)
    args = parser.parse_args(argv)
    found = {t: measure_peaks(t, args.precisions, args.repeats) for t in args.threads}
    print("\n".join(markdown_lines(found)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
