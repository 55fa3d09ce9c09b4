"""Restoration and generation methods on one loop: each a config, its steps and an update.

Each method is one module of this package: its config (a frozen dataclass whose fields are
the method's declared user parameters and whose class attributes say what it is: name,
description, tasks, capabilities, how --steps maps to it, its per-task defaults) and its
implementation. `METHODS` below is the only list of them; the sampler, the CUDA-graph
runtime, the command lines, the service and eval all read it and the configs' declarations,
so a new method is its module plus one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import Param, merge_params

from ..tasks import get_task
from .base import AUTO, SIGMA_N, SIGMA_N_INPUT, STEPS, Capabilities, Method, MethodBase, MethodConfig, Step
from .blind_diffpir import BlindDiffPIR, BlindDiffPIRConfig
from .ddim import DDIM, DDIMConfig
from .ddnm import DDNM, DDNMConfig
from .ddpm import DDPM, DDPMConfig
from .ddrm import DDRM, DDRMConfig
from .diffpir import DiffPIR, DiffPIRConfig
from .dmps import DMPS, DMPSConfig
from .dpir import DPIR, DPIRConfig
from .dps import DPS, DPSConfig
from .ilvr import ILVR, ILVRConfig
from .repaint import RePaint, RePaintConfig

#: name -> (config class, method class), in report order. A new method: its module and one line here.
METHODS: dict[str, tuple[type[MethodConfig], type]] = {
    "diffpir": (DiffPIRConfig, DiffPIR),
    "ddrm": (DDRMConfig, DDRM),
    "ddnm": (DDNMConfig, DDNM),
    "dps": (DPSConfig, DPS),
    "dmps": (DMPSConfig, DMPS),
    "dpir": (DPIRConfig, DPIR),
    "repaint": (RePaintConfig, RePaint),
    "ilvr": (ILVRConfig, ILVR),
    "ddpm": (DDPMConfig, DDPM),
    "ddim": (DDIMConfig, DDIM),
    "blind_diffpir": (BlindDiffPIRConfig, BlindDiffPIR),
}
#: The method every surface runs unless told otherwise, and the sampler of `generate`.
DEFAULT_METHOD = "diffpir"
DEFAULT_SAMPLER = "ddim"

__all__ = [
    "AUTO", "DEFAULT_METHOD", "DEFAULT_SAMPLER", "METHODS", "SIGMA_N", "SIGMA_N_INPUT", "STEPS", "Capabilities", "Configured", "DDIMConfig", "DDNMConfig", "DDPMConfig",
    "DDRMConfig", "DMPSConfig", "DPIRConfig", "DPSConfig", "DiffPIR", "DiffPIRConfig", "ILVRConfig", "Method", "MethodBase",
    "MethodConfig", "RePaintConfig", "Step", "build_method", "config_class", "configure", "estimable_inputs", "estimating_method", "family_names",
    "generation_names",
    "method_names", "method_params", "register_method", "restoration_names",
]  # fmt: skip


def register_method(config_class: type[MethodConfig], method_class: type) -> None:
    """Add a method to the registry (what the line in METHODS does for the built-in ones)."""
    if not (isinstance(config_class, type) and issubclass(config_class, MethodConfig)) or not config_class.method:
        raise DiffPIRError(f"register_method: expected a named MethodConfig subclass, got {config_class!r}")
    METHODS[config_class.method] = (config_class, method_class)


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def restoration_names(task: Optional[str] = None) -> tuple[str, ...]:
    """Methods that restore a measurement (of `task`, if given)."""
    return tuple(n for n, (c, _) in METHODS.items() if c.tasks and (task is None or task in c.tasks))


def generation_names() -> tuple[str, ...]:
    """Methods that sample from the prior alone."""
    return tuple(n for n, (c, _) in METHODS.items() if not c.tasks)


def family_names() -> tuple[str, ...]:
    """The comparison family of `diffpir eval`."""
    return tuple(n for n, (c, _) in METHODS.items() if c.family)


def estimable_inputs() -> tuple[str, ...]:
    """The task inputs some method estimates from the measurement when given as `auto` ("kernel")."""
    return tuple(dict.fromkeys(name for c, _ in METHODS.values() for name in c.estimates))


def estimating_method(name: str, task: str, method: Optional[str] = None) -> str:
    """The method that restores `task` with its input `name` (e.g. "kernel") estimated from the
    measurement (`--kernel auto`): the first that declares it in `estimates`.

    Raises:
        DiffPIRError: no method estimates it for this task, or the user's `method` is another.
    """
    owners = [n for n, (c, _) in METHODS.items() if name in c.estimates]
    serving = [n for n in owners if task in METHODS[n][0].tasks]
    flag = "--" + name.replace("_", "-")
    if not serving:
        tasks = sorted({t for n in owners for t in METHODS[n][0].tasks})
        where = f"--task {' or '.join(tasks)}" if tasks else "no task"
        takes = name in get_task(task).inputs
        raise DiffPIRError(f"{flag} {AUTO}: estimating the {name} from the image applies to {where}, not to --task {task}"
                           + (f"; give a {name} file" if takes else f" (it takes no {flag})"))  # fmt: skip
    if method is not None and method not in serving:
        raise DiffPIRError(f"{flag} {AUTO}: runs method {serving[0]} (it estimates the {name}), not --method {method}")
    return method or serving[0]


def config_class(method: str) -> type[MethodConfig]:
    try:
        return METHODS[method][0]
    except (KeyError, TypeError):
        raise DiffPIRError(f"--method {method!r}: expected one of {', '.join(METHODS)}") from None


def method_params(names: Optional[tuple[str, ...]] = None) -> dict[str, Param]:
    """The user parameters of the given methods (default: all), one per name: `steps` and
    `sigma_n` first (every method takes them), then each method's own, merged across methods
    (diffpir_rt.params.merge_params). The command line's hyperparameter flags, the service's
    form fields and eval's and batch jobs' options are these."""
    owners = [(name, METHODS[name][0]) for name in (names or tuple(METHODS))]
    # a method's budget field is what --steps sets: it has no second spelling
    own = merge_params((name, {k: v for k, v in cls.params().items() if k not in ("steps", "sigma_n", cls.budget)})
                       for name, cls in owners)  # fmt: skip
    return {"steps": STEPS, "sigma_n": SIGMA_N_INPUT, **own}


def build_method(config: Any, impl: str = "torch") -> Method:
    """The method that runs `config` (a config dataclass of a registered method)."""
    for config_type, method_class in METHODS.values():
        if type(config) is config_type:
            return method_class(config, impl=impl)
    raise DiffPIRError(
        f"config: expected the config of a method ({', '.join(c.__name__ for c, _ in METHODS.values())}), "
        f"got {type(config).__name__}"
    )


@dataclass(frozen=True)
class Configured:
    """A method's config for one restoration, and what the user should know about it.

    Attributes:
        config: the config that runs.
        notes: one line each: a parameter the method does not use (sigma_n for DPS), a budget
            below the method's useful minimum.
        defaults_source: where the values the user did not give came from.
    """

    config: MethodConfig
    notes: tuple[str, ...] = ()
    defaults_source: str = ""
    ignored: dict[str, Any] = field(default_factory=dict)


def configure(
    method: str,
    task: str,
    *,
    sigma_n: float,
    scale: Optional[int] = None,
    tuned: Optional[Mapping[str, Any]] = None,
    overrides: Optional[Mapping[str, Any]] = None,
) -> Configured:
    """The config of `method` for `task`, built the same way for every surface.

    Order: the method's own per-task defaults (`for_task`, with the measurement's sigma_n and
    the SR scale), then a model's tuned values for this method and task (`tuned`, e.g. a model
    card's), then the user's `overrides`. `steps` sets the method's budget field, whatever it
    is called; `sigma_n` given to a method without a noise model is noted, not refused.

    Raises:
        DiffPIRError: an unknown method, a task it does not restore, a parameter it does not
            have (naming the ones it has), a value out of its declared range.
    """
    cls = config_class(method)
    base = cls.for_task(task, sigma_n, scale)
    values = base.field_values()
    names = cls.field_names()
    source = cls.defaults_source
    applied = {k: v for k, v in (tuned or {}).items() if k in names and k != "sigma_n"}
    if applied:
        values.update(applied)
        source = str((tuned or {}).get("source") or "the model's tuned defaults")
    notes: list[str] = []
    ignored: dict[str, Any] = {}
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        target = cls.budget if name == "steps" else name
        if target not in names:
            if name == "sigma_n":
                ignored[name] = value
                notes.append(f"method {method} has no noise model: sigma_n {value:g} is not used")
                continue
            raise DiffPIRError(f"method {method}: has no parameter {name!r} (it takes {', '.join(names)})")
        values[target] = value
    config = cls(**values)
    budget = getattr(config, cls.budget)
    if budget < cls.min_useful_steps:
        other = "" if method == DEFAULT_METHOD else f", or --method {DEFAULT_METHOD}"
        notes.append(
            f"method {method}: {budget} {cls.budget.replace('_', ' ')} is below the {cls.min_useful_steps} it needs to "
            f"give a usable result; expect little of the image (use --steps {cls.min_useful_steps} or more{other})"
        )
    return Configured(config, tuple(notes), source, ignored)
