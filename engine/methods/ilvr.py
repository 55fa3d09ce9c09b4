"""ILVR, iterative latent variable refinement (Choi et al., ICCV 2021), as the official code runs it.

Per respaced step i (docs/methods.md, section 8), phi_N = up(down(.)) at factor N:

    x'      = DDPM p_sample(x_t)                                    # noise z_sample
    if i > range_t:
        ref_i   = sqrt(abar_i) ref_m + sqrt(1 - abar_i) z_ref       # the reference at x_t's level
        x_{t-1} = x' - phi(x') + phi(ref_i)
    else:
        x_{t-1} = x'

`down` and `up` are the official `Resizer` (resizer.py): separable Keys cubic (a = -0.5),
kernel stretched by N (antialiasing) when downscaling, reflected borders, weights normalised
per output pixel. Here they are dense per-axis matrices built once per image size.

How ILVR meets the engine's tasks (our choice; ILVR itself conditions on a reference image):
* super-resolution: N = the SR scale and the measurement y plays down(ref): phi(ref) =
  up(y). ILVR ignores the operator's kernel: y is taken to be the cubic-antialiased
  downscale, which is how MATLAB-style bicubic imresize (the engine's SR degradation) makes it.
* deblurring and denoising: the measurement itself is the reference (ref = y, full size),
  with a low-pass factor N that keeps the frequencies the blur / noise leave mostly intact
  (defaults 8 and 4).
* inpainting: not applicable (phi of a masked image is not a low-pass of the image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module
from diffpir_rt.params import param

from ..imageio import to_model
from ..schedule import NUM_TRAIN_TIMESTEPS
from ..operators import DataStep, ElementwiseDataStep, FourierDataStep
from .base import MethodConfig, Step
from .ddpm import AncestralMethod, RespacedSchedule, check_steps, clip_param, ddpm_step, ddpm_steps, spacing_param, steps_param, variance_param

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

#: Low-pass factor N per task when `factor` is None (our choices); SR uses its scale.
ILVR_FACTOR = {"deblur": 8, "denoise": 4}
#: Keys cubic's support (the Resizer's kernel width for "cubic").
CUBIC_WIDTH = 4.0


# ----------------------------------------------------------------------------- the official Resizer


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB imresize's 'cubic')."""
    ax = np.abs(x)
    near = (1.5 * ax**3 - 2.5 * ax**2 + 1.0) * (ax <= 1.0)
    far = (-0.5 * ax**3 + 2.5 * ax**2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return near + far


@lru_cache(maxsize=64)
def resizer_matrix(in_length: int, scale: float) -> np.ndarray:
    """The official Resizer along one axis as a dense (out, in) float64 matrix.

    out = ceil(in scale). Output pixel j (1-based) sits at input coordinate
    (j - (out - in scale)/2)/scale + (1 - 1/scale)/2; it takes the cubic kernel (stretched by
    1/scale when downscaling) over the ceil(width) + 2 input taps left of that position,
    normalised to sum 1, with indices outside [0, in) mirrored (edge pixel repeated).
    """
    antialias = scale < 1.0
    width = CUBIC_WIDTH / scale if antialias else CUBIC_WIDTH
    out_length = int(math.ceil(in_length * scale))
    centres = (np.arange(1, out_length + 1) - (out_length - in_length * scale) / 2) / scale + 0.5 * (1.0 - 1.0 / scale)
    taps = int(math.ceil(width) + 2)
    first = np.floor(centres - width / 2)
    index = first[:, None] + np.arange(taps)[None, :] - 1  # input positions, 0-based
    distance = centres[:, None] - index - 1
    weights = scale * _keys_cubic(scale * distance) if antialias else _keys_cubic(distance)
    sums = weights.sum(axis=1, keepdims=True)
    weights = weights / np.where(sums == 0.0, 1.0, sums)
    period = 2 * in_length
    folded = np.mod(index.astype(np.int64), period)
    folded = np.where(folded < in_length, folded, period - 1 - folded)  # reflect with the edge repeated
    matrix = np.zeros((out_length, in_length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), folded.ravel()), weights.ravel())
    matrix.setflags(write=False)
    return matrix


class LowPass:
    """down_N and up_N = the official Resizers at 1/N and N on (.., H, W) images (cached per size)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor
        self._cache: dict[tuple, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def _matrices(self, height: int, width: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        key = (height, width, like.device, like.dtype)
        if key not in self._cache:
            n = self.factor
            if height % n or width % n:
                raise DiffPIRError(f"ilvr: factor {n} does not divide the {width}x{height} image")

            def dense(length: int, scale: float) -> Tensor:
                return torch.from_numpy(resizer_matrix(length, scale).copy()).to(like.device, like.dtype)

            self._cache[key] = (
                dense(height, 1.0 / n),
                dense(width, 1.0 / n),
                dense(height // n, float(n)),
                dense(width // n, float(n)),
            )
        return self._cache[key]

    def down(self, x: Tensor) -> Tensor:
        down_h, down_w, _, _ = self._matrices(*x.shape[-2:], x)
        return down_h @ x @ down_w.T

    def up(self, low: Tensor, height: int, width: int) -> Tensor:
        _, _, up_h, up_w = self._matrices(height, width, low)
        return up_h @ low @ up_w.T

    def phi(self, x: Tensor) -> Tensor:
        return self.up(self.down(x), *x.shape[-2:])


# ----------------------------------------------------------------------------- the method


@dataclass(frozen=True)
class ILVRConfig(RespacedSchedule, MethodConfig):
    """ILVR hyperparameters (official: scripts/ilvr_sample.py and the README's FFHQ command).

    Args:
        factor: the low-pass factor N of phi_N = up(down(.)), or None (default): the SR
            scale for super-resolution, 8 for deblurring and 4 for denoising (our choices,
            see the module docstring; the official N = 32 conditions 256^2 faces on 8^2
            references). For SR an explicit factor must equal the scale.
        range_t: refinement runs while the respaced step index i > range_t (default 20,
            the README command; the script default is 0).
        steps: kept timesteps, NFE (default 100, the README's `--timestep_respacing 100`;
            the script default is 1000).
        variance: "learned" (default, the README's `--learn_sigma True`; the model must
            provide eps_and_variance), "fixed_small" or "fixed_large".
        clip_denoised: clamp x0 to [-1, 1] in the DDPM step (official True).
        spacing: "even" (guided-diffusion "N", the official) or "ddim" ("ddimN").
    """

    method: ClassVar[str] = "ilvr"
    description: ClassVar[str] = (
        "ILVR (Choi et al. 2021): DDPM steps whose low frequencies phi_N = up(down(.)) follow the measurement's"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "denoise")
    family: ClassVar[bool] = True
    min_useful_steps: ClassVar[int] = 100
    defaults_source: ClassVar[str] = "official ILVR: README (--timestep_respacing 100, range_t 20); N per task: ours"

    factor: Optional[int] = param(None, help="low-pass factor N of phi_N (none: the SR scale, 8 for deblurring, 4 for "
                                  "denoising)", kind=int, low=1, high=1024, optional=True, group="advanced")  # fmt: skip
    range_t: int = param(20, help="refine while the respaced step index is above range_t", kind=int, low=0,
                         high=NUM_TRAIN_TIMESTEPS, group="advanced")  # fmt: skip
    steps: int = steps_param(100)
    variance: str = variance_param("learned")
    clip_denoised: bool = clip_param()
    spacing: str = spacing_param()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_steps(self)
        self._check_int("range_t", 0, self.steps - 1)

    @classmethod
    def task_defaults(cls, task: str, sigma_n: float, scale: Optional[int]) -> dict[str, Any]:
        """N per task (ILVR_FACTOR); SR leaves it None, which follows the scale. ILVR has no noise model."""
        return {"factor": ILVR_FACTOR[task]} if task in ILVR_FACTOR else {}

    @property
    def size_multiple(self) -> int:
        """phi_N works on images whose sides N divides (for SR, N is the scale, which divides them already)."""
        return self.factor or 1


class ILVR(AncestralMethod):
    """ILVR: DDPM steps whose low frequencies (phi_N) are replaced by the noised reference's."""

    config_class = ILVRConfig

    def __init__(self, config: ILVRConfig, impl: str = "torch") -> None:
        super().__init__(config, impl)
        self._lowpass: dict[int, LowPass] = {}

    def steps(self) -> tuple[Step, ...]:
        s, range_t = self.schedule, self.config.range_t

        def refine(i: int) -> dict[str, float]:
            abar = float(s.alphas_cumprod[i])
            return {"sqrt_ab": math.sqrt(abar), "sqrt_1m_ab": math.sqrt(1.0 - abar)}

        # Noise per step: the sample's, then the reference's while i > range_t.
        return ddpm_steps(s, self.config.variance, noise=lambda i: 2 if i > range_t else 1, extra=refine)


    def _plan(self, data: Optional[DataStep]) -> tuple[LowPass, bool]:
        """The low-pass for this operator, and whether y is already down(ref) (SR)."""
        factor = self.config.factor
        if isinstance(data, FourierDataStep) and data.sf > 1:
            if factor is not None and factor != data.sf:
                raise DiffPIRError(f"factor: for super-resolution ILVR's factor is the scale {data.sf}, got {factor}")
            factor, is_low = data.sf, True
        elif isinstance(data, FourierDataStep):
            factor, is_low = factor or ILVR_FACTOR["deblur"], False
        elif isinstance(data, ElementwiseDataStep) and data.mask.ndim == 0:
            factor, is_low = factor or ILVR_FACTOR["denoise"], False
        elif isinstance(data, ElementwiseDataStep):
            raise DiffPIRError("method ilvr: applies to super-resolution, deblurring and denoising, not to inpainting")
        else:
            raise DiffPIRError(f"ilvr: no reference for {type(data).__name__}")
        if factor not in self._lowpass:
            self._lowpass[factor] = LowPass(factor)
        return self._lowpass[factor], is_low

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        lowpass, is_low = self._plan(data)
        x_prime, _ = ddpm_step(x, eps, step, z[0], self.config.variance, self.config.clip_denoised)
        if step.noise < 2:
            return x_prime
        # phi linear: x' - phi(x') + phi(ref_i) = x' + up(sqrt(abar) down(ref_m) + down(sqrt(1 - abar) z_ref - x')).
        reference = to_model(data.measurement())
        ref_low = reference if is_low else lowpass.down(reference)
        low = step["sqrt_ab"] * ref_low + lowpass.down(step["sqrt_1m_ab"] * z[1] - x_prime)
        return x_prime + lowpass.up(low, *x.shape[-2:])

