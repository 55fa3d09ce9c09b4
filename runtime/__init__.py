"""The runtime: one restoration session (`Restorer`) behind every entry point.

It turns a model source (the bundled prior, a checkpoint, an ONNX file, a TensorRT
plan), a backend, a device and a precision into a prepared denoiser, picks the fastest
path whose tolerance against the fp32 reference is tested, caches what is expensive
(CUDA-graph captures, ONNX Runtime sessions, exported graphs), and restores batches.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "runtime")

from .jobs import RestoreRequest, run_requests  # noqa: E402
from .restorer import Restorer, RuntimePath  # noqa: E402

__all__ = ["Restorer", "RestoreRequest", "RuntimePath", "run_requests"]
