"""The runtime: one restoration session (`Restorer`) behind every entry point.

It turns a model source (the bundled prior, a checkpoint, an ONNX file, a TensorRT
plan), a backend, a device and a precision into a prepared denoiser, picks the fastest
path whose tolerance against the fp32 reference is tested, caches what is expensive
(CUDA-graph captures, ONNX Runtime sessions, exported graphs), and restores batches.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "runtime")

from .jobs import RestoreRequest, batch_key, model_calls, output_image, run_requests  # noqa: E402
from .progress import Progress  # noqa: E402
from .restorer import Restorer, RuntimePath  # noqa: E402
from .tiling import AUTO_MIN_PIXELS, TilingPolicy, tile_argument  # noqa: E402
# The restore command line's pieces that other entry points share (diffpir serve/request/batch).
from .cli import add_model_arguments, check_inputs_exist, make_restorer, parse_params, read_measurement  # noqa: E402

__all__ = ["Progress", "Restorer", "RestoreRequest", "RuntimePath", "add_model_arguments", "batch_key",
           "check_inputs_exist", "make_restorer", "model_calls", "output_image", "parse_params", "read_measurement", "run_requests",
           "AUTO_MIN_PIXELS", "TilingPolicy", "tile_argument"]  # fmt: skip
