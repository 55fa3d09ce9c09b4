"""The Denoiser interface every backend implements, so one sampler runs on any of them.

Backends differ in how they run, never in what they compute: each
returns eps for (x_t, t) exactly as `UNetDenoiser` does, within the tolerance its
precision states.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Protocol, runtime_checkable

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")


@runtime_checkable
class Denoiser(Protocol):
    """`(x_t, t) -> eps` on some runtime.

    Attributes:
        name: backend name ("torch", "onnxruntime", "tensorrt").
        size_multiple: H and W of x_t must be multiples of this (the sampler pads).
    """

    name: str
    size_multiple: int

    def __call__(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """eps for x_t (B, C, H, W) in [-1, 1] and integer timesteps t ((B,) or one shared).

        Returns eps (B, C, H, W) in x_t's dtype, on x_t's device.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """What runs where (backend, device, precision, provider, artifact), for run records."""
        ...


def batch_timesteps(t: Tensor | int, batch: int, device: torch.device) -> Tensor:
    """t as an int64 (batch,) tensor on `device`: a shared timestep is expanded, (B,) kept.

    Raises:
        DiffPIRError: t not an integer, or its size neither 1 nor batch.
    """
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.tensor(operator.index(t), dtype=torch.int64)
        except TypeError:
            raise DiffPIRError(f"t: expected an integer timestep, got {t!r}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise DiffPIRError(f"t: expected an integer timestep tensor, got dtype {t.dtype}")
    if t.ndim > 1 or t.numel() not in (1, batch):
        raise DiffPIRError(f"t: expected shape ({batch},) or a single timestep, got {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64).reshape(-1).expand(batch).contiguous()


def check_image_input(x_t: Tensor, channels: int) -> None:
    """x_t must be a floating (B, channels, H, W) tensor with B, H, W >= 1."""
    if not isinstance(x_t, torch.Tensor):
        raise DiffPIRError(f"x_t: expected a torch.Tensor, got {type(x_t).__name__}")
    if x_t.ndim != 4 or x_t.shape[1] != channels or 0 in x_t.shape:
        raise DiffPIRError(f"x_t: expected shape (B, {channels}, H, W), got {tuple(x_t.shape)}")
    if not x_t.is_floating_point():
        raise DiffPIRError(f"x_t: expected a floating-point tensor, got dtype {x_t.dtype}")


@dataclass(frozen=True)
class Backend:
    """What a backend declares: the model files it runs, where, at which precisions, how close
    to the reference, and how to load it. Model-source resolution, the command lines' model
    flags and the runtime's path choice read these declarations, so a new backend is its module
    (ending in `BACKEND = Backend(...)`) plus one line in engine/backends/__init__.py.

    Attributes:
        name: its name on every surface (--backend NAME, run records).
        description: one line.
        file_kind: the kind of model file it owns (a ModelSource kind: "checkpoint", "onnx", ...).
        file_flag: the command-line flag that names such a file (--checkpoint, --onnx, --engine).
        file_help: that flag's help.
        runs_kinds: the ModelSource kinds it loads directly (torch: bundled, checkpoint, random).
        made_from_torch: the file kind the runtime can make from torch weights for it (an ONNX
            export, cached), or None: then it runs only its own files.
        devices: device types it runs on ("cpu", "cuda").
        precisions: UNet precisions it computes in.
        auto_rank: device type -> its place in the automatic choice (lower first); absent: never
            chosen automatically there.
        path_name: the runtime path's name when it runs the loop eagerly on it.
        tolerance: its tested tolerance against the fp32 reference (docs/runtime.md).
        gives_variance: it returns the UNet's learned variance (eps_and_variance).
        gives_gradients: autograd flows through it (gradient methods).
        graph_capture: on CUDA the whole loop around it can be one CUDA graph.
        load: (source, device, precision, threads, **options) -> Denoiser.
        problem: (device) -> why it cannot run there (not installed, a CPU build on CUDA), or None.
    """

    name: str
    description: str
    file_kind: Optional[str]
    file_flag: Optional[str]
    file_help: str
    runs_kinds: tuple[str, ...]
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    tolerance: str
    load: Callable[..., Any]
    made_from_torch: Optional[str] = None
    auto_rank: Mapping[str, int] = field(default_factory=dict)
    path_name: str = ""
    gives_variance: bool = False
    gives_gradients: bool = False
    graph_capture: bool = False
    problem: Callable[[str], Optional[str]] = lambda device: None

    def serves(self, device: str, precision: str) -> bool:
        return device in self.devices and precision in self.precisions

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "file_kind": self.file_kind,
                "devices": list(self.devices), "precisions": list(self.precisions), "tolerance": self.tolerance,
                "gives_variance": self.gives_variance, "gives_gradients": self.gives_gradients}  # fmt: skip
