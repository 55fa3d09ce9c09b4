"""What a model can do, as plain data: the tasks, methods and parameters of this engine with
this model's defaults, read from the declarations (engine.TASKS, engine.METHODS, the config
fields' `Param`s). The service answers it at /v1/info, and the web page builds its forms
(methods, their cost in UNet calls, the advanced parameters) from it.
"""

from __future__ import annotations

from typing import Any, Optional

from diffpir_rt.engine import BACKENDS, TASKS, DiffPIRError, config_class, restoration_names
from diffpir_rt.params import Param

from .options import RequestOptions
from .restorer import Restorer


def param_dict(spec: Param, default: Any = None) -> dict[str, Any]:
    """A declared parameter as JSON: what a form needs to show and check it."""
    out = {"help": spec.help, "kind": spec.kind.__name__, "expected": spec.expected(), "group": spec.group or "main"}
    for name in ("low", "high", "choices", "words"):
        value = getattr(spec, name)
        if value not in (None, ()):
            out[name] = list(value) if isinstance(value, tuple) else value
    if spec.low_open:
        out["low_open"] = True
    if spec.optional:
        out["optional"] = True
    if default is not None:
        out["default"] = default
    return out


def catalogue(restorer: Optional[Restorer] = None) -> dict[str, Any]:
    """Tasks, methods (with this model's defaults per task and their UNet calls), request options, backends."""
    tasks = {
        task.name: {
            "description": task.description,
            "inputs": {name: param_dict(spec) for name, spec in task.input_params().items()},
            "required": list(task.required),
            "variants": list(task.variants),
            "boundaries": list(task.boundaries),
            "default_sigma_n": restorer.default_sigma_n(task.name) if restorer is not None else task.default_sigma_n,
        }
        for task in TASKS.values()
    }
    methods = {}
    for name in restoration_names():
        cls = config_class(name)
        defaults = {}
        for task in cls.tasks:
            try:
                config = restorer.config(task, name) if restorer is not None else cls.for_task(task, TASKS[task].default_sigma_n)
            except DiffPIRError as e:  # e.g. a method that needs sigma_n > 0 for the task's default
                defaults[task] = {"error": str(e)}
                continue
            defaults[task] = {**config.field_values(), "model_calls": config.model_calls()}
        methods[name] = {
            "description": cls.description,
            "tasks": list(cls.tasks),
            "steps": {"field": cls.budget, "meaning": cls.budget_note, "useful_from": cls.min_useful_steps},
            "uses_sigma_n": cls.uses_sigma_n(),
            "capabilities": cls.capabilities.to_dict(),
            "params": {p: param_dict(spec) for p, spec in cls.params().items()},
            "defaults": defaults,
        }
    request = {name: param_dict(spec, getattr(RequestOptions(), name)) for name, spec in RequestOptions.params().items()}
    return {"tasks": tasks, "methods": methods, "request": request, "backends": {n: b.to_dict() for n, b in BACKENDS.items()}}
