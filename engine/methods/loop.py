"""The one reverse loop every method and every runtime shares, and its randomness.

`run_steps` is the loop body: model call at the step's timestep, then the method's
update. The eager reference (`engine.sampler.sample`) runs it with inputs drawn on the
fly; the CUDA-graph runtime runs the very same function on static buffers and records it.
`NoiseStream` is the one place random numbers are drawn: x_T's noise first, then each
step's, in loop order, from one generator per batch or one per sample.
"""

from __future__ import annotations

import operator as _operator
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence, Union

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from ..operators import DataStep
from ..padding import pad_to_multiple
from .base import Method, Step

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

EpsModel = Callable[["Tensor", "Tensor"], "Tensor"]
Callback = Callable[[dict[str, Any]], None]
Seed = Union[int, Sequence[int], None]
#: torch.Generator.manual_seed takes seeds in [-2^63, 2^64); we accept the unsigned half.
MAX_SEED = 2**64 - 1


def check_seed(seed: Any, batch: int) -> Seed:
    """None, an integer in [0, 2^64), or one such integer per sample."""
    if seed is None:
        return None
    if isinstance(seed, (list, tuple)):
        if len(seed) != batch:
            raise DiffPIRError(f"seed: expected one seed per sample ({batch}), got {len(seed)}")
        return [check_seed(s, 1) for s in seed]  # type: ignore[misc]
    if isinstance(seed, bool):
        raise DiffPIRError(f"seed: expected an integer, got {seed!r}")
    try:
        value = _operator.index(seed)
    except TypeError:
        raise DiffPIRError(f"seed: expected an integer, got {type(seed).__name__}") from None
    if not 0 <= value <= MAX_SEED:
        raise DiffPIRError(f"seed: expected an integer in [0, 2^64 - 1], got {value}")
    return value


def check_state(name: str, value: Any, shape: torch.Size, like: Tensor) -> Tensor:
    """A user-given state or noise tensor: the right shape, finite, moved to like's device/dtype."""
    if not isinstance(value, torch.Tensor):
        raise DiffPIRError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.shape != shape:
        raise DiffPIRError(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.is_complex() or not value.is_floating_point():
        raise DiffPIRError(f"{name}: expected a real floating tensor, got {value.dtype}")
    if not torch.isfinite(value).all():
        raise DiffPIRError(f"{name}: contains NaN or Inf")
    return value.to(like.device, like.dtype)


class NoiseStream:
    """N(0, I) tensors of one image shape, in the order the loop consumes them.

    Args:
        shape: (B, C, H, W).
        like: a tensor whose device and dtype the noise takes.
        seed: one integer for the batch (one generator), one per sample (one generator
            each, so a sample's noise does not depend on its batch), or None (fresh).
        given: the noise to hand out instead of drawing (checked tensor by tensor).
    """

    def __init__(self, shape: torch.Size, like: Tensor, seed: Seed = None, given: Optional[Sequence[Tensor]] = None) -> None:
        self.shape = torch.Size(shape)
        self.like = like
        self.given = given
        self.taken = 0
        self.generators: list[torch.Generator] = []
        seeds = check_seed(seed, self.shape[0])
        for s in seeds if isinstance(seeds, list) else [seeds]:
            g = torch.Generator(device=like.device)
            g.manual_seed(s) if s is not None else g.seed()
            self.generators.append(g)

    def _draw(self) -> Tensor:
        if len(self.generators) == 1:
            return torch.randn(self.shape, generator=self.generators[0], device=self.like.device, dtype=self.like.dtype)
        return torch.stack(
            [torch.randn(self.shape[1:], generator=g, device=self.like.device, dtype=self.like.dtype) for g in self.generators]
        )

    def next(self) -> Tensor:
        """The next (B, C, H, W) noise tensor."""
        if self.given is None:
            out = self._draw()
        else:
            if self.taken >= len(self.given):
                raise DiffPIRError(f"noise: expected more than the {len(self.given)} tensors given")
            out = check_state(f"noise[{self.taken}]", self.given[self.taken], self.shape, self.like)
        self.taken += 1
        return out

    def take(self, count: int) -> Optional[Tensor]:
        """`count` tensors stacked as (count, B, C, H, W), or None for count 0."""
        if count == 0:
            return None
        return torch.stack([self.next() for _ in range(count)])


def noise_count(method: Method) -> int:
    """How many noise tensors the steps consume (x_T's own come before them)."""
    return sum(step.noise for step in method.steps())


def check_given_noise(method: Method, noise: Optional[Sequence[Tensor]]) -> None:
    if noise is None:
        return
    if isinstance(noise, torch.Tensor) and noise.ndim >= 1:
        noise = list(noise)
    if not isinstance(noise, (list, tuple)):
        raise DiffPIRError(f"noise: expected a sequence of tensors, got {type(noise).__name__}")
    expected = noise_count(method)
    if len(noise) != expected:
        raise DiffPIRError(f"noise: expected {expected} tensors (the steps' noise, in order), got {len(noise)}")


def pad_model(eps_model: EpsModel, pad_mode: str) -> EpsModel:
    """eps_model for any image size: pad to its size_multiple, crop eps (and variance) back."""
    multiple = int(getattr(eps_model, "size_multiple", 1))
    if multiple <= 1:
        return eps_model

    def crop(out: Any, h: int, w: int) -> Any:
        return out[..., :h, :w] if isinstance(out, torch.Tensor) else out

    def call(x_t: Tensor, t: Tensor) -> Tensor:
        h, w = x_t.shape[-2:]
        return crop(eps_model(pad_to_multiple(x_t, multiple, pad_mode), t), h, w)

    inner = getattr(eps_model, "eps_and_variance", None)
    if inner is not None:

        def eps_and_variance(x_t: Tensor, t: Tensor) -> tuple[Any, Any]:
            h, w = x_t.shape[-2:]
            eps, variance = inner(pad_to_multiple(x_t, multiple, pad_mode), t)
            return crop(eps, h, w), crop(variance, h, w)

        call.eps_and_variance = eps_and_variance  # type: ignore[attr-defined]
    return call


def check_model_output(out: Any, x: Tensor, name: str = "eps_model") -> Tensor:
    """The denoiser's answer must be a real floating tensor of the state's shape on the state's
    device; anything else is the model's fault. (No values are read: no sync, capturable.)"""
    if not isinstance(out, torch.Tensor):
        raise DiffPIRError(f"{name}: returned {type(out).__name__}, expected a tensor of shape {tuple(x.shape)}")
    if out.shape != x.shape:
        raise DiffPIRError(f"{name}: returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
    if not out.is_floating_point():
        raise DiffPIRError(f"{name}: returned a {str(out.dtype).removeprefix('torch.')} tensor, expected real floating values")
    if out.device != x.device:
        raise DiffPIRError(f"{name}: returned a tensor on {out.device}, expected one on {x.device} (the state's device)")
    return out


def call_model(model: EpsModel, x: Tensor, t: Tensor, with_variance: bool) -> Any:
    """eps (or (eps, variance) when the method wants the learned variance) at timestep t."""
    if with_variance:
        query = getattr(model, "eps_and_variance", None)
        if query is None:
            raise DiffPIRError("eps_model: the method needs the learned variance, which this model does not provide")
        eps, variance = query(x, t)
        return check_model_output(eps, x), check_model_output(variance, x)
    return check_model_output(model(x, t), x)


class StepInputs(Protocol):
    """Where the loop takes each step's timesteps and noise from."""

    def timesteps(self, step: Step) -> Tensor: ...
    def noise(self, step: Step) -> Optional[Tensor]: ...


class DrawnInputs:
    """Timestep tensors made per step, noise drawn from a NoiseStream when the step runs."""

    def __init__(self, stream: NoiseStream, batch: int, device: torch.device) -> None:
        self.stream = stream
        self.batch = batch
        self.device = device

    def timesteps(self, step: Step) -> Tensor:
        return torch.full((self.batch,), int(step.t), dtype=torch.int64, device=self.device)

    def noise(self, step: Step) -> Optional[Tensor]:
        return self.stream.take(step.noise)


def run_steps(
    method: Method,
    model: EpsModel,
    data: Optional[DataStep],
    x: Tensor,
    inputs: StepInputs,
    steps: Sequence[Step],
    callback: Optional[Callback] = None,
) -> Tensor:
    """The reverse loop: for each step, eps at step.t, then method.update. Returns the
    final state mapped to [0, 1] by the method (not yet checked for NaN: see check_output).

    A data step that carries solver state from step to step (engine.boundary's warm start)
    has `begin_loop`; it runs first, inside the loop, so a recorded graph resets it on every
    replay and a restoration never starts from another's state."""
    begin_loop = getattr(data, "begin_loop", None)
    if begin_loop is not None:
        begin_loop()
    for step in steps:
        z = inputs.noise(step)
        if method.needs_grad:
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                out = call_model(model, x, inputs.timesteps(step), method.needs_variance) if step.t is not None else None
                x = method.update(x, out, step, data, z).detach()
        else:
            out = call_model(model, x, inputs.timesteps(step), method.needs_variance) if step.t is not None else None
            x = method.update(x, out, step, data, z)
        if callback is not None:
            callback({"i": step.index, "t": step.t, "x": x})
    return method.finish(x)


def check_output(image: Tensor) -> Tensor:
    """NaN or Inf in the result can only come from the model (inputs are checked): say so."""
    if not torch.isfinite(image).all():
        raise DiffPIRError(
            "eps_model: produced NaN or Inf during sampling (a broken checkpoint, or a reduced "
            "precision that overflows: try --dtype fp32)"
        )
    return image
