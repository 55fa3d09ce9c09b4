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
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import param

from ..imageio import from_model, to_model
from ..operators import DataStep, Operator
from ..schedule import linear_schedule
from .base import SIGMA_N, STEPS, Capabilities, MethodBase, MethodConfig, Step, check_config

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

#: get_rho_sigma's floor on the noise level ([0, 1] units) and its rho constant.
SIGMA_FLOOR = 0.255 / 255.0
RHO_SCALE = 0.23


def dpir_sigmas_rhos(sigma_n: float, iter_num: int, model_sigma1: float, model_sigma2: float) -> tuple[np.ndarray, np.ndarray]:
    """get_rho_sigma with w = 1, in float64 (the official casts the sigmas to float32):
    sigma_k = logspace(log10(model_sigma1), log10(model_sigma2), K) / 255 ([0, 1] units),
    rho_k = 0.23 max(0.255/255, sigma_n)^2 / sigma_k^2."""
    sigmas = np.logspace(np.log10(model_sigma1), np.log10(model_sigma2), iter_num) / 255.0
    return sigmas, RHO_SCALE * max(SIGMA_FLOOR, sigma_n) ** 2 / sigmas**2


def _deblur_defaults(sigma_n: float, scale: int) -> dict[str, Any]:
    """deblur: K = 8, levels 49 -> sigma_n * 255 (needs sigma_n > 0)."""
    return {"iter_num": 8}


def _sr_defaults(sigma_n: float, scale: int) -> dict[str, Any]:
    """sr: K = 24, levels 49 -> max(scale, sigma_n * 255)."""
    return {"iter_num": 24, "model_sigma2": max(float(scale), sigma_n * 255.0)}


def _denoise_defaults(sigma_n: float, scale: int) -> dict[str, Any]:
    """denoise: one denoiser call at sigma_n (`main_dpir_denoising.py`: the denoiser applied to y;
    the HQS data step with A = I and x = y leaves y unchanged)."""
    if sigma_n <= 0:
        raise DiffPIRError("sigma_n: DPIR denoising needs sigma_n > 0, got 0")
    return {"iter_num": 1, "model_sigma1": sigma_n * 255.0, "model_sigma2": sigma_n * 255.0}


#: The official settings per task (the official DPIR has no inpainting).
DPIR_TASK_DEFAULTS = {"deblur": _deblur_defaults, "sr": _sr_defaults, "denoise": _denoise_defaults}


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
    description: ClassVar[str] = (
        "DPIR (Zhang et al. 2021): HQS plug-and-play with the diffusion UNet as the Gaussian denoiser, "
        "levels log-spaced 49/255 -> sigma_n"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "denoise")
    family: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(extended_boundary=True)
    budget: ClassVar[str] = "iter_num"
    budget_note: ClassVar[str] = "K, the HQS iterations (one UNet call each)"
    min_useful_steps: ClassVar[int] = 3
    defaults_source: ClassVar[str] = "official DPIR: main_dpir_deblur.py (K 8), main_dpir_sisr.py (K 24), main_dpir_denoising.py"

    sigma_n: float = param(like=SIGMA_N)
    iter_num: int = param(8, like=STEPS, help="K, the HQS iterations (one UNet call each)")
    model_sigma1: float = param(49.0, help="the first denoiser level, on the 0..255 scale", low=1e-3, high=255.0, group="advanced")
    model_sigma2: Optional[float] = param(None, help="the last denoiser level on the 0..255 scale (none: sigma_n * 255)",
                                          low=1e-3, high=255.0, optional=True, group="advanced")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_sigma2 is None and self.sigma_n <= 0:
            raise DiffPIRError(
                "model_sigma2: the default sigma_n * 255 needs sigma_n > 0 (the official deblurring "
                "script takes log10 of it); give model_sigma2 for a noiseless measurement"
            )

    @classmethod
    def task_defaults(cls, task: str, sigma_n: float, scale: Optional[int]) -> dict[str, Any]:
        """The official per-task settings (DPIR_TASK_DEFAULTS)."""
        return DPIR_TASK_DEFAULTS[task](sigma_n, 4 if scale is None else scale)

    def sigmas_rhos(self) -> tuple[np.ndarray, np.ndarray]:
        sigma2 = self.sigma_n * 255.0 if self.model_sigma2 is None else self.model_sigma2
        return dpir_sigmas_rhos(self.sigma_n, self.iter_num, self.model_sigma1, sigma2)

    @property
    def num_model_calls(self) -> int:
        return self.iter_num

    @property
    def noise_count(self) -> int:
        return 0


class DPIR(MethodBase):
    """The HQS loop for one config (blur, SR, and denoising through the mask family)."""

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
