"""The kernels' torch paths against independent float64 references, and the impl contract (CPU)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.schedule import linear_schedule
from diffpir_rt.engine.step import StepCoefficients, predict_x0
from diffpir_rt.engine.fused import fourier_correction, predict_x0_01, step_elementwise, step_fourier
from diffpir_rt.kernels import _loader

from ..engine.reference_diffpir import fourier_solution


def _kernel(rng: np.random.Generator, size: int) -> np.ndarray:
    k = rng.random((size, size)) + 0.05
    return k / k.sum()


def _spec_step(x, eps, z, t, t_next, zeta, prox01):
    """Spec §3-4 in numpy float64, written from the spec: x0, data step on [0,1], re-noise."""
    a = linear_schedule().alpha_bar
    x0 = np.clip(np.sqrt(1 / a[t]) * x - np.sqrt(1 / a[t] - 1) * eps, -1, 1)
    x0 = 2 * prox01(x0 / 2 + 0.5) - 1
    eps_hat = (x - np.sqrt(a[t]) * x0) / np.sqrt(1 - a[t])
    return np.sqrt(a[t_next]) * x0 + np.sqrt(1 - a[t_next]) * (np.sqrt(1 - zeta) * eps_hat + np.sqrt(zeta) * z)


@pytest.mark.parametrize("t, t_next", [(999, 770), (141, 111), (26, 0)])
@pytest.mark.parametrize("zeta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("task", ["inpaint", "denoise"])
def test_step_elementwise_torch_path_is_the_spec_step(task, t, t_next, zeta, rng) -> None:
    shape = (2, 3, 8, 8)
    x, eps, z = (torch.from_numpy(rng.standard_normal(shape)) for _ in range(3))
    y = torch.from_numpy(rng.random(shape))
    rho = float(linear_schedule().rho(1.0, 0.001)[t])
    if task == "inpaint":
        mask = (rng.random((2, 8, 8)) > 0.5).astype(np.float64)
        op = Inpaint(mask)
        m = mask[:, None]
    else:
        op, m = Denoise(), 1.0
    c = StepCoefficients.at(linear_schedule(), t, t_next, zeta)
    got = step_elementwise(x, eps, z, c, op.data_step(y), rho, impl="torch")
    expected = _spec_step(x.numpy(), eps.numpy(), z.numpy(), t, t_next, zeta,
                          lambda x01: (m * y.numpy() + rho * x01) / (m + rho))  # fmt: skip
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sf", [1, 2, 3, 4])
@pytest.mark.parametrize("rho", [7e-7, 1e-3, 0.15, 175.0])
def test_fourier_correction_is_the_official_data_solution(sf: int, rho: float, rng) -> None:
    """x0 + IFFT(correction(FFT(x0))) = USRNet data_solution (non-residual form), float64."""
    size = 12 * sf if sf > 1 else 10
    kernel = _kernel(rng, 5)
    op = Deblur(kernel) if sf == 1 else SuperResolution(sf, kernel)
    y = torch.from_numpy(rng.random((1, 3, size // sf, size // sf)))
    x0 = torch.from_numpy(rng.random((1, 3, size, size)))
    step = op.data_step(y)
    correction = fourier_correction(step, torch.fft.fft2(x0), rho, impl="torch")
    got = x0 + torch.fft.ifft2(correction).real
    expected = fourier_solution(x0[0].numpy(), y[0].numpy(), kernel, sf, rho)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-9, atol=1e-9 * (1 + 1 / rho))


def test_fourier_data_step_call_is_correction_then_apply(rng) -> None:
    step = SuperResolution(2, _kernel(rng, 5)).data_step(torch.from_numpy(rng.random((2, 3, 6, 6))))
    x0 = torch.from_numpy(rng.random((2, 3, 12, 12)))
    composed = step.apply_correction(x0, step.correction(torch.fft.fft2(x0), 0.2))
    assert torch.equal(step(x0, 0.2), composed)


def test_step_fourier_torch_path_equals_the_sampler_body(rng) -> None:
    """predict_x0 -> data_step on [0, 1] -> renoise, as engine/sampler.py writes it."""
    from diffpir_rt.engine.imageio import from_model, to_model
    from diffpir_rt.engine.step import renoise

    op = Deblur(_kernel(rng, 5))
    shape = (2, 3, 16, 16)
    x, eps, z = (torch.from_numpy(rng.standard_normal(shape)).float() for _ in range(3))
    step = op.data_step(torch.rand(shape))
    c = StepCoefficients.at(linear_schedule(), 602, 541, 0.3)
    rho = 1e-3
    x0_01 = predict_x0_01(x, eps, c, impl="torch")
    correction = fourier_correction(step, torch.fft.fft2(x0_01), rho, impl="torch")
    got = step_fourier(x, eps, z, c, step, correction, impl="torch")
    expected = renoise(x, to_model(step(from_model(predict_x0(x, eps, c)), rho)), z, c)
    assert torch.equal(got, expected)


def test_torch_path_writes_into_out(rng) -> None:
    shape = (1, 3, 8, 8)
    x, eps, z = (torch.randn(shape) for _ in range(3))
    c = StepCoefficients.at(linear_schedule(), 500, 400, 0.5)
    out = torch.full(shape, math.nan)
    got = step_elementwise(x, eps, z, c, Denoise().data_step(torch.rand(shape)), 0.1, impl="torch", out=out)
    assert got is out and torch.isfinite(out).all()


def test_cupy_without_cuda_raises() -> None:
    x = torch.zeros(1, 3, 4, 4)
    c = StepCoefficients.at(linear_schedule(), 999, 770, 0.3)
    with pytest.raises(DiffPIRError, match="impl='cupy' needs CUDA tensors and CuPy, but the tensors are on cpu"):
        predict_x0_01(x, x, c, impl="cupy")


def test_unknown_impl_raises() -> None:
    with pytest.raises(DiffPIRError, match=r"fourier_correction: impl expected one of \('auto', 'cupy', 'torch'\), got 'cuda'"):
        fourier_correction(Deblur(np.ones((3, 3)) / 9).data_step(torch.rand(1, 3, 8, 8)),
                           torch.zeros(1, 3, 8, 8, dtype=torch.complex64), 0.1, impl="cuda")  # fmt: skip


def test_auto_logs_its_choice_once(caplog, monkeypatch) -> None:
    monkeypatch.setattr(_loader, "_logged_choices", set())
    x = torch.zeros(1, 3, 4, 4)
    c = StepCoefficients.at(linear_schedule(), 999, 770, 0.3)
    with caplog.at_level(logging.INFO, logger="diffpir_rt.kernels._loader"):
        predict_x0_01(x, x, c)
        predict_x0_01(x, x, c)
    messages = [r.getMessage() for r in caplog.records if "impl='auto'" in r.getMessage()]
    assert messages == ["diffpir_step: impl='auto' runs the torch path (the tensors are on cpu, not CUDA)"]


def test_fatbin_is_used_only_when_built_from_this_source(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(_loader.PREBUILT_ENV, str(tmp_path))
    assert _loader.fatbin_path("diffpir_step") is None  # nothing built
    fatbin = tmp_path / "diffpir_step.fatbin"
    fatbin.write_bytes(b"not really a fatbin")
    (tmp_path / "diffpir_step.fatbin.sha256").write_text("0" * 64 + "\n")
    with caplog.at_level(logging.WARNING):
        assert _loader.fatbin_path("diffpir_step") is None
    assert "is stale" in caplog.text
    (tmp_path / "diffpir_step.fatbin.sha256").write_text(_loader.source_digest("diffpir_step") + "\n")
    assert _loader.fatbin_path("diffpir_step") == fatbin
