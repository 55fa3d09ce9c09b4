"""The measurement's noise level σ_n, estimated from the measurement alone (docs/blind.md §1).

Every method weighs its data term by σ_n, and a person with a photo does not know it. Three
classical estimators of the standard deviation of additive white Gaussian noise, each on
[0, 1] images and, for inpainting, on the observed pixels only:

* `noise_wavelet_mad`: the median absolute deviation of the finest diagonal wavelet subband
  over 0.6745 (Donoho & Johnstone 1994). Fast and exact where the image has no energy in that
  band (a blurred image); natural texture leaks into it and biases it upwards at low σ_n.
* `noise_pca_weak_texture`: the smallest eigenvalue of the covariance of weakly textured
  patches, selected iteratively by their gradient energy (Liu, Tanaka & Okutomi, "Single-image
  noise level estimation for blind denoising", IEEE TIP 2013).
* `noise_pca_tail`: the mean of the tail of the patch covariance's eigenvalues that looks
  like noise, i.e. whose mean equals its median (Chen, Zhu & Heng, "An efficient statistical
  method for image noise level estimation", ICCV 2015).

`estimate_sigma_n` is the one the engine uses (`--sigma-n auto`); which estimator it runs,
and why, is measured in docs/blind.md §1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional, Union


from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module


if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

__all__ = ["ESTIMATORS", "estimate_sigma_n", "noise_pca_tail", "noise_pca_weak_texture", "noise_wavelet_mad"]

#: Orthonormal Daubechies low-pass filters (sum √2, sum of squares 1); db1 is Haar.
WAVELETS: dict[str, tuple[float, ...]] = {
    "haar": (0.7071067811865476, 0.7071067811865476),
    "db2": (0.48296291314469025, 0.836516303737469, 0.22414386804185735, -0.12940952255092145),
    "db4": (0.23037781330885523, 0.7148465705525415, 0.6308807679295904, -0.02798376941698385,
            -0.18703481171888114, 0.030841381835986965, 0.032883011666982945, -0.010597401784997278),
}  # fmt: skip
#: Φ⁻¹(3/4): the median of |N(0, 1)|.
MAD_SCALE = 0.6744897501960817
#: Patch side of the PCA estimators (Liu et al.'s default) and the most patches one image
#: contributes (a larger image is sampled on a stride: the covariance needs thousands, not millions).
PATCH = 7
MAX_PATCHES = 200_000
#: Fewer usable coefficients or patches than this and an estimator declines (NaN) rather than guess.
MIN_SAMPLES = 64


# --------------------------------------------------------------------------- inputs


def _batch(y: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor], bool]:
    """y as (B, C, H, W) float64 and the mask as (B or 1, C or 1, H, W) booleans (True = observed)."""
    if not isinstance(y, torch.Tensor):
        raise DiffPIRError(f"y: expected a torch.Tensor, got {type(y).__name__}")
    unbatched = y.ndim == 3
    if unbatched:
        y = y[None]
    if y.ndim != 4 or min(y.shape) < 1:
        raise DiffPIRError(f"y: expected (B, C, H, W) or (C, H, W), got shape {tuple(y.shape)}")
    if y.is_complex() or not y.is_floating_point():
        raise DiffPIRError(f"y: expected a real floating tensor, got {y.dtype}")
    if not torch.isfinite(y).all():
        raise DiffPIRError("y: contains NaN or Inf")
    if min(y.shape[-2:]) < 8:
        raise DiffPIRError(f"y: {y.shape[-1]}x{y.shape[-2]} is too small to estimate a noise level from (at least 8x8)")
    y = y.to(torch.float64)
    # A pixel stored at exactly 0 or 1 was clipped (an image file's range): it bounds x + n instead
    # of observing it, and censored values read as less noise than there is (-17 % at σ_n 0.2).
    unclipped = ((y != 0.0) & (y != 1.0)).all(dim=1, keepdim=True)
    if mask is None:
        return y, (None if bool(unclipped.all()) else unclipped), unbatched
    if not isinstance(mask, torch.Tensor):
        mask = torch.as_tensor(mask)
    m = mask.to(y.device)
    while m.ndim < 4:
        m = m[None]
    if m.ndim != 4 or m.shape[-2:] != y.shape[-2:] or m.shape[0] not in (1, y.shape[0]) or m.shape[1] not in (1, y.shape[1]):
        raise DiffPIRError(f"mask: shape {tuple(mask.shape)} does not fit the measurement's {tuple(y.shape)}")
    return y, (m > 0.5) & unclipped, unbatched


def _result(sigma: Tensor, unbatched: bool) -> Union[Tensor, float]:
    return float(sigma[0]) if unbatched else sigma


# --------------------------------------------------------------------------- wavelet MAD


def _diagonal_filter(wavelet: str, like: Tensor) -> Tensor:
    """The (1, 1, L, L) diagonal (high-high) analysis filter g ⊗ g, g[n] = (-1)^n h[L-1-n]."""
    if wavelet not in WAVELETS:
        raise DiffPIRError(f"wavelet: expected one of {', '.join(WAVELETS)}, got {wavelet!r}")
    h = torch.tensor(WAVELETS[wavelet], dtype=torch.float64, device=like.device)
    g = h.flip(0) * torch.tensor([(-1.0) ** n for n in range(len(h))], dtype=torch.float64, device=like.device)
    return (g[:, None] * g[None, :])[None, None]


def diagonal_subband(y: Tensor, wavelet: str = "haar", mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The finest diagonal subband of every channel, (B, C, h, w), and where its filter saw only observed pixels."""
    b, c, height, width = y.shape
    g = _diagonal_filter(wavelet, y)
    band = F.conv2d(y.reshape(b * c, 1, height, width), g, stride=2)
    band = band.reshape(b, c, *band.shape[-2:])
    size = g.shape[-1]
    if mask is None:
        return band, torch.ones_like(band, dtype=torch.bool)
    m = mask.expand(b, c, height, width).to(torch.float64).reshape(b * c, 1, height, width)
    seen = F.conv2d(m, torch.ones_like(g), stride=2).reshape(band.shape) > size * size - 0.5
    return band, seen


def noise_wavelet_mad(y: Tensor, mask: Optional[Tensor] = None, wavelet: str = "haar") -> Union[Tensor, float]:
    """σ_n = median(|HH|) / 0.6745 over the finest diagonal subband of all channels.

    Args:
        y: (B, C, H, W) or (C, H, W), [0, 1] units.
        mask: 1 = observed; coefficients whose filter touches a missing pixel are left out.
        wavelet: "haar" (2×2 support: the only one that finds enough fully observed blocks in a
            50 % random mask), "db2" or "db4" (better frequency selectivity, less texture leakage).
    Returns:
        (B,) float64 (a float for an unbatched y); NaN where fewer than 64 coefficients are usable.
    """
    y, m, unbatched = _batch(y, mask)
    band, seen = diagonal_subband(y, wavelet, m)
    out = []
    for i in range(y.shape[0]):
        values = band[i][seen[i]].abs()
        out.append(values.median() / MAD_SCALE if values.numel() >= MIN_SAMPLES else torch.tensor(math.nan, dtype=torch.float64))
    return _result(torch.stack(out).to(y.device), unbatched)


# --------------------------------------------------------------------------- patch PCA


def _patches(y: Tensor, mask: Optional[Tensor], patch: int) -> list[Tensor]:
    """Per image, its fully observed patch × patch single-channel patches of all channels, (N, patch²),
    on a stride that keeps N near MAX_PATCHES."""
    b, c, height, width = y.shape
    count = c * (height - patch + 1) * (width - patch + 1)
    stride = max(1, math.ceil(math.sqrt(count / MAX_PATCHES)))
    columns = F.unfold(y.reshape(b * c, 1, height, width), patch, stride=stride)  # (B C, p², L)
    columns = columns.reshape(b, c, patch * patch, -1).permute(0, 1, 3, 2).reshape(b, -1, patch * patch)
    if mask is None:
        return list(columns)
    m = mask.expand(b, c, height, width).to(torch.float64).reshape(b * c, 1, height, width)
    full = F.unfold(m, patch, stride=stride).sum(dim=1).reshape(b, -1) > patch * patch - 0.5
    return [columns[i][full[i]] for i in range(b)]


def _covariance_eigenvalues(x: Tensor) -> Tensor:
    """Eigenvalues (ascending) of the sample covariance of the rows of x, (N, d)."""
    centred = x - x.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / max(1, x.shape[0] - 1)
    return torch.linalg.eigvalsh(cov)


def _gamma_quantile(probability: float, shape: float, scale: float) -> float:
    """The inverse CDF of Gamma(shape, scale) at `probability`, by bisection on the regularised
    incomplete gamma function (torch has no inverse; 200 halvings reach float64 precision)."""
    a = torch.tensor(shape, dtype=torch.float64)
    low, high = 0.0, max(1.0, shape)
    while float(torch.special.gammainc(a, torch.tensor(high, dtype=torch.float64))) < probability:
        high *= 2.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if float(torch.special.gammainc(a, torch.tensor(mid, dtype=torch.float64))) < probability:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high) * scale


def _texture(patches: Tensor, patch: int) -> Tensor:
    """Per patch, the trace of its gradient covariance: Σ (∂h)² + Σ (∂v)² with the kernel [-1/2, 0, 1/2]."""
    p = patches.reshape(-1, patch, patch)
    dh = (p[:, :, 2:] - p[:, :, :-2]) / 2
    dv = (p[:, 2:, :] - p[:, :-2, :]) / 2
    return dh.pow(2).sum(dim=(1, 2)) + dv.pow(2).sum(dim=(1, 2))


def noise_pca_weak_texture(
    y: Tensor, mask: Optional[Tensor] = None, patch: int = PATCH, confidence: float = 1 - 1e-6, iterations: int = 3,
    edge_correction: bool = False,
) -> Union[Tensor, float]:
    """σ_n from the smallest eigenvalue of the covariance of weakly textured patches (Liu et al. 2013).

    Start from all patches; keep those whose gradient energy is below what noise alone of the
    current σ² reaches with probability `confidence` (σ² · Gamma⁻¹(confidence; p²/2, 2 tr(DᵀD)/p²),
    D the patch's gradient operator); re-estimate σ² from the kept patches; repeat.
    `edge_correction` divides the smallest eigenvalue by (1 - √(p²/N))², where the smallest
    eigenvalue of N samples' covariance lies for white noise (the Marchenko-Pastur edge).

    Returns:
        (B,) float64 (a float for an unbatched y); NaN where fewer than 64 patches are fully observed.
    """
    y, m, unbatched = _batch(y, mask)
    trace_dtd = float(patch * (patch - 2))  # each of the 2 p(p-2) gradient rows has squared norm 1/2
    tau0 = _gamma_quantile(confidence, patch * patch / 2.0, 2.0 * trace_dtd / (patch * patch))
    out = []
    for patches in _patches(y, m, patch):
        if patches.shape[0] < MIN_SAMPLES:
            out.append(torch.tensor(math.nan, dtype=torch.float64))
            continue
        texture = _texture(patches, patch)
        variance = _covariance_eigenvalues(patches)[0].clamp_min(0.0)
        used = patches.shape[0]
        for _ in range(iterations):
            weak = patches[texture < variance * tau0]
            if weak.shape[0] < MIN_SAMPLES:
                break
            new = _covariance_eigenvalues(weak)[0].clamp_min(0.0)
            used = weak.shape[0]
            if torch.isclose(new, variance, rtol=1e-6):
                variance = new
                break
            variance = new
        if edge_correction:
            variance = variance / (1.0 - math.sqrt(patch * patch / used)) ** 2
        out.append(variance.sqrt())
    return _result(torch.stack(out).to(y.device), unbatched)


def noise_pca_tail(y: Tensor, mask: Optional[Tensor] = None, patch: int = PATCH) -> Union[Tensor, float]:
    """σ_n² = the mean of the longest tail of the patch covariance's eigenvalues whose mean does
    not exceed its median (Chen et al. 2015): the eigenvalues that noise alone explains.

    Returns:
        (B,) float64 (a float for an unbatched y); NaN where fewer than 64 patches are fully observed.
    """
    y, m, unbatched = _batch(y, mask)
    out = []
    for patches in _patches(y, m, patch):
        if patches.shape[0] < MIN_SAMPLES:
            out.append(torch.tensor(math.nan, dtype=torch.float64))
            continue
        eig = _covariance_eigenvalues(patches).clamp_min(0.0).flip(0)  # descending
        variance = eig[-1]
        for i in range(eig.numel()):
            tail = eig[i:]
            tau = tail.mean()
            if int((tail > tau).sum()) >= int((tail < tau).sum()):  # as many above the mean as below: noise alone
                variance = tau
                break
        out.append(variance.sqrt())
    return _result(torch.stack(out).to(y.device), unbatched)


#: name -> estimator(y, mask): the candidates the benchmark measures (benchmarks/noise_level.py).
ESTIMATORS: dict[str, Callable[..., Union[Tensor, float]]] = {
    "mad_haar": lambda y, mask=None: noise_wavelet_mad(y, mask, "haar"),
    "mad_db2": lambda y, mask=None: noise_wavelet_mad(y, mask, "db2"),
    "mad_db4": lambda y, mask=None: noise_wavelet_mad(y, mask, "db4"),
    "pca_weak_texture": noise_pca_weak_texture,
    "pca_weak_texture_mp": lambda y, mask=None: noise_pca_weak_texture(y, mask, edge_correction=True),
    "pca_tail": noise_pca_tail,
}


def estimate_sigma_n(y: Tensor, mask: Optional[Tensor] = None) -> Union[Tensor, float]:
    """The engine's σ_n estimate (`--sigma-n auto`), [0, 1] units (docs/blind.md §1).

    Args:
        y: the measurement, (B, C, H, W) or (C, H, W) in [0, 1] (for SR the low-resolution image).
        mask: for inpainting, 1 = observed ((H, W), (B, H, W) or (B, 1 or C, H, W)); only observed
            pixels are used.
    Returns:
        (B,) float64 tensor, or a float for an unbatched y.
    Raises:
        DiffPIRError: a malformed y or mask, or too few observed pixels to estimate from.
    """
    sigma = noise_pca_weak_texture(y, mask, edge_correction=True)
    fallback = noise_wavelet_mad(y, mask, "haar")
    if isinstance(sigma, float):
        sigma = fallback if math.isnan(sigma) else sigma
        if math.isnan(sigma):
            raise DiffPIRError("y: too few observed pixels to estimate the noise level from; give --sigma-n")
        return sigma
    sigma = torch.where(torch.isnan(sigma), fallback, sigma)
    if torch.isnan(sigma).any():
        raise DiffPIRError("y: too few observed pixels to estimate the noise level from; give --sigma-n")
    return sigma
