"""What a model can do, as plain data: the tasks, methods and parameters of this engine with
this model's defaults, read from the declarations (engine.TASKS, engine.METHODS, the config
fields' `Param`s). The service answers it at /v1/info, and the web page builds its forms
(methods, their cost in UNet calls, the advanced parameters) from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

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


def describe_service(restorer: Optional[Restorer] = None) -> dict[str, Any]:
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
    presets = {"kernel": [preset.describe() for preset in kernel_presets()]}
    return {"tasks": tasks, "methods": methods, "request": request, "backends": {n: b.to_dict() for n, b in BACKENDS.items()},
            "presets": presets}  # fmt: skip


# ----------------------------------------------------------------------------- preset kernels


@dataclass(frozen=True)
class KernelPreset:
    """A named blur kernel a form can offer instead of a kernel file.

    A preset is sent as what it is, a `.npy` kernel file (`array()`, float32, sum 1), through the
    restore form's `kernel` field: the request, its record and `diffpir restore --kernel` with
    the same file agree, and the form keeps exactly the declared fields.
    """

    name: str  # a file name stem: [a-z0-9-]
    label: str
    description: str
    size: int
    std: Optional[float] = None  # Gaussian: the standard deviation in pixels
    levin_index: Optional[int] = None  # Levin et al. (2009) motion kernel: its index in the file

    def array(self) -> np.ndarray:
        """The kernel: (size, size) float32 (the official Gaussian made by engine.degrade, or Levin's file as stored)."""
        from diffpir_rt.engine import degrade

        if self.std is not None:
            return degrade.gaussian_kernel_std(self.std, self.size)
        return degrade.load_kernel(degrade.BICUBIC_KERNELS_FILE.with_name(LEVIN_FILE), self.levin_index)

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "label": self.label, "description": self.description, "size": self.size}
        if self.std is not None:
            out["std"] = self.std
        return out


#: The 8 motion kernels of Levin et al. (CVPR 2009), package data of the engine (engine/data/README.md).
LEVIN_FILE = "Levin09.mat"
LEVIN_SIZES = (19, 17, 15, 27, 13, 21, 23, 23)
#: Gaussian widths offered: the official protocol draws std in [3, 9] (3, 6, 9: its ends and middle);
#: 1 and 2 are the lighter blur of real photos.
GAUSSIAN_STDS = (1.0, 2.0, 3.0, 6.0, 9.0)
#: The official kernels are 61x61; a narrower Gaussian is given on the square that holds all of it.
GAUSSIAN_MAX_SIZE = 61


def _gaussian_size(std: float) -> int:
    """The smallest square holding the whole Gaussian (scipy's gaussian_filter truncates at 4 std), at most 61.

    Its values equal the middle of the official 61x61 kernel exactly (zero outside), so it blurs the
    same, and it fits smaller images (a kernel may be at most half the image's side).
    """
    return min(GAUSSIAN_MAX_SIZE, 2 * int(4.0 * std + 0.5) + 1)


def kernel_presets() -> tuple[KernelPreset, ...]:
    """Every preset kernel, Gaussians first, then Levin's motion kernels."""
    gaussians = tuple(
        KernelPreset(f"gaussian-{std:g}", f"Gaussian σ {std:g}", f"isotropic Gaussian blur, standard deviation {std:g} px",
                     _gaussian_size(std), std=std)  # fmt: skip
        for std in GAUSSIAN_STDS
    )
    levin = tuple(
        KernelPreset(f"levin-{i + 1}", f"motion {i + 1}", f"camera-shake kernel {i + 1} of Levin et al. (2009), {size}x{size}", size,
                     levin_index=i)  # fmt: skip
        for i, size in enumerate(LEVIN_SIZES)
    )
    return gaussians + levin


def kernel_preset(name: str) -> KernelPreset:
    """The preset called `name` (DiffPIRError naming the choices otherwise)."""
    for preset in kernel_presets():
        if preset.name == name:
            return preset
    raise DiffPIRError(f"kernel preset {name[:40]!r}: unknown; expected one of {', '.join(p.name for p in kernel_presets())}")
