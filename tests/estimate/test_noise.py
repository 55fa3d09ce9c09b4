"""Noise-level estimators against noise of known standard deviation on synthetic images.

The bounds follow the estimators' sampling error: MAD of n Gaussian coefficients has a relative
standard deviation of about 1.1/√n (n = 3072 for a 64² RGB image: 2 %), the patch PCA's
smallest eigenvalue of ~10⁴ patches a few %; each bound is several of those wide, so a test fails
only for a broken estimator, not for an unlucky draw (the draws are seeded anyway).
"""

from __future__ import annotations

import math

import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.estimate import ESTIMATORS, estimate_sigma_n, noise_pca_weak_texture, noise_wavelet_mad


def smooth_image(size: int = 64, batch: int = 1) -> torch.Tensor:
    """A smooth RGB image in [0.2, 0.8]: ramps and a low-frequency wave (no energy at the finest scale)."""
    r = torch.arange(size, dtype=torch.float64) / size
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    channels = [0.5 + 0.2 * torch.sin(2 * math.pi * (xx + 0.5 * yy)), 0.3 + 0.4 * xx, 0.7 - 0.3 * yy * xx]
    return torch.stack(channels)[None].expand(batch, -1, -1, -1).clone()


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1])
def test_every_estimator_finds_white_noise_on_a_smooth_image(name: str, sigma: float) -> None:
    g = torch.Generator().manual_seed(int(sigma * 1000))
    x = smooth_image(64, batch=2)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    estimate = ESTIMATORS[name](y)
    assert estimate.shape == (2,)
    # The raw smallest eigenvalue (no edge correction) is biased low by the Marchenko-Pastur edge:
    # with p² = 49 dimensions and ~7 000 patches, (1 - √(49/7000))² ≈ 0.84, so σ reads ~8 % low.
    low = 0.80 if name == "pca_weak_texture" else 0.88
    assert torch.all(estimate > low * sigma) and torch.all(estimate < 1.12 * sigma), (name, estimate)


def test_the_engine_estimate_on_batched_and_unbatched_measurements() -> None:
    g = torch.Generator().manual_seed(0)
    x = smooth_image(64, batch=3)
    sigmas = torch.tensor([0.005, 0.03, 0.15], dtype=torch.float64)
    y = x + sigmas.reshape(3, 1, 1, 1) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    batched = estimate_sigma_n(y.float())
    assert isinstance(batched, torch.Tensor) and batched.shape == (3,)
    assert torch.allclose(batched, sigmas, rtol=0.12)
    single = estimate_sigma_n(y[1].float())
    assert isinstance(single, float) and single == pytest.approx(float(batched[1]), rel=1e-6)


def test_only_observed_pixels_count() -> None:
    """Missing pixels hold a fill value (grey here; zeros would be left out as clipped anyway), which
    would read as a huge noise level if they were used."""
    g = torch.Generator().manual_seed(1)
    x = smooth_image(64)
    y = x + 0.04 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    mask = (torch.rand(64, 64, generator=g) > 0.5).double()
    y_missing = y * mask + 0.5 * (1 - mask)
    assert float(noise_wavelet_mad(y_missing)[0]) > 1.3 * 0.04  # the holes inflate it without the mask
    for estimate in (float(noise_wavelet_mad(y_missing, mask)[0]), float(estimate_sigma_n(y_missing, mask)[0])):
        assert estimate == pytest.approx(0.04, rel=0.12)


def test_a_box_mask_keeps_the_patch_estimator_and_a_random_mask_falls_back_to_haar() -> None:
    g = torch.Generator().manual_seed(2)
    x = smooth_image(64)
    y = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    box = torch.ones(64, 64, dtype=torch.float64)
    box[16:48, 16:48] = 0
    assert not math.isnan(float(noise_pca_weak_texture(y * box, box)[0]))
    random = (torch.rand(64, 64, generator=g) > 0.5).double()
    assert math.isnan(float(noise_pca_weak_texture(y * random, random)[0]))  # no 7x7 patch is fully observed
    assert float(estimate_sigma_n(y * random, random)[0]) == pytest.approx(0.05, rel=0.15)


def test_clipped_pixels_are_left_out() -> None:
    """A photo's saturated highlights are stored at exactly 1: they observe no noise."""
    g = torch.Generator().manual_seed(3)
    x = smooth_image(64)
    x[..., :, :24] = 1.2  # a highlight beyond the range: clipped to 1 with (almost) no noise left
    y = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert float(estimate_sigma_n(y)[0]) == pytest.approx(0.05, rel=0.12)


def test_refusals() -> None:
    with pytest.raises(DiffPIRError, match="y: expected"):
        estimate_sigma_n(torch.zeros(4, 4))
    with pytest.raises(DiffPIRError, match="too small"):
        estimate_sigma_n(torch.zeros(1, 3, 4, 40))
    with pytest.raises(DiffPIRError, match="NaN"):
        estimate_sigma_n(torch.full((3, 16, 16), float("nan")))
    with pytest.raises(DiffPIRError, match="mask: shape"):
        estimate_sigma_n(torch.rand(3, 16, 16), torch.ones(8, 8))
    with pytest.raises(DiffPIRError, match="too few observed"):
        estimate_sigma_n(torch.rand(3, 16, 16), torch.zeros(16, 16))
