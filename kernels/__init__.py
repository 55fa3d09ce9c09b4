"""CUDA kernels for the DiffPIR fast path, each a pair `<name>.cu` + `<name>.py` (style.md kernels/).

Every public function takes `impl="auto" | "cupy" | "torch"`; the torch path is the
engine's own function, so the kernels and the engine compute one formula.
"""

from ._loader import IMPLS, Impl, resolve_impl
from .diffpir_step import predict_x0_01, step_elementwise, step_fourier
from .fourier_correction import fourier_correction

__all__ = [
    "IMPLS",
    "Impl",
    "resolve_impl",
    "predict_x0_01",
    "step_elementwise",
    "step_fourier",
    "fourier_correction",
]
