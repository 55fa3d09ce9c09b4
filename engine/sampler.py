"""The DiffPIR sampler: the official reverse loop (spec §4-5), readable in one sitting.

The sampler knows neither the network nor the hardware: it asks an eps-model
``eps_model(x_t, t) -> eps`` (t an int64 tensor of shape (B,)) for the prior and an
Operator for the data step. Randomness is injected: an explicit initial state
``x_T`` and one noise tensor per state-updating step make a run fully reproducible;
``seed`` covers the everyday case (x_T's noise drawn first, then one tensor per step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from diffpir_rt.errors import DiffPIRError
from .imageio import from_model, to_model
from .operators import Operator, check_image_batch
from .padding import pad_to_multiple
from .schedule import SKIP_TYPES, NUM_TRAIN_TIMESTEPS, Schedule, linear_schedule, timesteps
from .step import StepCoefficients, predict_x0, renoise

EpsModel = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class DiffPIRConfig:
    """DiffPIR hyperparameters (spec §8).

    Args:
        lam: lambda, the data-term weight in rho_t = lam sigma^2 / sigma_bar_t^2.
        zeta: noise mixing in [0, 1]: 0 = deterministic (DDIM-like), 1 = fresh noise.
        sigma_n: measurement noise std in [0, 1] image units (0.05 = 12.75/255).
        steps: number of timesteps N (model calls: N - 1 for 'quad', N for 'uniform',
            since the official final call's output is discarded and skipped here).
        skip: step spacing, 'quad' (dense near t = 0) or 'uniform'.
        t_start: start timestep; entries above it are skipped (spec §2.3).
    """

    lam: float
    zeta: float
    sigma_n: float
    steps: int
    skip: str = "quad"
    t_start: int = NUM_TRAIN_TIMESTEPS - 1

    def __post_init__(self) -> None:
        for name in ("lam", "zeta", "sigma_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DiffPIRError(f"{name}: expected a finite number, got {value!r}")
        if self.lam <= 0:
            raise DiffPIRError(f"lam: expected > 0, got {self.lam}")
        if not 0.0 <= self.zeta <= 1.0:
            raise DiffPIRError(f"zeta: expected a value in [0, 1], got {self.zeta}")
        if not 0.0 <= self.sigma_n <= 1.0:
            raise DiffPIRError(f"sigma_n: expected a value in [0, 1] (image units), got {self.sigma_n}")
        if self.skip not in SKIP_TYPES:
            raise DiffPIRError(f"skip: expected one of {SKIP_TYPES}, got {self.skip!r}")
        if isinstance(self.t_start, bool) or not isinstance(self.t_start, int) or not 0 <= self.t_start < NUM_TRAIN_TIMESTEPS:
            raise DiffPIRError(f"t_start: expected an integer in [0, {NUM_TRAIN_TIMESTEPS - 1}], got {self.t_start!r}")
        if len(self.timesteps()) < 2:
            raise DiffPIRError(f"t_start: {self.t_start} leaves fewer than 2 of the {self.steps} timesteps")

    def timesteps(self) -> list[int]:
        """Model-call timesteps at or below t_start, high noise first, ending at 0."""
        return [t for t in timesteps(self.steps, self.skip) if t <= self.t_start]

    @property
    def num_model_calls(self) -> int:
        return len(self.timesteps()) - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _padded_model(eps_model: EpsModel, pad_mode: str) -> EpsModel:
    """Wrap eps_model so any image size works: pad to its size_multiple, crop eps back."""
    multiple = int(getattr(eps_model, "size_multiple", 1))
    if multiple <= 1:
        return eps_model

    def call(x_t: Tensor, t: Tensor) -> Tensor:
        h, w = x_t.shape[-2:]
        return eps_model(pad_to_multiple(x_t, multiple, pad_mode), t)[..., :h, :w]

    return call


def initial_state(
    operator: Operator, y: Tensor, config: DiffPIRConfig, z: Tensor, schedule: Schedule
) -> Tensor:
    """y-informed x_T at T = t_start (spec §5).

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


def _check_state(name: str, value: Tensor, shape: torch.Size, like: Tensor) -> Tensor:
    if not isinstance(value, Tensor):
        raise DiffPIRError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise DiffPIRError(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise DiffPIRError(f"{name}: contains NaN or Inf")
    return value.to(like.device, like.dtype)


@torch.no_grad()
def sample(
    eps_model: EpsModel,
    operator: Operator,
    y: Tensor,
    config: DiffPIRConfig,
    x_T: Optional[Tensor] = None,
    noise: Optional[Union[Sequence[Tensor], Tensor]] = None,
    seed: Optional[int] = None,
    callback: Optional[Callback] = None,
) -> Tensor:
    """Restore y with DiffPIR. Returns the restored image in [0, 1].

    Args:
        eps_model: (x_t (B, C, H, W) in model units, t int64 (B,)) -> eps. If it has a
            ``size_multiple`` attribute, images are padded to it (operator.pad_mode).
        operator: the degradation (Deblur, SuperResolution, Inpaint, Denoise).
        y: measurement in [0, 1], (B, C, h, w) or (C, h, w); not clipped.
        config: hyperparameters.
        x_T: initial state at t_start in model units, (B, C, H, W); default: the
            y-informed init of spec §5 with noise from `seed`.
        noise: one N(0, I) tensor per state-updating step, in order
            (config.num_model_calls of them, each (B, C, H, W)); default: from `seed`.
        seed: seeds a torch.Generator on y's device for whatever x_T/noise are not
            given; None draws a fresh seed.
        callback: called after every step with {i, t, x, x0} (model units).

    Returns:
        (B, C, H, W) (or (C, H, W) for an unbatched y) image in [0, 1].
    """
    if not isinstance(config, DiffPIRConfig):
        raise DiffPIRError(f"config: expected a DiffPIRConfig, got {type(config).__name__}")
    unbatched = isinstance(y, Tensor) and y.ndim == 3
    if unbatched:
        y = y[None]
    check_image_batch(y)
    data_step = operator.data_step(y)  # validates sizes and precomputes spectra once
    shape = operator.image_shape(y.shape)

    schedule = linear_schedule()
    steps = config.timesteps()
    rho = schedule.rho(config.lam, config.sigma_n)
    model = _padded_model(eps_model, operator.pad_mode)

    generator = None
    if x_T is None or noise is None:
        generator = torch.Generator(device=y.device)
        generator.manual_seed(seed) if seed is not None else generator.seed()

    def draw() -> Tensor:
        return torch.randn(shape, generator=generator, device=y.device, dtype=y.dtype)

    if x_T is None:
        x = initial_state(operator, y, config, draw(), schedule)
    else:
        x = _check_state("x_T", x_T, shape, y)
    if noise is not None and len(noise) != len(steps) - 1:
        raise DiffPIRError(f"noise: expected {len(steps) - 1} tensors (one per step), got {len(noise)}")

    for i, (t, t_next) in enumerate(zip(steps[:-1], steps[1:])):
        c = StepCoefficients.at(schedule, t, t_next, config.zeta)
        # 1. prior step (one NFE): x0 from eps, clamped to [-1, 1]        spec §3
        eps = model(x, torch.full((shape[0],), t, dtype=torch.int64, device=y.device))
        if eps.shape != x.shape:
            raise DiffPIRError(f"eps_model: returned shape {tuple(eps.shape)}, expected {tuple(x.shape)}")
        x0 = predict_x0(x, eps, c)
        # 2a. data step on [0, 1] images with rho_t; not clipped           spec §6
        x0 = to_model(data_step(from_model(x0), float(rho[t])))
        # 2b-c. effective eps, zeta mixing, re-noise to t_next           spec §4
        z = draw() if noise is None else _check_state(f"noise[{i}]", noise[i], shape, y)
        x = renoise(x, x0, z, c)
        if callback is not None:
            callback({"i": i, "t": t, "x": x, "x0": x0})
    # 3. The official final call at t = 0 is discarded, so it is skipped (spec §4.3).
    out = from_model(x).clamp(0.0, 1.0)
    return out[0] if unbatched else out
