"""RePaint (Lugmayr et al., CVPR 2022): inpainting by known-region injection and resampling.

Written from docs/methods.md, section 7 (official code: andreas128/RePaint
`guided_diffusion/scheduler.py` get_schedule_jump, `gaussian_diffusion.py` p_sample / undo /
p_sample_loop_progressive). DDPM ancestral steps on a respaced chain ("250": plain
respacing, keeping 0 and 999), with the known region replaced by the measurement noised to
the current level before every model call but the first, and "undo" steps that diffuse the
state one respaced step back up, following the jump schedule.

The loop's steps: the first reverse step; then, per later reverse step, an "inject" step
(no model call; the known region of the state is replaced) followed by the "reverse" step
(the model call and the DDPM step); and one "undo" step (no model call) per upward move.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import param

from ..operators import DataStep, Operator
from ..schedule import NUM_TRAIN_TIMESTEPS
from .base import STEPS, MethodBase, MethodConfig, Step, check_config
from .ddpm import ddpm_step, ddpm_values, finish_image, space_timesteps, spaced_schedule, variance_param
from .ddrm import model_measurement

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor


# --------------------------------------------------------------------------- schedules


def schedule_jump(t_T: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """RePaint's get_schedule_jump with n_sample = 1 (every official config) and the jump2 /
    jump3 levels off: respaced indices t_T - 1, ..., 0, -1 walking down one step at a time and,
    at every t in range(0, t_T - jump_length, jump_length), jumping back up jump_length steps
    jump_n_sample - 1 times. A pair (a, b) with b < a is a reverse step, b > a an undo step.
    DDNM's time travel uses the same function (travel_length, travel_repeat)."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, times = t_T, []
    while t >= 1:
        t -= 1
        times.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                times.append(t)
    times.append(-1)
    return times


def schedule_counts(times: list[int]) -> tuple[int, int]:
    """(reverse steps = model calls, upward steps) of a jump schedule."""
    pairs = list(zip(times[:-1], times[1:]))
    return sum(b < a for a, b in pairs), sum(b > a for a, b in pairs)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RePaintConfig(MethodConfig):
    """RePaint hyperparameters. Defaults: all 19 official `confs/*.yml` (timestep_respacing
    '250', schedule_jump_params t_T 250, n_sample 1, jump_length 10, jump_n_sample 10,
    learn_sigma, clip_denoised). The DDPM step, its variance types and the respacing are
    guided-diffusion's, shared with the DDPM family (engine/methods/ddpm.py). Model calls: 2410 (250 + 24 * 9 * 10), plus 2160 undo
    steps and 6979 noise tensors besides x_T's. `RePaintConfig.fast()`: 460 model calls.

    RePaint has no noise model: y is pasted as is (inpainting of noiseless measurements).

    Args:
        t_T: the respaced chain's length (timestep_respacing = str(t_T), as in every
            official config) and where the jump schedule starts.
        jump_length: j, how many respaced steps each resampling goes back up.
        jump_n_sample: r, how many times each jump point is passed (r - 1 jumps each).
        variance: the DDPM variance: "learned" (learned_range, official; the model's second
            output half), "fixed_small" or "fixed_large" (for models without learned variance).
    """

    method: ClassVar[str] = "repaint"
    description: ClassVar[str] = (
        "RePaint (Lugmayr et al. 2022): known-region injection with the jump schedule (t_T 250, j 10, r 10: 2410 UNet calls)"
    )
    tasks: ClassVar[tuple[str, ...]] = ("inpaint",)
    family: ClassVar[bool] = True
    budget: ClassVar[str] = "t_T"
    budget_note: ClassVar[str] = "t_T, the respaced chain's length; UNet calls grow with the resampling (250 -> 2410)"
    min_useful_steps: ClassVar[int] = 250
    defaults_source: ClassVar[str] = "official RePaint: confs/*.yml (t_T 250, jump_length 10, jump_n_sample 10)"
    #: The official configs' values.
    OFFICIAL: ClassVar[dict[str, int]] = {"t_T": 250, "jump_length": 10, "jump_n_sample": 10}
    #: The fast preset: 100 respaced steps, half the resamplings: 460 model calls.
    FAST: ClassVar[dict[str, int]] = {"t_T": 100, "jump_length": 10, "jump_n_sample": 5}
    #: Named settings a user can ask for (eval's --method-preset repaint=fast).
    PRESETS: ClassVar[dict[str, dict[str, int]]] = {"official": OFFICIAL, "fast": FAST}

    t_T: int = param(250, like=STEPS, low=2, help="t_T, the respaced chain's length, where the jump schedule starts")
    jump_length: int = param(10, help="j, respaced steps each resampling goes back up", kind=int, low=1,
                             high=NUM_TRAIN_TIMESTEPS, group="advanced")  # fmt: skip
    jump_n_sample: int = param(10, help="r, how many times each jump point is passed", kind=int, low=1,
                               high=NUM_TRAIN_TIMESTEPS, group="advanced")  # fmt: skip
    variance: str = variance_param("learned")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_int("jump_length", 1, self.t_T - 1)

    @property
    def needs_variance(self) -> bool:
        return self.variance == "learned"

    @classmethod
    def fast(cls, variance: str = "learned") -> "RePaintConfig":
        """The fast preset (ours, not official): t_T 100, j 10, r 5 -> 460 model calls."""
        return cls(**cls.FAST, variance=variance)

    def times(self) -> list[int]:
        return schedule_jump(self.t_T, self.jump_length, self.jump_n_sample)

    @property
    def num_model_calls(self) -> int:
        return schedule_counts(self.times())[0]

    @property
    def num_undo_steps(self) -> int:
        return schedule_counts(self.times())[1]

    @property
    def noise_count(self) -> int:
        """Noise tensors the steps consume besides x_T's: 1 for the first reverse step, 2 for
        every later one (sample, then known region), 1 per undo step (6979 by default)."""
        return 2 * self.num_model_calls - 1 + self.num_undo_steps


# --------------------------------------------------------------------------- method


class RePaint(MethodBase):
    """The RePaint loop for one config (mask operators: inpainting)."""

    def __init__(self, config: RePaintConfig, impl: str = "torch") -> None:
        check_config(config, RePaintConfig)
        self.config = config
        # timestep_respacing = str(t_T), as in every official config ("250": 0, 4, ..., 995, 999)
        self.chain = spaced_schedule(frozenset(space_timesteps(NUM_TRAIN_TIMESTEPS, str(config.t_T))))
        # FRAMEWORK WORKAROUND: the official code draws a reverse step's sample noise BEFORE
        # the known-region noise that is injected before the model call, and run_steps calls
        # the model before `update`. The "inject" step therefore takes both tensors and hands
        # the sample noise to the next ("reverse") step through this slot; it is always set
        # by the step right before and cleared when used. A pre-model hook in run_steps would
        # make this unnecessary (docs/methods.md, section 7, "In the engine").
        self._sample_noise: Optional[Tensor] = None

    def steps(self) -> tuple[Step, ...]:
        c, times = self.chain, self.config.times()
        steps: list[Step] = []
        first = True

        def add(t: Optional[int], t_next: int, noise: int, kind: str, values: dict[str, float]) -> None:
            steps.append(Step(len(steps), t, t_next, noise=noise, kind=kind, values=values))

        for i, j in zip(times[:-1], times[1:]):
            t = c.timestep_map[i]
            t_next = c.timestep_map[j] if j >= 0 else -1
            if j < i:
                if not first:
                    ab = float(c.alphas_cumprod[i])
                    add(None, t, 2, "inject", {"sqrt_a": math.sqrt(ab), "sqrt_1m_a": math.sqrt(1.0 - ab)})
                add(t, t_next, 0 if not first else 1, "reverse", ddpm_values(c, i, self.config.variance))
                first = False
            else:  # undo: q(x_{i+1} | x_i) on the respaced chain
                beta = float(c.betas[i + 1])
                add(None, t_next, 1, "undo", {"sqrt_1m_beta": math.sqrt(1.0 - beta), "sqrt_beta": math.sqrt(beta)})
        return tuple(steps)

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        """x_T ~ N(0, I): the official loop starts from pure noise."""
        return z[0]

    def update(self, x: Tensor, out: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        assert data is not None
        if step.kind == "undo":
            assert z is not None
            return step["sqrt_1m_beta"] * x + step["sqrt_beta"] * z[0]
        if step.kind == "inject":
            # Noise order: the next reverse step's sample noise, then the known-region noise.
            assert z is not None
            self._sample_noise = z[0]
            known = step["sqrt_a"] * model_measurement(data, x) + step["sqrt_1m_a"] * z[1]
            # mask * known + (1 - mask) * x, written with the projector A^+ A onto the known
            # region (exact for binary masks: no x + (known - x) rounding in the known region).
            return x - data.range_filter(x, 1.0) + data.range_filter(known, 1.0)
        # reverse: guided-diffusion's p_sample, x0 clipped to [-1, 1] (clip_denoised).
        if z is not None:
            noise = z[0]
        else:
            if self._sample_noise is None:
                raise DiffPIRError("repaint: a reverse step ran without the inject step before it")
            noise, self._sample_noise = self._sample_noise, None
        return ddpm_step(x, out, step, noise, self.config.variance, clip=True)[0]

    def finish(self, x: Tensor) -> Tensor:
        """The last p_sample (the clipped x0 of the t = 0 call); y is not pasted (official)."""
        return finish_image(x)
