"""Export and deployment: torch UNet -> ONNX (parity-checked) -> TensorRT plan (profiles, caches).

Three stages, each a function from paths to a path: `export_onnx(checkpoint, out)` (or
`export_int8`, which quantises that export for ONNX Runtime), `build_engine(onnx, out)`,
then `engine.backends.make_denoiser` loads the result.
onnx, onnxruntime and tensorrt are imported only by the functions that need them.
"""

from diffpir_rt._rooms import require_qualified_name
from diffpir_rt.lazy import lazy_exports

require_qualified_name(__name__, "export")

#: module -> the names it exports; each loads on first use (`diffpir export --help` needs none).
API: dict[str, str] = {
    "diffpir_rt.engine.backends.contract": "IOContract Precision ShapeRange TensorSpec unet_contract",
    ".onnx_export": "OnnxExportConfig export_onnx",
    ".quantize": "Int8Config export_int8 quantize_onnx",
    ".tensorrt_build": "EngineKey build_engine check_plan plan_profile",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, API)
