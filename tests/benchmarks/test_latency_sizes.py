"""diffpir bench's size sweep: non-square --sizes, seconds per megapixel, peak memory, the size table."""

from __future__ import annotations

import argparse

import pytest
import torch

from diffpir_rt.benchmarks import latency, report


def test_sizes_square_and_non_square() -> None:
    assert latency.parse_size("512") == 512
    assert latency.parse_size("2048x1536") == "2048x1536"
    assert latency.parse_size("64X64") == 64
    assert latency.size_hw(512) == (512, 512)
    assert latency.size_hw("2048x1536") == (1536, 2048)  # WIDTHxHEIGHT -> (H, W)
    for bad in ("0", "x", "12x", "1x2x3", "-4"):
        with pytest.raises(argparse.ArgumentTypeError):
            latency.parse_size(bad)


def test_problem_and_flops_follow_the_size() -> None:
    from diffpir_rt.engine import ModelSource

    cfg = latency.Config("sr", "64x32", 1, 3)
    problem = latency.make_problem(cfg, torch.device("cpu"), ModelSource("random", arch="tiny"))
    assert tuple(problem.y.shape) == (1, 3, 8, 16)  # SR x4 of a 32 x 64 (H x W) image
    # twice the pixels of 32²: at least twice the FLOPs (attention grows faster), less than 64²'s four times
    assert 2 * latency.flops_per_call("tiny", 32) <= latency.flops_per_call("tiny", "64x32") < latency.flops_per_call("tiny", 64)


def test_cpu_peak_memory_sees_an_allocation() -> None:
    memory = latency.PeakMemory(torch.device("cpu"))
    memory.start()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    del block
    memory.stop()
    if memory.start_mb is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert memory.delta_mb is not None and memory.delta_mb >= 48


def test_size_table() -> None:
    def row(size, seconds, tiling):
        h, w = latency.size_hw(size)
        mp = h * w / 1e6
        return {"backend": "default", "task": "sr", "size": size, "batch": 1, "steps": 5, "megapixels": mp,
                "per_image_ms": {"median": seconds * 1e3}, "s_per_megapixel": seconds / mp,
                "peak_mem_mb": None, "peak_rss_mb": 900.0, "peak_rss_delta_mb": 200.0, "tiling": tiling}  # fmt: skip

    rows = [row(512, 10.0, {"mode": "auto", "used": False}),
            row("2048x1536", 120.0, {"mode": "auto", "used": True, "tiles": 266, "tile": [128, 128], "overlap": 16})]  # fmt: skip
    lines = report.size_table(rows)
    text = "\n".join(lines)
    assert "| default | sr | 2048x1536 | 3.15 |" in text and "266 tiles of 128x128, overlap 16" in text
    assert "| 1.00 |" in text and "900 (+200)" in text
    ratio = (120 / 3.145728) / (10 / 0.262144)
    assert f"| {ratio:.2f} |" in text
    assert report.size_table(rows[:1]) == []  # one size: no table
