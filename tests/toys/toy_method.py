"""A tenth method in one file: what a new method of the engine needs, and nothing more.

Deterministic DDIM-like steps whose x0 estimate goes through the data step's prox with a fixed
weight `rho`. Registered by one line, `register_method(ToyConfig, Toy)`, it appears in every
surface: a `--rho` flag, a `rho` form field, `diffpir eval --methods toy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from diffpir_rt.engine import MethodConfig, linear_schedule, timesteps
from diffpir_rt.engine.imageio import from_model, to_model
from diffpir_rt.engine.methods import SIGMA_N, STEPS, MethodBase, Step
from diffpir_rt.params import param


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    method: ClassVar[str] = "toy"
    description: ClassVar[str] = "a toy: x0 through the data step's prox at a fixed weight, then a DDIM step"
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "inpaint", "denoise")
    family: ClassVar[bool] = True

    sigma_n: float = param(like=SIGMA_N)
    steps: int = param(3, like=STEPS, low=2)
    rho: float = param(0.5, help="the prox's fixed weight", low=0.0, low_open=True)


class Toy(MethodBase):
    def __init__(self, config: ToyConfig, impl: str = "torch") -> None:
        self.config = config
        self.alpha_bar = linear_schedule().alpha_bar
        self.ts = timesteps(config.steps, "uniform")

    def steps(self) -> tuple[Step, ...]:
        return tuple(Step(i, t, t_next, noise=0) for i, (t, t_next) in enumerate(zip(self.ts[:-1], self.ts[1:])))

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Any, y: Any, data: Any, z: list) -> Any:
        return z[0]

    def update(self, x: Any, eps: Any, step: Step, data: Any, z: Optional[Any]) -> Any:
        a, a_next = float(self.alpha_bar[step.t]), float(self.alpha_bar[step.t_next])
        x0 = ((x - math.sqrt(1 - a) * eps) / math.sqrt(a)).clamp(-1, 1)
        x0 = to_model(data(from_model(x0), self.config.rho))
        return math.sqrt(a_next) * x0 + math.sqrt(1 - a_next) * eps

    def finish(self, x: Any) -> Any:
        return from_model(x).clamp(0.0, 1.0)
