"""Tiled denoising (engine.tiling): windows sum to one, tiles cover the image exactly, a pointwise
model gives the same eps tiled or not, tiles go through the backend batched, the learned
variance and gradients pass through, and the Restorer and the graph runtime use it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRConfig, DiffPIRError, ModelSource, TiledDenoiser
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.graph_runtime import GraphRuntime
from diffpir_rt.engine.methods import DDPMConfig, DPSConfig, build_method
from diffpir_rt.engine.methods.loop import pad_model
from diffpir_rt.engine.operators import Deblur, Inpaint, SuperResolution
from diffpir_rt.engine.sampler import sample
from diffpir_rt.engine.tiling import blend_windows, tile_starts
from diffpir_rt.engine.unet import build_unet

SIZES = [(37, 53), (64, 64), (65, 130), (16, 200), (200, 16), (96, 40), (128, 97)]


class Pointwise:
    """eps a pointwise function of x_t and t (what tiles cannot change), counting its calls."""

    size_multiple = 1

    def __init__(self, variance: bool = False) -> None:
        self.calls: list[tuple[int, ...]] = []
        if variance:
            self.eps_and_variance = lambda x, t: (self(x, t), torch.sigmoid(x) - 0.5)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return torch.tanh(2 * x) * x + t.reshape(-1, 1, 1, 1).to(x.dtype) / 1000


class Constant(Pointwise):
    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return torch.full_like(x, 0.25)


def coverage(length: int, tile: int, overlap: int, align: int = 1) -> torch.Tensor:
    """Summed one-axis windows over [0, length)."""
    starts = tile_starts(length, tile, overlap, align)
    extent = min(tile, length)
    windows = blend_windows(length, extent, starts, torch.float64)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, windows):
        total[start:start + extent] += w
    return total


@pytest.mark.parametrize("length", [1, 15, 16, 17, 48, 63, 100, 500, 513, 2048])
@pytest.mark.parametrize("tile,overlap,align", [(16, 4, 1), (16, 0, 1), (32, 8, 8), (64, 16, 16), (48, 40, 1)])
def test_tiles_cover_exactly_and_windows_sum_to_one(length: int, tile: int, overlap: int, align: int) -> None:
    starts = tile_starts(length, tile, overlap, align)
    extent = min(tile, length)
    assert starts[0] == 0 and starts[-1] + extent == length  # flush with both borders
    assert starts == sorted(set(starts))
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # overlap >= asked
    torch.testing.assert_close(coverage(length, tile, overlap, align), torch.ones(length, dtype=torch.float64), rtol=0, atol=1e-12)


def test_windows_are_smooth_ramps_inside_zero_one() -> None:
    starts = tile_starts(100, 32, 12)
    windows = blend_windows(100, 32, starts, torch.float64)
    assert bool((windows > 0).all()) and bool((windows <= 1 + 1e-12).all())
    assert float(windows[0, 0]) == 1.0 and float(windows[-1, -1]) == 1.0  # no ramp at the borders
    assert float(windows[:, 1:].sub(windows[:, :-1]).abs().max()) < 0.2  # no jumps


def test_2d_weights_sum_to_one() -> None:
    tiled = TiledDenoiser(Pointwise(), 16, 5)
    plan = tiled.plan(45, 70)
    weights = tiled._weights(plan, torch.empty(0, dtype=torch.float64))
    canvas = torch.zeros(45, 70, dtype=torch.float64)
    for k, (y0, x0) in enumerate((y, x) for y in plan.rows for x in plan.cols):
        canvas[y0:y0 + 16, x0:x0 + 16] += weights[k, 0, 0]
    torch.testing.assert_close(canvas, torch.ones_like(canvas), rtol=0, atol=1e-12)


def test_constant_eps_model_equals_untiled() -> None:
    model = Constant()
    x, t = torch.randn(2, 3, 70, 45), torch.tensor([10, 900])
    got = TiledDenoiser(model, 16, 4)(x, t)
    torch.testing.assert_close(got, model(x, t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("tile,overlap", [(16, 4), (32, 0), (24, 20)])
def test_pointwise_model_equals_untiled(size: tuple[int, int], tile: int, overlap: int) -> None:
    model = Pointwise()
    x, t = torch.randn(2, 3, *size, dtype=torch.float64), torch.tensor([3, 700])
    got = TiledDenoiser(model, tile, overlap, batch=5)(x, t)
    torch.testing.assert_close(got, model(x, t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(13, 29), (33, 47)])
def test_composes_with_pad_model(size: tuple[int, int]) -> None:
    """The loop pads to the size multiple first, then the tiler cuts the padded image."""

    class Multiple4(Pointwise):
        size_multiple = 4

        def __call__(self, x, t):
            assert x.shape[-2] % 4 == 0 and x.shape[-1] % 4 == 0
            return super().__call__(x, t)

    model = Multiple4()
    tiled = TiledDenoiser(model, 8, 2)
    assert tiled.size_multiple == 4
    x, t = torch.randn(1, 3, *size, dtype=torch.float64), torch.tensor([5])
    for mode in ("reflect", "circular"):
        torch.testing.assert_close(pad_model(tiled, mode)(x, t), pad_model(model, mode)(x, t), rtol=0, atol=1e-12)
    with pytest.raises(DiffPIRError, match="multiple of 4"):
        TiledDenoiser(model, 10, 2)


def test_tiles_are_batched_through_the_backend() -> None:
    model = Pointwise()
    tiled = TiledDenoiser(model, 16, 4, batch=5)
    plan = tiled.plan(40, 64)
    assert plan is not None and plan.count == 3 * 5
    tiled(torch.randn(2, 3, 40, 64), torch.tensor([1, 2]))
    # 15 tiles x 2 images = 30 tiles: 6 calls of 5, every one a stack of 16 x 16 tiles
    assert model.calls == [(5, 3, 16, 16)] * 6


def test_below_the_tile_the_inner_model_runs_unchanged() -> None:
    model = Pointwise()
    tiled = TiledDenoiser(model, 32, 8)
    x, t = torch.randn(1, 3, 32, 20), torch.tensor([4])
    assert tiled.plan(32, 20) is None
    assert torch.equal(tiled(x, t), model(x, t))
    assert model.calls == [(1, 3, 32, 20)] * 2
    # min_pixels: larger than the tile but not than the threshold -> whole
    assert TiledDenoiser(model, 16, 4, min_pixels=32 * 32).plan(32, 32) is None
    assert TiledDenoiser(model, 16, 4, min_pixels=32 * 32).plan(32, 33) is not None


def test_a_shared_integer_timestep() -> None:
    model = Pointwise()
    x = torch.randn(2, 3, 40, 40, dtype=torch.float64)
    torch.testing.assert_close(TiledDenoiser(model, 16, 4)(x, 7), model(x, torch.tensor([7, 7])), rtol=0, atol=1e-12)


def test_eps_and_variance_passthrough() -> None:
    model = Pointwise(variance=True)
    tiled = TiledDenoiser(model, 16, 6, batch=3)
    assert not hasattr(TiledDenoiser(Pointwise(), 16, 6), "eps_and_variance")
    x, t = torch.randn(2, 3, 50, 41, dtype=torch.float64), torch.tensor([9, 99])
    eps, variance = tiled.eps_and_variance(x, t)
    want_eps, want_variance = model.eps_and_variance(x, t)
    torch.testing.assert_close(eps, want_eps, rtol=0, atol=1e-12)
    torch.testing.assert_close(variance, want_variance, rtol=0, atol=1e-12)
    padded = pad_model(TiledDenoiser(model, 16, 6), "reflect")  # the loop's wrapper keeps it
    assert hasattr(padded, "eps_and_variance")


def test_autograd_passthrough() -> None:
    model = Pointwise()
    x = torch.randn(1, 3, 40, 29, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([50])
    TiledDenoiser(model, 16, 4)(x, t).pow(2).sum().backward()
    tiled_grad = x.grad.clone()
    x.grad = None
    model(x, t).pow(2).sum().backward()
    torch.testing.assert_close(tiled_grad, x.grad, rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def unet() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


def test_unet_tiles_differ_only_near_seams_and_describe(unet: UNetDenoiser) -> None:
    tiled = TiledDenoiser(unet, 16, 8)
    x, t = torch.randn(1, 3, 32, 48), torch.tensor([500])
    with torch.no_grad():
        got, want = tiled(x, t), unet(x, t)
    assert got.shape == want.shape and bool(torch.isfinite(got).all())
    assert float((got - want).abs().mean()) < float(want.abs().mean())  # a blend of the same model, not noise
    assert tiled.describe()["tiling"]["tile"] == [16, 16] and tiled.describe()["tiling"]["overlap"] == 8


def test_dps_differentiates_through_tiles(unet: UNetDenoiser) -> None:
    op = Inpaint((np.random.default_rng(0).random((1, 24, 40)) > 0.5).astype(np.float64))
    y = torch.rand(1, 3, 24, 40)
    config = DPSConfig(zeta=0.5, steps=3)
    out = sample(TiledDenoiser(unet, 16, 4), op, y, config, seed=1)
    assert out.shape == (1, 3, 24, 40) and bool(torch.isfinite(out).all())


def test_ddpm_learned_variance_through_tiles(unet: UNetDenoiser) -> None:
    from diffpir_rt.engine import generate

    config = DDPMConfig(steps=3, variance="learned")
    out = generate(TiledDenoiser(unet, 16, 4), (1, 3, 24, 36), config, seed=3)
    assert out.shape == (1, 3, 24, 36) and bool(torch.isfinite(out).all())


def test_graph_runtime_with_tiles_equals_sample(unet: UNetDenoiser) -> None:
    op = SuperResolution(2, np.full((3, 3), 1 / 9))
    y = torch.rand(2, 3, 15, 18)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=4)
    tiled = TiledDenoiser(unet, 16, 4, batch=4)
    expected = sample(tiled, op, y, config, seed=11)
    data = op.data_step(y)
    image_shape = tuple(op.image_shape(y.shape))
    runtime = GraphRuntime(tiled, build_method(config), data, tuple(y.shape), image_shape, op.pad_mode, "cpu", capture=False)
    assert torch.equal(runtime.restore(op, y, seed=11), expected)


def test_fixed_size_backend_gets_tiles_of_its_size() -> None:
    """A static-shape artifact (its contract fixes H, W and the batch): tiles of that size, padded
    where the image is smaller, calls filled up to the fixed batch."""
    from diffpir_rt.engine.backends.contract import fix_axes, unet_contract

    class Fixed(Pointwise):
        contract = fix_axes(unet_contract(3, 1), {"batch": 4, "height": 16, "width": 16})

        def __call__(self, x, t):
            assert tuple(x.shape) == (4, 3, 16, 16)
            return super().__call__(x, t)

    model = Fixed()
    tiled = TiledDenoiser(model, 32, 4)
    assert tiled.tile == (16, 16) and tiled.batch == 4
    x, t = torch.randn(1, 3, 12, 40, dtype=torch.float64), torch.tensor([3])
    torch.testing.assert_close(tiled(x, t), Pointwise()(x, t), rtol=0, atol=1e-12)


def test_tensorrt_profile_bounds_the_tile_and_batch() -> None:
    """A plan's optimisation profile: calls of at most its largest batch; auto tiles within its sizes."""
    from diffpir_rt.runtime import TilingPolicy

    class Profiled(Pointwise):
        size_multiple = 16
        profile = {"x_t": ((1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 96, 96)), "t": ((1,), (1,), (4,))}

    tiled = TilingPolicy("auto", None, training_size=256).wrap(Profiled())
    assert tiled.tile == (96, 96) and tiled.batch == 4 and tiled.overlap == 32  # 256/8, kept below half the tile
    with pytest.raises(DiffPIRError, match="largest input"):
        TiledDenoiser(Profiled(), 128, 16)


def test_policy_runs_one_tile_per_call_on_a_cpu() -> None:
    """On a CPU a tile per call (runtime.tiling.CPU_TILE_BATCH); elsewhere, or when told, the batch asked for."""
    from diffpir_rt.engine import DEFAULT_TILE_BATCH
    from diffpir_rt.runtime import TilingPolicy
    from diffpir_rt.runtime.tiling import CPU_TILE_BATCH

    class OnCPU(Pointwise):
        device = torch.device("cpu")

    model = OnCPU()
    tiled = TilingPolicy(16, 4, training_size=16).wrap(model)
    assert tiled.batch == CPU_TILE_BATCH == 1
    x, t = torch.rand(2, 3, 30, 40), torch.full((2,), 7)
    assert torch.equal(tiled(x, t), TiledDenoiser(Pointwise(), 16, 4, batch=5)(x, t))  # the batch changes calls, not eps
    assert set(model.calls) == {(1, 3, 16, 16)}
    assert TilingPolicy(16, 4, training_size=16, batch=3).wrap(OnCPU()).batch == 3
    assert TilingPolicy(16, 4, training_size=16).wrap(Pointwise()).batch == DEFAULT_TILE_BATCH  # no device: the engine's


def test_bad_settings() -> None:
    with pytest.raises(DiffPIRError, match="overlap"):
        TiledDenoiser(Pointwise(), 16, 16)
    with pytest.raises(DiffPIRError, match="overlap"):
        TiledDenoiser(Pointwise(), 16, -1)
    with pytest.raises(DiffPIRError, match="tile"):
        TiledDenoiser(Pointwise(), 0, 0)
    with pytest.raises(DiffPIRError, match="batch"):
        TiledDenoiser(Pointwise(), 16, 4, batch=0)
    with pytest.raises(DiffPIRError, match="already tiled"):
        TiledDenoiser(TiledDenoiser(Pointwise(), 16, 4), 16, 4)


# ----------------------------------------------------------------------------- the Restorer


def restorer(**kwargs):
    from diffpir_rt.runtime import Restorer

    return Restorer(ModelSource("random", arch="tiny"), backend="torch", device="cpu", notify=lambda line: None, **kwargs)


def test_restorer_tiles_and_records_it() -> None:
    r = restorer(tile=8, overlap=4)
    op = Deblur(np.full((3, 3), 1 / 9))
    y = torch.rand(1, 3, 20, 28)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=3)
    out = r.restore(y, op, config, seed=0, boundary="circular")
    assert out.shape == (1, 3, 20, 28) and bool(torch.isfinite(out).all())
    record = r.describe()["tiling"]
    assert record["used"] and record["mode"] == 8 and record["tile"] == [8, 8] and record["overlap"] == 4
    assert record["image"] == [20, 28] and record["tiles"] == len(tile_starts(20, 8, 4, 2)) * len(tile_starts(28, 8, 4, 2))
    # the same loop with the tiled model, run by engine.sample
    assert torch.equal(out, sample(TiledDenoiser(r.denoiser, 8, 4), op, y, config, seed=0))
    small = r.restore(torch.rand(1, 3, 8, 6), op, config, seed=0, boundary="circular")  # below the tile: whole
    assert small.shape == (1, 3, 8, 6) and not r.describe()["tiling"]["used"]


def test_restorer_tiling_off_and_auto() -> None:
    op = Deblur(np.full((3, 3), 1 / 9))
    y = torch.rand(1, 3, 20, 28)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=3)
    off = restorer(tile="off")
    plain = off.restore(y, op, config, seed=0)
    assert off.describe()["tiling"] == {"mode": "off", "used": False}
    auto = restorer()  # small images are never tiled by default: the same result
    assert torch.equal(auto.restore(y, op, config, seed=0), plain)
    assert auto.describe()["tiling"]["mode"] == "auto" and not auto.describe()["tiling"]["used"]
    from diffpir_rt.runtime.tiling import AUTO_MIN_PIXELS

    wrapped = auto.tiling.wrap(auto.denoiser)
    assert wrapped.plan(640, 640) is None and AUTO_MIN_PIXELS < 656 * 656
    assert wrapped.plan(656, 656) is not None


def test_restorer_refuses_bad_tiling() -> None:
    with pytest.raises(DiffPIRError, match="tile"):
        restorer(tile=7)  # not a multiple of the tiny UNet's size multiple (2)
    with pytest.raises(DiffPIRError, match="overlap"):
        restorer(tile=8, overlap=8)
    with pytest.raises(DiffPIRError, match="overlap"):
        restorer(tile="off", overlap=4)
    with pytest.raises(DiffPIRError, match="tile"):
        restorer(tile="big")


def test_cli_flags() -> None:
    import argparse

    from diffpir_rt.runtime import add_runtime_flags, runtime_options

    p = argparse.ArgumentParser()
    add_runtime_flags(p)
    defaults = runtime_options(p.parse_args([]))
    assert defaults.tile == "auto" and defaults.overlap is None
    assert runtime_options(p.parse_args(["--tile", "off"])).tile == "off"
    options = runtime_options(p.parse_args(["--tile", "256", "--overlap", "32"]))
    assert (options.tile, options.overlap) == (256, 32)
    with pytest.raises(SystemExit):
        p.parse_args(["--tile", "huge"])


# ----------------------------------------------------------------------------- CUDA graph (GPU only)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_captured_tiled_loop_equals_its_eager_run() -> None:
    """The tiled model inside a captured CUDA graph: replay equals the same loop run eagerly."""
    torch.manual_seed(0)
    unet = UNetDenoiser(build_unet("tiny")).cuda().eval().requires_grad_(False)
    tiled = TiledDenoiser(unet, 16, 4, batch=4)
    op = Deblur(np.full((5, 5), 1 / 25))
    y = torch.rand(2, 3, 40, 52, device="cuda")
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=4)
    image_shape = tuple(op.image_shape(y.shape))

    def runtime(capture: bool) -> GraphRuntime:
        return GraphRuntime(tiled, build_method(config), op.data_step(y), tuple(y.shape), image_shape, op.pad_mode, "cuda",
                            capture=capture)  # fmt: skip

    captured = runtime(True)
    got = captured.restore(op, y, seed=5)
    assert captured.captured
    torch.testing.assert_close(got, runtime(False).restore(op, y, seed=5), rtol=0, atol=1e-6)
