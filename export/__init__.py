"""Export and deployment: torch UNet -> ONNX (parity-checked) -> TensorRT plan (profiles, caches).

Three stages, each a function from paths to a path: `export_onnx(checkpoint, out)` (or
`export_int8`, which quantises that export for ONNX Runtime), `build_engine(onnx, out)`,
then `engine.backends.make_denoiser` loads the result.
onnx, onnxruntime and tensorrt are imported only by the functions that need them.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "export")


from diffpir_rt.engine.backends.contract import IOContract, Precision, ShapeRange, TensorSpec, unet_contract
from .onnx_export import OnnxExportConfig, export_onnx
from .quantize import Int8Config, export_int8, quantize_onnx
from .tensorrt_build import EngineKey, build_engine, check_plan, plan_profile

__all__ = [
    "EngineKey",
    "Int8Config",
    "IOContract",
    "OnnxExportConfig",
    "Precision",
    "ShapeRange",
    "TensorSpec",
    "build_engine",
    "check_plan",
    "export_int8",
    "export_onnx",
    "plan_profile",
    "quantize_onnx",
    "unet_contract",
]
