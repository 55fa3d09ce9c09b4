"""Restoration and generation methods on one loop: each a config, its steps and an update.

`METHODS` maps a method's name to its config class and its implementation; the sampler,
the CUDA-graph runtime and the command line all dispatch through `build_method`.
"""

from __future__ import annotations

from typing import Any

from diffpir_rt.errors import DiffPIRError

from .base import Method, MethodConfig, Step
from .diffpir import DiffPIR, DiffPIRConfig
from .ddim import DDIM, DDIMConfig
from .ddpm import DDPM, DDPMConfig
from .dmps import DMPS, DMPSConfig
from .dps import DPS, DPSConfig
from .ilvr import ILVR, ILVRConfig
from .ddrm import DDRM, DDRMConfig
from .ddnm import DDNM, DDNMConfig
from .repaint import RePaint, RePaintConfig
from .dpir import DPIR, DPIRConfig

#: name -> (config class, method class). Each method class states the operator families
#: it applies to (`tasks`: "fourier" for blur/SR, "mask" for inpainting/denoising; empty
#: for unconditional generation).
METHODS: dict[str, tuple[type[MethodConfig], type]] = {
    "diffpir": (DiffPIRConfig, DiffPIR),
    "ddpm": (DDPMConfig, DDPM),
    "ddim": (DDIMConfig, DDIM),
    "dps": (DPSConfig, DPS),
    "dmps": (DMPSConfig, DMPS),
    "ilvr": (ILVRConfig, ILVR),
    "ddrm": (DDRMConfig, DDRM),
    "ddnm": (DDNMConfig, DDNM),
    "repaint": (RePaintConfig, RePaint),
    "dpir": (DPIRConfig, DPIR),
}

__all__ = ["METHODS", "DiffPIR", "DiffPIRConfig", "DDIMConfig", "DDPMConfig", "DMPSConfig", "DPSConfig", "ILVRConfig", "DDRMConfig", "DDNMConfig", "RePaintConfig", "DPIRConfig", "Method", "MethodConfig", "Step", "build_method", "method_names"]


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def build_method(config: Any, impl: str = "torch") -> Method:
    """The method that runs `config` (a config dataclass of a registered method)."""
    for config_class, method_class in METHODS.values():
        if type(config) is config_class:
            return method_class(config, impl=impl)
    raise DiffPIRError(
        f"config: expected the config of a method ({', '.join(c.__name__ for c, _ in METHODS.values())}), "
        f"got {type(config).__name__}"
    )
