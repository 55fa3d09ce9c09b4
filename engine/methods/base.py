"""What a method is: a config, a plan of steps, an initial state and a per-step update.

The reverse loop (`engine.methods.loop.run_steps`) is written once; every method plugs
into it, and so does every way of running it (eager reference, CUDA-graph replay). A
method never calls the network itself: the loop asks the denoiser for eps at the step's
timestep and hands it to `update`, which uses only torch operations on its inputs, so the
same update is what a CUDA graph records. The one exception is a method that needs the
gradient of its update through the network (DPS): it says so with `needs_grad` and the
loop runs its steps with autograd on.

Units: the state x is in model units [-1, 1]; the measurement y and sigma_n are in [0, 1]
image units everywhere (docs/algorithm.md, "Units").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Mapping, Optional, Protocol

from torch import Tensor

from diffpir_rt.errors import DiffPIRError

from ..operators import DataStep, Operator


@dataclass(frozen=True)
class Step:
    """One state-updating step of a method's loop, with everything a CUDA graph bakes in.

    Attributes:
        index: position in the loop.
        t: the timestep the denoiser is called at, or None for a step without a model call.
        t_next: the timestep the state has after the step (bookkeeping and records).
        noise: how many N(0, I) tensors of the image's shape the step consumes.
        kind: a method's own label for a step (e.g. RePaint's "reverse" / "undo").
        values: the step's scalars, computed once from the float64 schedule tables.
    """

    index: int
    t: Optional[int]
    t_next: int
    noise: int = 1
    kind: str = "reverse"
    values: Mapping[str, float] = None  # type: ignore[assignment]

    def __getitem__(self, name: str) -> float:
        return self.values[name]


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's hyperparameters: frozen, checked, recorded as a dict."""

    #: The method's name in the registry and on the command line.
    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    def _check_finite(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DiffPIRError(f"{name}: expected a finite number, got {value!r}")

    def _check_range(self, name: str, low: float, high: float) -> None:
        self._check_finite(name)
        value = getattr(self, name)
        if not low <= value <= high:
            raise DiffPIRError(f"{name}: expected a value in [{low}, {high}], got {value}")

    def _check_int(self, name: str, low: int, high: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DiffPIRError(f"{name}: expected an integer in [{low}, {high}], got {value!r}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


class Method(Protocol):
    """A restoration or generation method, built from its config for one run.

    Attributes:
        config: its hyperparameters.
        tasks: the operator families it applies to ("fourier", "mask"), or () for a
            generation method that takes no measurement.
        needs_grad: whether `update` differentiates through the denoiser (DPS).
        needs_variance: whether `update` wants the model's learned variance too.
    """

    config: MethodConfig
    needs_grad: bool
    needs_variance: bool

    def steps(self) -> tuple[Step, ...]:
        """The loop's steps, in order."""
        ...

    def init_noise(self) -> int:
        """How many N(0, I) tensors `initial_state` consumes (drawn before any step's)."""
        ...

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[DataStep], z: list[Tensor]) -> Tensor:
        """x at the loop's start, model units, (B, C, H, W)."""
        ...

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        """One step: the state after `step`, from the state, the model's output at step.t
        (eps, or (eps, variance) with needs_variance; None for a step without a model call),
        the bound operator and the step's noise ((noise, B, C, H, W) or None)."""
        ...

    def finish(self, x: Tensor) -> Tensor:
        """The loop's final state -> the image in [0, 1]."""
        ...


def check_config(config: Any, expected: type) -> None:
    if not isinstance(config, expected):
        raise DiffPIRError(f"config: expected a {expected.__name__}, got {type(config).__name__}")
