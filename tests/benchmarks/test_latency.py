"""The latency harness on a tiny CPU configuration: it runs, its numbers are consistent,
speedups are baseline/candidate from the same run. No timing assertions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from diffpir_rt.benchmarks import latency, report

TINY = ["--device", "cpu", "--random-weights", "--arch", "tiny", "--sizes", "32", "--steps", "3", "--batches", "1",
        "--tasks", "deblur", "--warmup", "1", "--repeats", "2", "--threads", "1", "--no-peak"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    args = latency.parse_args([*TINY, "--out-dir", str(out), "--history", str(out / "history.jsonl")])
    return latency.run(args), out


def test_runs_and_writes_json_markdown_plot_history(tiny_run) -> None:
    document, out = tiny_run
    assert json.loads((out / "latency.json").read_text())["results"] == json.loads(json.dumps(document["results"]))
    assert "| backend | task | size |" in (out / "latency.md").read_text()
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["meta"]["arch"] == "tiny"
    meta = document["meta"]
    for key in ("date_utc", "git_commit", "torch", "python", "device", "torch_threads", "baseline"):
        assert key in meta
    assert meta["torch_threads"] == 1 and meta["peak_tflops"] is None


def test_numbers_are_consistent(tiny_run) -> None:
    document, _ = tiny_run
    results = {r["backend"]: r for r in document["results"]}
    assert set(results) == set(latency.DEFAULT_BACKENDS["cpu"])
    base = results["reference"]
    for r in results.values():
        assert "error" not in r, r.get("error")
        lat = r["latency_ms"]
        assert lat["n"] == 2 and len(lat["samples"]) == 2 and 0 < lat["min"] <= lat["median"] <= lat["p90"]
        assert r["per_image_ms"]["median"] == pytest.approx(lat["median"] / r["batch"])
        assert r["images_per_s"] == pytest.approx(r["batch"] / (lat["median"] / 1e3))
        assert r["model_calls"] == 2  # 3 timesteps, final call skipped
        assert r["flops_per_call"] == pytest.approx(latency.flops_per_call("tiny", 32))
        assert 0 <= r["unet_share"] <= 1 and r["other_ms"] >= 0
        assert r["compute_fraction"] is None and r["peak_mem_mb"] is None  # CPU: no peak, no CUDA memory
        # the speedup is the baseline's median over this backend's, both from this run
        assert r["speedup_vs_baseline"] == pytest.approx(base["per_image_ms"]["median"] / r["per_image_ms"]["median"])
        assert r["speedup_vs_compile"] is None
    assert base["speedup_vs_baseline"] == 1.0 and base["output_identical_to_baseline"]
    # The product's CPU path: fp32 (ONNX Runtime or channels-last torch) within its tolerance of 1 level
    # of 255; on a CPU with native bf16 arithmetic auto picks bf16, held to the bf16 arm's bound below.
    from diffpir_rt.engine import cpu_native_bf16

    default = results["default"]
    if cpu_native_bf16():
        assert default["precision"] == "bf16" and default["psnr_vs_baseline_db"] > 20
    else:
        assert default["psnr_vs_baseline_db"] is None or default["psnr_vs_baseline_db"] > 60
        assert default["within_1_level_fraction"] >= 0.999
    assert results["torch-fast-bf16"]["psnr_vs_baseline_db"] > 20  # bf16 UNet: reported, not held to 1/255


def test_star_and_grid_configurations() -> None:
    args = latency.parse_args(["--device", "cpu", "--steps", "20", "5", "--batches", "1", "32", "--sizes", "256",
                               "--tasks", "deblur", "sr", "--backends", "reference", "graph-fp32-torch",
                               "--sweep-backends", "graph-fp32-torch"])  # fmt: skip
    runs = latency.configurations(args)
    assert runs[0] == (latency.Config("deblur", 256, 1, 20), ["reference", "graph-fp32-torch"])  # centre: all
    arms = [cfg for cfg, names in runs[1:]]
    assert arms == [latency.Config("deblur", 256, 32, 20), latency.Config("deblur", 256, 1, 5),
                    latency.Config("sr", 256, 1, 20)]  # fmt: skip
    assert all(names == ["graph-fp32-torch"] for _, names in runs[1:])
    args.sweep = "grid"
    assert len(latency.configurations(args)) == 2 * 2 * 2


def test_compiled_backends_run_after_every_arm(monkeypatch) -> None:
    """torch.compile backends compile for minutes: the budget must cut them, not batch 32's arm."""
    monkeypatch.setattr(latency, "resolve_device", lambda name: torch.device("cuda"))
    args = latency.parse_args(["--device", "cuda", "--random-weights", "--arch", "ffhq_10m"])  # the GPU suite's; nothing runs
    runs = latency.configurations(args)
    centre = latency.Config("deblur", 256, 1, 20)
    compiled = [latency.COMPILE_RECIPE, "graph-fp16-cupy-compile"]
    assert runs[0] == (centre, [b for b in latency.DEFAULT_BACKENDS["cuda"] if b not in compiled])
    assert runs[1][0] == latency.Config("deblur", 256, 32, 20)  # the first arm: batch 32
    assert sorted(runs[1][1]) == sorted(latency.DEFAULT_SWEEP_BACKENDS["cuda"])
    assert runs[-1] == (centre, compiled)  # the recipe first: the 1.5x target needs it
    assert all(not latency.is_compiled(b) for _, names in runs[:-1] for b in names)
    args.sweep = "grid"
    grid = latency.configurations(args)
    first_compiled = next(i for i, (_, names) in enumerate(grid) if latency.is_compiled(names[0]))
    assert all(latency.is_compiled(b) == (i >= first_compiled) for i, (_, names) in enumerate(grid) for b in names)


def test_onnxruntime_stays_out_of_cuda_runs_with_a_cpu_build(monkeypatch) -> None:
    ort = pytest.importorskip("onnxruntime")
    assert latency.onnxruntime_problem("cpu") is None
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    problem = latency.onnxruntime_problem("cuda")
    assert problem is not None and "is a CPU build" in problem and "onnxruntime-gpu" in problem
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert latency.onnxruntime_problem("cuda:0") is None


def test_the_time_budget_skips_and_still_writes(tmp_path) -> None:
    args = latency.parse_args([*TINY, "--out-dir", str(tmp_path), "--history", "none", "--no-plot", "--time-budget", "1e-9"])
    document = latency.run(args)
    assert [r["error"] for r in document["results"]] == ["skipped: time budget spent"] * len(latency.DEFAULT_BACKENDS["cpu"])
    assert "skipped: time budget" in (tmp_path / "latency.md").read_text()


def test_errors_do_not_stop_the_sweep(tmp_path, monkeypatch) -> None:
    real_restore = latency.Backend.restore

    def restore(self, problem):
        if self.name == "reference":
            raise RuntimeError("boom")
        return real_restore(self, problem)

    monkeypatch.setattr(latency.Backend, "restore", restore)
    args = latency.parse_args([*TINY, "--repeats", "1", "--out-dir", str(tmp_path), "--history", "none", "--no-plot"])
    results = {r["backend"]: r for r in latency.run(args)["results"]}
    assert results["reference"]["error"] == "RuntimeError: boom"
    assert "error" not in results["default"] and results["default"]["speedup_vs_baseline"] is None


def test_targets_are_checked_on_the_fastest_graph_backend() -> None:
    def row(backend, batch, ms, share=0.98, vs_base=12.0, vs_compile=1.6):
        return {"backend": backend, "task": "deblur", "size": 256, "batch": batch, "steps": 20,
                "per_image_ms": {"median": ms, "p90": ms}, "images_per_s": 1e3 / ms, "unet_share": share,
                "speedup_vs_baseline": vs_base, "speedup_vs_compile": vs_compile}  # fmt: skip

    document = {"meta": {"arch": "ffhq_10m"}, "results": [
        row("graph-fp16-torch", 1, 31.0), row("graph-fp16-cupy", 1, 28.0), row("graph-fp16-cupy", 32, 14.0)]}  # fmt: skip
    checks = {c["target"]: c for c in report.targets(document)}
    assert checks["restoration <= 30 ms (256², b1, 20 steps)"]["ok"] and checks["restoration <= 30 ms (256², b1, 20 steps)"]["backend"] == "graph-fp16-cupy"
    assert checks[">= 10x PyTorch fp32 eager"]["ok"] and checks[">= 1.5x torch.compile fp16 + CUDA graph"]["ok"]
    assert math.isclose(float(checks["non-UNet time <= 3%"]["value"].rstrip("%")), 2.0) and checks["non-UNet time <= 3%"]["ok"]
    assert checks["batch 32 >= 60 images/s"]["ok"]
    assert report.targets({"meta": {"arch": "tiny"}, "results": document["results"]}) == []
