"""Denoiser backends behind one interface (`Denoiser`), and `make_denoiser_from` to build one.

Each backend module imports its runtime lazily, so a CPU-only install never
touches onnxruntime or tensorrt unless asked to.
"""

from __future__ import annotations

from typing import Any

import torch

from diffpir_rt.errors import DiffPIRError
from .base import Denoiser

BACKENDS = ("torch", "onnxruntime", "tensorrt")

__all__ = ["BACKENDS", "Denoiser", "make_denoiser_from"]


def make_denoiser_from(
    source: Any,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    dtype: str = "fp32",
    channels_last: bool = False,
    attention: str = "legacy",
) -> Denoiser:
    """The Denoiser of a model source (engine.ModelSource): torch weights (bundled,
    checkpoint, random) prepared in `dtype` / `channels_last` / `attention`; an ONNX graph
    on ONNX Runtime (`threads` intra-op threads); a TensorRT plan."""
    if source.kind in ("bundled", "checkpoint", "random"):
        from .torch_backend import TorchDenoiser

        return TorchDenoiser(source.load_torch(device=device), dtype=dtype, channels_last=channels_last,
                             attention=attention, source=source.label())  # fmt: skip
    if source.kind == "onnx":
        from .onnxruntime_backend import OnnxRuntimeDenoiser

        return OnnxRuntimeDenoiser(source.path, device=device, intra_op_threads=threads)
    if source.kind == "tensorrt":
        from .tensorrt_backend import TensorRTDenoiser

        return TensorRTDenoiser(source.path, device=device)
    raise DiffPIRError(f"model source {source.kind}: is a torch model; load it with ModelSource.load_torch")
