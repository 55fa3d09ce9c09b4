"""Each CuPy kernel equals its torch path (the engine's function) to <= 1e-5 in fp32 (GPU only).

Fresh random inputs per case, outputs poisoned with NaN before each launch (so an unwritten
element fails), odd sizes for the scalar (v1) variants, per-sample and shared kernels/masks.
"""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.schedule import linear_schedule
from diffpir_rt.engine.step import StepCoefficients
from diffpir_rt.engine.fused import fourier_correction, predict_x0_01, step_elementwise, step_fourier
from diffpir_rt.kernels import _loader

from ..gpu_support import requires_cupy

# TF32 off: the references are torch's fp32 paths, compared at 1e-5 (see tests/conftest.py no_tf32).
pytestmark = [*requires_cupy, pytest.mark.usefixtures("no_tf32")]

TOLERANCE = 1e-5
STEPS = [(999, 770, 0.3), (311, 274, 1.0), (26, 0, 0.0)]


def assert_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Norm-relative error <= 1e-5 and every element within 1e-5 of the reference's scale."""
    assert got.shape == ref.shape and got.dtype == ref.dtype
    assert torch.isfinite(torch.view_as_real(got) if got.is_complex() else got).all(), "NaN/Inf: unwritten output?"
    error = (got - ref).abs()
    scale = ref.abs().max().clamp_min(1e-30)
    assert torch.linalg.vector_norm(got - ref) <= TOLERANCE * torch.linalg.vector_norm(ref) + 1e-30
    assert error.max() <= TOLERANCE * scale, f"max abs error {error.max():.3e} vs scale {scale:.3e}"


def poisoned(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, math.nan, memory_format=torch.contiguous_format)


def _kernels(rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    k = rng.random((count, size, size)) + 0.05
    return k / k.sum(axis=(-2, -1), keepdims=True)


@pytest.fixture
def generator() -> torch.Generator:
    g = torch.Generator(device="cuda")
    g.manual_seed(20261127)
    return g


def randn(shape, generator, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(shape, generator=generator, device="cuda")


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 17, 13), (3, 1, 8, 12)])
@pytest.mark.parametrize("t, t_next, zeta", STEPS)
def test_predict_x0_01(shape, t, t_next, zeta, generator) -> None:
    c = StepCoefficients.at(linear_schedule(), t, t_next, zeta)
    x, eps = randn(shape, generator, 2.0), randn(shape, generator)
    ref = predict_x0_01(x, eps, c, impl="torch")
    got = predict_x0_01(x, eps, c, impl="cupy", out=poisoned(x))
    assert_close(got, ref)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 17, 13), (4, 3, 32, 36)])
@pytest.mark.parametrize("mask_kind", ["per_sample", "shared", "per_channel", "denoise"])
@pytest.mark.parametrize("t, t_next, zeta", STEPS)
def test_step_elementwise(shape, mask_kind, t, t_next, zeta, generator, rng) -> None:
    batch, channels, height, width = shape
    if mask_kind == "denoise":
        op = Denoise()
    else:
        count = 1 if mask_kind == "shared" else batch
        mask_channels = channels if mask_kind == "per_channel" else 1
        op = Inpaint((rng.random((count, mask_channels, height, width)) > 0.5).astype(np.float32))
    y = torch.rand(shape, generator=generator, device="cuda")
    data_step = op.data_step(y)
    c = StepCoefficients.at(linear_schedule(), t, t_next, zeta)
    rho = float(linear_schedule().rho(1.0, 0.001)[t])
    x, eps, z = randn(shape, generator), randn(shape, generator), randn(shape, generator)
    ref = step_elementwise(x, eps, z, c, data_step, rho, impl="torch")
    got = step_elementwise(x, eps, z, c, data_step, rho, impl="cupy", out=poisoned(x))
    assert_close(got, ref)


@pytest.mark.parametrize("sf, size, batch, per_sample", [(1, 64, 1, False), (1, 30, 3, True), (2, 32, 2, True),
                                                         (3, 36, 1, False), (4, 64, 2, False), (4, 20, 3, True)])
@pytest.mark.parametrize("rho", [7e-7, 1.5e-3, 175.0])
def test_fourier_correction(sf, size, batch, per_sample, rho, generator, rng) -> None:
    kernels = _kernels(rng, batch if per_sample else 1, 5)
    op = Deblur(kernels) if sf == 1 else SuperResolution(sf, kernels)
    y = torch.rand((batch, 3, size // sf, size // sf), generator=generator, device="cuda")
    data_step = op.data_step(y)
    spectrum = torch.fft.fft2(torch.rand((batch, 3, size, size), generator=generator, device="cuda"))
    ref = fourier_correction(data_step, spectrum, rho, impl="torch")
    got = fourier_correction(data_step, spectrum, rho, impl="cupy", out=poisoned(spectrum))
    assert_close(got, ref)
    in_place = spectrum.clone()  # C may overwrite X: each thread reads its entries before writing
    assert_close(fourier_correction(data_step, in_place, rho, impl="cupy", out=in_place), ref)


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (2, 3, 17, 13)])
@pytest.mark.parametrize("t, t_next, zeta", STEPS)
def test_step_fourier(shape, t, t_next, zeta, generator, rng) -> None:
    data_step = Deblur(_kernels(rng, 1, 7)[0]).data_step(torch.rand(shape, generator=generator, device="cuda"))
    c = StepCoefficients.at(linear_schedule(), t, t_next, zeta)
    x, eps, z = randn(shape, generator), randn(shape, generator), randn(shape, generator)
    correction = torch.fft.fft2(randn(shape, generator, 0.3))
    ref = step_fourier(x, eps, z, c, data_step, correction, impl="torch")
    got = step_fourier(x, eps, z, c, data_step, correction, impl="cupy", out=poisoned(x))
    assert_close(got, ref)


def test_kernels_run_on_torchs_current_stream(generator) -> None:
    """Launched on a side stream, the kernel must order after work queued on that stream."""
    c = StepCoefficients.at(linear_schedule(), 999, 770, 0.3)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        x = randn((8, 3, 256, 256), generator)
        eps = torch.tanh(x) * 0.5  # queued on `side` just before the kernel
        got = predict_x0_01(x, eps, c, impl="cupy")
    side.synchronize()
    assert_close(got, predict_x0_01(x, eps, c, impl="torch"))


def test_wrapper_rejects_what_the_kernel_cannot_index(generator) -> None:
    from diffpir_rt.engine import DiffPIRError

    c = StepCoefficients.at(linear_schedule(), 999, 770, 0.3)
    x = randn((1, 3, 8, 8), generator)
    with pytest.raises(DiffPIRError, match="eps expected torch.float32, got torch.float16"):
        predict_x0_01(x, x.half(), c, impl="cupy")
    with pytest.raises(DiffPIRError, match="eps must be contiguous"):
        predict_x0_01(x, x.transpose(-1, -2), c, impl="cupy")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_fatbin_and_nvrtc_builds_agree(tmp_path, monkeypatch, generator) -> None:
    major, minor = torch.cuda.get_device_capability()
    for name in ("diffpir_step", "fourier_correction"):
        fatbin = tmp_path / f"{name}.fatbin"
        subprocess.run(
            ["nvcc", "-fatbin", *_loader.NVCC_FLAGS, f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}",
             "-o", str(fatbin), str(_loader.source_path(name))],
            check=True, timeout=120,
        )  # fmt: skip
        (tmp_path / f"{name}.fatbin.sha256").write_text(_loader.source_digest(name))
    shape = (2, 3, 32, 32)
    c = StepCoefficients.at(linear_schedule(), 602, 541, 0.3)
    x, eps = randn(shape, generator), randn(shape, generator)
    results = {}
    for origin in ("NVRTC", "fatbin"):
        _loader.clear_caches()
        if origin == "fatbin":
            monkeypatch.setenv(_loader.PREBUILT_ENV, str(tmp_path))
        else:
            monkeypatch.setenv(_loader.PREBUILT_ENV, str(tmp_path / "none"))
        results[origin] = predict_x0_01(x, eps, c, impl="cupy")
        assert _loader.ORIGINS[("diffpir_step", torch.cuda.current_device())].startswith(origin)
    _loader.clear_caches()
    assert torch.equal(results["NVRTC"], results["fatbin"])
