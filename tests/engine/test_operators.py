"""Operators against independent references: dense linear algebra, scipy, float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution


def _rng_kernel(rng: np.random.Generator, size: int) -> np.ndarray:
    k = rng.random((size, size)) + 0.05
    return k / k.sum()


def _operators(rng: np.random.Generator) -> dict[str, tuple[object, int]]:
    """Registry: name -> (operator, HR size) for small dense checks."""
    return {
        "deblur_3": (Deblur(_rng_kernel(rng, 3)), 8),
        "deblur_5_nonsym": (Deblur(_rng_kernel(rng, 5)), 9),
        "sr_x2": (SuperResolution(2, _rng_kernel(rng, 5)), 8),
        "sr_x3": (SuperResolution(3, _rng_kernel(rng, 5)), 12),
        "sr_x4_default_kernel": (SuperResolution(4), 28),
        "inpaint": (Inpaint((rng.random((8, 8)) > 0.4).astype(np.float64)), 8),
        "denoise": (Denoise(), 8),
    }


OPERATOR_NAMES = list(_operators(np.random.default_rng(0)))


def _dense_matrix(op, n: int) -> np.ndarray:
    """A with A[:, j] = op.forward(e_j) on a 1-channel n x n image."""
    eye = torch.eye(n * n, dtype=torch.float64).reshape(n * n, 1, n, n)
    cols = [op.forward(eye[j : j + 1]).reshape(-1) for j in range(n * n)]
    return torch.stack(cols, dim=1).numpy()


@pytest.mark.parametrize("name", OPERATOR_NAMES)
def test_adjoint(name: str, rng: np.random.Generator) -> None:
    op, n = _operators(rng)[name]
    x = torch.from_numpy(rng.standard_normal((2, 3, n, n)))
    y = op.forward(x)
    y2 = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
    lhs = (y * y2).sum()
    rhs = (x * op.adjoint(y2)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", OPERATOR_NAMES)
@pytest.mark.parametrize("rho", [7e-7, 1e-3, 0.15, 175.0])
def test_prox_equals_dense_least_squares(name: str, rho: float, rng: np.random.Generator) -> None:
    """prox = (A^T A + rho I)^-1 (A^T y + rho x0), solved densely in float64."""
    op, n = _operators(rng)[name]
    A = _dense_matrix(op, n)
    x0 = rng.random((n * n,))
    y = A @ rng.random((n * n,)) + 0.05 * rng.standard_normal(A.shape[0])
    expected = np.linalg.solve(A.T @ A + rho * np.eye(n * n), A.T @ y + rho * x0)
    y_img = torch.from_numpy(y).reshape(op.forward(torch.zeros(1, 1, n, n, dtype=torch.float64)).shape)
    got = op.prox(torch.from_numpy(x0).reshape(1, 1, n, n), y_img, rho).reshape(-1).numpy()
    scale = max(1.0, np.abs(expected).max())
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * scale)


@pytest.mark.parametrize("size", [3, 5, 7])
def test_fft_convolution_equals_scipy_wrap(size: int, rng: np.random.Generator) -> None:
    kernel = _rng_kernel(rng, size)
    x = rng.random((1, 3, 16, 13))
    got = Deblur(kernel).forward(torch.from_numpy(x)).numpy()
    for c in range(3):
        expected = scipy.ndimage.convolve(x[0, c], kernel, mode="wrap")
        np.testing.assert_allclose(got[0, c], expected, atol=1e-12)


def test_sr_forward_is_blur_then_top_left_decimation(rng: np.random.Generator) -> None:
    kernel = _rng_kernel(rng, 5)
    x = torch.from_numpy(rng.random((1, 3, 12, 12)))
    blurred = Deblur(kernel).forward(x)
    assert torch.allclose(SuperResolution(3, kernel).forward(x), blurred[..., ::3, ::3], atol=1e-12)


def _gaussian(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


@pytest.mark.parametrize("op_name", ["deblur", "sr"])
@pytest.mark.parametrize("rho", [7.06e-7, 1.5e-3, 9.2])
def test_float32_prox_within_1e4_of_float64(op_name: str, rho: float, rng: np.random.Generator) -> None:
    """The residual form keeps fp32 within 1e-4 of float64 even at rho ~ 1e-6."""
    n = 64
    truth = scipy.ndimage.gaussian_filter(rng.random((1, 3, n, n)), (0, 0, 2, 2))
    if op_name == "deblur":
        op = Deblur(_gaussian(25, 3.0))
    else:
        op = SuperResolution(4)
    y64 = op.forward(torch.from_numpy(truth)) + 0.05 * torch.from_numpy(rng.standard_normal((1, 3, *op.forward(torch.from_numpy(truth)).shape[-2:])))
    x0_64 = torch.from_numpy(truth + 0.1 * rng.standard_normal(truth.shape)).clamp(0, 1)
    ref = op.prox(x0_64, y64, rho)
    got = op.prox(x0_64.float(), y64.float(), rho).double()
    err = (got - ref).abs().max().item()
    assert err <= 1e-4, f"fp32 error {err:.2e} (|x| max {ref.abs().max().item():.1f})"


def test_per_sample_kernels_equal_separate_operators(rng: np.random.Generator) -> None:
    k1, k2 = _rng_kernel(rng, 5), _rng_kernel(rng, 5)
    x0 = torch.from_numpy(rng.random((2, 3, 10, 10)))
    y = torch.from_numpy(rng.random((2, 3, 10, 10)))
    batched = Deblur(np.stack([k1, k2])).prox(x0, y, 0.01)
    assert torch.allclose(batched[:1], Deblur(k1).prox(x0[:1], y[:1], 0.01), atol=1e-12)
    assert torch.allclose(batched[1:], Deblur(k2).prox(x0[1:], y[1:], 0.01), atol=1e-12)


def test_per_sample_masks_equal_separate_operators(rng: np.random.Generator) -> None:
    masks = (rng.random((2, 1, 6, 6)) > 0.5).astype(np.float64)
    x0, y = torch.rand(2, 3, 6, 6, dtype=torch.float64), torch.rand(2, 3, 6, 6, dtype=torch.float64)
    batched = Inpaint(masks).prox(x0, y, 0.1)
    for b in range(2):
        assert torch.allclose(batched[b : b + 1], Inpaint(masks[b, 0]).prox(x0[b : b + 1], y[b : b + 1], 0.1))


def test_inpaint_prox_matches_official_formula(rng: np.random.Generator) -> None:
    """(m y + rho x0) / (m + rho) in [-1, 1] units (docs/algorithm.md §6.1) equals our [0, 1] residual form."""
    m = torch.from_numpy((rng.random((1, 1, 8, 8)) > 0.5).astype(np.float64))
    x0, y = torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.rand(1, 3, 8, 8, dtype=torch.float64)
    rho = 0.01
    official = (m * (2 * y - 1) + rho * (2 * x0 - 1)) / (m + rho)
    ours = 2 * Inpaint(m[0, 0]).prox(x0, y, rho) - 1
    assert torch.allclose(ours, official, atol=1e-12)


def test_missing_pixels_keep_x0_exactly() -> None:
    mask = torch.zeros(4, 4)
    x0 = torch.rand(1, 3, 4, 4)
    assert torch.equal(Inpaint(mask).prox(x0, torch.rand(1, 3, 4, 4), 4e-11), x0)


# ----------------------------------------------------------------------------- errors


def test_kernel_larger_than_image() -> None:
    with pytest.raises(DiffPIRError, match="kernel: 9x9 is larger than the 8x8 image"):
        Deblur(np.ones((9, 9))).data_step(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize(
    "kernel, message",
    [
        (np.ones((2, 2, 2, 2)), "expected 2-D"),
        (np.full((3, 3), np.nan), "NaN or Inf"),
        (-np.ones((3, 3)), "positive sum"),
    ],
)
def test_bad_kernels(kernel: np.ndarray, message: str) -> None:
    with pytest.raises(DiffPIRError, match=message):
        Deblur(kernel)


def test_kernel_batch_mismatch() -> None:
    with pytest.raises(DiffPIRError, match="2 per-sample entries but the batch has 3"):
        Deblur(np.ones((2, 3, 3))).data_step(torch.rand(3, 3, 8, 8))


def test_mask_size_mismatch() -> None:
    with pytest.raises(DiffPIRError, match="mask: size 8x8 does not match the 9x9 image"):
        Inpaint(np.ones((8, 8))).data_step(torch.rand(1, 3, 9, 9))


def test_mask_values_out_of_range() -> None:
    with pytest.raises(DiffPIRError, match=r"values in \[0, 1\]"):
        Inpaint(np.full((4, 4), 2.0))


def test_unknown_sr_scale() -> None:
    with pytest.raises(DiffPIRError, match="scale: expected one of"):
        SuperResolution(5)


def test_measurement_with_nan() -> None:
    y = torch.rand(1, 3, 8, 8)
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(DiffPIRError, match="NaN or Inf"):
        Denoise().data_step(y)


def test_sr_forward_needs_divisible_image() -> None:
    with pytest.raises(DiffPIRError, match="not divisible by the scale 4"):
        SuperResolution(4, np.ones((3, 3))).forward(torch.rand(1, 3, 30, 30))


@pytest.mark.parametrize("kind", ["gaussian", "motion", "sr4"])
@pytest.mark.parametrize("rho", [7.06e-7, 1.5e-3])
def test_float32_prox_on_real_image_and_official_kernels(kind: str, rho: float) -> None:
    """256x256 set3c image, official 61x61 kernels (docs/algorithm.md §7), sigma_n 0.05: fp32 within 1e-4 of float64."""
    from diffpir_rt.engine.degrade import gaussian_kernel, motion_kernel
    from diffpir_rt.engine.imageio import read_image

    from ..conftest import DATA

    x = read_image(DATA / "images" / "butterfly.png")[None].double()
    op = {"gaussian": lambda: Deblur(gaussian_kernel(1)), "motion": lambda: Deblur(motion_kernel(0)), "sr4": lambda: SuperResolution(4)}[kind]()
    g = torch.Generator().manual_seed(0)
    clean_y = op.forward(x)
    y = clean_y + 0.05 * torch.randn(clean_y.shape, generator=g, dtype=torch.float64)
    x0 = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = op.prox(x0, y, rho)
    assert (op.prox(x0.float(), y.float(), rho).double() - ref).abs().max().item() <= 1e-4
