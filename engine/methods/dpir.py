"""DPIR (Zhang et al., TPAMI 2021): half-quadratic splitting with the diffusion UNet as denoiser.

Written from docs/methods.md, section 10 (official code: cszn/DPIR `main_dpir_deblur.py`,
`main_dpir_sisr.py`, `utils/utils_pnp.py` get_rho_sigma). For k = 1..K, in [0, 1] units:

    x = argmin ||y - A x||^2 + rho_k ||x - x_prev||^2    (the bound operator's prox)
    x = D(x, sigma_k)

with sigma_k log-spaced from 49/255 to model_sigma2/255 and rho_k = 0.23 max(0.255/255,
sigma_n)^2 / sigma_k^2. DPIR's DRUNet is replaced by the diffusion UNet: an image with
Gaussian noise sigma_k is, scaled by sqrt(abar_t), a valid x_t at the t whose
sqrt((1 - abar_t)/abar_t) is nearest 2 sigma_k, and D returns its Tweedie x0.

The loop state. The loop calls the model with its state at step.t, so the state before
step k is x_t = sqrt(abar_{t_k}) (2 x - 1), x being the k-th data step's output: the first
data step is part of `initial_state`, and each update runs the denoiser's Tweedie step and
then the next data step. After the last step the state is the denoiser output in model
units. No noise is consumed (the method is deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np
from torch import Tensor

from diffpir_rt.errors import DiffPIRError

from ..imageio import from_model, to_model
from ..operators import DataStep, Operator
from ..schedule import linear_schedule
from .base import MethodConfig, Step, check_config
from .ddrm import check_task

#: get_rho_sigma's floor on the noise level ([0, 1] units) and its rho constant.
SIGMA_FLOOR = 0.255 / 255.0
RHO_SCALE = 0.23


def dpir_sigmas_rhos(sigma_n: float, iter_num: int, model_sigma1: float, model_sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """get_rho_sigma with w = 1, in float64 (the official casts the sigmas to float32):
    sigma_k = logspace(log10(model_sigma1), log10(model_sigma2), K) / 255 ([0, 1] units),
    rho_k = 0.23 max(0.255/255, sigma_n)^2 / sigma_k^2."""
    sigmas = np.logspace(np.log10(model_sigma1), np.log10(model_sigma2), iter_num) / 255.0
    return sigmas, RHO_SCALE * max(SIGMA_FLOOR, sigma_n) ** 2 / sigmas**2


@dataclass(frozen=True)
class DPIRConfig(MethodConfig):
    """DPIR hyperparameters. Defaults: `main_dpir_deblur.py` (iter_num 8, modelSigma1 49,
    modelSigma2 = noise_level_model * 255, noise_level_model = noise_level_img); the SR
    script uses iter_num 24 and modelSigma2 = max(sf, noise_level_model * 255) (see
    `for_task`). The official x8 self-ensemble is not reproduced. NFE = iter_num.

    Args:
        sigma_n: measurement noise std in [0, 1] image units.
        iter_num: K, the HQS iterations (one model call each).
        model_sigma1: the first denoiser level, on the 0..255 scale.
        model_sigma2: the last denoiser level on the 0..255 scale; None = sigma_n * 255
            (the deblurring script's choice, which needs sigma_n > 0).
    """

    method: ClassVar[str] = "dpir"

    sigma_n: float
    iter_num: int = 8
    model_sigma1: float = 49.0
    model_sigma2: Optional[float] = None

    def __post_init__(self) -> None:
        self._check_range("sigma_n", 0.0, 1.0)
        self._check_int("iter_num", 1, 1000)
        self._check_range("model_sigma1", 1e-3, 255.0)
        if self.model_sigma2 is None:
            if self.sigma_n <= 0:
                raise DiffPIRError(
                    "model_sigma2: the default sigma_n * 255 needs sigma_n > 0 (the official deblurring "
                    "script takes log10 of it); give model_sigma2 for a noiseless measurement"
                )
        else:
            self._check_range("model_sigma2", 1e-3, 255.0)

    @classmethod
    def for_task(cls, task: str, sigma_n: float, *, scale: int = 4) -> "DPIRConfig":
        """The official per-task settings.

        deblur: K = 8, levels 49 -> sigma_n * 255 (needs sigma_n > 0).
        sr: K = 24, levels 49 -> max(scale, sigma_n * 255) (`scale`: the SR factor, 4 as in
            the comparison table).
        denoise: one denoiser call at sigma_n (`main_dpir_denoising.py`: the denoiser applied
            to y; the HQS data step with A = I and x = y leaves y unchanged).
        inpaint: not a DPIR task (the official repository has none).
        """
        check_task(cls.method, task, ("deblur", "sr", "denoise"), "the official DPIR has no inpainting")
        if task == "deblur":
            return cls(sigma_n=sigma_n, iter_num=8)
        if task == "sr":
            return cls(sigma_n=sigma_n, iter_num=24, model_sigma2=max(float(scale), sigma_n * 255.0))
        if sigma_n <= 0:
            raise DiffPIRError("sigma_n: DPIR denoising needs sigma_n > 0, got 0")
        return cls(sigma_n=sigma_n, iter_num=1, model_sigma1=sigma_n * 255.0, model_sigma2=sigma_n * 255.0)

    def sigmas_rhos(self) -> tuple[np.ndarray, np.ndarray]:
        sigma2 = self.sigma_n * 255.0 if self.model_sigma2 is None else self.model_sigma2
        return dpir_sigmas_rhos(self.sigma_n, self.iter_num, self.model_sigma1, sigma2)

    @property
    def num_model_calls(self) -> int:
        return self.iter_num

    @property
    def noise_count(self) -> int:
        return 0


class DPIR:
    """The HQS loop for one config (blur, SR, and denoising through the mask family)."""

    tasks = ("fourier", "mask")
    needs_grad = False
    needs_variance = False

    def __init__(self, config: DPIRConfig, impl: str = "torch") -> None:
        check_config(config, DPIRConfig)
        self.config = config
        self.schedule = linear_schedule()
        sigmas, self.rhos = config.sigmas_rhos()
        # The denoiser's timestep per level: sqrt((1 - abar_t)/abar_t) nearest 2 sigma_k.
        self.timesteps = [self.schedule.nearest_timestep(2.0 * float(sigma)) for sigma in sigmas]

    def steps(self) -> tuple[Step, ...]:
        steps = []
        K = len(self.timesteps)
        for k, t in enumerate(self.timesteps):
            a = float(self.schedule.alpha_bar[t])
            last = k + 1 == K
            values = {"sqrt_a": math.sqrt(a), "sqrt_1m_a": math.sqrt(1.0 - a), "last": float(last)}
            if not last:
                a_next = float(self.schedule.alpha_bar[self.timesteps[k + 1]])
                values.update(rho_next=float(self.rhos[k + 1]), sqrt_a_next=math.sqrt(a_next))
            steps.append(Step(k, t, -1 if last else self.timesteps[k + 1], noise=0, values=values))
        return tuple(steps)

    def init_noise(self) -> int:
        return 0

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        """The official init (deblur: y; SR: bicubic upsampling: the operator's init_estimate),
        the first data step, then scaled to the first denoiser timestep."""
        assert operator is not None and y is not None and data is not None
        x = data(operator.init_estimate(y), float(self.rhos[0]))
        return math.sqrt(float(self.schedule.alpha_bar[self.timesteps[0]])) * to_model(x)

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        """D(x, sigma_k) as Tweedie's x0 (not clipped), then the next data step, rescaled."""
        assert data is not None
        x0 = (x - step["sqrt_1m_a"] * eps) / step["sqrt_a"]
        if step["last"]:
            return x0
        return step["sqrt_a_next"] * to_model(data(from_model(x0), step["rho_next"]))

    def finish(self, x: Tensor) -> Tensor:
        return from_model(x).clamp(0.0, 1.0)
