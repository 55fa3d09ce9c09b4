"""The runtime: one restoration session (`Restorer`) behind every entry point.

It turns a model source (the bundled prior, a checkpoint, an ONNX file, a TensorRT
plan), a backend, a device and a precision into a prepared denoiser, picks the fastest
path whose tolerance against the fp32 reference is tested, caches what is expensive
(CUDA-graph captures, ONNX Runtime sessions, exported graphs), and restores batches.

Names load on first use, so reading the command line's declarations imports no model code.
"""

from diffpir_rt._rooms import require_qualified_name
from diffpir_rt.lazy import lazy_exports

require_qualified_name(__name__, "runtime")

#: module -> the names it exports (a module's own name exports the module).
API: dict[str, str] = {
    ".catalogue": "LEVIN_FILE KernelPreset describe_service kernel_preset kernel_presets",
    ".cli": (
        "add_method_flags add_request_flags add_runtime_flags add_task_flags check_paths "
        "method_overrides model_files request_options runtime_options task_values"
    ),
    ".jobs": (
        "RequestInputError RestoreRequest batch_key build_request is_auto model_calls output_image "
        "per_image_input resolve_boundary run_requests task_file"
    ),
    ".options": "PRECISIONS RequestOptions RuntimeOptions",
    ".progress": "Progress",
    ".restorer": "Restorer RuntimePath measured_sigma_n",
    ".tiling": "AUTO_MIN_PIXELS TilingPolicy",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, API)
