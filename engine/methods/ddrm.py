"""DDRM (Kawar et al., NeurIPS 2022): per-coordinate rules in the operator's spectral basis.

Written from docs/methods.md, section 4 (official code: bahjat-kawar/ddrm
`functions/denoising.py` efficient_generalized_steps). With A = U diag(s) V^T, every
quantity of a step is V diag(f(s)) V^T applied to x0, eps, z or A^+ y_m, for per-step
functions f of the singular value alone. So the step never forms V: it is written with the
bound operator's `range_filter` (sum_i f(s_i) v_i v_i^T over the range), `pinv` and
`singular_values`, and works unchanged for blur and SR (Fourier basis, per-sample kernels)
and for masks (pixel basis, per-sample masks).

Conventions (docs/methods.md section 1): the state is x_t in model units; the measurement
in model units is y_m = 2 y - A 1 with noise std sigma_y = 2 sigma_n; t = -1 means
alpha_bar = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from diffpir_rt.lazy import lazy_module
from diffpir_rt.params import param

from ..imageio import from_model
from ..operators import RCOND, DataStep, Operator
from ..schedule import NUM_TRAIN_TIMESTEPS, Schedule, linear_schedule
from .base import SIGMA_N, STEPS, MethodBase, MethodConfig, Step, check_config

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")


# --------------------------------------------------------------------------- shared helpers
# Small helpers the spectral methods of this package (DDRM, DDNM, RePaint, DPIR) share.


def alpha_bar_at(schedule: Schedule, t: int) -> float:
    """alpha_bar_t from the float64 table; t = -1 gives 1 (the DDRM/DDNM `compute_alpha`)."""
    return 1.0 if t < 0 else float(schedule.alpha_bar[t])


def model_measurement(data: DataStep, like: Tensor) -> Tensor:
    """y_m = 2 y - A 1: the measurement of the model-unit image (docs/methods.md section 1).

    `like` is an image-shaped tensor (the state): A 1 is A applied to its ones.
    """
    return 2.0 * data.measurement() - data.forward(torch.ones_like(like))


def rcond_param() -> Any:
    """The pseudo-inverse's cut-off, a field of every spectral method's config."""
    return param(RCOND, help="singular values <= rcond count as zero (the null space)", low=0.0, high=0.999,
                 low_open=True, group="advanced")  # fmt: skip


# --------------------------------------------------------------------------- DDRM


def ddrm_timestep_pairs(steps: int, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[tuple[int, int]]:
    """The official (t, t_next) pairs: seq = range(0, T, T // steps), seq_next = [-1] + seq[:-1],
    reversed. 20 steps: (950, 900), (900, 850), ..., (50, 0), (0, -1)."""
    seq = list(range(0, num_timesteps, num_timesteps // steps))
    seq_next = [-1] + seq[:-1]
    return list(zip(reversed(seq), reversed(seq_next)))


@dataclass(frozen=True)
class DDRMConfig(MethodConfig):
    """DDRM hyperparameters. Defaults: the official `main.py` (`--eta 0.85`, `--etaB 1`) and
    the README commands (`--timesteps 20`); the runner ties etaA = etaC = eta.

    Args:
        sigma_n: measurement noise std in [0, 1] image units (sigma_y = 2 sigma_n).
        steps: the official `--timesteps`; the model calls are len(range(0, 1000, 1000 // steps))
            (20 -> 20, 30 -> 31), starting at t = 1000 - 1000 // steps (950 for 20).
        eta: the paper's eta (etaA = etaC): the share of fresh noise.
        eta_b: the paper's eta_b: how much of A^+ y replaces x0 on coordinates noisier than y.
        rcond: singular values <= rcond count as zero. Those coordinates follow the
            "missing" rule, as the official structured operators (Inpainting, SR,
            Denoising) treat absent singular values. 3e-2 is the official deblurring cut-off.
    """

    method: ClassVar[str] = "ddrm"
    description: ClassVar[str] = (
        "DDRM (Kawar et al. 2022): per-coordinate updates in the operator's spectral basis (eta 0.85, eta_b 1)"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "inpaint", "denoise")
    family: ClassVar[bool] = True
    budget_note: ClassVar[str] = "DDRM's --timesteps: UNet calls = len(range(0, 1000, 1000 // steps))"
    min_useful_steps: ClassVar[int] = 5
    defaults_source: ClassVar[str] = "official DDRM: main.py (--eta 0.85 --etaB 1), README (--timesteps 20)"

    sigma_n: float = param(like=SIGMA_N)
    steps: int = param(20, like=STEPS)
    eta: float = param(0.85, help="share of fresh noise (the paper's eta = etaA = etaC)", low=0.0, high=1.0)
    eta_b: float = param(1.0, help="how much of A^+ y replaces x0 where the measurement is less noisy (eta_b)",
                         low=0.0, high=1.0, group="advanced")  # fmt: skip
    rcond: float = rcond_param()

    def timestep_pairs(self) -> list[tuple[int, int]]:
        return ddrm_timestep_pairs(self.steps)

    @property
    def num_model_calls(self) -> int:
        return len(self.timestep_pairs())

    @property
    def noise_count(self) -> int:
        """Noise tensors the steps consume (x_T's one comes first): one per step."""
        return self.num_model_calls


def _where(condition: Tensor, value: Any, other: Tensor) -> Tensor:
    return torch.where(condition, value, other)


class DDRM(MethodBase):
    """The DDRM loop for one config: the official init, then one model call per pair."""

    def __init__(self, config: DDRMConfig, impl: str = "torch") -> None:
        check_config(config, DDRMConfig)
        self.config = config
        self.schedule = linear_schedule()

    def steps(self) -> tuple[Step, ...]:
        eta, sigma_y = self.config.eta, 2.0 * self.config.sigma_n
        steps = []
        for i, (t, t_next) in enumerate(self.config.timestep_pairs()):
            a, a_next = alpha_bar_at(self.schedule, t), alpha_bar_at(self.schedule, t_next)
            sigma_next = math.sqrt(1.0 - a_next) / math.sqrt(a_next)  # 0 at t_next = -1
            std = eta * sigma_next
            values = {
                "sqrt_a": math.sqrt(a),
                "sqrt_1m_a": math.sqrt(1.0 - a),
                "sqrt_a_next": math.sqrt(a_next),
                "sigma_next": sigma_next,
                "std": std,  # the fresh-noise weight (etaA = etaC = eta)
                "tilde": math.sqrt(sigma_next**2 - std**2),  # the eps / residual weight
                "sigma_y": sigma_y,
                # 1/sigma_y for the "less noisy than y" case, which sigma_y = 0 never selects.
                "inv_sigma_y": 1.0 / sigma_y if sigma_y > 0 else 0.0,
                "eta_b": self.config.eta_b,
            }
            steps.append(Step(i, t, t_next, values=values))
        return tuple(steps)

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        """The official init (docs/methods.md section 4), with z_bar = V^T z:

        coordinates with s sigma_T > sigma_y: mean (U^T y_m)_i / s_i, std sqrt(sigma_T^2 - sigma_y^2 / s_i^2);
        all others (the null space included): mean 0, std sigma_T; then divided by sigma_T.
        In pixels: x_T = z + V diag(large / sigma_T) V^T A^+ y_m + V diag(large (std/sigma_T - 1)) V^T z.
        """
        assert data is not None
        noise = z[0]
        t_T = self.config.timestep_pairs()[0][0]
        a_T = alpha_bar_at(self.schedule, t_T)
        sigma_T = math.sqrt(1.0 - a_T) / math.sqrt(a_T)
        sigma_y, rcond = 2.0 * self.config.sigma_n, self.config.rcond
        s = data.singular_values().to(noise.dtype)
        large = s * sigma_T > sigma_y
        s_safe = _where(s > 0, s, torch.ones_like(s))
        std_large = torch.sqrt(torch.clamp(sigma_T**2 - sigma_y**2 / s_safe**2, min=0.0))
        zeros = torch.zeros_like(s)
        p = data.pinv(model_measurement(data, noise), rcond)  # V diag(1/s) U^T y_m: (U^T y_m)_i / s_i
        return (
            noise
            + data.range_filter(p, _where(large, 1.0 / sigma_T, zeros), rcond)
            + data.range_filter(noise, _where(large, std_large / sigma_T - 1.0, zeros), rcond)
        )

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        """One step t -> t' (docs/methods.md section 4), x0 not clipped. Per V-coordinate:

        missing (s = 0, or s sigma' = sigma_y):  x0 + tilde eps + std z
        less noisy than y (s sigma' < sigma_y):   x0 + tilde (y_bar - s x0)/sigma_y + std z
        noisier than y (s sigma' > sigma_y):      eta_b y_bar/s + (1 - eta_b) x0 + sqrt(sigma'^2 - eta_b^2 sigma_y^2/s^2) z
        then x_t' = sqrt(abar_t') V (.). With p = A^+ y_m (p_bar_i = y_bar_i / s_i) the two
        measured rules are the missing rule plus c_p (p - x0) - tilde eps + c_z z, with
        c_p = tilde s / sigma_y or eta_b and c_z = 0 or std_b - std: three range filters
        on top of the missing rule applied everywhere (the null space keeps it exactly).
        """
        assert data is not None and z is not None
        noise = z[0]
        rcond = self.config.rcond
        x0 = (x - eps * step["sqrt_1m_a"]) / step["sqrt_a"]
        sigma_next, sigma_y, tilde, std, eta_b = step["sigma_next"], step["sigma_y"], step["tilde"], step["std"], step["eta_b"]

        s = data.singular_values().to(x.dtype)
        zeros = torch.zeros_like(s)
        before = s * sigma_next > sigma_y  # noisier than y
        after = s * sigma_next < sigma_y  # less noisy than y
        s_safe = _where(s > 0, s, torch.ones_like(s))
        c_p = _where(before, eta_b, _where(after, tilde * step["inv_sigma_y"] * s, zeros))
        c_eps = _where(before | after, -tilde, zeros)
        std_before = torch.sqrt(torch.clamp(sigma_next**2 - (eta_b * sigma_y) ** 2 / s_safe**2, min=0.0))
        c_z = _where(before, std_before - std, zeros)

        p = data.pinv(model_measurement(data, x), rcond)
        out = (
            x0 + tilde * eps + std * noise  # the missing rule, everywhere
            + data.range_filter(p - x0, c_p, rcond)
            + data.range_filter(eps, c_eps, rcond)
            + data.range_filter(noise, c_z, rcond)
        )  # fmt: skip
        return step["sqrt_a_next"] * out

    def finish(self, x: Tensor) -> Tensor:
        return from_model(x).clamp(0.0, 1.0)
