"""The Denoiser interface every backend implements, so one sampler runs on any of them.

Backends differ in how they run, never in what they compute: each
returns eps for (x_t, t) exactly as `UNetDenoiser` does, within the tolerance its
precision states.
"""

from __future__ import annotations

import operator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from diffpir_rt.errors import DiffPIRError


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
    if not isinstance(t, Tensor):
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
    if not isinstance(x_t, Tensor):
        raise DiffPIRError(f"x_t: expected a torch.Tensor, got {type(x_t).__name__}")
    if x_t.ndim != 4 or x_t.shape[1] != channels or 0 in x_t.shape:
        raise DiffPIRError(f"x_t: expected shape (B, {channels}, H, W), got {tuple(x_t.shape)}")
    if not x_t.is_floating_point():
        raise DiffPIRError(f"x_t: expected a floating-point tensor, got dtype {x_t.dtype}")
