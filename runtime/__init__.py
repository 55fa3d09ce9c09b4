"""The runtime: one restoration session (`Restorer`) behind every entry point.

It turns a model source (the bundled prior, a checkpoint, an ONNX file, a TensorRT
plan), a backend, a device and a precision into a prepared denoiser, picks the fastest
path whose tolerance against the fp32 reference is tested, caches what is expensive
(CUDA-graph captures, ONNX Runtime sessions, exported graphs), and restores batches.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "runtime")

from .catalogue import catalogue  # noqa: E402
from .jobs import RequestInputError, RestoreRequest, batch_key, build_request, model_calls, output_image, per_image_input, resolve_boundary, run_requests  # noqa: E402
from .options import PRECISIONS, RequestOptions, RuntimeOptions  # noqa: E402
from .progress import Progress  # noqa: E402
from .restorer import Restorer, RuntimePath  # noqa: E402
from .tiling import AUTO_MIN_PIXELS, TilingPolicy  # noqa: E402
# The command lines' shared flags, generated from the declarations (diffpir serve/request/batch use them too).
from .cli import (  # noqa: E402
    add_method_flags, add_request_flags, add_runtime_flags, add_task_flags, check_paths, method_overrides, model_files,
    request_options, runtime_options, task_values,
)

__all__ = [
    "AUTO_MIN_PIXELS", "PRECISIONS", "Progress", "RequestInputError", "catalogue", "RequestOptions", "RestoreRequest", "Restorer", "RuntimeOptions",
    "RuntimePath", "TilingPolicy", "add_method_flags", "add_request_flags", "add_runtime_flags", "add_task_flags",
    "batch_key", "build_request", "check_paths", "method_overrides", "model_calls", "model_files", "output_image", "per_image_input",
    "request_options", "resolve_boundary", "run_requests", "runtime_options", "task_values",
]  # fmt: skip
