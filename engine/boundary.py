"""Boundary-aware deblurring of real photos: the masked data term on an extended domain (docs/algorithm.md §11).

The Fourier data step (§6.2) models blur as *circular* convolution. A photo is a window
onto a larger scene: its border pixels were blurred with what lay outside the frame, not
with the opposite border, and the circular model answers with coloured ringing bands
along the edges. `ExtendedDeblur(Deblur(k))` restores such a photo as the window it is:

1. **Extended domain.** The image is restored on a grid larger than the measurement by
   the kernel's radius r on every side, rounded up (bottom/right) to a size that is a
   multiple of the UNet's size multiple and has no prime factor above 7 (fast FFTs):
   `pads_for`.
2. **Masked data term.** Only the frame is observed: y = M (k ⊛ x_ext) with ⊛ circular on
   the extended grid (the wrap now happens in the unobserved pads, where nothing is
   compared) and M = 1 on the frame, 0 on the pads. The prox
   argmin_x ||M (y_ext - K x)||² + ρ ||x - x0||² solves (KᵀMK + ρI) x = KᵀM y_ext + ρ x0,
   which has no closed form. `MaskedFourierDataStep` solves it by a few preconditioned
   conjugate-gradient iterations (8 per step while ρ < 1e-3, then 2), preconditioned by the
   circular solve F⁻¹[F · / (|K̂|² + ρ)] and started from the engine's closed form on a
   measurement whose pads hold the blur of the previous step's solution (the carried warm
   start; at the loop's first step, the edgetaper-extended measurement y_ext).
3. **Edgetaper.** y_ext (the first warm start, and the sampler's initial estimate) is y
   reflected half-sample-symmetrically onto the extended grid, blended by a raised cosine
   towards its own circular blur so that it wraps smoothly (`edgetaper_extend`).
4. **Crop.** The sampler returns `operator.output(x, y.shape)`: the frame.

The PCG runs in the Fourier domain (x, r, p as rfft2 spectra, inner products by Parseval):
one FFT pair per iteration (the mask), and the conj(K̂)-before-division ordering of the
engine's residual form, so float32 roundoff is amplified by at most 1/(2√ρ), not 1/ρ.
No data-dependent Python control flow: the CUDA-graph runtime records it as it is (the
iteration count depends on ρ, a Python number fixed per step; the carried warm start is a
buffer written in place).

Methods whose config declares the `extended_boundary` capability run on it (they use only its
prox, or A and Aᵀ: DiffPIR, DPIR, DPS); methods that need closed forms of A (the
pseudo-inverse, singular values, range filters, (AAᵀ + μ)⁻¹) are refused with a pointer to
`--boundary taper` (engine/boundary_taper.py), which `auto` gives them.

The study behind the choice (strategies measured: circular, reflect, cross-fade, edgetaper,
masked): docs/algorithm.md §11 and benchmarks/results/boundary/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Sequence

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from .boundary_models import BOUNDARIES  # the --boundary choices, declared with each model's help and needs
from .operators import RCOND, Deblur, _batch_param, check_image_batch

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

__all__ = [
    "BOUNDARIES", "DEFAULT_PCG_ITERS", "EARLY_PCG_ITERS", "EARLY_RHO", "ExtendedDeblur", "MaskedFourierDataStep",
    "edgetaper_extend", "good_size", "kernel_radius", "pads_for", "reflect_extend", "taper_weights",
]  # fmt: skip

#: PCG iterations per data step, from the carried warm start (the previous step's solution). While
#: ρ < EARLY_RHO (the first steps: the system's condition number grows as 1/ρ, and the denoiser's
#: estimate still moves a lot from step to step) a step takes EARLY_PCG_ITERS instead. Measured on
#: the boundary benchmark's photos (docs/algorithm.md §11, benchmarks/results/boundary_cost/):
#: 8 while ρ < 1e-3, then 2, restores as well as the former 10 at every step (within 0.05 dB)
#: with 40 % of the iterations; 2 from the first step loses up to 0.6 dB with the motion kernel.
DEFAULT_PCG_ITERS = 2
EARLY_PCG_ITERS = 8
EARLY_RHO = 1e-3
_TINY = 1e-30

Pads = tuple[int, int, int, int]  # top, bottom, left, right


# --------------------------------------------------------------------------- sizes


def kernel_radius(kernel_shape: Sequence[int]) -> int:
    """How far a (.., kh, kw) kernel centred at (kh//2, kw//2) (psf2otf's convention) reaches."""
    kh, kw = (int(s) for s in tuple(kernel_shape)[-2:])
    return max(kh // 2, kw // 2)


def good_size(n: int, multiple: int = 1) -> int:
    """The smallest size >= n that is a multiple of `multiple` and has no prime factor above 7."""
    m = -(-int(n) // multiple) * multiple
    while True:
        k = m
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += multiple


def pads_for(height: int, width: int, radius: int, multiple: int = 1) -> Pads:
    """(top, bottom, left, right): `radius` on every side, the extended size rounded up by `good_size`
    (the surplus goes to the bottom/right). 256² with a 61×61 kernel and multiple 16: (30, 34, 30, 34)."""
    he, we = good_size(height + 2 * radius, multiple), good_size(width + 2 * radius, multiple)
    return (radius, he - height - radius, radius, we - width - radius)


# --------------------------------------------------------------------------- extension


def _symmetric_indices(n: int, before: int, after: int, device: torch.device) -> Tensor:
    """Indices of a length-n axis extended by half-sample symmetric reflection (… b a | a b … y z | z y …);
    periodic with period 2n, so pads of any size work."""
    i = torch.arange(-before, n + after, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def reflect_extend(y: Tensor, pads: Pads) -> Tensor:
    """(.., h, w) -> (.., h + top + bottom, w + left + right) by half-sample symmetric reflection
    (scipy.ndimage 'reflect', numpy/MATLAB 'symmetric')."""
    t, b, l, r = pads
    h, w = y.shape[-2:]
    return y.index_select(-2, _symmetric_indices(h, t, b, y.device)).index_select(-1, _symmetric_indices(w, l, r, y.device))


def _taper_axis(n: int, before: int, after: int) -> Tensor:
    """1 on the n frame pixels; in a pad of width P, (1 + cos(π d / P)) / 2 at distance d = 1..P (0 at the seam)."""
    parts = []
    if before:
        d = torch.arange(before, 0, -1, dtype=torch.float64)
        parts.append(0.5 + 0.5 * torch.cos(math.pi * d / before))
    parts.append(torch.ones(n, dtype=torch.float64))
    if after:
        d = torch.arange(1, after + 1, dtype=torch.float64)
        parts.append(0.5 + 0.5 * torch.cos(math.pi * d / after))
    return torch.cat(parts)


def taper_weights(height: int, width: int, pads: Pads) -> Tensor:
    """The edgetaper weight W₂ = w_rows ⊗ w_cols on the extended grid, float64 (H, W):
    1 on the frame, falling as a raised cosine across each pad to 0 at the wrap seam."""
    t, b, l, r = pads
    return _taper_axis(height, t, b)[:, None] * _taper_axis(width, l, r)[None, :]


def _rfilter(v: Tensor, spectrum: Tensor) -> Tensor:
    """Circular filtering of real (.., H, W) images by an rfft2 spectrum (.., H, W//2+1)."""
    return torch.fft.irfft2(spectrum * torch.fft.rfft2(v), s=v.shape[-2:])


def edgetaper_extend(y: Tensor, pads: Pads, otf: Tensor) -> Tensor:
    """y_ext = W₂ y_ref + (1 - W₂) (k ⊛ y_ref), y_ref the symmetric extension of y (MATLAB's edgetaper idea).

    Where W₂ = 0 (the outermost pad pixels, the wrap seam) y_ext is exactly a circularly
    blurred image, so it wraps without a jump. otf: the kernel's rfft2 OTF on the extended
    grid, (Bk, 1, H, W//2+1).
    """
    ref = reflect_extend(y, pads)
    weight = taper_weights(y.shape[-2], y.shape[-1], pads).to(y.device, y.dtype)
    return weight * ref + (1 - weight) * _rfilter(ref, otf)


# --------------------------------------------------------------------------- the masked data step


def _refusal(what: str) -> str:
    return (
        f"{what}: needs a closed form of the blur model that the boundary-aware (masked) model does not have; "
        "use --boundary taper (or auto, which picks it), or a method that runs on it (--help --method NAME says)"
    )


class MaskedDataStepBase:
    """What the sampler and the method check read on every masked extended-domain data step
    (deblurring here, super-resolution in engine/boundary_sr.py)."""

    #: The sampler's operator family, and the method capability this data step requires.
    family: ClassVar[str] = "fourier"
    requires: ClassVar[str] = "extended_boundary"

    @staticmethod
    def refusal(method: str) -> str:
        """The one-line error for a method that cannot run on this data step."""
        return _refusal(f"method {method}")

    # The closed forms the mask destroys: a method that needs one is refused before it runs
    # (Capabilities.extended_boundary); these answer a direct call the same way.

    def gram_solve(self, r: Tensor, mu: float | Tensor) -> Tensor:
        raise DiffPIRError(_refusal("(AAᵀ + μ)⁻¹"))

    def pinv(self, r: Tensor, rcond: float = RCOND) -> Tensor:
        raise DiffPIRError(_refusal("the pseudo-inverse"))

    def singular_values(self) -> Tensor:
        raise DiffPIRError(_refusal("the singular values"))

    def range_filter(self, x: Tensor, coefficients: Tensor, rcond: float = RCOND) -> Tensor:
        raise DiffPIRError(_refusal("the range filter"))


@dataclass(frozen=True)
class MaskedFourierDataStep(MaskedDataStepBase):
    """Blur on an extended domain of which only the frame is observed: A = S K, bound to y.

    K is circular convolution on the extended (H, W) grid, S keeps the frame
    [top, top + h) × [left, left + w) (Sᵀ S = M, the mask). The prox
    argmin_x ||y - A x||² + ρ ||x - x0||² solves (KᵀMK + ρ) x = KᵀM y_ext + ρ x0; in
    residual form, x = x0 + d with (KᵀMK + ρ) d = KᵀM (y_ext - K x0).

    The solve (`correction`) has three parts, each replaceable on its own (a masked SR step
    would swap K for "blur, then decimate" and the preconditioner for its own closed form):

    1. *Warm start*: d₀ = the circular closed form on the warm-start measurement w,
       conj(K̂)(Ŵ - K̂ X̂0) / (|K̂|² + ρ), i.e. the exact prox if the pads held w.
    2. *PCG*: conjugate-gradient steps on the masked system, preconditioned by the circular
       solve (KᵀK + ρ)⁻¹ = F⁻¹ diag(1 / (|K̂|² + ρ)) F; one FFT pair each (M). How many is
       static per call (`iterations(ρ)`): `iters`, or `early_iters` while ρ < `early_rho`.
    3. *Carry*: w := M y_ext + (1 - M) K x, the frame of the measurement with the pads filled
       by the blur of this step's solution, for the next call's warm start. No FFT: M K x is
       tracked through the PCG's own updates. `begin_loop` (run_steps calls it at each loop's
       start) sets w back to y_ext, the edgetaper extension, so every restoration starts the
       same way and the first call is the stateless solve.

    The denoiser's estimate moves little between steps once the schedule is past its first
    few, so the carried pads are nearly right and 2 iterations there do what 10 did from
    y_ext; the first, ill-conditioned steps (ρ < early_rho) take early_iters (docs/algorithm.md
    §11, benchmarks/results/boundary_cost/). ρ is a Python number on every method's path, so
    the count is fixed when a graph is recorded.

    All vectors live as rfft2 spectra; inner products use Parseval's weights. Tensor fields
    only, plus static values, so the graph runtime's static copy works: the carried w is
    one more buffer, written in place (no data-dependent control flow). Per-sample kernels
    are a batch dimension on otf / otf_abs2 as in FourierDataStep.
    """

    otf: Tensor  # (Bk, 1, H, W//2+1) complex: rfft2 OTF of the kernel on the extended grid
    otf_abs2: Tensor  # (Bk, 1, H, W//2+1) real: |otf|², the diagonal of KᵀK
    mask: Tensor  # (1, 1, H, W) real: M, 1 on the frame and 0 on the pads
    hermitian: Tensor  # (1, 1, 1, W//2+1) real: Parseval weights of the rfft2 columns (1 or 2)
    y_ext_spectrum: Tensor  # (B, C, H, W//2+1) complex: rfft2(y_ext), the first warm start
    kt_my_spectrum: Tensor  # (B, C, H, W//2+1) complex: rfft2(KᵀM y_ext) = rfft2(Aᵀ y)
    my_spectrum: Tensor  # (B, C, H, W//2+1) complex: rfft2(M y_ext) = rfft2(Sᵀ y), y zero-filled (kernel-free)
    warm_spectrum: Tensor  # (B, C, H, W//2+1) complex, carried: rfft2(w), the next warm start's measurement
    y: Tensor  # (B, C, h, w): the measured frame
    top: int
    left: int
    iters: int = DEFAULT_PCG_ITERS
    early_iters: int = EARLY_PCG_ITERS  # while ρ < early_rho (at least iters)
    early_rho: float = EARLY_RHO
    carry: bool = True  # update w after each solve (False: every call starts from y_ext)

    # ------------------------------------------------------------------ the prox

    def __call__(self, x0: Tensor, rho: float | Tensor) -> Tensor:
        """argmin_x ||y - S K x||² + ρ ||x - x0||², x0 (B, C, H, W) in [0, 1]."""
        return x0 + torch.fft.irfft2(self.correction(torch.fft.rfft2(x0), rho), s=x0.shape[-2:])

    def iterations(self, rho: float | Tensor) -> int:
        """PCG iterations of a solve at ρ: `iters`, or `early_iters` (if more) while ρ < `early_rho`
        or when ρ is a tensor (whose value is not read: no host sync)."""
        early = not isinstance(rho, (int, float)) or rho < self.early_rho
        return max(self.iters, self.early_iters) if early else self.iters

    def begin_loop(self) -> None:
        """Start the carried warm start afresh (from the edgetaper extension): the reverse loop
        calls this before its first step, so a restoration never sees another's state."""
        self.warm_spectrum.copy_(self.y_ext_spectrum)

    def _masked(self, spectrum: Tensor) -> Tensor:
        """rfft2(M · irfft2(spectrum))."""
        return torch.fft.rfft2(self.mask * torch.fft.irfft2(spectrum, s=self.mask.shape[-2:]))

    def _dot(self, a: Tensor, b: Tensor) -> Tensor:
        """⟨irfft2(a), irfft2(b)⟩ per (image, channel), times H·W (the scale cancels in CG's ratios),
        as a complex (B, C, 1, 1) tensor with zero imaginary part: real · complex products take
        a slow mixed-dtype path in torch, complex · complex a fast one."""
        weights = self.hermitian[0, 0, 0].repeat_interleave(2)  # (re, im) of each column (the graph runtime widens row 0)
        products = torch.view_as_real(a) * torch.view_as_real(b)
        total = torch.matmul(products.flatten(-2), weights).sum(-1)
        return total[..., None, None].to(a.dtype)

    def correction(self, x0_spectrum: Tensor, rho: float | Tensor) -> Tensor:
        """The spectrum of d = x - x0 (see the class docstring), given rfft2(x0)."""
        otf, otf_c = self.otf, self.otf.conj()
        # 1 / (|K̂|² + ρ) once per call, as complex: multiplying by it is the preconditioner
        # (and the circular solve); conj(K̂) still comes before it (the residual form's order).
        inverse = (1.0 / (self.otf_abs2 + rho)).to(x0_spectrum.dtype)
        d = otf_c * (self.warm_spectrum - otf * x0_spectrum) * inverse  # 1. the circular prox on w
        masked_kx = self._masked(otf * (x0_spectrum + d))  # rfft2(M K x), kept current below
        r = self.kt_my_spectrum - otf_c * masked_kx - rho * d  # b - (KᵀMK + ρ) d
        z = r * inverse
        p = z
        rz = self._dot(r, z)
        for _ in range(self.iterations(rho)):  # 2. PCG, a count fixed by ρ: no data-dependent control flow
            masked_kp = self._masked(otf * p)
            q = otf_c * masked_kp + rho * p
            alpha = rz / self._dot(p, q).real.clamp_min(_TINY).to(rz.dtype)
            d = torch.addcmul(d, alpha, p)
            r = torch.addcmul(r, -alpha, q)
            masked_kx = torch.addcmul(masked_kx, alpha, masked_kp)
            z = r * inverse
            rz_next = self._dot(r, z)
            p = torch.addcmul(z, rz_next / rz.real.clamp_min(_TINY).to(rz.dtype), p)
            rz = rz_next
        if self.carry:  # 3. w = M y_ext + (1 - M) K x: the frame's data, the pads' blur of x
            self.warm_spectrum.copy_((otf * (x0_spectrum + d) - masked_kx + self.my_spectrum).detach())
        return d

    # ------------------------------------------------------------------ the linear algebra of A

    def measurement(self) -> Tensor:
        return self.y

    def forward(self, x: Tensor) -> Tensor:
        """A x = the frame of k ⊛ x: (B, C, H, W) -> (B, C, h, w)."""
        h, w = self.y.shape[-2:]
        blurred = _rfilter(x, self.otf)
        return blurred[..., self.top : self.top + h, self.left : self.left + w]

    def adjoint(self, r: Tensor) -> Tensor:
        """Aᵀ r = Kᵀ (r zero-filled into the extended grid): (B, C, h, w) -> (B, C, H, W)."""
        h, w = r.shape[-2:]
        H, W = self.mask.shape[-2:]
        bottom, right = H - h - self.top, W - w - self.left
        filled = torch.nn.functional.pad(r, (self.left, right, self.top, bottom))
        return _rfilter(filled, self.otf.conj())


def _hermitian_weights(width: int) -> Tensor:
    """Parseval weights of an rfft2's W//2+1 columns: 2 for a column that stands for itself and its mirror."""
    weights = torch.full((width // 2 + 1,), 2.0, dtype=torch.float64)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights.reshape(1, 1, 1, -1)


# --------------------------------------------------------------------------- the operator


class ExtendedDeblur:
    """Deblurring of a real photo: `Deblur`'s kernel, restored on an extended domain, cropped back.

    The Operator protocol on the extended image (docs/algorithm.md §11): image_shape is the
    extended shape, data_step(y) the masked data step, init_estimate(y) the edgetaper-extended
    measurement, and output(x, y_shape) crops the sampler's result back to the frame.
    forward / adjoint are the blur K and Kᵀ on the extended grid (circular there); the
    observed measurement of x is the frame of K x, i.e. A = S K (`crop(forward(x), y.shape)`,
    or `data_step(y).forward(x)`), since which pixels are the frame depends on y's size.

    Args:
        deblur: the Deblur operator (one kernel, or one per sample).
        multiple: the UNet's size multiple; the extended size is a multiple of it (no model padding).
        iters: PCG iterations per data step.
        early_iters, early_rho: iterations per data step while ρ < early_rho (if more than iters).
        carry: warm-start each data step from the previous step's solution (the pads filled by
            its blur); False starts every step from the edgetaper extension.
    """

    pad_mode = "circular"
    init_is_noisy = True
    boundary = "extend"
    sf = 1

    def __init__(
        self,
        deblur: Deblur,
        multiple: int = 16,
        iters: int = DEFAULT_PCG_ITERS,
        carry: bool = True,
        early_iters: int = EARLY_PCG_ITERS,
        early_rho: float = EARLY_RHO,
    ) -> None:
        if not isinstance(deblur, Deblur):
            raise DiffPIRError(f"--boundary extend: applies to deblurring (a Deblur operator), not to {type(deblur).__name__}")
        for name, value, low in (("multiple", multiple, 1), ("iters", iters, 0), ("early_iters", early_iters, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DiffPIRError(f"{name}: expected an integer >= {low}, got {value!r}")
        if isinstance(early_rho, bool) or not isinstance(early_rho, (int, float)) or not 0 <= early_rho < math.inf:
            raise DiffPIRError(f"early_rho: expected a finite number >= 0, got {early_rho!r}")
        if not isinstance(carry, bool):
            raise DiffPIRError(f"carry: expected True or False, got {carry!r}")
        self.inner = deblur
        self.multiple = multiple
        self.iters = iters
        self.early_iters = early_iters
        self.early_rho = float(early_rho)
        self.carry = carry

    def __repr__(self) -> str:
        return (f"ExtendedDeblur(kernel {tuple(self.kernel.shape)}, multiple {self.multiple}, iters {self.iters} "
                f"({self.early_iters} while rho < {self.early_rho:g}), carry {self.carry})")

    @property
    def kernel(self) -> Tensor:
        return self.inner.kernel

    @property
    def radius(self) -> int:
        return kernel_radius(self.kernel.shape)

    def pads(self, y_shape: Sequence[int]) -> Pads:
        """(top, bottom, left, right) of the extension for a measurement of y_shape (.., h, w)."""
        return pads_for(int(y_shape[-2]), int(y_shape[-1]), self.radius, self.multiple)

    def image_shape(self, y_shape: Sequence[int]) -> torch.Size:
        t, b, l, r = self.pads(y_shape)
        return torch.Size((*y_shape[:-2], y_shape[-2] + t + b, y_shape[-1] + l + r))

    def _spectra(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """rfft2 OTF and |OTF|² on the (height, width) grid: the inner operator's cached float64
        psf2otf (cast once), its first W//2+1 columns."""
        otf, otf_abs2 = self.inner._spectral_terms(height, width, like)
        columns = width // 2 + 1
        return otf[..., :columns].contiguous(), otf_abs2[..., :columns].contiguous()

    def _check(self, y: Tensor, name: str = "y") -> None:
        check_image_batch(y, name)
        _batch_param(self.kernel, y.shape[0], "kernel")

    def extend(self, y: Tensor) -> Tensor:
        """The edgetaper-extended measurement y_ext, (B, C, H, W)."""
        self._check(y)
        pads = self.pads(y.shape)
        otf, _ = self._spectra(y.shape[-2] + pads[0] + pads[1], y.shape[-1] + pads[2] + pads[3], y)
        return edgetaper_extend(y, pads, otf)

    def init_estimate(self, y: Tensor) -> Tensor:
        return self.extend(y)

    def data_step(self, y: Tensor) -> MaskedFourierDataStep:
        self._check(y)
        h, w = y.shape[-2:]
        pads = self.pads(y.shape)
        height, width = h + pads[0] + pads[1], w + pads[2] + pads[3]
        otf, otf_abs2 = self._spectra(height, width, y)
        y_ext = edgetaper_extend(y, pads, otf)
        mask = torch.zeros(1, 1, height, width, device=y.device, dtype=y.dtype)
        mask[..., pads[0] : pads[0] + h, pads[2] : pads[2] + w] = 1
        y_ext_spectrum = torch.fft.rfft2(y_ext)
        my_spectrum = torch.fft.rfft2(mask * y_ext)
        return MaskedFourierDataStep(
            otf=otf,
            otf_abs2=otf_abs2,
            mask=mask,
            hermitian=_hermitian_weights(width).to(y.device, y.dtype),
            y_ext_spectrum=y_ext_spectrum,
            kt_my_spectrum=otf.conj() * my_spectrum,
            my_spectrum=my_spectrum,
            warm_spectrum=y_ext_spectrum.clone(),
            y=y,
            top=pads[0],
            left=pads[2],
            iters=self.iters,
            early_iters=self.early_iters,
            early_rho=self.early_rho,
            carry=self.carry,
        )

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        return self.data_step(y)(x0, rho)

    def forward(self, x: Tensor) -> Tensor:
        """K x on the extended grid (circular there); its frame is the measurement's model."""
        return self.inner.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        """Kᵀ on the extended grid."""
        return self.inner.adjoint(y)

    def crop(self, x: Tensor, y_shape: Sequence[int]) -> Tensor:
        """The frame of an extended image (.., H, W) -> (.., h, w), contiguous."""
        t, _, l, _ = self.pads(y_shape)
        h, w = int(y_shape[-2]), int(y_shape[-1])
        return x[..., t : t + h, l : l + w].contiguous()

    def output(self, x: Tensor, y_shape: Sequence[int]) -> Tensor:
        """The sampler's hook (engine.sampler.operator_output): the restored frame."""
        return self.crop(x, y_shape)
