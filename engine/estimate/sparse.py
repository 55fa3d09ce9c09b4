"""A classical blind kernel estimate: coarse to fine, with an L0 gradient prior on the image (docs/blind.md §2.2).

The scheme of Xu, Zheng & Jia ("Unnatural L0 sparse representation for natural image
deblurring", CVPR 2013) and Pan, Hu, Su & Yang ("Deblurring text images via L0-regularized
intensity and gradient prior", CVPR 2014), in the simplified form Anger, Facciolo & Delbracio
analysed ("Blind image deblurring using the l0 gradient prior", IPOL 2019): no edge selection,
and the sharp image, not the kernel, carried from level to level. On a pyramid of the colour
measurement (scale ½ per level, from a 3-5 px kernel up to N × N at full resolution), each
level alternates, `iters` times,

1. **k-step**: `engine.estimate.kernel.fit_kernel_gradients` of the current sharp image's
   gradients to y's (all channels, one kernel), projected onto blur kernels, pieces holding
   less than `prune` of the mass removed, recentred on its centre of mass;
2. **x-step**: x = argmin ‖k ⊛ x − y‖² + λ ‖∇x‖₀, by half-quadratic splitting (the auxiliary
   gradients are hard-thresholded at √((λ + λ_n)/β), then x is one Fourier-domain solve; β
   doubles from 2λ to β_max). The L0 prior keeps only strong, step-like edges: an image made of
   them is what a sharp image looks like to the kernel, and it explains no blur away. λ decays
   by 1.1 per iteration; λ_n = noise_scale · 2σ² is the gradient energy of the level's noise
   (σ = σ_n times the level's scale), so that noise is not kept as edges.

A real photo is not circular: with `boundary="extend"` every level restores x on the extended
grid of engine/boundary.py (y reflected and edgetapered into a pad of the kernel's radius) and
the k-step compares gradients only inside the frame, where the measurement is real.

This runs once, before the diffusion loop, at a fraction of one restoration's cost; it reads a
few scalars on the host (the recentring shifts), so it is not part of the captured graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union


from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from ..boundary import edgetaper_extend, good_size
from ..operators import psf2otf
from .noise import estimate_sigma_n
from .kernel import KernelFit, _gradients, best_window, fit_kernel_gradients, gradient_masks, initial_kernel, project_kernel


if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

__all__ = ["CoarseToFine", "estimate_kernel", "estimate_kernel_on_window", "l0_restore", "prune_kernel", "pyramid_sizes", "recentre_kernel"]


@dataclass(frozen=True)
class CoarseToFine:
    """Settings of the coarse-to-fine estimate (module docstring; defaults: docs/blind.md §2.4).

    Attributes:
        lam: λ of the L0 gradient prior at the start of each level ([0, 1] image units).
        lam_decay, lam_min: λ ← max(λ / lam_decay, lam_min) after every iteration.
        iters: x-step / k-step alternations per level.
        ratio: the pyramid's scale step (½: the kernel halves per level).
        coarsest: the smallest kernel support the pyramid goes down to (px).
        beta_max, kappa: the x-step's splitting weight goes from 2λ to beta_max by factors kappa.
        fit: the k-step's regularisation and CG iterations.
        final_threshold: kernel entries below this fraction of the peak are zeroed at the end.
        prune: after each k-step, 8-connected pieces of the kernel with less than this share of
            its mass are removed (0: never).
        colour: fit one kernel to all colour channels (True) or to their mean (False): colour edges
            of equal brightness are edges too (measured: 0.72 -> 0.51 mean kernel error).
        noise_scale: λ_n = noise_scale · 2σ² is added to the L0 weight (0: noise-blind).
    """

    lam: float = 4e-3
    lam_decay: float = 1.1
    lam_min: float = 1e-4
    iters: int = 5
    ratio: float = 0.5
    coarsest: int = 3
    beta_max: float = 1e5
    kappa: float = 2.0
    fit: KernelFit = field(default_factory=lambda: KernelFit(alpha=0.2, beta=0.1, iters=30, threshold=0.05))
    final_threshold: float = 0.05
    prune: float = 0.1
    colour: bool = True
    noise_scale: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise DiffPIRError(f"ratio: expected a scale step in (0, 1), got {self.ratio}")
        if self.lam <= 0 or self.beta_max <= 2 * self.lam or self.kappa <= 1:
            raise DiffPIRError("lam, beta_max, kappa: expected lam > 0, beta_max > 2 lam, kappa > 1")
        if self.iters < 1 or self.coarsest < 3:
            raise DiffPIRError("iters >= 1 and coarsest >= 3 expected")


def _odd(n: float) -> int:
    m = int(math.ceil(n))
    return m if m % 2 else m + 1


def pyramid_sizes(kernel_size: int, prior: CoarseToFine) -> list[tuple[float, int]]:
    """(scale, kernel support) per level, coarsest first: N·ratio^l down to about `coarsest`."""
    levels = max(0, int(math.floor(math.log(prior.coarsest / kernel_size) / math.log(prior.ratio)))) + 1
    return [(prior.ratio**level, _odd(kernel_size * prior.ratio**level)) for level in reversed(range(levels))]


# --------------------------------------------------------------------------- the x-step


def _difference_otfs(height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """OTFs of the backward differences x - roll(x, 1) along W and H (kernel._gradients' operators)."""
    dh = torch.zeros(1, height, width, dtype=like.dtype, device=like.device)
    dh[0, 0, 0], dh[0, 0, 1] = 1.0, -1.0
    dv = torch.zeros(1, height, width, dtype=like.dtype, device=like.device)
    dv[0, 0, 0], dv[0, 1, 0] = 1.0, -1.0
    return torch.fft.fft2(dh)[:, None], torch.fft.fft2(dv)[:, None]


def l0_restore(y: Tensor, otf: Tensor, lam: float, beta_max: float = 1e5, kappa: float = 2.0, floor: Union[float, Tensor] = 0.0) -> Tensor:
    """argmin_x ‖k ⊛ x − y‖² + λ ‖∇x‖₀ (circular), by half-quadratic splitting (Xu et al. 2011/2013).

    Args:
        y: (B, C, H, W); otf: (B or 1, 1, H, W) complex, the kernel's (psf2otf).
        floor: added to λ (per sample, (B, 1, 1, 1)): the gradient energy of the noise, so that a
            gradient no larger than noise makes is never an edge.
    """
    height, width = y.shape[-2:]
    dh, dv = _difference_otfs(height, width, y)
    y_spectrum = torch.fft.fft2(y)
    numerator = otf.conj() * y_spectrum
    kernel_power = otf.abs().pow(2)
    gradient_power = dh.abs().pow(2) + dv.abs().pow(2)
    x = y
    beta = 2.0 * lam
    while beta < beta_max:  # a count fixed by (lam, beta_max, kappa), not by the data
        h = x - torch.roll(x, 1, dims=-1)
        v = x - torch.roll(x, 1, dims=-2)
        keep = (h * h + v * v) >= (lam + floor) / beta
        h, v = h * keep, v * keep
        divergence = (h - torch.roll(h, -1, dims=-1)) + (v - torch.roll(v, -1, dims=-2))  # Dᵀ[h, v]
        x = torch.fft.ifft2((numerator + beta * torch.fft.fft2(divergence)) / (kernel_power + beta * gradient_power)).real
        beta *= kappa
    return x


def recentre_kernel(kernel: Tensor) -> Tensor:
    """Shift each (B, N, N) kernel by whole pixels so that its centre of mass is nearest the centre
    (mass shifted out of the window is dropped, then the kernel is renormalised)."""
    n = kernel.shape[-1]
    r = torch.arange(n, dtype=kernel.dtype, device=kernel.device)
    total = kernel.sum(dim=(-2, -1)).clamp_min(1e-30)
    cy = (kernel.sum(dim=-1) * r).sum(dim=-1) / total
    cx = (kernel.sum(dim=-2) * r).sum(dim=-1) / total
    out = []
    for i in range(kernel.shape[0]):
        dy, dx = int(round(float(cy[i]) - n // 2)), int(round(float(cx[i]) - n // 2))
        k = F.pad(kernel[i], (n, n, n, n))
        k = torch.roll(k, shifts=(-dy, -dx), dims=(-2, -1))[n : 2 * n, n : 2 * n]
        out.append(k)
    return project_kernel(torch.stack(out), 0.0)


def prune_kernel(kernel: Tensor, mass: float = 0.1) -> Tensor:
    """Zero the 8-connected components of a kernel's support that hold less than `mass` of its sum
    (isolated specks the noise left; Pan et al.'s last step), then renormalise. (B, N, N)."""
    b, n, _ = kernel.shape
    support = kernel > 0
    labels = torch.where(support, torch.arange(1, n * n + 1, dtype=kernel.dtype, device=kernel.device).reshape(1, n, n).expand(b, -1, -1),
                         torch.zeros_like(kernel))  # fmt: skip
    while True:  # propagate the largest label through each component (at most n² rounds)
        grown = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * support
        if torch.equal(grown, labels):
            break
        labels = grown
    index = labels.long().flatten(1)
    sums = torch.zeros(b, n * n + 1, dtype=kernel.dtype, device=kernel.device).scatter_add_(1, index, kernel.flatten(1))
    total = kernel.sum(dim=(-2, -1)).reshape(b, 1)
    keep = (sums.gather(1, index) >= mass * total).reshape(b, n, n)
    return project_kernel(kernel * keep, 0.0)


def _resize_kernel(kernel: Tensor, size: int) -> Tensor:
    """(B, n, n) -> (B, size, size), bilinear, non-negative, sum 1."""
    if kernel.shape[-1] == size:
        return kernel
    k = F.interpolate(kernel[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
    return project_kernel(k, 0.0)


# --------------------------------------------------------------------------- the estimate


def _grey(y: Tensor) -> Tensor:
    return y.mean(dim=1, keepdim=True)


def estimate_kernel(
    y: Tensor,
    kernel_size: int,
    prior: CoarseToFine = CoarseToFine(),
    boundary: str = "circular",
    sigma_n: Optional[Union[float, Tensor]] = None,
) -> Tensor:
    """The blur kernel of y, coarse to fine (module docstring).

    Args:
        y: the blurred measurement, (B, C, H, W) in [0, 1].
        kernel_size: N, the support (odd).
        boundary: "circular" (y was blurred circularly) or "extend" (a photo: the frame of a larger scene).
        sigma_n: y's noise level ([0, 1] units; a float or one per sample); None = estimated
            (engine.estimate.estimate_sigma_n). The L0 weight grows with it, so that noise is not
            kept as edges.
    Returns:
        (B, N, N) kernels, float64, non-negative, sum 1, centred on their centre of mass.
    """
    if boundary not in ("circular", "extend"):
        raise DiffPIRError(f"boundary: expected circular or extend, got {boundary!r}")
    if kernel_size % 2 == 0 or kernel_size < 3:
        raise DiffPIRError(f"kernel size: expected an odd integer >= 3, got {kernel_size}")
    if sigma_n is None:
        sigma_n = estimate_sigma_n(y)
    sigma = torch.as_tensor(sigma_n, dtype=torch.float32, device=y.device).reshape(-1, 1, 1, 1).expand(y.shape[0], 1, 1, 1)
    y = y.to(torch.float32)  # float32: twice the FFT speed of float64, and the fit needs no more
    grey = y if prior.colour else _grey(y)
    height, width = grey.shape[-2:]
    sharp: Optional[Tensor] = None
    kernel: Optional[Tensor] = None
    for scale, size in pyramid_sizes(kernel_size, prior):
        h, w = max(2 * size, round(height * scale)), max(2 * size, round(width * scale))
        ys = grey if (h, w) == (height, width) else F.interpolate(grey, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        # The sharp estimate, not the kernel, carries over between levels (Anger et al. 2019): the
        # first kernel of a level is fitted to the previous level's image, upsampled.
        sharp = ys if sharp is None else F.interpolate(sharp, size=(h, w), mode="bilinear", align_corners=False)
        # bilinear downsampling by `scale` averages ~1/scale² pixels: the level's noise is σ_n · scale
        noise_power = prior.noise_scale * 2.0 * (sigma * scale) ** 2  # E|∇n|² of the level's noise
        kernel, sharp = _level(ys, sharp, size, prior, boundary, noise_power)
    assert kernel is not None
    kernel = project_kernel(kernel.to(torch.float64), prior.final_threshold)
    return recentre_kernel(kernel)


def _level(y: Tensor, sharp: Tensor, size: int, prior: CoarseToFine, boundary: str, noise_power: Tensor) -> tuple[Tensor, Tensor]:
    """The k-step / x-step alternations at one pyramid level; returns (kernel, sharp image on y's grid)."""
    h, w = y.shape[-2:]
    if boundary == "extend":
        r = size // 2
        H, W = good_size(h + 2 * r), good_size(w + 2 * r)
        pads = (r, H - h - r, r, W - w - r)
        mask = torch.zeros(1, 1, H, W, dtype=y.dtype, device=y.device)
        mask[..., r : r + h, r : r + w] = 1.0
        weights = gradient_masks(mask, y.shape[1])
        y_grid = F.pad(y, (pads[2], pads[3], pads[0], pads[1]))
        sharp = F.pad(sharp, (pads[2], pads[3], pads[0], pads[1]), mode="replicate")
    else:
        H, W, pads, weights, y_grid = h, w, None, None, y
    gy = _gradients(y_grid)
    lam = prior.lam
    kernel = initial_kernel(size, 0.0, y.device, y.dtype)[None].expand(y.shape[0], -1, -1)
    for _ in range(prior.iters):
        kernel = fit_kernel_gradients(_gradients(sharp), gy, kernel, prior.fit, weights)
        if prior.prune > 0:
            kernel = prune_kernel(kernel, prior.prune)
        kernel = recentre_kernel(kernel).to(y.dtype)
        otf = psf2otf(kernel, H, W)
        y_work = y if pads is None else edgetaper_extend(y, pads, otf[..., : W // 2 + 1])
        sharp = l0_restore(y_work, otf, lam, prior.beta_max, prior.kappa, floor=noise_power)
        lam = max(lam / prior.lam_decay, prior.lam_min)
    if pads is not None:
        sharp = sharp[..., pads[0] : pads[0] + h, pads[2] : pads[2] + w]
    return kernel, sharp


def estimate_kernel_on_window(
    y: Tensor, kernel_size: int, window: int = 512, prior: CoarseToFine = CoarseToFine(), boundary: str = "extend",
    sigma_n: Optional[Union[float, Tensor]] = None,
) -> tuple[Tensor, tuple[int, int]]:
    """The kernel of a large photo, estimated once on one window: ((B, N, N) kernel, (top, left)).

    One blur kernel holds for the whole photo (the engine's model), so a window of it carries the
    information at a fraction of the cost; the caller then restores the whole photo with the
    non-blind path (tiles, the extended boundary) and this kernel (docs/blind.md §2.5). The window
    is the one with the most gradient energy among a 5 × 5 grid of candidates: edges carry the kernel.

    Args:
        y: (B, C, H, W) in [0, 1]; window: the window's side (the image's shorter side if smaller).
        boundary: "extend" for a photo (the window's border was blurred with the scene around it).
        sigma_n: y's noise level (None: estimated on the window).
    Raises:
        DiffPIRError: a kernel support larger than a quarter of the window.
    """
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        raise DiffPIRError(f"y: expected a (B, C, H, W) tensor, got {getattr(y, 'shape', type(y).__name__)}")
    side = min(window, *y.shape[-2:])
    if 4 * kernel_size > side:
        raise DiffPIRError(f"--kernel-size {kernel_size}: larger than a quarter of the {side}-px window it is estimated on")
    top, left = best_window(y, side)
    return estimate_kernel(y[..., top : top + side, left : left + side], kernel_size, prior, boundary, sigma_n), (top, left)
