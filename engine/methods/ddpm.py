"""DDPM ancestral sampling on guided-diffusion's respaced chains, and what its family shares.

guided-diffusion (openai/guided-diffusion, `respace.py`, `gaussian_diffusion.py`) runs a
model trained on T = 1000 steps on a subset of them: the kept timesteps t_0 < ... < t_{K-1}
form a new chain with beta'_i = 1 - abar[t_i] / abar[t_{i-1}], every posterior quantity is
recomputed from beta', and the UNet is called with the original t_i. This module holds that
respacing (`space_timesteps`, `spaced_schedule`), the DDPM step `p_sample` with its three
variance types, and `DDPM`, unconditional generation with it. DPS, DMPS and ILVR take the
same step and add their guidance after it (docs/methods.md, sections 3, 6, 8, 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Sequence, Union

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import param

from ..imageio import from_model
from ..operators import DataStep, Operator
from ..schedule import NUM_TRAIN_TIMESTEPS, linear_schedule
from .base import STEPS, MethodBase, MethodConfig, Step, check_config

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

#: The variance of the DDPM step: guided-diffusion's FIXED_SMALL (the clipped posterior
#: variance), FIXED_LARGE (beta, first entry the posterior variance) and LEARNED_RANGE
#: (interpolated between the two logs by the model's second output half).
VARIANCES = ("fixed_small", "fixed_large", "learned")
#: How `steps` timesteps are picked out of 1000: "even" is guided-diffusion's
#: timestep_respacing "N" (N steps spread with rounding, keeping 0 and 999), "ddim" its "ddimN"
#: (range(0, 1000, s) with the smallest stride s giving exactly N steps).
SPACINGS = ("even", "ddim")


# ----------------------------------------------------------------------------- respacing


def space_timesteps(num_timesteps: int, section_counts: Union[str, int, Sequence[int]]) -> set[int]:
    """guided-diffusion `respace.space_timesteps`: the original timesteps a respacing keeps.

    Args:
        num_timesteps: T of the trained chain (1000).
        section_counts: "ddimN" (the smallest integer stride s with len(range(0, T, s)) == N,
            so "ddim30" uses s = 34), or "N" / "N1,N2,..." / [N1, ...]: the chain split into
            equal sections, each spread over evenly with Python's round() on an accumulated
            float ("250" keeps 0 and 999).

    Raises:
        DiffPIRError: a count that cannot be realised.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            try:
                desired = int(section_counts[len("ddim") :])
            except ValueError:
                raise DiffPIRError(f"respacing: expected 'ddimN' with an integer N, got {section_counts!r}") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise DiffPIRError(f"respacing: cannot create exactly {desired} steps with an integer stride ({section_counts!r})")
        try:
            counts = [int(c) for c in section_counts.split(",")]
        except ValueError:
            raise DiffPIRError(f"respacing: expected 'ddimN' or comma-separated integers, got {section_counts!r}") from None
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise DiffPIRError(f"respacing: expected positive step counts, got {section_counts!r}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, set()
    for k, count in enumerate(counts):
        size = size_per + (1 if k < extra else 0)
        if size < count:
            raise DiffPIRError(f"respacing: cannot divide a section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return kept


@dataclass(frozen=True)
class SpacedSchedule:
    """A respaced chain's float64 tables, indexed by the respaced index i (0 = least noisy).

    Attributes:
        timestep_map: the original timestep of each i (what the UNet is called with).
        betas, alphas_cumprod, alphas_cumprod_prev: beta'_i, abar'_i, abar'_{i-1} (1 at i = 0).
        posterior_variance: beta'_i (1 - abar'_{i-1}) / (1 - abar'_i).
        posterior_log_variance_clipped: its log with entry 0 (a zero) replaced by entry 1.
        posterior_mean_coef1, posterior_mean_coef2: the posterior mean's weights on x0, x_t.
    """

    timestep_map: tuple[int, ...]
    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    @property
    def num_steps(self) -> int:
        return len(self.timestep_map)

    def log_variance(self, i: int, variance: str) -> tuple[float, float]:
        """(min_log, max_log) at i: the fixed_small and fixed_large log-variances, between
        which "learned" interpolates (guided-diffusion `p_mean_variance`)."""
        min_log = float(self.posterior_log_variance_clipped[i])
        large = self.posterior_variance[1] if i == 0 else self.betas[i]
        # learned_range's max_log is log(beta'_i) itself, fixed_large's has entry 0 replaced.
        max_log = float(np.log(self.betas[i])) if variance == "learned" else float(np.log(large))
        return min_log, max_log


@lru_cache(maxsize=None)
def spaced_schedule(use_timesteps: frozenset[int]) -> SpacedSchedule:
    """The respaced chain over the kept original timesteps (guided-diffusion SpacedDiffusion:
    new betas from the base abar, then the tables recomputed from them as GaussianDiffusion does)."""
    if len(use_timesteps) < 2:
        raise DiffPIRError(f"respacing: expected at least 2 timesteps, got {len(use_timesteps)}")
    base = linear_schedule().alpha_bar
    last, new_betas, timestep_map = 1.0, [], []
    for t, abar in enumerate(base):
        if t in use_timesteps:
            new_betas.append(1.0 - abar / last)
            last = abar
            timestep_map.append(t)
    betas = np.array(new_betas, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    tables = dict(
        betas=betas,
        alphas_cumprod=abar,
        alphas_cumprod_prev=abar_prev,
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(abar_prev) / (1.0 - abar),
        posterior_mean_coef2=(1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar),
    )
    for table in tables.values():
        table.setflags(write=False)
    return SpacedSchedule(timestep_map=tuple(timestep_map), **tables)


def respacing(steps: int, spacing: str) -> str:
    """guided-diffusion's timestep_respacing string for `steps` with `spacing`."""
    return f"ddim{steps}" if spacing == "ddim" else str(steps)


def check_steps(config: MethodConfig, steps_field: str = "steps", spacing_field: Optional[str] = "spacing") -> None:
    """Check that the config's spacing can realise its step count (the ranges are the fields' declarations)."""
    spacing = "even" if spacing_field is None else getattr(config, spacing_field)
    steps = getattr(config, steps_field)
    try:
        space_timesteps(NUM_TRAIN_TIMESTEPS, respacing(steps, spacing))
    except DiffPIRError:
        raise DiffPIRError(
            f"{steps_field}: {steps} steps cannot be spaced as 'ddim{steps}' (no integer stride gives exactly "
            f"{steps} of 1000 timesteps); use spacing 'even' or another count"
        ) from None


def steps_param(default: int) -> Any:
    """`steps` of a respaced chain: kept timesteps, one UNet call each (2..1000)."""
    return param(default, like=STEPS, low=2)


def variance_param(default: str) -> Any:
    return param(default, help="DDPM variance: learned (the UNet's learned range; needs torch weights), fixed_small "
                 "or fixed_large", kind=str, choices=VARIANCES, group="advanced")  # fmt: skip


def clip_param() -> Any:
    return param(True, help="clamp x0 to [-1, 1] in each step", kind=bool, group="advanced")


def spacing_param() -> Any:
    return param("even", help="respacing of the chain: even (guided-diffusion 'N') or ddim ('ddimN')", kind=str,
                 choices=SPACINGS, group="advanced")  # fmt: skip


def schedule_of(steps: int, spacing: str) -> SpacedSchedule:
    return spaced_schedule(frozenset(space_timesteps(NUM_TRAIN_TIMESTEPS, respacing(steps, spacing))))


def timesteps_of(steps: int, spacing: str) -> list[int]:
    """The original timesteps the loop calls the model at, high noise first."""
    return list(reversed(schedule_of(steps, spacing).timestep_map))


# ----------------------------------------------------------------------------- the DDPM step


def ddpm_values(schedule: SpacedSchedule, i: int, variance: str) -> dict[str, float]:
    """The scalars of the DDPM step at respaced index i, from the float64 tables.

    sqrt_recip_ab, sqrt_recipm1_ab: x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps;
    coef1, coef2: the posterior mean coef1 x0 + coef2 x_t;
    std: the fixed variance's exp(logvar / 2), 0 at i = 0 (no noise on the last step);
    min_log, max_log: the learned variance's ends; nonzero: 0 at i = 0, else 1.
    """
    abar = float(schedule.alphas_cumprod[i])
    min_log, max_log = schedule.log_variance(i, variance)
    fixed_log = min_log if variance == "fixed_small" else max_log
    nonzero = 1.0 if i > 0 else 0.0
    return {
        "i": float(i),
        "sqrt_recip_ab": math.sqrt(1.0 / abar),
        "sqrt_recipm1_ab": math.sqrt(1.0 / abar - 1.0),
        "coef1": float(schedule.posterior_mean_coef1[i]),
        "coef2": float(schedule.posterior_mean_coef2[i]),
        "std": nonzero * math.exp(0.5 * fixed_log) if variance != "learned" else 0.0,
        "min_log": min_log,
        "max_log": max_log,
        "nonzero": nonzero,
    }


def split_output(out: Any, variance: str) -> tuple[Tensor, Optional[Tensor]]:
    """(eps, v) from what the loop handed over: (eps, v) for "learned", eps otherwise."""
    if variance == "learned":
        eps, v = out
        return eps, v
    return out, None


def predict_x0(x: Tensor, eps: Tensor, step: Step, clip: bool) -> Tensor:
    """Tweedie x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps (clamped to [-1, 1] with clip)."""
    x0 = step["sqrt_recip_ab"] * x - step["sqrt_recipm1_ab"] * eps
    return x0.clamp(-1.0, 1.0) if clip else x0


def ddpm_from_x0(x: Tensor, x0: Tensor, v: Optional[Tensor], step: Step, z: Tensor, variance: str) -> Tensor:
    """guided-diffusion `p_sample` given x0: posterior mean + exp(logvar / 2) z (no noise at
    i = 0). "learned": logvar = frac max_log + (1 - frac) min_log with frac = (v + 1) / 2."""
    mean = step["coef1"] * x0 + step["coef2"] * x
    if step["nonzero"] == 0.0:
        return mean
    if variance == "learned":
        frac = (v + 1.0) / 2.0
        return mean + (0.5 * (frac * step["max_log"] + (1.0 - frac) * step["min_log"])).exp() * z
    return mean + step["std"] * z


def ddpm_step(x: Tensor, out: Any, step: Step, z: Tensor, variance: str, clip: bool) -> tuple[Tensor, Tensor]:
    """One DDPM ancestral step from x_t: (x_{t-1}, the (clipped) x0)."""
    eps, v = split_output(out, variance)
    x0 = predict_x0(x, eps, step, clip)
    return ddpm_from_x0(x, x0, v, step, z, variance), x0


def ddpm_steps(schedule: SpacedSchedule, variance: str, noise: Any = 1, extra: Any = None) -> tuple[Step, ...]:
    """The loop's steps over a respaced chain, high noise first (i = K-1 .. 0).

    Args:
        noise: the noise count per step, or a function i -> count.
        extra: a function i -> dict of a method's own scalars, merged into the values.
    """
    steps = []
    tmap = schedule.timestep_map
    for index, i in enumerate(reversed(range(schedule.num_steps))):
        values = ddpm_values(schedule, i, variance)
        if extra is not None:
            values.update(extra(i))
        count = noise(i) if callable(noise) else noise
        steps.append(Step(index, tmap[i], tmap[i - 1] if i > 0 else -1, noise=count, values=values))
    return tuple(steps)


def noise_state(z: list[Tensor]) -> Tensor:
    """x_T = z: the family starts from pure noise (guided-diffusion `p_sample_loop`)."""
    return z[0]


def finish_image(x: Tensor) -> Tensor:
    """The last state -> [0, 1], clipped as the official scripts save it."""
    return from_model(x).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- the family's shared parts


class RespacedSchedule:
    """Config mixin of the ancestral family: fields `steps` and `spacing` pick the respaced chain,
    `variance` whether the update reads the UNet's learned variance."""

    steps: int
    spacing: str
    variance: str

    budget_note: ClassVar[str] = "kept timesteps of the respaced 1000-step chain, one UNet call each"

    @property
    def needs_variance(self) -> bool:
        return self.variance == "learned"

    def timesteps(self) -> list[int]:
        return timesteps_of(self.steps, self.spacing)

    @property
    def num_model_calls(self) -> int:
        return len(self.timesteps())


class AncestralMethod(MethodBase):
    """What DDPM, DPS, DMPS and ILVR share: x_T ~ N(0, I), DDPM steps on the respaced chain
    (their `update` adds each method's own term), the final clamp to [0, 1].

    Subclasses set `config_class`, and override `update` (and `steps` when their steps
    carry extra values or noise).
    """

    config_class: ClassVar[type] = MethodConfig

    def __init__(self, config: Any, impl: str = "torch") -> None:
        check_config(config, self.config_class)
        self.config = config
        self.schedule = schedule_of(config.steps, config.spacing)

    def steps(self) -> tuple[Step, ...]:
        return ddpm_steps(self.schedule, self.config.variance)

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        return noise_state(z)

    def finish(self, x: Tensor) -> Tensor:
        return finish_image(x)


# ----------------------------------------------------------------------------- DDPM generation


@dataclass(frozen=True)
class DDPMConfig(RespacedSchedule, MethodConfig):
    """Unconditional DDPM ancestral sampling (Ho et al. 2020; guided-diffusion `p_sample_loop`).

    Args:
        steps: kept timesteps, NFE (default 1000, the trained chain; guided-diffusion's
            timestep_respacing "" / "1000").
        variance: "fixed_large" (default: guided-diffusion's `create_gaussian_diffusion`
            with learn_sigma=False, sigma_small=False), "fixed_small", or "learned"
            (learned_range, for learn_sigma UNets such as the bundled prior; the model must
            provide `eps_and_variance`).
        clip_denoised: clamp x0 to [-1, 1] (the sampling scripts' default True).
        spacing: "even" (guided-diffusion "N") or "ddim" ("ddimN"), see SPACINGS.
    """

    method: ClassVar[str] = "ddpm"
    description: ClassVar[str] = "DDPM (Ho et al. 2020): unconditional ancestral sampling from the prior"
    defaults_source: ClassVar[str] = "guided-diffusion's p_sample_loop"

    steps: int = steps_param(NUM_TRAIN_TIMESTEPS)
    variance: str = variance_param("fixed_large")
    clip_denoised: bool = clip_param()
    spacing: str = spacing_param()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_steps(self)


class DDPM(AncestralMethod):
    """Unconditional DDPM generation: x_T ~ N(0, I), then `steps` ancestral steps."""

    config_class = DDPMConfig

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        return ddpm_step(x, eps, step, z[0], self.config.variance, self.config.clip_denoised)[0]
