"""Resolve a user's device name ('auto', 'cpu', 'cuda', 'cuda:N') once, with a clear error."""

from __future__ import annotations

import torch

from diffpir_rt.errors import DiffPIRError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu; a CUDA name on a machine without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DiffPIRError(f"--device: unknown device {name!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffPIRError(f"--device {name}: CUDA is not available on this machine")
    return device
