"""DMPS, diffusion model based posterior sampling (Meng & Kabashima 2022), as the official code runs it.

Per respaced step i (docs/methods.md, section 9): the DDPM step x' = p_sample(x_t), then the
closed-form step along the score of the noise-aware pseudo-likelihood
N(y_m; A x / sqrt(abar), sigma_y^2 I + c A A^T), c = (1 - abar)/abar, evaluated at x':

    x_{t-1} = x' + lam (1 - alpha)/sqrt(alpha) (1/sqrt(abar))
                   A^T (c A A^T + sigma_y^2 I)^{-1} (y_m - A x'/sqrt(abar))

with alpha = alpha'_i, abar = abar'_i of the current step (clipped to [1e-16, 1 - 1e-16] as
the official code does), sigma_y = 2 sigma_n the noise in model units and y_m = 2 y - A 1.
The solve is the operator's closed form: A^T (c A A^T + s^2)^{-1} = A^T (A A^T + s^2/c)^{-1} / c
(`gram_solve`); for sigma_n = 0 it is A^+ / c (`pinv`, singular values <= RCOND dropped), the
limit of the same expression on the range of A.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np

from diffpir_rt.params import param

from ..imageio import from_model
from ..operators import RCOND, DataStep
from ..schedule import NUM_TRAIN_TIMESTEPS
from .base import SIGMA_N, MethodConfig, Step
from .ddpm import AncestralMethod, RespacedSchedule, check_steps, clip_param, ddpm_step, ddpm_steps, spacing_param, steps_param, variance_param

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

#: The official clip of alpha and abar in the likelihood step.
ALPHA_CLIP = 1e-16
#: lambda: `conditioning.params.scale` in every official task config ("default value").
DMPS_LAMBDA = 1.75


@dataclass(frozen=True)
class DMPSConfig(RespacedSchedule, MethodConfig):
    """DMPS hyperparameters (official defaults: configs/*_config.yaml).

    Args:
        sigma_n: measurement noise std in [0, 1] image units (sigma_y = 2 sigma_n in model
            units; the official configs' `sigma: 0.05` is in model units, sigma_n = 0.025).
        lam: lambda, the likelihood step's scale (default 1.75).
        steps: kept timesteps, NFE (default 1000); fewer respace as guided-diffusion does.
        variance: "learned" (default, the official learned_range; the model must provide
            eps_and_variance), "fixed_small" or "fixed_large".
        clip_denoised: clamp x0 to [-1, 1] in the DDPM step (official True).
        spacing: "even" (guided-diffusion "N") or "ddim" ("ddimN").
    """

    method: ClassVar[str] = "dmps"
    description: ClassVar[str] = "DMPS (Meng & Kabashima 2022): DDPM step plus the closed-form noise-aware likelihood step"
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "inpaint", "denoise")
    family: ClassVar[bool] = True
    min_useful_steps: ClassVar[int] = 50
    defaults_source: ClassVar[str] = "official DMPS: configs/*_config.yaml (scale 1.75, 1000 steps)"

    sigma_n: float = param(like=SIGMA_N)
    lam: float = param(DMPS_LAMBDA, help="lambda, the likelihood step's scale", low=0.0, low_open=True)
    steps: int = steps_param(NUM_TRAIN_TIMESTEPS)
    variance: str = variance_param("learned")
    clip_denoised: bool = clip_param()
    spacing: str = spacing_param()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_steps(self)


class DMPS(AncestralMethod):
    """DMPS: the DDPM step, then the closed-form noise-aware likelihood step."""

    config_class = DMPSConfig

    def _likelihood_values(self, i: int) -> dict[str, float]:
        s = self.schedule
        abar = float(np.clip(s.alphas_cumprod[i], ALPHA_CLIP, 1.0 - ALPHA_CLIP))
        alpha = float(np.clip(1.0 - s.betas[i], ALPHA_CLIP, 1.0 - ALPHA_CLIP))
        c = (1.0 - abar) / abar
        sigma_y = 2.0 * self.config.sigma_n
        return {
            "inv_sqrt_ab": 1.0 / math.sqrt(abar),
            # lam (1 - alpha)/sqrt(alpha)/sqrt(abar), and the 1/c of the solve folded in.
            "gain": self.config.lam * (1.0 - alpha) / math.sqrt(alpha) / math.sqrt(abar) / c,
            "mu": sigma_y * sigma_y / c,
        }

    def steps(self) -> tuple[Step, ...]:
        return ddpm_steps(self.schedule, self.config.variance, extra=self._likelihood_values)


    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        x_prime, _ = ddpm_step(x, eps, step, z[0], self.config.variance, self.config.clip_denoised)
        # y_m - A x'/sqrt(abar) = 2 (y - A u) with u = (x'/sqrt(abar) + 1)/2 on [0, 1] units.
        residual = 2.0 * (data.measurement() - data.forward(from_model(step["inv_sqrt_ab"] * x_prime)))
        if step["mu"] > 0.0:
            correction = data.adjoint(data.gram_solve(residual, step["mu"]))
        else:
            correction = data.pinv(residual, RCOND)
        return x_prime + step["gain"] * correction

