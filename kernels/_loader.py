"""Choosing a kernel's implementation, and loading and launching the CUDA kernels through CuPy.

Each kernel `<name>.cu` of this folder is loaded once per process and device:
from a prebuilt fatbin `<name>.fatbin` (top-level CMakeLists.txt) when its sidecar
`<name>.fatbin.sha256` matches the source, so edge devices need no NVRTC; else compiled
from source with NVRTC. A stale or unloadable fatbin is reported and recompiled,
never trusted because it exists.

CuPy is imported inside the functions here, so CPU installs never touch it. Tensors are
shared zero-copy as raw device pointers, and every launch goes on torch's current
stream: kernels order with torch's work and are recorded by CUDA-graph captures.
"""

from __future__ import annotations

import hashlib
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

logger = logging.getLogger(__name__)

Impl = Literal["auto", "cupy", "torch"]
IMPLS = ("auto", "cupy", "torch")

KERNEL_DIR = Path(__file__).resolve().parent
#: Where fatbins are looked for first; default kernels/prebuilt/ (CMakeLists.txt's default output).
PREBUILT_ENV = "DIFFPIR_RT_KERNEL_DIR"
DEFAULT_PREBUILT_DIR = KERNEL_DIR / "prebuilt"
#: One compiler semantics for both build paths: no FMA contraction, so each operation rounds
#: as torch's separate eager kernels do (CMakeLists.txt and tests/kernels/test_compile.py use
#: NVCC_FLAGS; NVRTC gets NVRTC_OPTIONS).
NVCC_FLAGS = ("-std=c++17", "-fmad=false")
NVRTC_OPTIONS = ("-std=c++17", "--fmad=false")
THREADS_PER_BLOCK = 256
#: Grid-stride loops cover the rest; this many blocks fill any current GPU.
MAX_BLOCKS = 65535

_logged_choices: set[tuple[str, str]] = set()


def cupy_problem() -> str | None:
    """Why CuPy cannot be used here (not installed, no driver), or None if it can."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or CUDA libraries that fail to load
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    return None


def resolve_impl(impl: str, like: Tensor, kernel: str) -> Literal["cupy", "torch"]:
    """The path a kernel call takes: 'cupy' or 'torch'. Never falls back silently.

    Args:
        impl: "cupy" (raises unless `like` is a CUDA tensor and CuPy works), "torch",
            or "auto" (cupy for CUDA tensors when CuPy works, else torch; logged once
            per kernel and choice).
        like: a tensor of the call, whose device decides.
        kernel: the kernel's name, for messages.

    Raises:
        DiffPIRError: unknown impl, or impl="cupy" without CUDA or CuPy.
    """
    if impl not in IMPLS:
        raise DiffPIRError(f"{kernel}: impl expected one of {IMPLS}, got {impl!r}")
    if impl == "torch":
        return "torch"
    problem = None if like.is_cuda else f"the tensors are on {like.device}, not CUDA"
    if problem is None:
        problem = cupy_problem()
    if impl == "cupy":
        if problem is not None:
            raise DiffPIRError(
                f"{kernel}: impl='cupy' needs CUDA tensors and CuPy, but {problem} "
                "(install the extra matching your CUDA: pip install 'diffpir-rt[gpu-cuda12]' or '[gpu-cuda13]')"
            )
        return "cupy"
    choice = "torch" if problem is not None else "cupy"
    if (kernel, choice) not in _logged_choices:
        _logged_choices.add((kernel, choice))
        if choice == "torch" and like.is_cuda:
            logger.warning("%s: impl='auto' runs the torch path on CUDA because %s", kernel, problem)
        else:
            logger.info("%s: impl='auto' runs the %s path%s", kernel, choice, f" ({problem})" if problem else "")
    return choice


def source_path(name: str) -> Path:
    return KERNEL_DIR / f"{name}.cu"


def source_digest(name: str) -> str:
    """SHA-256 of the kernel source, as CMake's cmake/write_sha256.cmake writes it."""
    return hashlib.sha256(source_path(name).read_bytes()).hexdigest()


def prebuilt_dir() -> Path:
    return Path(os.environ.get(PREBUILT_ENV) or DEFAULT_PREBUILT_DIR)


def fatbin_path(name: str) -> Path | None:
    """The prebuilt fatbin for `name` if one exists and was built from the current source."""
    fatbin = prebuilt_dir() / f"{name}.fatbin"
    if not fatbin.is_file():
        return None
    sidecar = fatbin.with_name(fatbin.name + ".sha256")
    recorded = sidecar.read_text().strip() if sidecar.is_file() else None
    if recorded != source_digest(name):
        logger.warning("%s: %s is stale (source changed since the build); compiling with NVRTC", name, fatbin)
        return None
    return fatbin


@lru_cache(maxsize=None)
def _nvrtc_module(name: str) -> Any:
    import cupy

    return cupy.RawModule(code=source_path(name).read_text(), options=NVRTC_OPTIONS)


@lru_cache(maxsize=None)
def _fatbin_module(name: str) -> tuple[Any, Path] | None:
    import cupy

    fatbin = fatbin_path(name)
    return None if fatbin is None else (cupy.RawModule(path=str(fatbin)), fatbin)


#: (kernel, device) -> "fatbin <path>" or "NVRTC": where each loaded kernel's code came from.
ORIGINS: dict[tuple[str, int], str] = {}


@lru_cache(maxsize=None)
def _function(name: str, function: str, device_index: int) -> Any:
    """The RawKernel for `function`, from the fatbin if usable on this device, else NVRTC."""
    import cupy

    with cupy.cuda.Device(device_index):
        prebuilt = _fatbin_module(name)
        if prebuilt is not None:
            module, fatbin = prebuilt
            try:
                kernel = module.get_function(function)
                ORIGINS[(name, device_index)] = f"fatbin {fatbin}"
                logger.info("%s.%s loaded from %s on cuda:%d", name, function, fatbin, device_index)
                return kernel
            except Exception as exc:  # e.g. no code for this GPU in the fatbin: say so, then compile
                logger.warning("%s: %s did not load on cuda:%d (%s); compiling with NVRTC", name, fatbin, device_index, exc)
        kernel = _nvrtc_module(name).get_function(function)
        ORIGINS[(name, device_index)] = "NVRTC"
        logger.info("%s.%s compiled with NVRTC on cuda:%d", name, function, device_index)
        return kernel


def pointer(t: Tensor) -> np.uint64:
    """A tensor's device address as a kernel pointer argument (zero-copy)."""
    return np.uint64(t.data_ptr())


def check_tensors(kernel: str, device: torch.device, **tensors: tuple[Tensor, torch.dtype]) -> None:
    """Raise unless each tensor has the dtype given, is contiguous and lives on `device`.

    The kernels index raw memory, so these are what they may assume.
    """
    for label, (t, dtype) in tensors.items():
        if t.dtype != dtype:
            raise DiffPIRError(f"{kernel}: {label} expected {dtype}, got {t.dtype}")
        if t.device != device:
            raise DiffPIRError(f"{kernel}: {label} is on {t.device}, expected {device}")
        if not t.is_contiguous():
            raise DiffPIRError(f"{kernel}: {label} must be contiguous, got strides {t.stride()}")


def is_aligned(*tensors: Tensor, bytes_: int = 16) -> bool:
    return all(t.data_ptr() % bytes_ == 0 for t in tensors)


def launch(name: str, function: str, work_items: int, args: Sequence[Any], like: Tensor) -> None:
    """Launch `function` of kernels/<name>.cu over `work_items` threads' worth of work.

    1-D grid of THREADS_PER_BLOCK threads (kernels loop grid-stride), on torch's current
    stream of `like`'s device, so it is ordered with torch and captured into CUDA graphs.
    """
    import cupy

    if work_items <= 0:
        return
    device_index = like.device.index if like.device.index is not None else torch.cuda.current_device()
    kernel = _function(name, function, device_index)
    blocks = min(MAX_BLOCKS, -(-work_items // THREADS_PER_BLOCK))
    stream = torch.cuda.current_stream(like.device).cuda_stream
    with cupy.cuda.Device(device_index), _external_stream(stream, device_index):
        kernel((blocks,), (THREADS_PER_BLOCK,), tuple(args))


@lru_cache(maxsize=64)
def _external_stream(stream_ptr: int, device_index: int) -> Any:
    import cupy

    return cupy.cuda.ExternalStream(stream_ptr, device_index)


def clear_caches() -> None:
    """Forget loaded modules and kernels (tests switch between a fatbin and NVRTC)."""
    _function.cache_clear()
    _fatbin_module.cache_clear()
    _nvrtc_module.cache_clear()
    ORIGINS.clear()
