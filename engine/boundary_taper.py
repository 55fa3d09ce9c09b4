"""The "taper" boundary model: a photo restored circularly on an extended grid, then cropped (docs/algorithm.md §11).

`Tapered(op)` (op a Deblur or SuperResolution) extends the measurement y onto a grid larger by
the kernel's reach (`edgetaper_extend`: reflected, blended towards its own blur so that it wraps
smoothly) and runs `op`'s circular data step there. Every closed form of A (pseudo-inverse,
singular values, range filters, (AAᵀ + μ)⁻¹) stays exact, so every method runs on it, which
the masked model ("extend") cannot offer. The circular wrap now happens inside the pads, and
the restored frame is cropped out (`output`).

`FourierExtension` is the grid both extended models of a Fourier operator share (this one and
engine/boundary_sr.py's masked SR): the pads on the measurement grid, the extension of y, the
crop. For super-resolution the measurement grid is the low-resolution one: pads of ⌈r / sf⌉
low-resolution pixels, the extended low-resolution size a multiple of lcm(sf, multiple) / sf, so
the restored (high-resolution) grid is a multiple of the UNet's size multiple and of sf.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from .boundary import Pads, edgetaper_extend, kernel_radius, pads_for
from .operators import FourierDataStep, _batch_param, _complex_dtype, _FourierOperator, check_image_batch

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

__all__ = ["FourierExtension", "Tapered", "measurement_pads"]


def measurement_pads(height: int, width: int, radius: int, sf: int = 1, multiple: int = 1) -> Pads:
    """(top, bottom, left, right) on the measurement grid (low-resolution for sf > 1): ⌈radius / sf⌉ on every
    side, the extended size rounded up by `good_size` to a multiple of lcm(sf, multiple) / sf, so that sf times
    it is a multiple of `multiple`. sf = 1 is `pads_for`."""
    return pads_for(height, width, -(-radius // sf), math.lcm(sf, multiple) // sf)


class FourierExtension:
    """A Fourier operator (blur, blur + decimation) restored on a grid larger than its measurement.

    The Operator protocol on the extended image: image_shape is the extended (high-resolution)
    shape, init_estimate the inner operator's on the extended measurement, forward / adjoint
    the inner operator's on the extended grid (circular there), output crops the frame.
    """

    pad_mode = "circular"
    boundary = ""

    def __init__(self, operator: _FourierOperator, multiple: int = 16) -> None:
        if not isinstance(operator, _FourierOperator):
            raise DiffPIRError(f"--boundary {self.boundary}: applies to deblurring and super-resolution, not to "
                               f"{type(operator).__name__}")  # fmt: skip
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise DiffPIRError(f"multiple: expected an integer >= 1, got {multiple!r}")
        self.inner = operator
        self.multiple = multiple

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.inner).__name__}, kernel {tuple(self.kernel.shape)}, sf {self.sf}, multiple {self.multiple})"

    @property
    def kernel(self) -> Tensor:
        return self.inner.kernel

    @property
    def sf(self) -> int:
        return int(self.inner.sf)

    @property
    def init_is_noisy(self) -> bool:
        return bool(self.inner.init_is_noisy)

    @property
    def radius(self) -> int:
        """The kernel's reach on the restored grid (psf2otf's centre, engine.boundary.kernel_radius)."""
        return kernel_radius(self.kernel.shape)

    def pads(self, y_shape: Sequence[int]) -> Pads:
        """(top, bottom, left, right) of the extension on the measurement grid, for y of shape (.., h, w)."""
        return measurement_pads(int(y_shape[-2]), int(y_shape[-1]), self.radius, self.sf, self.multiple)

    def extended_shape(self, y_shape: Sequence[int]) -> tuple[int, int]:
        """(h_e, w_e): the extended measurement grid."""
        t, b, l, r = self.pads(y_shape)
        return int(y_shape[-2]) + t + b, int(y_shape[-1]) + l + r

    def image_shape(self, y_shape: Sequence[int]) -> torch.Size:
        he, we = self.extended_shape(y_shape)
        return torch.Size((*y_shape[:-2], he * self.sf, we * self.sf))

    def _check(self, y: Tensor, name: str = "y") -> None:
        check_image_batch(y, name)
        _batch_param(self.kernel, y.shape[0], "kernel")

    def taper_filter(self, height: int, width: int, like: Tensor) -> Tensor:
        """The blur the edgetaper blends towards on the (height, width) measurement grid, as an rfft2
        spectrum (Bk, 1, height, width//2+1): the kernel's OTF for deblurring (as ExtendedDeblur), and
        for sf > 1 the model's A Aᵀ = fold(|otf|²), scaled to DC 1, whose output is always the
        measurement of some image, so the extension wraps as a measurement would."""
        otf, gram = self.inner._spectral_terms(height * self.sf, width * self.sf, like)
        columns = width // 2 + 1
        if self.sf == 1:
            return otf[..., :columns].contiguous()
        normalised = gram / gram[..., :1, :1]
        return normalised[..., :columns].to(_complex_dtype(like.dtype)).contiguous()

    def extend(self, y: Tensor) -> Tensor:
        """y_ext (B, C, h_e, w_e): y edgetaper-extended onto the extended measurement grid."""
        self._check(y)
        he, we = self.extended_shape(y.shape)
        return edgetaper_extend(y, self.pads(y.shape), self.taper_filter(he, we, y))

    def init_estimate(self, y: Tensor) -> Tensor:
        return self.inner.init_estimate(self.extend(y))

    def forward(self, x: Tensor) -> Tensor:
        """The inner operator on the extended grid (circular there); the measurement's model is its frame."""
        return self.inner.forward(x)

    def adjoint(self, y: Tensor) -> Tensor:
        return self.inner.adjoint(y)

    def prox(self, x0: Tensor, y: Tensor, rho: float | Tensor) -> Tensor:
        return self.data_step(y)(x0, rho)

    def crop(self, x: Tensor, y_shape: Sequence[int]) -> Tensor:
        """The frame of an extended image (.., sf h_e, sf w_e) -> (.., sf h, sf w), contiguous."""
        t, _, l, _ = self.pads(y_shape)
        sf, h, w = self.sf, int(y_shape[-2]), int(y_shape[-1])
        return x[..., sf * t : sf * (t + h), sf * l : sf * (l + w)].contiguous()

    def output(self, x: Tensor, y_shape: Sequence[int]) -> Tensor:
        """The sampler's hook (engine.sampler.operator_output): the restored frame."""
        return self.crop(x, y_shape)

    def data_step(self, y: Tensor):  # pragma: no cover - each model defines its own
        """The data step on the extended grid: Tapered and ExtendedSuperResolution each define theirs."""
        raise NotImplementedError(f"{type(self).__name__} defines no data step")


class Tapered(FourierExtension):
    """The taper model: the inner operator's circular data step on the edgetaper-extended measurement.

    data_step(y) is a FourierDataStep bound to y_ext on the extended grid, so A's closed forms
    (pinv, singular_values, range_filter, gram_solve) are the circular operator's, exact there.
    """

    boundary = "taper"

    def data_step(self, y: Tensor) -> FourierDataStep:
        return self.inner.data_step(self.extend(y))
