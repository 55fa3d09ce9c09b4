"""The cost benchmarks' instruments measure without changing what they measure (benchmarks/boundary_cost.py,
benchmarks/tile_cost.py), and their rules are the runtime's."""

from __future__ import annotations

import numpy as np
import torch

from diffpir_rt.benchmarks import boundary_cost, tile_cost
from diffpir_rt.engine import Deblur, DiffPIRConfig, ExtendedDeblur, build_unet, sample
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.runtime import TilingPolicy


def test_timed_restoration_is_the_restoration() -> None:
    torch.manual_seed(0)
    model = UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)
    k = np.full((5, 5), 1 / 25)
    y = torch.rand(1, 3, 12, 14)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=4)
    clock = boundary_cost.Clock()
    timed = boundary_cost.operator(k, model.size_multiple, "default", clock)
    got = sample(boundary_cost.TimedModel(model, clock), timed, y, config, seed=1)
    assert torch.equal(got, sample(model, ExtendedDeblur(Deblur(k), multiple=model.size_multiple), y, config, seed=1))
    report = clock.report()
    assert report["unet"]["calls"] == report["data step"]["calls"] == config.num_model_calls
    stateless = boundary_cost.operator(k, model.size_multiple, "stateless10").data_step(y)
    assert not stateless.carry and stateless.iterations(1.0) == stateless.iterations(1e-6) == 10


def test_sweep_summary_means() -> None:
    rows = [{"setting": "a", "measurement": m, "total": t, "border": t + 1, "interior": t} for m, t in (("scene", 10.0), ("reflect", 20.0))]
    summary = {(r["setting"], r["measurement"]): r for r in boundary_cost.summarise_sweep(rows)}
    assert summary[("a", "all")]["total"] == 15.0 and summary[("a", "scene")]["gap"] == 1.0 and summary[("a", "all")]["runs"] == 2


def test_tile_cost_uses_the_runtime_overlap() -> None:
    for tile in (64, 96, 128, 192, 256, 384):
        assert tile_cost.overlap_for(tile) == TilingPolicy(tile, None, training_size=tile).overlap
    assert tile_cost.parse_hw("2048x1536") == (1536, 2048) and tile_cost.parse_hw("512") == (512, 512)
