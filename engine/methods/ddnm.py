"""DDNM and DDNM+ (Wang et al., ICLR 2023): range-null-space decomposition.

Written from docs/methods.md, section 5 (official code: wyhuai/DDNM `functions/svd_ddnm.py`
ddnm_diffusion / ddnm_plus_diffusion, the SVD path of the paper's evaluation). Per step
t -> t': x0 from eps (not clipped), the projection x0 <- x0 - A^+(A x0 - y_m) (so that
A x0 = y_m), then the DDRM-style re-noising sqrt(abar') x0 + sqrt(1 - abar')(eta z +
sqrt(1 - eta^2) eps). With measurement noise (DDNM+, sigma_y = 2 sigma_n > 0) the projection
and the noise are scaled per singular value (the official Lambda / Lambda_noise), written
with the bound operator's `range_filter`, so V is never formed and every operator family
(Fourier blur/SR with per-sample kernels, masks) runs the same code.

Time travel (travel_length L, travel_repeat r > 1): the schedule of RePaint's jumps; a
travel pair re-noises the last reverse step's unprojected x0 straight to its level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from diffpir_rt.lazy import lazy_module
from diffpir_rt.params import param

from ..imageio import from_model
from ..operators import DataStep, Operator
from ..schedule import NUM_TRAIN_TIMESTEPS, linear_schedule
from .base import SIGMA_N, STEPS, MethodBase, MethodConfig, Step, check_config
from .ddrm import alpha_bar_at, model_measurement, rcond_param
from .repaint import schedule_counts, schedule_jump

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")


def ddnm_timestep_pairs(steps: int, travel_length: int = 1, travel_repeat: int = 1,
                        num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[tuple[int, int]]:
    """The official pairs: get_schedule_jump(T_sampling, travel_length, travel_repeat) on indices,
    each scaled by skip = T // T_sampling, negative ones -> -1. Default: (990, 980), ..., (0, -1)."""
    skip = num_timesteps // steps
    times = schedule_jump(steps, travel_length, travel_repeat)
    return [(i * skip, j * skip if j >= 0 else -1) for i, j in zip(times[:-1], times[1:])]


@dataclass(frozen=True)
class DDNMConfig(MethodConfig):
    """DDNM / DDNM+ hyperparameters. Defaults: the official `main.py` (`--eta 0.85`) and
    `configs/*.yml` (T_sampling 100, travel_length 1, travel_repeat 1: no time travel).

    As the official runner does, sigma_n = 0 runs DDNM and sigma_n > 0 runs DDNM+.

    Args:
        sigma_n: measurement noise std in [0, 1] image units (sigma_y = 2 sigma_n).
        steps: the official T_sampling; timesteps i * (1000 // steps).
        eta: the DDRM-style noise share (not DDIM's eta).
        travel_length, travel_repeat: time travel (the official travel_length / travel_repeat);
            model calls grow to steps + (jump points) * (travel_repeat - 1) * travel_length,
            e.g. (100, 10, 3) -> 280.
        noise_aware: with sigma_n > 0, scale the projection and the noise per singular value
            (DDNM+, the official choice); False runs the plain DDNM projection on noisy y.
        rcond: singular values <= rcond count as zero (dropped by A^+, kept unscaled).
    """

    method: ClassVar[str] = "ddnm"
    description: ClassVar[str] = (
        "DDNM (Wang et al. 2023): range-null-space x0 <- x0 - A^+(A x0 - y), eta 0.85; DDNM+ (noise-aware) for sigma_n > 0"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "inpaint", "denoise")
    family: ClassVar[bool] = True
    budget_note: ClassVar[str] = "DDNM's T_sampling: timesteps i * (1000 // steps), one UNet call each (more with time travel)"
    min_useful_steps: ClassVar[int] = 5
    defaults_source: ClassVar[str] = "official DDNM: main.py (--eta 0.85), configs/*.yml (T_sampling 100)"

    sigma_n: float = param(like=SIGMA_N)
    steps: int = param(100, like=STEPS)
    eta: float = param(0.85, help="DDRM-style share of fresh noise (not DDIM's eta)", low=0.0, high=1.0)
    travel_length: int = param(1, help="time travel: steps jumped back (1 = none)", kind=int, low=1,
                               high=NUM_TRAIN_TIMESTEPS, group="advanced")  # fmt: skip
    travel_repeat: int = param(1, help="time travel: passes over each jump point (1 = none)", kind=int, low=1,
                               high=NUM_TRAIN_TIMESTEPS, group="advanced")  # fmt: skip
    noise_aware: bool = param(True, help="DDNM+ (noise-aware scaling per singular value) when sigma_n > 0", kind=bool,
                              group="advanced")  # fmt: skip
    rcond: float = rcond_param()

    def timestep_pairs(self) -> list[tuple[int, int]]:
        return ddnm_timestep_pairs(self.steps, self.travel_length, self.travel_repeat)

    @property
    def num_model_calls(self) -> int:
        return schedule_counts(schedule_jump(self.steps, self.travel_length, self.travel_repeat))[0]

    @property
    def noise_count(self) -> int:
        """Noise tensors the steps consume besides x_T's: one per pair (reverse or travel)."""
        return len(self.timestep_pairs())


class DDNM(MethodBase):
    """The DDNM / DDNM+ loop for one config: reverse steps and time-travel steps."""

    def __init__(self, config: DDNMConfig, impl: str = "torch") -> None:
        check_config(config, DDNMConfig)
        self.config = config
        self.schedule = linear_schedule()

    def steps(self) -> tuple[Step, ...]:
        eta, sigma_y = self.config.eta, 2.0 * self.config.sigma_n
        noise_aware = self.config.noise_aware and sigma_y > 0
        pairs = self.config.timestep_pairs()
        steps = []
        for k, (t, t_next) in enumerate(pairs):
            a_next = alpha_bar_at(self.schedule, t_next)
            if t_next < t:
                a = alpha_bar_at(self.schedule, t)
                sigma_t = math.sqrt(1.0 - a_next)
                values = {
                    "sqrt_a": math.sqrt(a),
                    "sqrt_1m_a": math.sqrt(1.0 - a),
                    "a": math.sqrt(a_next),  # the paper's a_t (DDNM+), the signal weight at t'
                    "sigma_t": sigma_t,
                    "c1": sigma_t * eta,
                    "c2": sigma_t * math.sqrt(1.0 - eta**2),
                    "sigma_y": sigma_y,
                    "sqrt_1m_eta2": math.sqrt(1.0 - eta**2),
                    "noise_aware": float(noise_aware),
                    # A travel pair comes next: it re-noises this step's unprojected x0, so the
                    # step returns that x0 as the state (its own output would be discarded).
                    "keep_x0": float(k + 1 < len(pairs) and pairs[k + 1][1] > pairs[k + 1][0]),
                }
                steps.append(Step(k, t, t_next, values=values))
            else:
                # Travel: x_j = sqrt(abar_j) x0_last + sqrt(1 - abar_j) z. A run of L travel pairs
                # draws L times from the same x0_last and only the last draw survives, so the
                # earlier ones consume their noise and pass x0_last on.
                last = k + 1 == len(pairs) or pairs[k + 1][1] < pairs[k + 1][0]
                values = {"sqrt_a_next": math.sqrt(a_next), "sqrt_1m_a_next": math.sqrt(1.0 - a_next), "emit": float(last)}
                steps.append(Step(k, None, t_next, kind="travel", values=values))
        return tuple(steps)

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        """x_T ~ N(0, I), as the official runner starts."""
        return z[0]

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        assert data is not None and z is not None
        noise = z[0]
        if step.kind == "travel":
            return step["sqrt_a_next"] * x + step["sqrt_1m_a_next"] * noise if step["emit"] else x
        x0 = (x - eps * step["sqrt_1m_a"]) / step["sqrt_a"]
        if step["keep_x0"]:
            return x0
        rcond = self.config.rcond
        residual = data.pinv(data.forward(x0) - model_measurement(data, x), rcond)  # A^+(A x0 - y_m)
        c1, c2 = step["c1"], step["c2"]
        if not step["noise_aware"]:
            # DDNM: x0_hat = x0 - A^+(A x0 - y_m), so A x0_hat = y_m on the range of A.
            return step["a"] * (x0 - residual) + c1 * noise + c2 * eps
        # DDNM+ per V-coordinate (official Lambda / Lambda_noise), a = sqrt(abar'), sigma_t = sqrt(1 - abar'):
        #   s sigma_t < a sigma_y: lambda = s sigma_t sqrt(1 - eta^2) / (a sigma_y), noise (sigma_t eta) z
        #   s sigma_t > a sigma_y: lambda = 1, noise sqrt(sigma_t^2 - a^2 sigma_y^2 / s^2) z
        #   otherwise (equality, and the null space): lambda = 1, noise c1 z + c2 eps
        a, sigma_t, sigma_y = step["a"], step["sigma_t"], step["sigma_y"]
        s = data.singular_values().to(x.dtype)
        zeros, ones = torch.zeros_like(s), torch.ones_like(s)
        low = s * sigma_t < a * sigma_y
        high = s * sigma_t > a * sigma_y
        s_safe = torch.where(s > 0, s, ones)
        lam = torch.where(low, s * (sigma_t * step["sqrt_1m_eta2"] / (a * sigma_y)), ones)
        d1_high = torch.sqrt(torch.clamp(sigma_t**2 - (a * sigma_y) ** 2 / s_safe**2, min=0.0))
        x0_hat = x0 - data.range_filter(residual, lam, rcond)
        return (
            a * x0_hat + c1 * noise + c2 * eps  # the default pair, everywhere
            + data.range_filter(noise, torch.where(high, d1_high - c1, zeros), rcond)
            + data.range_filter(eps, torch.where(low | high, -c2 * ones, zeros), rcond)
        )  # fmt: skip

    def finish(self, x: Tensor) -> Tensor:
        return from_model(x).clamp(0.0, 1.0)
