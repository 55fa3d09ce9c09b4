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

import dataclasses
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Protocol

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import AUTO, Param, check_fields, declared

from ..operators import DataStep, Operator
from ..tasks import get_task

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

#: The two parameters every method takes on every surface, whatever it calls them: the
#: iteration budget (each config maps it to its own field, `MethodConfig.budget`) and the
#: measurement's noise level (a property of the measurement; a method without a noise model
#: records that it did not use it).
STEPS = Param("iteration budget: the method's number of steps (see --help --method NAME for what it counts)", int, 1, 1000)
SIGMA_N = Param("measurement noise std in [0, 1] image units (0.05 = 12.75/255)", float, 0.0, 1.0)
#: sigma_n as a user gives it on every surface (flag, form field, batch option, Restorer.restore):
#: a number, or `auto` (engine.estimate_sigma_n of the measurement, recorded in the run record).
#: A config always holds the number.
SIGMA_N_INPUT = dataclasses.replace(SIGMA_N, words=(AUTO,), help=SIGMA_N.help + "; auto: estimated from the measurement "
                                    "(restoring a photo: the default)")


@dataclass(frozen=True)
class Capabilities:
    """What a method needs from the runtime, and what it can run on.

    Attributes:
        gradients: its update differentiates through the UNet (torch backends only).
        extended_boundary: it runs on the extended-domain (masked) data step of a real photo,
            i.e. it uses only the data step's prox, or A and A^T (engine/boundary.py).
        graph_capture: its loop can be recorded as one CUDA graph (static shapes, no host sync).
        per_sample_operators: a batch may carry one kernel or mask per sample.
    """

    gradients: bool = False
    extended_boundary: bool = False
    graph_capture: bool = True
    per_sample_operators: bool = True

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


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
    """Base of every method's hyperparameters: frozen, checked, recorded as a dict, and
    self-describing, so no code outside engine/methods/ names a method.

    A config's fields are its user parameters, each declared with `diffpir_rt.params.param`
    (help, kind, range): the command line's flags, the service's form fields and eval's and
    batch jobs' options are generated from them, and `__post_init__` checks them.
    """

    #: The method's name in the registry and on every surface.
    method: ClassVar[str] = ""
    #: One line: what it computes (help, /v1/info, the web page, eval's notes).
    description: ClassVar[str] = ""
    #: The tasks it restores (engine.tasks names); () for a generation method.
    tasks: ClassVar[tuple[str, ...]] = ()
    #: Whether eval's comparison family includes it.
    family: ClassVar[bool] = False
    #: The task inputs it estimates from the measurement when the user gives `auto` instead of a
    #: file (blind deblurring: ("kernel",)); its `estimate_operator` then makes the operator.
    estimates: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: The field the user's --steps sets, and what it counts for this method.
    budget: ClassVar[str] = "steps"
    budget_note: ClassVar[str] = "timesteps (one UNet call each)"
    #: Below this budget the method gives little with a small prior: one warning line. Set from
    #: `python -m diffpir_rt.benchmarks.budgets` (benchmarks/results/method_budgets/): the smallest
    #: budget within 1 dB of the method's best with the bundled prior.
    min_useful_steps: ClassVar[int] = 1
    #: Where the defaults of `for_task` come from (run records, --help).
    defaults_source: ClassVar[str] = "the official defaults"
    #: Named settings a user can ask for by name (eval's --method-preset METHOD=NAME).
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    def field_values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

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

    @classmethod
    def params(cls) -> dict[str, Param]:
        """The user parameters of this method (its declared fields)."""
        return declared(cls)

    @classmethod
    def uses_sigma_n(cls) -> bool:
        return "sigma_n" in cls.field_names()

    # ------------------------------------------------------------------ per-task defaults

    @classmethod
    def check_task(cls, task: str) -> None:
        """Refuse a task this method does not restore, saying which it does."""
        get_task(task)  # an unknown name says so first
        if task not in cls.tasks:
            serves = f"it restores {', '.join(cls.tasks)}" if cls.tasks else "it generates images; use generate()"
            raise DiffPIRError(f"method {cls.method}: does not apply to task {task} ({serves})")

    @classmethod
    def task_defaults(cls, task: str, sigma_n: float, scale: Optional[int]) -> dict[str, Any]:
        """The fields this method sets per task (besides sigma_n); {} = its dataclass defaults."""
        return {}

    @classmethod
    def for_task(cls, task: str, sigma_n: float, scale: Optional[int] = None) -> "MethodConfig":
        """The method's defaults for `task` with the measurement's noise level (and SR scale)."""
        cls.check_task(task)
        values = dict(cls.task_defaults(task, sigma_n, scale))
        if cls.uses_sigma_n():
            values["sigma_n"] = sigma_n
        return cls(**values)

    @classmethod
    def estimate_operator(cls, y: Any, *, sigma_n: float, boundary: Optional[str], overrides: Mapping[str, Any],
                          multiple: int = 16) -> Any:  # fmt: skip
        """The operator of a measurement whose `estimates` inputs were given as `auto`, estimated
        from y (B, C, h, w) in [0, 1] with the user's hyperparameter `overrides` (e.g. a kernel
        support); `boundary` is the resolved boundary model. Only methods that declare `estimates`."""
        raise DiffPIRError(f"method {cls.method}: estimates no task input from the measurement")

    # ------------------------------------------------------------------ what it needs

    @property
    def needs_variance(self) -> bool:
        """Whether the update reads the UNet's learned variance (only some configs do)."""
        return False

    @property
    def size_multiple(self) -> int:
        """The state's height and width must be multiples of this (1: any size); an extended boundary
        grid (engine.boundary_models) is rounded up to it as to the UNet's."""
        return 1

    def model_calls(self) -> int:
        """UNet calls of this config's loop (NFE)."""
        from . import build_method

        return sum(1 for step in build_method(self).steps() if step.t is not None)


class MethodBase:
    """What every method object shares: its config, and what it needs, read from the config's
    declarations (the loop, the graph runtime and the Restorer ask these)."""

    config: MethodConfig

    @property
    def needs_grad(self) -> bool:
        return type(self.config).capabilities.gradients

    @property
    def needs_variance(self) -> bool:
        return self.config.needs_variance

    @property
    def families(self) -> frozenset[str]:
        """The operator families ("fourier", "mask") of the tasks it restores."""
        return frozenset(get_task(task).family for task in type(self.config).tasks)


class Method(Protocol):
    """A restoration or generation method, built from its config for one run.

    Attributes:
        config: its hyperparameters.
        families: the operator families it applies to ("fourier", "mask"), empty for a
            generation method that takes no measurement.
        needs_grad: whether `update` differentiates through the denoiser (DPS).
        needs_variance: whether `update` wants the model's learned variance too.
    """

    config: MethodConfig
    needs_grad: bool
    needs_variance: bool
    families: frozenset[str]

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
