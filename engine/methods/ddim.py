"""DDIM generation (Song et al. 2021) as guided-diffusion runs it (`ddim_sample`, "ddimN").

Per respaced step i (abar = abar'_i, abar_prev = abar'_{i-1}, 1 at i = 0):

    x0     = clamp(sqrt(1/abar) x_t - sqrt(1/abar - 1) eps, -1, 1)
    eps'   = (sqrt(1/abar) x_t - x0) / sqrt(1/abar - 1)          # re-derived from the clamped x0
    sigma  = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps' + [i > 0] sigma z

so the step from the last timestep (t = 0) goes to abar = 1 and returns x0. With eta = 0
the run is a deterministic function of x_T (the step noise is drawn, one per step as
guided-diffusion does, and multiplied by zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import param

from ..operators import DataStep, Operator
from .base import MethodBase, MethodConfig, Step, check_config
from .ddpm import check_steps, clip_param, steps_param, finish_image, noise_state, schedule_of, timesteps_of

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor


@dataclass(frozen=True)
class DDIMConfig(MethodConfig):
    """DDIM hyperparameters.

    Args:
        steps: N of guided-diffusion's "ddimN" respacing: range(0, 1000, s) with the
            smallest integer stride s giving exactly N timesteps (s = 1000 // N when that
            gives N; "ddim30" uses s = 34), sampled high to low. NFE = N. Default 25: the
            guided-diffusion README's DDIM setting (`--timestep_respacing ddim25 --use_ddim True`).
        eta: DDIM's stochasticity in [0, 1]; 0 (default, `ddim_sample`'s eta=0.0) is
            deterministic given x_T, 1 has the DDPM posterior's variance.
        clip_denoised: clamp x0 to [-1, 1] (the sampling scripts' default True).
    """

    method: ClassVar[str] = "ddim"
    description: ClassVar[str] = "DDIM (Song et al. 2021): unconditional sampling, deterministic at eta 0"
    defaults_source: ClassVar[str] = "guided-diffusion README (--timestep_respacing ddim25 --use_ddim True)"

    steps: int = steps_param(25)
    eta: float = param(0.0, help="DDIM's stochasticity: 0 deterministic, 1 the DDPM posterior's variance", low=0.0, high=1.0)
    clip_denoised: bool = clip_param()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_steps(self, spacing_field=None)
        # check_steps validated "even" spacing; DDIM needs "ddimN" to exist.
        try:
            schedule_of(self.steps, "ddim")
        except DiffPIRError:
            raise DiffPIRError(
                f"steps: no integer stride gives exactly {self.steps} of 1000 timesteps ('ddim{self.steps}')"
            ) from None

    def timesteps(self) -> list[int]:
        return timesteps_of(self.steps, "ddim")

    @property
    def num_model_calls(self) -> int:
        return len(self.timesteps())


class DDIM(MethodBase):
    """Unconditional DDIM generation: x_T ~ N(0, I), then N DDIM steps."""

    def __init__(self, config: DDIMConfig, impl: str = "torch") -> None:
        check_config(config, DDIMConfig)
        self.config = config
        self.schedule = schedule_of(config.steps, "ddim")

    def steps(self) -> tuple[Step, ...]:
        s, eta = self.schedule, self.config.eta
        tmap = s.timestep_map
        steps = []
        for index, i in enumerate(reversed(range(s.num_steps))):
            abar, abar_prev = float(s.alphas_cumprod[i]), float(s.alphas_cumprod_prev[i])
            sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar)) * math.sqrt(1.0 - abar / abar_prev)
            values = {
                "sqrt_recip_ab": math.sqrt(1.0 / abar),
                "sqrt_recipm1_ab": math.sqrt(1.0 / abar - 1.0),
                "sqrt_ab_prev": math.sqrt(abar_prev),
                "eps_coef": math.sqrt(max(0.0, 1.0 - abar_prev - sigma * sigma)),
                "sigma": sigma if i > 0 else 0.0,
            }
            steps.append(Step(index, tmap[i], tmap[i - 1] if i > 0 else -1, noise=1, values=values))
        return tuple(steps)

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        return noise_state(z)

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        scaled = step["sqrt_recip_ab"] * x
        x0 = scaled - step["sqrt_recipm1_ab"] * eps
        if self.config.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        eps = (scaled - x0) / step["sqrt_recipm1_ab"]
        x_prev = step["sqrt_ab_prev"] * x0 + step["eps_coef"] * eps
        if step["sigma"] != 0.0:
            x_prev = x_prev + step["sigma"] * z[0]
        return x_prev

    def finish(self, x: Tensor) -> Tensor:
        return finish_image(x)
