"""Resolve a user's device name ('auto', 'cpu', 'cuda', 'cuda:N') once, with a clear error,
and say what this CPU computes natively (its instruction-set flags, native bf16).

torch knows many device types (meta, mps, xla, hpu, privateuseone, ...); the engine runs on
two. Anything else is refused here, in one line, rather than failing deep inside a kernel.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

torch = lazy_module("torch")

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


#: CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic: x86 AVX512-BF16 dot
#: products (Cooper Lake, Zen 4 and later), x86 AMX-BF16 tile multiplies (Sapphire Rapids and
#: later), the Arm v8.6 BF16 extension ("Features: ... bf16").
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo text ("flags" on x86, "Features" on Arm)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=None)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's instruction-set flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        return parse_cpu_flags(Path(cpuinfo).read_text())
    except OSError:
        return frozenset()


def cpu_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (`NATIVE_BF16_FLAGS`).

    Read from the CPU's flags, not from torch: oneDNN reports bf16 support on every AVX-512
    CPU because it emulates bf16 there with fp32 instructions, which runs slower than fp32.
    """
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
