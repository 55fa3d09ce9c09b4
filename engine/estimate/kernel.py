"""The kernel update of blind deblurring: a blur kernel fitted to an image estimate and the measurement.

Given an estimate x0 of the sharp image and the blurred measurement y, the M-step of the
expectation-maximisation scheme of docs/blind.md §2 solves, on image gradients,

    k = argmin_k  Σ_c Σ_{d ∈ {h, v}} ‖M_d ⊙ (∂_d y_c − k ⊛ ∂_d x0_c)‖² + α ‖k‖² + β ‖∇k‖²

over kernels supported on an N × N window centred at (N//2, N//2) (psf2otf's convention),
then projects the solution onto blur kernels: non-negative, small entries (below a fraction of
the peak) set to zero, sum one. Gradients rather than intensities because the kernel acts on
edges: flat regions carry no information about it and only add the low frequencies' error
(the choice of Cho & Lee 2009, Levin et al. 2011, Pan et al. 2014). ⊛ is circular convolution
on x0's grid; M_d selects the pixels where ∂_d y is observed: everywhere for a circular
measurement, the frame (less one pixel) for a photo restored on the extended domain of
engine/boundary.py, so the wrap-around inside the unobserved pads never enters the fit.

The normal equations are solved by a fixed number of conjugate-gradient iterations, warm
started from the previous kernel: tensor operations with no data-dependent control flow, so
the CUDA-graph runtime records the update as it is. With M = 1 the Gram operator is diagonal
in the Fourier domain (Σ |∂̂x0|²), one FFT pair of a single channel per iteration; with a
mask it costs 2 (2C) + 2 FFTs per iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional


from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module



if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

__all__ = [
    "KernelFit", "best_window", "fit_kernel", "fit_kernel_gradients", "gaussian_kernel", "initial_kernel", "kernel_error",
    "project_kernel",
]  # fmt: skip

_TINY = 1e-30


@dataclass(frozen=True)
class KernelFit:
    """The M-step's settings (docs/blind.md §2).

    Attributes:
        alpha: weight of ‖k‖², relative to the gradient energy Σ ‖∂x0‖² of the image estimate.
        beta: weight of ‖∇k‖² (smoothness), relative likewise.
        iters: conjugate-gradient iterations per update (fixed: no convergence test, capturable).
        threshold: entries below this fraction of the kernel's peak are set to zero (sparsity).
    """

    alpha: float = 1e-3
    beta: float = 1e-3
    iters: int = 20
    threshold: float = 0.05

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DiffPIRError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.threshold >= 1:
            raise DiffPIRError(f"threshold: expected a fraction of the peak in [0, 1), got {self.threshold}")
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or not 0 <= self.iters <= 1000:
            raise DiffPIRError(f"iters: expected an integer in [0, 1000], got {self.iters!r}")


# --------------------------------------------------------------------------- kernels


def gaussian_kernel(size: int, std: float, device: Any = "cpu", dtype: Optional["torch.dtype"] = None) -> Tensor:
    """An isotropic Gaussian of standard deviation `std` px sampled on size × size, centred at size//2, sum 1
    (dtype None: float64)."""
    r = torch.arange(size, device=device, dtype=dtype or torch.float64) - size // 2
    g = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2.0 * std * std))
    return g / g.sum()


def initial_kernel(size: int, std: float = 1.0, device: Any = "cpu", dtype: Optional["torch.dtype"] = None) -> Tensor:
    """The blind loop's first kernel guess, (size, size): a small Gaussian (std 0 = a centred delta; dtype None: float64)."""
    dtype = dtype or torch.float64
    if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
        raise DiffPIRError(f"kernel size: expected an odd integer >= 3, got {size!r}")
    if std <= 0:
        k = torch.zeros(size, size, device=device, dtype=dtype)
        k[size // 2, size // 2] = 1.0
        return k
    return gaussian_kernel(size, std, device, dtype)


def _embed(kernel: Tensor, height: int, width: int) -> Tensor:
    """(B, N, N) -> (B, 1, H, W): zero-padded with the centre (N//2, N//2) moved to (0, 0)."""
    n = kernel.shape[-1]
    padded = F.pad(kernel[:, None], (0, width - n, 0, height - n))
    return torch.roll(padded, shifts=(-(n // 2), -(n // 2)), dims=(-2, -1))


def _extract(image: Tensor, n: int) -> Tensor:
    """The adjoint of `_embed`: (B, 1, H, W) -> (B, N, N) around (0, 0)."""
    return torch.roll(image, shifts=(n // 2, n // 2), dims=(-2, -1))[:, 0, :n, :n]


def project_kernel(kernel: Tensor, threshold: float = 0.05) -> Tensor:
    """Onto blur kernels: negative entries and entries below threshold × peak set to 0, then sum 1.
    A kernel with no positive entry becomes the centred delta (its sum would divide by zero).

    Args:
        kernel: (B, N, N) or (N, N).
    """
    k = kernel.clamp_min(0.0)
    peak = k.amax(dim=(-2, -1), keepdim=True)
    k = torch.where(k >= threshold * peak, k, torch.zeros_like(k))
    total = k.sum(dim=(-2, -1), keepdim=True)
    n = k.shape[-1]
    delta = torch.zeros_like(k)
    delta[..., n // 2, n // 2] = 1.0
    return torch.where(total > _TINY, k / total.clamp_min(_TINY), delta)


# --------------------------------------------------------------------------- the M-step


def _gradients(x: Tensor) -> Tensor:
    """Circular forward differences: (B, C, H, W) -> (B, 2C, H, W), [∂_h x, ∂_v x]."""
    return torch.cat([x - torch.roll(x, 1, dims=-1), x - torch.roll(x, 1, dims=-2)], dim=1)


def gradient_masks(mask: Tensor, channels: int) -> Tensor:
    """Where ∂_h y and ∂_v y are observed (both pixels of the difference in the frame): (1, 2C, H, W)."""
    mh = mask * torch.roll(mask, 1, dims=-1)
    mv = mask * torch.roll(mask, 1, dims=-2)
    return torch.cat([mh.expand(-1, channels, -1, -1), mv.expand(-1, channels, -1, -1)], dim=1)


def _laplacian(kernel: Tensor) -> Tensor:
    """∇ᵀ∇ k on the N × N support with zero outside (Dirichlet): the gradient of ½‖∇k‖²."""
    stencil = kernel.new_tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])[None, None]
    return F.conv2d(kernel[:, None], stencil, padding=1)[:, 0]


def _batch_dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=(-2, -1), keepdim=True)


def fit_kernel(
    x0: Tensor,
    y: Tensor,
    kernel: Tensor,
    fit: KernelFit = KernelFit(),
    mask: Optional[Tensor] = None,
    project: bool = True,
    proximal: float = 0.0,
) -> Tensor:
    """One M-step: the kernel that best maps x0's gradients to y's (module docstring).

    Args:
        x0: the image estimate, (B, C, H, W) in [0, 1].
        y: the measurement on x0's grid, (B, C, H, W) (for the extended domain: the frame
            zero-filled into the grid; only pixels where `mask` is 1 are read).
        kernel: the warm start, (B or 1, N, N) with N odd; N is the support.
        fit: the regularisation and iteration count.
        mask: (1, 1, H, W), 1 where y is observed; None = everywhere (circular).
        project: project the least-squares solution onto blur kernels (False: the raw solve,
            for tests against a dense solution).
        proximal: γ of ‖k − kernel‖² (absolute; see fit_kernel_gradients).
    Returns:
        (B, N, N) kernels in x0's dtype.
    """
    weights = None if mask is None else gradient_masks(mask.to(x0.dtype), x0.shape[1])
    return fit_kernel_gradients(_gradients(x0), _gradients(y), kernel, fit, weights, project, proximal)


def fit_kernel_gradients(
    gx: Tensor,
    gy: Tensor,
    kernel: Tensor,
    fit: KernelFit = KernelFit(),
    weights: Optional[Tensor] = None,
    project: bool = True,
    proximal: float = 0.0,
) -> Tensor:
    """The M-step on given gradient images: argmin_k Σ ‖W ⊙ (gy − k ⊛ gx)‖² + α‖k‖² + β‖∇k‖² + γ‖k − k₀‖²
    on the support, k₀ the warm start.

    Args:
        gx: the sharp image's gradient channels, (B, G, H, W) (e.g. [∂_h x, ∂_v x] per colour,
            or edges selected from them).
        gy: the measurement's, (B, G, H, W), on the same grid.
        kernel: the warm start, (B or 1, N, N).
        weights: (1 or B, G, H, W), 1 where gy is observed; None = everywhere.
        proximal: γ, an absolute weight (a trust region around the warm start: the kernel moves
            only as far as the data pays for).
    Returns:
        (B, N, N) kernels in gx's dtype.
    """
    b, _, height, width = gx.shape
    n = kernel.shape[-1]
    if weights is not None:
        gy = gy * weights
    gx_spectrum = torch.fft.rfft2(gx)  # (B, G, H, W//2+1)
    energy = gx.pow(2).sum(dim=(1, 2, 3)).reshape(b, 1, 1)  # the scale of AᵀA's diagonal: α and β are relative to it
    alpha = fit.alpha * energy + proximal
    beta = fit.beta * energy

    if weights is None:
        gram = gx_spectrum.abs().pow(2).sum(dim=1, keepdim=True)  # (B, 1, H, W//2+1): diagonal of AᵀA

        def normal(k: Tensor) -> Tensor:
            ak = torch.fft.irfft2(gram * torch.fft.rfft2(_embed(k, height, width)), s=(height, width))
            return _extract(ak, n) + alpha * k + beta * _laplacian(k)

    else:

        def normal(k: Tensor) -> Tensor:
            blurred = torch.fft.irfft2(gx_spectrum * torch.fft.rfft2(_embed(k, height, width)), s=(height, width))
            back = torch.fft.rfft2(weights * blurred)
            ak = torch.fft.irfft2((gx_spectrum.conj() * back).sum(dim=1, keepdim=True), s=(height, width))
            return _extract(ak, n) + alpha * k + beta * _laplacian(k)

    rhs_image = torch.fft.irfft2((gx_spectrum.conj() * torch.fft.rfft2(gy)).sum(dim=1, keepdim=True), s=(height, width))
    k = kernel.to(gx.dtype).expand(b, n, n).clone()
    rhs = _extract(rhs_image, n) + proximal * k
    r = rhs - normal(k)
    p = r
    rr = _batch_dot(r, r)
    for _ in range(fit.iters):  # a fixed count: no data-dependent control flow
        q = normal(p)
        step = rr / _batch_dot(p, q).clamp_min(_TINY)
        k = k + step * p
        r = r - step * q
        rr_next = _batch_dot(r, r)
        p = r + (rr_next / rr.clamp_min(_TINY)) * p
        rr = rr_next
    return project_kernel(k, fit.threshold) if project else k


# --------------------------------------------------------------------------- evaluation


def kernel_error(estimate: Tensor, truth: Tensor, max_shift: int = 0) -> Tensor:
    """‖k̂ − k‖ / ‖k‖, both zero-padded to a common centred size; with max_shift > 0, the smallest
    over integer shifts of k̂ within ±max_shift (a blind estimate is defined up to a shift).

    Args:
        estimate, truth: (B, n, n) / (n, n) kernels, sizes may differ (odd).
    Returns:
        (B,) float64.
    """
    e = estimate.to(torch.float64)
    t = truth.to(torch.float64)
    e = e[None] if e.ndim == 2 else e
    t = t[None] if t.ndim == 2 else t
    size = max(e.shape[-1], t.shape[-1]) + 2 * max_shift

    def centred(k: Tensor) -> Tensor:
        pad = (size - k.shape[-1]) // 2
        return F.pad(k, (pad, size - k.shape[-1] - pad, pad, size - k.shape[-2] - pad))

    e, t = centred(e), centred(t)
    norm = t.flatten(1).norm(dim=1)
    best = None
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            err = (torch.roll(e, (dy, dx), dims=(-2, -1)) - t).flatten(1).norm(dim=1) / norm
            best = err if best is None else torch.minimum(best, err)
    return best


def best_window(y: Tensor, side: int, candidates: int = 5) -> tuple[int, int]:
    """(top, left) of the side × side window with the most gradient energy, among a candidates² grid."""
    height, width = y.shape[-2:]
    energy = _gradients(y.to(torch.float64)).pow(2).sum(dim=(0, 1))
    integral = F.pad(energy.cumsum(0).cumsum(1), (1, 0, 1, 0))
    tops = sorted({round(i * (height - side) / max(1, candidates - 1)) for i in range(candidates)})
    lefts = sorted({round(j * (width - side) / max(1, candidates - 1)) for j in range(candidates)})
    best, where = -1.0, (0, 0)
    for t in tops:
        for l in lefts:
            total = float(integral[t + side, l + side] - integral[t, l + side] - integral[t + side, l] + integral[t, l])
            if total > best:
                best, where = total, (t, l)
    return where
