"""CUDA kernels of the DiffPIR fast path, each a pair `<name>.cu` + `<name>.py`.

The Python half of each pair checks raw tensors and launches the CUDA code through
CuPy; it imports nothing of the engine. The torch formulas the kernels equal, and
the choice between a kernel and its torch twin, are the engine's
(`diffpir_rt.engine.fused`).
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "kernels")

from ._loader import IMPLS, ORIGINS, Impl, cupy_problem, resolve_impl  # noqa: E402
from .diffpir_step import launch_predict_x0_01, launch_step_correction, launch_step_mask  # noqa: E402
from .fourier_correction import launch_fourier_correction  # noqa: E402

__all__ = [
    "IMPLS",
    "Impl",
    "ORIGINS",
    "cupy_problem",
    "launch_fourier_correction",
    "launch_predict_x0_01",
    "launch_step_correction",
    "launch_step_mask",
    "resolve_impl",
]
