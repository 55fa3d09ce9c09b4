"""The peak microbenchmark: its FLOP counts equal torch.utils.flop_counter's (the count the
UNet's achieved FLOP/s uses), and the bench's fractions are achieved / that peak. No timing
assertions: only that every kernel ran and the peak is the fastest one."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffpir_rt.benchmarks import latency, peak


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(("m", "n", "k"), [(1024, 1024, 1024), (3, 5, 7)])
def test_gemm_flops_equal_the_flop_counters(m: int, n: int, k: int) -> None:
    assert peak.gemm_flops(m, n, k) == counted(lambda: torch.randn(m, k) @ torch.randn(k, n))


@pytest.mark.parametrize("shape", [(1, 4, 6, 9, 7, 3), (2, 3, 5, 8, 8, 1), *peak.CONVS])
def test_conv_flops_equal_the_flop_counters(shape: tuple[int, ...]) -> None:
    batch, c_in, c_out, height, width, side = shape
    with torch.device("meta"):
        x, w = torch.empty(batch, c_in, height, width), torch.empty(c_out, c_in, side, side)
    assert peak.conv_flops(*shape) == counted(lambda: torch.nn.functional.conv2d(x, w, padding=side // 2))


def test_every_kernel_runs_and_the_peak_is_the_fastest() -> None:
    found = peak.measure_peaks(1, ("fp32", "int8"), repeats=1, min_seconds=0.0)
    kernels = found["kernels"]
    assert {k["precision"] for k in kernels} == {"fp32", "int8"} and found["threads"] == 1
    try:
        import onnxruntime  # noqa: F401

        has_ort = True
    except ImportError:
        has_ort = False
    assert any(k["library"] == "onnxruntime" for k in kernels) == has_ort
    for k in kernels:
        assert k["gflops"] > 0 and k["median_ms"] > 0
        assert k["gflops"] == pytest.approx(k["flops"] / (k["median_ms"] / 1e3) / 1e9)
    for precision in ("fp32", "int8"):
        best = max((k for k in kernels if k["precision"] == precision), key=lambda k: k["gflops"])
        assert found["peak"][precision] == {"gflops": best["gflops"], "kernel": best["name"]}
    assert torch.get_num_threads() == 1  # restored (tests/conftest.py sets one thread)
    text = "\n".join(peak.markdown_lines({1: found}))
    assert "## This machine's peak" in text and f"**{found['peak']['fp32']['kernel']}**" in text


def test_fractions_are_achieved_over_the_measured_peak() -> None:
    peaks = {"peak": {"fp32": {"gflops": 200.0, "kernel": "k"}}}
    assert peak.fraction(50.0, peaks, "fp32") == 0.25
    assert peak.fraction(50.0, peaks, "bf16") is None and peak.fraction(None, peaks, "fp32") is None


def test_the_bench_reports_flops_against_the_measured_peak(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring: one peak per thread count, each arm held against its own precision's."""
    calls: list[tuple[int, tuple[str, ...]]] = []

    def fake_peaks(threads, precisions):
        calls.append((threads, tuple(precisions)))
        return {"threads": threads, "kernels": [], "native_bf16": False,
                "peak": {p: {"gflops": 1000.0 * threads if p == "fp32" else 4000.0, "kernel": f"{p}-kernel"} for p in precisions}}  # fmt: skip

    monkeypatch.setattr(peak, "measure_peaks", fake_peaks)
    args = latency.parse_args(["--device", "cpu", "--random-weights", "--arch", "tiny", "--sizes", "32", "--steps", "3",
                               "--batches", "1", "--tasks", "deblur", "--warmup", "0", "--repeats", "1", "--threads", "1",
                               "--scaling-threads", "2", "--backends", "reference", "default", "torch-fast-bf16",
                               "--out-dir", str(tmp_path), "--no-plot"])  # fmt: skip
    assert args.peak  # on by default for a CPU run
    document = latency.run(args)
    assert calls == [(1, ("fp32", "bf16")), (2, ("fp32", "bf16"))]
    rows = {(r["backend"], r["threads"]): r for r in document["results"]}
    assert set(rows) == {("reference", 1), ("default", 1), ("torch-fast-bf16", 1), ("reference", 2), ("default", 2)}
    from diffpir_rt.engine import cpu_native_bf16

    bf16_arms = {"torch-fast-bf16"} | ({"default"} if cpu_native_bf16() else set())  # auto: bf16 where native
    for (name, threads), r in rows.items():
        assert "error" not in r, r
        expected_peak = 4000.0 if name in bf16_arms else 1000.0 * threads
        assert r["peak_gflops"] == expected_peak and r["precision"] == ("bf16" if name in bf16_arms else "fp32")
        work = r["model_calls"] * r["flops_per_call"] * r["batch"]
        assert r["gflops"] == pytest.approx(work / (r["latency_ms"]["median"] / 1e3) / 1e9)
        assert r["fraction_of_peak"] == pytest.approx(r["gflops"] / expected_peak) == r["compute_fraction"]
        assert r["unet_fraction_of_peak"] == pytest.approx(work / (r["unet_ms"] / 1e3) / 1e9 / expected_peak)
    default_2 = rows[("default", 2)]
    assert default_2["thread_scaling_base"] == 1
    assert default_2["thread_scaling"] == pytest.approx(rows[("default", 1)]["per_image_ms"]["median"] / default_2["per_image_ms"]["median"])
    assert default_2["speedup_vs_baseline"] == pytest.approx(  # against the reference at the same thread count
        rows[("reference", 2)]["per_image_ms"]["median"] / default_2["per_image_ms"]["median"])
    text = (tmp_path / "latency.md").read_text()
    assert "| GFLOP/s | % peak | UNet % peak |" in text and "## Threads" in text and "2 (vs 1)" in text
    assert "bf16 4000 GFLOP/s" in text
