"""Resolve a user's device name ('auto', 'cpu', 'cuda', 'cuda:N') once, with a clear error.

torch knows many device types (meta, mps, xla, hpu, privateuseone, ...); the engine runs on
two. Anything else is refused here, in one line, rather than failing deep inside a kernel.
"""

from __future__ import annotations

import torch

from diffpir_rt.errors import DiffPIRError

SUPPORTED = "cpu, cuda, cuda:N or auto"


def resolve_device(name: str | torch.device) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu'; 'cuda' / 'cuda:N' when that GPU exists here.

    Raises:
        DiffPIRError: not a device name, a device type the engine does not run on (meta,
            mps, xla, ...), CUDA on a machine without it, or a GPU index it does not have.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise DiffPIRError(f"--device: expected a device name ({SUPPORTED}), got {type(name).__name__}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise DiffPIRError(f"--device {name!r}: not a device name; expected {SUPPORTED}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise DiffPIRError(f"--device {name}: there is one CPU device; use cpu")
        return torch.device("cpu")
    if device.type != "cuda":
        raise DiffPIRError(f"--device {name}: the engine does not run on {device.type} devices; expected {SUPPORTED}")
    if not torch.cuda.is_available():
        raise DiffPIRError(f"--device {name}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DiffPIRError(f"--device {name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return device
