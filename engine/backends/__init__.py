"""Denoiser backends behind one interface (`Denoiser`), and `make_denoiser` to pick one.

Each backend module imports its runtime lazily, so a CPU-only install never
touches onnxruntime or tensorrt unless asked to.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from diffpir_rt.errors import DiffPIRError
from .base import Denoiser

BACKENDS = ("torch", "onnxruntime", "tensorrt")

__all__ = ["BACKENDS", "Denoiser", "check_backend_arguments", "make_denoiser", "make_denoiser_from"]


def make_denoiser_from(source: Any, *, device: str | torch.device = "cpu", threads: int | None = None) -> Denoiser:
    """The Denoiser of an exported model source (ModelSource of kind "onnx" or "tensorrt")."""
    if source.kind == "onnx":
        from .onnxruntime_backend import OnnxRuntimeDenoiser

        return OnnxRuntimeDenoiser(source.path, device=device, intra_op_threads=threads)
    if source.kind == "tensorrt":
        from .tensorrt_backend import TensorRTDenoiser

        return TensorRTDenoiser(source.path, device=device)
    raise DiffPIRError(f"model source {source.kind}: is a torch model; load it with ModelSource.load_torch")


def make_denoiser(
    backend: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    arch: str | None = None,
    onnx: str | os.PathLike[str] | None = None,
    engine: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str = "fp32",
    threads: int | None = None,
    channels_last: bool = False,
) -> Denoiser:
    """A Denoiser on the named backend.

    Args:
        backend: "torch" (checkpoint or the bundled prior), "onnxruntime" (onnx)
            or "tensorrt" (engine, optionally checked against onnx).
        checkpoint, arch: torch backend weights and UNet preset.
        onnx: exported graph (onnxruntime), or the plan's source (tensorrt).
        engine: TensorRT plan.
        device: where inputs are expected and eps is returned.
        dtype: torch compute dtype (fp32/fp16/bf16); the other backends take their
            precision from the artifact, so only fp32 (the default) is accepted there.
        threads: onnxruntime intra-op threads (default: physical cores).
        channels_last: torch backend memory format.

    Raises:
        DiffPIRError: unknown backend, or arguments that belong to another backend.
    """
    check_backend_arguments(
        backend, checkpoint=checkpoint, arch=arch, onnx=onnx, engine=engine,
        dtype=dtype, threads=threads, channels_last=channels_last,
    )
    if backend == "torch":
        from .torch_backend import TorchDenoiser

        return TorchDenoiser.from_checkpoint(checkpoint, arch, device=device, dtype=dtype, channels_last=channels_last)
    if backend == "onnxruntime":
        from .onnxruntime_backend import OnnxRuntimeDenoiser

        return OnnxRuntimeDenoiser(onnx, device=device, intra_op_threads=threads)
    from .tensorrt_backend import TensorRTDenoiser

    return TensorRTDenoiser(engine, device=device, onnx=onnx)


def check_backend_arguments(
    backend: str,
    *,
    checkpoint: Any = None,
    arch: str | None = None,
    onnx: Any = None,
    engine: Any = None,
    dtype: str = "fp32",
    threads: int | None = None,
    channels_last: bool = False,
) -> None:
    """Check that the arguments fit the backend, before anything is loaded (the CLI calls this first).

    Raises:
        DiffPIRError: unknown backend, a missing artifact, or arguments of another backend.
    """
    if backend not in BACKENDS:
        raise DiffPIRError(f"--backend {backend!r}: expected one of {BACKENDS}")
    given = {"checkpoint": checkpoint, "arch": arch, "onnx": onnx, "engine": engine, "threads": threads}
    allowed = {
        "torch": {"checkpoint", "arch"},
        "onnxruntime": {"onnx", "threads"},
        "tensorrt": {"engine", "onnx"},
    }[backend]
    stray = [f"--{name}" for name, value in given.items() if value is not None and name not in allowed]
    if channels_last and backend != "torch":
        stray.append("--channels-last")
    if stray:
        raise DiffPIRError(f"--backend {backend}: {', '.join(stray)} apply to another backend")
    if backend == "onnxruntime" and onnx is None:
        raise DiffPIRError("--backend onnxruntime needs --onnx (a graph from `diffpir export onnx`)")
    if backend == "tensorrt" and engine is None:
        raise DiffPIRError("--backend tensorrt needs --engine (a plan from `diffpir export trt`)")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise DiffPIRError(f"--threads {threads}: expected a positive integer")
    if backend != "torch" and dtype != "fp32":
        raise DiffPIRError(
            f"--dtype {dtype}: applies to the torch backend; {backend} runs at the precision its artifact was "
            "exported with (`diffpir export onnx --fp16`)"
        )

