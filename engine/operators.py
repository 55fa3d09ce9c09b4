"""Degradation operators y = H(x) + n, each with its closed-form data step (docs/algorithm.md §6).

Every operator works on images in [0, 1] of shape (B, C, H, W) and solves

    prox(x0, y, rho) = argmin_x ||y - H(x)||^2 + rho ||x - x0||^2

in the *residual form* x = x0 + H^T (H H^T + rho I)^-1 (y - H x0). The official
code divides a difference of nearly equal terms by rho (~1e-6 in early steps) and
loses up to 3e-2 in float32; the residual form is algebraically equal and stable.

Two families, one closed form each:
- Fourier (Deblur = sf 1, SuperResolution = sf 2..4): circular convolution with a
  kernel, then top-left decimation by sf. H H^T is diagonal in the low-resolution
  Fourier domain: the sf x sf block mean of |otf|^2 (Zhao et al. 2016).
- Elementwise (Inpaint, Denoise = mask of ones): H = diag(mask).

Per-sample operators in one batch are just a batch dimension on the kernel or mask.
The sampler calls ``data_step(y)`` once per image: it checks sizes and precomputes
the spectra, so each step costs one FFT, one elementwise combination and one IFFT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Union, runtime_checkable

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

ArrayLike = Union[np.ndarray, "Tensor"]
SR_SCALES = (2, 3, 4)
#: Spectral terms an operator keeps per (size, device, dtype) before starting over.
SPECTRA_CACHE_SIZE = 4


#: Singular values at or below this are treated as zero (the null space) by the
#: pseudo-inverse and the range filters. Blur kernels sum to 1, so the largest singular
#: value of every built-in operator is 1 and the threshold is relative. 3e-2 is the
#: cut-off DDRM's deblurring operator uses.
RCOND = 3e-2


@runtime_checkable
class DataStep(Protocol):
    """An operator bound to one measurement y: the data step and the linear algebra of A.

    A acts on [0, 1] images (B, C, H, W) -> (B, C, h, w). Every method builds its data
    consistency from these primitives; each is a closed form in the operator's own basis
    (Fourier for blur and SR, pixels for masks). Range filters and the pseudo-inverse treat
    singular values <= rcond as zero.
    """

    def __call__(self, x0: Tensor, rho: float | Tensor) -> Tensor:
        """prox: argmin_x ||y - A x||^2 + rho ||x - x0||^2 = x0 + A^T (A A^T + rho)^-1 (y - A x0)."""
        ...

    def measurement(self) -> Tensor:
        """y, (B, C, h, w) in [0, 1]."""
        ...

    def forward(self, x: Tensor) -> Tensor:
        """A x."""
        ...

    def adjoint(self, r: Tensor) -> Tensor:
        """A^T r."""
        ...

    def gram_solve(self, r: Tensor, mu: float | Tensor) -> Tensor:
        """(A A^T + mu I)^-1 r for mu > 0."""
        ...

    def pinv(self, r: Tensor, rcond: float = RCOND) -> Tensor:
        """A^+ r, singular values <= rcond dropped."""
        ...

    def singular_values(self) -> Tensor:
        """The singular values s of A on its basis grid (broadcastable, see range_filter)."""
        ...

    def range_filter(self, x: Tensor, coefficients: Tensor, rcond: float = RCOND) -> Tensor:
        """sum_i f(s_i) v_i v_i^T x over the range of A (s_i > rcond); `coefficients` holds
        f(s_i) on the grid of `singular_values()`. With f = 1 it is the projector A^+ A."""
        ...


@runtime_checkable
class Operator(Protocol):
    """What the sampler needs from a degradation (deepinv-style physics)."""

    #: How to pad images up to the UNet's size multiple ('circular' for FFT operators).
    pad_mode: str
    #: Whether init_estimate(y) carries the measurement noise sigma_n (docs/algorithm.md §5).
    init_is_noisy: bool

    def forward(self, x: Tensor) -> Tensor: ...
    def adjoint(self, y: Tensor) -> Tensor: ...
    def data_step(self, y: Tensor) -> DataStep: ...
    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor: ...
    def init_estimate(self, y: Tensor) -> Tensor: ...
    def image_shape(self, y_shape: torch.Size) -> torch.Size: ...


# --------------------------------------------------------------------------- helpers


def check_image_batch(y: Tensor, name: str = "y") -> None:
    """Raise DiffPIRError unless y is a finite floating (B, C, H, W) tensor."""
    if not isinstance(y, torch.Tensor):
        raise DiffPIRError(f"{name}: expected a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 4:
        raise DiffPIRError(f"{name}: expected shape (B, C, H, W), got {tuple(y.shape)}")
    if not y.is_floating_point():
        raise DiffPIRError(f"{name}: expected a floating tensor, got {y.dtype}")
    if y.numel() == 0:
        raise DiffPIRError(f"{name}: is empty (shape {tuple(y.shape)})")
    if y.device.type not in ("cpu", "cuda"):
        raise DiffPIRError(f"{name}: is on device {y.device.type!r}; expected a cpu or cuda tensor")
    if not torch.isfinite(y).all():
        raise DiffPIRError(f"{name}: contains NaN or Inf")


def _as_float64(a: ArrayLike, name: str) -> Tensor:
    """A real numpy array, torch tensor or nested list as a CPU float64 tensor; anything else
    (None, text, objects, complex numbers, a meta tensor) is refused, never cast."""
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise DiffPIRError(f"{name}: holds complex numbers ({a.dtype}); expected real values")
        if a.device.type not in ("cpu", "cuda"):
            raise DiffPIRError(f"{name}: is on device {a.device.type!r}; expected a cpu or cuda tensor")
        t = a.detach().to("cpu", torch.float64)
    else:
        if a is None or isinstance(a, (str, bytes)):
            raise DiffPIRError(f"{name}: expected a real 2-D array (numpy or torch), got {type(a).__name__}")
        try:
            array = np.asarray(a)
        except (TypeError, ValueError) as e:
            raise DiffPIRError(f"{name}: not an array ({e})") from None
        if array.dtype.kind == "c":
            raise DiffPIRError(f"{name}: holds complex numbers ({array.dtype}); expected real values")
        if array.dtype.kind not in "buif" or array.dtype.fields is not None:
            raise DiffPIRError(f"{name}: expected real numbers, got an array of dtype {array.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    if not torch.isfinite(t).all():
        raise DiffPIRError(f"{name}: contains NaN or Inf")
    return t


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def psf2otf(kernel: Tensor, height: int, width: int) -> Tensor:
    """MATLAB psf2otf / official p2o: zero-pad to (H, W), centre to (0, 0), FFT (docs/algorithm.md §6.2).

    Args:
        kernel: (Bk, kh, kw) real kernels.
    Returns:
        (Bk, 1, H, W) complex optical transfer functions.
    """
    kh, kw = kernel.shape[-2:]
    padded = kernel.new_zeros(kernel.shape[0], 1, height, width)
    padded[:, 0, :kh, :kw] = kernel
    padded = torch.roll(padded, shifts=(-(kh // 2), -(kw // 2)), dims=(-2, -1))
    return torch.fft.fft2(padded)


def fold_mean(spectrum: Tensor, sf: int) -> Tensor:
    """Average the sf x sf tiles of an (.., H, W) spectrum into (.., H/sf, W/sf).

    The DFT of a top-left decimated image is this mean of its spectrum's tiles.
    """
    if sf == 1:
        return spectrum
    *lead, h, w = spectrum.shape
    tiles = spectrum.reshape(*lead, sf, h // sf, sf, w // sf)
    return tiles.mean(dim=(-4, -2))


def tile(spectrum: Tensor, sf: int) -> Tensor:
    """Repeat an (.., h, w) spectrum sf x sf times: the DFT of zero-filled upsampling."""
    if sf == 1:
        return spectrum
    return spectrum.repeat(*([1] * (spectrum.ndim - 2)), sf, sf)


def _batch_param(param: Tensor, batch: int, name: str) -> None:
    if param.shape[0] not in (1, batch):
        raise DiffPIRError(f"{name}: has {param.shape[0]} per-sample entries but the batch has {batch} images")


# --------------------------------------------------------------------------- Fourier family


@dataclass(frozen=True)
class FourierDataStep:
    """Residual-form closed-form data step for circular blur + top-left decimation by sf.

    x = x0 + IFFT( otf_conj * tile( (Y - fold(otf * FFT(x0))) / (fold(|otf|^2) + rho) ) )
    with Y the DFT of the (low-resolution) measurement.
    """

    otf: Tensor  # (Bk, 1, H, W) complex
    otf_abs2_folded: Tensor  # (Bk, 1, H/sf, W/sf) real: diagonal of H H^T
    y_spectrum: Tensor  # (B, C, H/sf, W/sf) complex
    sf: int

    def __call__(self, x0: Tensor, rho: float | Tensor) -> Tensor:
        return self.apply_correction(x0, self.correction(torch.fft.fft2(x0), rho))

    def correction(self, x0_spectrum: Tensor, rho: float | Tensor) -> Tensor:
        """The spectral part, between the FFT and the inverse FFT (kernels/fourier_correction.cu).

        Args:
            x0_spectrum: FFT(x0), (B, C, H, W) complex, x0 in [0, 1].
        Returns:
            otf_conj * tile((Y - fold(otf * X0)) / (fold(|otf|^2) + rho)), (B, C, H, W) complex.
        """
        residual = self.y_spectrum - fold_mean(self.otf * x0_spectrum, self.sf)
        return self.otf.conj() * tile(residual / (self.otf_abs2_folded + rho), self.sf)

    def apply_correction(self, x0: Tensor, correction: Tensor) -> Tensor:
        """x0 + Re(IFFT(correction)): the residual form's last step."""
        return x0 + torch.fft.ifft2(correction).real

    # The linear algebra of A = decimate_sf(k * .): A A^T is diagonal in the low-resolution
    # Fourier basis with entries fold(|otf|^2), so every solve is one division there.

    def measurement(self) -> Tensor:
        return torch.fft.ifft2(self.y_spectrum).real

    def forward(self, x: Tensor) -> Tensor:
        return torch.fft.ifft2(fold_mean(self.otf * torch.fft.fft2(x), self.sf)).real

    def adjoint(self, r: Tensor) -> Tensor:
        return torch.fft.ifft2(self.otf.conj() * tile(torch.fft.fft2(r), self.sf)).real

    def gram_solve(self, r: Tensor, mu: float | Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(r) / (self.otf_abs2_folded + mu)).real

    def _range_weights(self, coefficients: Tensor | float, rcond: float) -> Tensor:
        """coefficients / s^2 on the range (s > rcond), 0 on the null space."""
        abs2 = self.otf_abs2_folded
        keep = abs2 > rcond * rcond
        return torch.where(keep, coefficients / torch.where(keep, abs2, torch.ones_like(abs2)), torch.zeros_like(abs2))

    def pinv(self, r: Tensor, rcond: float = RCOND) -> Tensor:
        weighted = torch.fft.fft2(r) * self._range_weights(1.0, rcond)
        return torch.fft.ifft2(self.otf.conj() * tile(weighted, self.sf)).real

    def singular_values(self) -> Tensor:
        return self.otf_abs2_folded.sqrt()

    def range_filter(self, x: Tensor, coefficients: Tensor, rcond: float = RCOND) -> Tensor:
        low = fold_mean(self.otf * torch.fft.fft2(x), self.sf) * self._range_weights(coefficients, rcond)
        return torch.fft.ifft2(self.otf.conj() * tile(low, self.sf)).real


@dataclass(frozen=True, eq=False)
class _FourierOperator:
    """Circular convolution with per-sample kernels followed by top-left decimation by sf."""

    kernel: Tensor  # (Bk, kh, kw) float64, validated
    sf: int = 1
    pad_mode: str = field(default="circular", init=False)
    # (H, W, device, dtype) -> (otf, otf_abs2_folded): the float64 psf2otf runs on the CPU, and
    # a fast path restoring many images with one operator must not pay it per image. Not state:
    # the kernel is immutable, so the cache only ever holds what would be recomputed.
    _spectra: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @staticmethod
    def _validate_kernel(kernel: ArrayLike) -> Tensor:
        k = _as_float64(kernel, "kernel")
        if k.ndim == 2:
            k = k[None]
        if k.ndim != 3 or min(k.shape) < 1:
            raise DiffPIRError(f"kernel: expected 2-D (kh, kw) or per-sample 3-D (B, kh, kw), got shape {tuple(k.shape)}")
        if (k.sum(dim=(-2, -1)) <= 0).any():
            raise DiffPIRError("kernel: expected a positive sum (a blur kernel), got a sum <= 0")
        return k

    def _spectral_terms(self, height: int, width: int, ref: Tensor) -> tuple[Tensor, Tensor]:
        kh, kw = self.kernel.shape[-2:]
        if kh > height or kw > width:
            raise DiffPIRError(f"kernel: {kw}x{kh} is larger than the {width}x{height} image")
        key = (height, width, ref.device, ref.dtype)
        if key not in self._spectra:
            if len(self._spectra) >= SPECTRA_CACHE_SIZE:
                self._spectra.clear()
            otf = psf2otf(self.kernel, height, width)  # float64 precision, cast once
            otf_abs2_folded = fold_mean(otf.abs() ** 2, self.sf)
            self._spectra[key] = (otf.to(ref.device, _complex_dtype(ref.dtype)), otf_abs2_folded.to(ref.device, ref.dtype))
        return self._spectra[key]

    def image_shape(self, y_shape: torch.Size) -> torch.Size:
        return torch.Size((*y_shape[:-2], y_shape[-2] * self.sf, y_shape[-1] * self.sf))

    def _check_image(self, x: Tensor, name: str) -> None:
        check_image_batch(x, name)
        _batch_param(self.kernel, x.shape[0], "kernel")
        if x.shape[-2] % self.sf or x.shape[-1] % self.sf:
            raise DiffPIRError(f"{name}: size {x.shape[-1]}x{x.shape[-2]} is not divisible by the scale {self.sf}")

    def forward(self, x: Tensor) -> Tensor:
        """y = (k * x) decimated by sf, circular boundary; (B, C, H, W) -> (B, C, H/sf, W/sf)."""
        self._check_image(x, "x")
        otf, _ = self._spectral_terms(*x.shape[-2:], x)
        blurred = torch.fft.ifft2(otf * torch.fft.fft2(x)).real
        return blurred[..., :: self.sf, :: self.sf]

    def adjoint(self, y: Tensor) -> Tensor:
        """H^T y: zero-filled upsampling, then correlation with k."""
        check_image_batch(y)
        _batch_param(self.kernel, y.shape[0], "kernel")
        otf, _ = self._spectral_terms(y.shape[-2] * self.sf, y.shape[-1] * self.sf, y)
        return torch.fft.ifft2(otf.conj() * tile(torch.fft.fft2(y), self.sf)).real

    def data_step(self, y: Tensor) -> FourierDataStep:
        check_image_batch(y)
        _batch_param(self.kernel, y.shape[0], "kernel")
        otf, otf_abs2_folded = self._spectral_terms(y.shape[-2] * self.sf, y.shape[-1] * self.sf, y)
        return FourierDataStep(otf, otf_abs2_folded, torch.fft.fft2(y), self.sf)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        """argmin_x ||y - H x||^2 + rho ||x - x0||^2 (docs/algorithm.md §6.2, §6.3), images in [0, 1]."""
        return self.data_step(y)(x0, rho)


class Deblur(_FourierOperator):
    """Circular convolution with a blur kernel (docs/algorithm.md §6.2); kernel (kh, kw) or (B, kh, kw)."""

    init_is_noisy = True

    def __init__(self, kernel: ArrayLike):
        super().__init__(kernel=self._validate_kernel(kernel), sf=1)

    def init_estimate(self, y: Tensor) -> Tensor:
        return y


class SuperResolution(_FourierOperator):
    """Bicubic-kernel blur + top-left decimation by sf in {2, 3, 4} (docs/algorithm.md §6.3).

    The default kernel is the official 25x25 bicubic-equivalent kernel for sf; the
    measurement itself is made by MATLAB-style imresize (a model mismatch by design).
    """

    init_is_noisy = False

    def __init__(self, scale: int, kernel: ArrayLike | None = None):
        if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale not in SR_SCALES:
            raise DiffPIRError(f"scale: expected one of {SR_SCALES} (an int), got {scale!r}")
        if kernel is None:
            from .degrade import bicubic_sr_kernel

            kernel = bicubic_sr_kernel(scale)
        super().__init__(kernel=self._validate_kernel(kernel), sf=int(scale))

    @property
    def scale(self) -> int:
        return self.sf

    def init_estimate(self, y: Tensor) -> Tensor:
        """Bicubic upsampling of y (the official batch script's torch interpolate)."""
        return F.interpolate(y, scale_factor=self.sf, mode="bicubic", align_corners=False)


# --------------------------------------------------------------------------- elementwise family


@dataclass(frozen=True)
class ElementwiseDataStep:
    """x = x0 + m (y - x0) / (m + rho): the mask prox (docs/algorithm.md §6.1) in residual form."""

    mask: Tensor  # (Bm, 1 or C, H, W) in [0, 1]
    y: Tensor

    def __call__(self, x0: Tensor, rho: float | Tensor) -> Tensor:
        return x0 + self.mask * (self.y - x0) / (self.mask + rho)

    # A = diag(m): every solve is elementwise. (For a binary mask the prox above equals
    # x0 + m (y - m x0) / (m^2 + rho); grey masks keep the official formula.)

    def measurement(self) -> Tensor:
        return self.y

    def forward(self, x: Tensor) -> Tensor:
        return self.mask * x

    def adjoint(self, r: Tensor) -> Tensor:
        return self.mask * r

    def gram_solve(self, r: Tensor, mu: float | Tensor) -> Tensor:
        return r / (self.mask * self.mask + mu)

    def pinv(self, r: Tensor, rcond: float = RCOND) -> Tensor:
        keep = self.mask > rcond
        return torch.where(keep, r / torch.where(keep, self.mask, torch.ones_like(self.mask)), torch.zeros_like(r))

    def singular_values(self) -> Tensor:
        return self.mask

    def range_filter(self, x: Tensor, coefficients: Tensor, rcond: float = RCOND) -> Tensor:
        return torch.where(self.mask > rcond, coefficients * x, torch.zeros_like(x))


class Inpaint:
    """Pixel mask, 1 = observed, 0 = missing (docs/algorithm.md §6.1); (H, W) is shared by the channels.

    The mask prox is affine-equivariant, so solving it on [0, 1] images equals the
    official [-1, 1] formula.
    """

    pad_mode = "reflect"
    init_is_noisy = True

    def __init__(self, mask: ArrayLike):
        m = _as_float64(mask, "mask")
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None]
        if m.ndim != 4:
            raise DiffPIRError(f"mask: expected (H, W), (B, H, W) or (B, C, H, W), got shape {tuple(m.shape)}")
        if (m < 0).any() or (m > 1).any():
            raise DiffPIRError("mask: expected values in [0, 1] (1 = observed, 0 = missing)")
        self.mask = m

    def _mask_for(self, x: Tensor, name: str) -> Tensor:
        check_image_batch(x, name)
        _batch_param(self.mask, x.shape[0], "mask")
        if self.mask.shape[1] not in (1, x.shape[1]):
            raise DiffPIRError(f"mask: has {self.mask.shape[1]} channels, expected 1 or {x.shape[1]}")
        if self.mask.shape[-2:] != x.shape[-2:]:
            raise DiffPIRError(
                f"mask: size {self.mask.shape[-1]}x{self.mask.shape[-2]} does not match the "
                f"{x.shape[-1]}x{x.shape[-2]} image"
            )
        return self.mask.to(x.device, x.dtype)

    def image_shape(self, y_shape: torch.Size) -> torch.Size:
        return torch.Size(y_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self._mask_for(x, "x") * x

    def adjoint(self, y: Tensor) -> Tensor:
        return self._mask_for(y, "y") * y

    def data_step(self, y: Tensor) -> ElementwiseDataStep:
        return ElementwiseDataStep(self._mask_for(y, "y"), y)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        return self.data_step(y)(x0, rho)

    def init_estimate(self, y: Tensor) -> Tensor:
        """y with missing pixels 0 ([0,1] units), i.e. -1 in model units (docs/algorithm.md §5)."""
        return self._mask_for(y, "y") * y


class Denoise(Inpaint):
    """H = I: Gaussian denoising (not in the official code); the mask prox with m = 1."""

    def __init__(self) -> None:
        super().__init__(np.ones((1, 1)))

    def _mask_for(self, x: Tensor, name: str) -> Tensor:
        check_image_batch(x, name)
        return torch.ones((), device=x.device, dtype=x.dtype)


# --------------------------------------------------------------------------- batching


def _centre_pad(kernel: Tensor, height: int, width: int) -> Tensor:
    """Zero-pad a (kh, kw) kernel to (height, width) keeping its centre pixel (kh//2, kw//2) centred."""
    kh, kw = kernel.shape[-2:]
    top, left = height // 2 - kh // 2, width // 2 - kw // 2
    out = kernel.new_zeros(height, width)
    out[top : top + kh, left : left + kw] = kernel
    return out


def stack_operators(operators: list) -> Operator:
    """One operator for a batch whose samples each have their own operator of one kind.

    Kernels of different sizes are zero-padded to the largest (same blur, same centre);
    masks must share the image size. Used to batch independent requests together.

    Raises:
        DiffPIRError: operators of different kinds or SR scales.
    """
    if not operators:
        raise DiffPIRError("operators: expected at least one")
    kinds = {type(op) for op in operators}
    if len(kinds) != 1:
        raise DiffPIRError(f"operators: cannot batch different kinds ({', '.join(sorted(k.__name__ for k in kinds))})")
    first = operators[0]
    if len(operators) == 1:
        return first
    if isinstance(first, Denoise):
        return first
    if isinstance(first, Inpaint):
        masks = [op.mask for op in operators]
        if any(m.shape[0] != 1 for m in masks) or len({tuple(m.shape) for m in masks}) != 1:
            raise DiffPIRError("operators: masks to batch must be single masks of one size")
        return Inpaint(torch.cat(masks))
    scales = {op.sf for op in operators}
    if len(scales) != 1:
        raise DiffPIRError(f"operators: cannot batch SR scales {sorted(scales)} together")
    if any(op.kernel.shape[0] != 1 for op in operators):
        raise DiffPIRError("operators: kernels to batch must be single kernels")
    height = max(op.kernel.shape[-2] for op in operators)
    width = max(op.kernel.shape[-1] for op in operators)
    height, width = height + 1 - height % 2, width + 1 - width % 2  # odd: one centre pixel
    kernels = torch.stack([_centre_pad(op.kernel[0], height, width) for op in operators])
    return Deblur(kernels) if isinstance(first, Deblur) else SuperResolution(first.sf, kernels)
