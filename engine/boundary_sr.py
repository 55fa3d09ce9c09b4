"""Boundary-aware super-resolution of real photos: the masked data term on an extended domain (docs/algorithm.md §11).

An SR measurement of a photo is the decimated blur of a larger scene, not of a periodic image:
with the circular model (§6.3) the last rows are explained by the blur of the first ones, and
the restoration gets a wrap-around line. `ExtendedSuperResolution(SuperResolution(sf, k))`
restores it as deblurring's ExtendedDeblur does (engine/boundary.py):

1. **Extended domain.** The low-resolution grid is extended by ⌈r / sf⌉ pixels on every side
   (r the kernel's radius), rounded up so that the high-resolution grid sf·(h_e, w_e) is a
   multiple of the UNet's size multiple with no prime factor above 7 (`measurement_pads`).
2. **Masked data term.** Only the frame is observed: y = S D (k ⊛ x) with ⊛ circular on the
   extended high-resolution grid, D the top-left decimation and S the low-resolution frame
   (SᵀS = M). The prox argmin_x ||y - S D K x||² + ρ ||x - x0||² has no closed form.
3. **PCG in the measurement's coordinates.** Preconditioned by the circular SR solve
   (KᵀDᵀDK + ρ)⁻¹, started from the circular closed form on a warm-start measurement, every
   iterate of the image-space PCG lies in the range of KᵀDᵀ: d = KᵀDᵀ v with v on the
   low-resolution extended grid, since (KᵀDᵀDK + ρ)⁻¹ KᵀDᵀ = KᵀDᵀ (G + ρ)⁻¹ with
   G = D K Kᵀ Dᵀ, diagonal in the low-resolution Fourier basis (fold(|otf|²), §6.3). So the
   PCG runs on v, sf² times fewer values than the image: the system operator is
   v ↦ M G v + ρ v, the preconditioner the division by G + ρ, and the image-space inner
   products are ⟨KᵀDᵀa, KᵀDᵀb⟩ = ⟨a, G b⟩. It is the same PCG, iterate for iterate, as
   deblurring's masked step (sf = 1 gives its system), at one low-resolution FFT pair per
   iteration; d = KᵀDᵀ v at the end is the circular step's own last line (conj(otf) · tile).
4. **Warm start and carry** as in deblurring: v₀ = (G + ρ)⁻¹ (w - D K x0) is the circular
   prox on w; w starts as the edgetaper-extended y (`begin_loop`) and is then the frame of y
   with the pads holding D K x of the previous solution (no extra FFT: M D K x is tracked).
5. **Crop.** `output` returns the sf·h × sf·w frame.

Methods that declare the `extended_boundary` capability run on it (DiffPIR, DPIR: its prox;
DPS: A and Aᵀ); the others get the "taper" model (engine/boundary_taper.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from .boundary import DEFAULT_PCG_ITERS, EARLY_PCG_ITERS, EARLY_RHO, MaskedDataStepBase
from .boundary_taper import FourierExtension
from .operators import SuperResolution, fold_mean, tile

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

__all__ = ["ExtendedSuperResolution", "MaskedSRDataStep"]

_TINY = 1e-30


@dataclass(frozen=True)
class MaskedSRDataStep(MaskedDataStepBase):
    """SR of a photo on an extended domain of which only the frame is observed: A = S D K, bound to y.

    Vectors of the PCG are full fft2 spectra on the low-resolution extended grid (h_e, w_e);
    x0 and the returned correction are fft2 spectra on the high-resolution one (sf h_e, sf w_e).
    Tensor fields plus static values, so the graph runtime's static copy works (the carried
    warm start is a buffer written in place); per-sample kernels are a batch dimension on otf
    and otf_abs2_folded, as in FourierDataStep.
    """

    otf: Tensor  # (Bk, 1, sf h_e, sf w_e) complex: fft2 OTF of the kernel on the extended grid
    otf_abs2_folded: Tensor  # (Bk, 1, h_e, w_e) real: G = fold(|otf|²), the diagonal of D K Kᵀ Dᵀ
    mask: Tensor  # (1, 1, h_e, w_e) real: M, 1 on the low-resolution frame, 0 on the pads
    y_ext_spectrum: Tensor  # (B, C, h_e, w_e) complex: fft2(y_ext), the first warm start
    my_spectrum: Tensor  # (B, C, h_e, w_e) complex: fft2(M y_ext), y zero-filled
    warm_spectrum: Tensor  # (B, C, h_e, w_e) complex, carried: fft2(w), the next warm start's measurement
    y: Tensor  # (B, C, h, w): the measured frame
    top: int
    left: int
    sf: int
    iters: int = DEFAULT_PCG_ITERS
    early_iters: int = EARLY_PCG_ITERS  # while ρ < early_rho (at least iters)
    early_rho: float = EARLY_RHO
    carry: bool = True

    # ------------------------------------------------------------------ the prox

    def __call__(self, x0: Tensor, rho: float | Tensor) -> Tensor:
        """argmin_x ||y - S D K x||² + ρ ||x - x0||², x0 (B, C, sf h_e, sf w_e) in [0, 1]."""
        return x0 + torch.fft.ifft2(self.correction(torch.fft.fft2(x0), rho)).real

    def iterations(self, rho: float | Tensor) -> int:
        """PCG iterations of a solve at ρ: `iters`, or `early_iters` (if more) while ρ < `early_rho`
        or when ρ is a tensor (whose value is not read: no host sync)."""
        early = not isinstance(rho, (int, float)) or rho < self.early_rho
        return max(self.iters, self.early_iters) if early else self.iters

    def begin_loop(self) -> None:
        """Start the carried warm start afresh (the reverse loop calls this before its first step)."""
        self.warm_spectrum.copy_(self.y_ext_spectrum)

    def _masked(self, spectrum: Tensor) -> Tensor:
        """fft2(M · ifft2(spectrum)) on the low-resolution grid."""
        return torch.fft.fft2(self.mask * torch.fft.ifft2(spectrum).real)

    def _dot(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨KᵀDᵀ a, KᵀDᵀ b⟩ per (image, channel) up to a constant factor (it cancels in CG's ratios):
        Σ G Re(conj(a) b) over the low-resolution spectrum, (B, C, 1, 1) real."""
        products = a.real * b.real + a.imag * b.imag
        return (self.otf_abs2_folded * products).sum(dim=(-2, -1), keepdim=True)

    def correction(self, x0_spectrum: Tensor, rho: float | Tensor) -> Tensor:
        """The fft2 spectrum of d = x - x0 = KᵀDᵀ v (see the module docstring), given fft2(x0)."""
        gram = self.otf_abs2_folded
        inverse = 1.0 / (gram + rho)
        ax0 = fold_mean(self.otf * x0_spectrum, self.sf)  # fft2(D K x0)
        v = (self.warm_spectrum - ax0) * inverse  # 1. the circular prox on w
        masked_ax = self._masked(ax0 + gram * v)  # fft2(M D K x), kept current below
        r = self.my_spectrum - masked_ax - rho * v  # the residual, b - (AᵀA + ρ) d = KᵀDᵀ r
        z = r * inverse
        p = z
        rz = self._dot(r, z)
        for _ in range(self.iterations(rho)):  # 2. PCG, a count fixed by ρ: no data-dependent control flow
            masked_gp = self._masked(gram * p)
            q = masked_gp + rho * p
            alpha = rz / self._dot(p, q).clamp_min(_TINY)
            v = v + alpha * p
            r = r - alpha * q
            masked_ax = masked_ax + alpha * masked_gp
            z = r * inverse
            rz_next = self._dot(r, z)
            p = z + (rz_next / rz.clamp_min(_TINY)) * p
            rz = rz_next
        if self.carry:  # 3. w = M y_ext + (1 - M) D K x
            self.warm_spectrum.copy_((ax0 + gram * v - masked_ax + self.my_spectrum).detach())
        return self.otf.conj() * tile(v, self.sf)

    # ------------------------------------------------------------------ the linear algebra of A

    def measurement(self) -> Tensor:
        return self.y

    def forward(self, x: Tensor) -> Tensor:
        """A x = the low-resolution frame of D (k ⊛ x): (B, C, sf h_e, sf w_e) -> (B, C, h, w)."""
        h, w = self.y.shape[-2:]
        low = torch.fft.ifft2(fold_mean(self.otf * torch.fft.fft2(x), self.sf)).real
        return low[..., self.top : self.top + h, self.left : self.left + w]

    def adjoint(self, r: Tensor) -> Tensor:
        """Aᵀ r = Kᵀ Dᵀ (r zero-filled into the low-resolution extended grid): (B, C, h, w) -> (B, C, sf h_e, sf w_e)."""
        h, w = r.shape[-2:]
        he, we = self.mask.shape[-2:]
        filled = torch.nn.functional.pad(r, (self.left, we - w - self.left, self.top, he - h - self.top))
        return torch.fft.ifft2(self.otf.conj() * tile(torch.fft.fft2(filled), self.sf)).real


class ExtendedSuperResolution(FourierExtension):
    """Super-resolution of a real photo: `SuperResolution`'s kernel and scale, restored on an extended
    domain with the masked data term, cropped back (the module docstring).

    Args:
        sr: the SuperResolution operator (one kernel, or one per sample).
        multiple: the UNet's size multiple; the high-resolution extended size is a multiple of it.
        iters, early_iters, early_rho: PCG iterations per data step (engine.boundary's defaults).
        carry: warm-start each data step from the previous step's solution.
    """

    boundary = "extend"

    def __init__(self, sr: SuperResolution, multiple: int = 16, iters: int = DEFAULT_PCG_ITERS, carry: bool = True,
                 early_iters: int = EARLY_PCG_ITERS, early_rho: float = EARLY_RHO) -> None:  # fmt: skip
        if not isinstance(sr, SuperResolution):
            raise DiffPIRError(f"ExtendedSuperResolution: applies to a SuperResolution operator, not to {type(sr).__name__}")
        super().__init__(sr, multiple)
        for name, value in (("iters", iters), ("early_iters", early_iters)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DiffPIRError(f"{name}: expected an integer >= 0, got {value!r}")
        if isinstance(early_rho, bool) or not isinstance(early_rho, (int, float)) or not 0 <= early_rho < float("inf"):
            raise DiffPIRError(f"early_rho: expected a finite number >= 0, got {early_rho!r}")
        if not isinstance(carry, bool):
            raise DiffPIRError(f"carry: expected True or False, got {carry!r}")
        self.iters, self.early_iters, self.early_rho, self.carry = iters, early_iters, float(early_rho), carry

    @property
    def scale(self) -> int:
        return self.sf

    def data_step(self, y: Tensor) -> MaskedSRDataStep:
        self._check(y)
        h, w = y.shape[-2:]
        top, _, left, _ = self.pads(y.shape)
        he, we = self.extended_shape(y.shape)
        otf, gram = self.inner._spectral_terms(he * self.sf, we * self.sf, y)
        y_ext = self.extend(y)
        mask = torch.zeros(1, 1, he, we, device=y.device, dtype=y.dtype)
        mask[..., top : top + h, left : left + w] = 1
        y_ext_spectrum = torch.fft.fft2(y_ext)
        return MaskedSRDataStep(
            otf=otf,
            otf_abs2_folded=gram,
            mask=mask,
            y_ext_spectrum=y_ext_spectrum,
            my_spectrum=torch.fft.fft2(mask * y_ext),
            warm_spectrum=y_ext_spectrum.clone(),
            y=y,
            top=top,
            left=left,
            sf=self.sf,
            iters=self.iters,
            early_iters=self.early_iters,
            early_rho=self.early_rho,
            carry=self.carry,
        )
