"""Denoiser backends behind one interface (`Denoiser`), each declared by its module (`Backend`).

`BACKENDS` below is the only list of them. Model-source kinds, the command lines' model-file
flags (--checkpoint, --onnx, --engine), `make_denoiser_from` and the runtime's path choice are
all read from the declarations, so a new backend is its module plus one line here. Each backend
imports its runtime lazily, so a CPU-only install never touches onnxruntime or tensorrt unless
asked to.
"""

from __future__ import annotations

from typing import Any, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from . import onnxruntime_backend, tensorrt_backend, torch_backend
from .base import Backend, Denoiser

torch = lazy_module("torch")

#: name -> declaration. A new backend: its module, and one line here.
BACKENDS: dict[str, Backend] = {
    torch_backend.BACKEND.name: torch_backend.BACKEND,
    onnxruntime_backend.BACKEND.name: onnxruntime_backend.BACKEND,
    tensorrt_backend.BACKEND.name: tensorrt_backend.BACKEND,
}
#: Model-source kinds that are not files of a backend: the bundled prior, seeded random weights.
BUILTIN_KINDS = ("bundled", "random")

__all__ = ["BACKENDS", "BUILTIN_KINDS", "Backend", "Denoiser", "backend_for_kind", "get_backend", "make_denoiser_from",
           "model_kinds", "register_backend"]  # fmt: skip


def register_backend(backend: Backend) -> Backend:
    """Add a backend (what the line in BACKENDS does for the built-in ones); returns it."""
    if not isinstance(backend, Backend) or not backend.name:
        raise DiffPIRError(f"register_backend: expected a named Backend, got {backend!r}")
    BACKENDS[backend.name] = backend
    return backend


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise DiffPIRError(f"--backend {name!r}: expected one of auto, {', '.join(BACKENDS)}") from None


def model_kinds() -> tuple[str, ...]:
    """Every ModelSource kind: the built-in ones and each backend's model file."""
    return (*BUILTIN_KINDS, *(b.file_kind for b in BACKENDS.values() if b.file_kind))


def backend_for_kind(kind: str) -> Backend:
    """The backend that runs a model source of `kind` directly (the torch backend for the bundled prior)."""
    for backend in BACKENDS.values():
        if kind in backend.runs_kinds:
            return backend
    raise DiffPIRError(f"model source {kind!r}: no backend runs it (known: {', '.join(model_kinds())})")


def make_denoiser_from(
    source: Any,
    *,
    device: str | torch.device = "cpu",
    threads: Optional[int] = None,
    dtype: str = "fp32",
    channels_last: bool = False,
    attention: str = "legacy",
    backend: Optional[str] = None,
) -> Denoiser:
    """The Denoiser of a model source (engine.ModelSource) on `backend` (default: the backend
    that runs the source's kind): torch weights prepared in `dtype` / `channels_last` /
    `attention`, an ONNX graph on ONNX Runtime (`threads` intra-op threads), a TensorRT plan."""
    chosen = backend_for_kind(source.kind) if backend is None else get_backend(backend)
    if source.kind not in chosen.runs_kinds:
        raise DiffPIRError(f"--backend {chosen.name}: does not run a {source.kind} model (it runs {', '.join(chosen.runs_kinds)})")
    return chosen.load(source, device=device, precision=dtype, threads=threads, channels_last=channels_last, attention=attention)
