"""DiffPIR (Zhu et al., CVPR-W 2023): the engine's default method (docs/algorithm.md).

Per step t -> t': x0 from eps, clamped; the closed-form data step on [0, 1] images with
rho_t = lam sigma_n^2 / sigma_bar_t^2; then re-noising to t' with the effective noise of
x_t mixed with fresh noise by zeta. The update runs the seam of engine/fused.py, so the
same code is the eager reference (impl "torch") and, on CUDA, the fused kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module
from diffpir_rt.params import param

from .. import fused
from ..imageio import from_model, to_model
from ..operators import DataStep, ElementwiseDataStep, FourierDataStep, Operator
from ..schedule import NUM_TRAIN_TIMESTEPS, SKIP_TYPES, Schedule, linear_schedule, timesteps
from ..step import StepCoefficients, diffpir_update
from .base import SIGMA_N, STEPS, Capabilities, MethodBase, MethodConfig, Step, check_config

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")


@dataclass(frozen=True)
class DiffPIRConfig(MethodConfig):
    """DiffPIR hyperparameters (docs/algorithm.md, "Hyperparameters").

    Args:
        lam: lambda, the data-term weight in rho_t = lam sigma^2 / sigma_bar_t^2.
        zeta: noise mixing in [0, 1]: 0 = deterministic (DDIM-like), 1 = fresh noise.
        sigma_n: measurement noise std in [0, 1] image units (0.05 = 12.75/255).
        steps: number of timesteps N (model calls: N - 1 for 'quad', N for 'uniform',
            since the official final call's output is discarded and skipped here).
        skip: step spacing, 'quad' (dense near t = 0) or 'uniform'.
        t_start: start timestep; entries above it are skipped.
    """

    method: ClassVar[str] = "diffpir"
    description: ClassVar[str] = (
        "DiffPIR (Zhu et al. 2023): half-quadratic splitting with the diffusion UNet as the prior; "
        "a closed-form data step each step"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "inpaint", "denoise")
    family: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(extended_boundary=True)
    budget_note: ClassVar[str] = "timesteps N of the schedule (N - 1 UNet calls with quad spacing)"
    min_useful_steps: ClassVar[int] = 10
    defaults_source: ClassVar[str] = "official DiffPIR: main_ddpir_*.py / configs/*.yaml"
    #: The official values per task (docs/algorithm.md). The official SR script sweeps lambda
    #: over 2..12 with zeta 0.25 (7, the sweep's centre); denoising is not in the official
    #: code: deblurring's lambda and zeta with the engine's usual 20 steps.
    OFFICIAL: ClassVar[dict[str, dict[str, Any]]] = {
        "deblur": {"lam": 7.0, "zeta": 0.3, "steps": 100},
        "sr": {"lam": 7.0, "zeta": 0.25, "steps": 100},
        "inpaint": {"lam": 1.0, "zeta": 1.0, "steps": 20},
        "denoise": {"lam": 7.0, "zeta": 0.3, "steps": 20},
    }

    lam: float = param(help="lambda, the data-term weight (rho_t = lam sigma_n^2 / sigma_bar_t^2)", low=0.0, low_open=True)
    zeta: float = param(help="share of fresh noise in each step's re-noising: 0 deterministic, 1 all fresh", low=0.0, high=1.0)
    sigma_n: float = param(like=SIGMA_N)
    steps: int = param(like=STEPS, low=2)
    skip: str = param("quad", help="step spacing: quad (dense near t = 0) or uniform", kind=str, choices=SKIP_TYPES, group="advanced")
    t_start: int = param(NUM_TRAIN_TIMESTEPS - 1, help="start timestep; schedule entries above it are skipped", kind=int,
                         low=0, high=NUM_TRAIN_TIMESTEPS - 1, group="advanced")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.timesteps()) < 2:
            raise DiffPIRError(f"t_start: {self.t_start} leaves fewer than 2 of the {self.steps} timesteps")

    @classmethod
    def task_defaults(cls, task: str, sigma_n: float, scale: Optional[int]) -> dict[str, Any]:
        return dict(cls.OFFICIAL[task])

    def timesteps(self) -> list[int]:
        """Model-call timesteps at or below t_start, high noise first, ending at 0."""
        return [t for t in timesteps(self.steps, self.skip) if t <= self.t_start]

    @property
    def num_model_calls(self) -> int:
        return len(self.timesteps()) - 1


def initial_state(operator: Operator, y: Tensor, config: DiffPIRConfig, z: Tensor, schedule: Schedule) -> Tensor:
    """y-informed x_T at T = t_start (docs/algorithm.md, "Initialisation").

    Deblur/inpaint/denoise treat the init estimate as already noisy at t_y, the
    timestep whose sigma_bar is nearest 2 sigma_n, and diffuse it forward to T;
    SR starts from the bicubic upsampling as if noiseless:
    x_T = sqrt(a_T/a_y) (2 x_init - 1) + sqrt((1 - a_T) - (a_T/a_y)(1 - a_y)) z.
    """
    a_T = float(schedule.alpha_bar[config.t_start])
    a_y = float(schedule.alpha_bar[schedule.nearest_timestep(2.0 * config.sigma_n)]) if operator.init_is_noisy else 1.0
    signal = math.sqrt(a_T / a_y)
    noise_std = math.sqrt(max(0.0, (1.0 - a_T) - (a_T / a_y) * (1.0 - a_y)))
    return signal * to_model(operator.init_estimate(y)) + noise_std * z


class DiffPIR(MethodBase):
    """The DiffPIR loop for one config; `impl` picks the fused kernels or the torch math."""

    def __init__(self, config: DiffPIRConfig, impl: fused.Impl = "torch") -> None:
        check_config(config, DiffPIRConfig)
        self.config = config
        self.impl = impl
        self.schedule = linear_schedule()

    def steps(self) -> tuple[Step, ...]:
        rho = self.schedule.rho(self.config.lam, self.config.sigma_n)
        ts = self.config.timesteps()
        return tuple(
            Step(i, t, t_next, values={"c": StepCoefficients.at(self.schedule, t, t_next, self.config.zeta), "rho": float(rho[t])})
            for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:]))
        )

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        return initial_state(operator, y, self.config, z[0], self.schedule)

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        c, rho, noise = step["c"], step["rho"], z[0]
        # The step's three parts: x0 from eps (clamped), the data step on [0, 1] images
        # with rho_t, and re-noising to t_next. Fused on CUDA, the engine's torch math elsewhere.
        eps = eps.contiguous()
        if isinstance(data, FourierDataStep):
            x0_01 = fused.predict_x0_01(x, eps, c, impl=self.impl)
            correction = fused.fourier_correction(data, torch.fft.fft2(x0_01), rho, impl=self.impl)
            return fused.step_fourier(x, eps, noise, c, data, correction, impl=self.impl)
        if isinstance(data, ElementwiseDataStep):
            return fused.step_elementwise(x, eps, noise, c, data, rho, impl=self.impl)
        if data is not None:  # any other data step (engine.boundary's masked one): its prox, unfused
            return diffpir_update(x, eps, noise, c, lambda x0: data(x0, rho))
        raise DiffPIRError(f"diffpir: no data step for {type(data).__name__}")

    def finish(self, x: Tensor) -> Tensor:
        return from_model(x).clamp(0.0, 1.0)
