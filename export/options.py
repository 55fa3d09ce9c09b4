"""What an export can be asked for, importable without torch, onnx or onnxruntime
(`diffpir export --help` reads these; the stages that use them load the heavy packages)."""

from __future__ import annotations

DEFAULT_OPSET = 17
#: torch's TorchScript exporter writes opsets up to 20; 17 has every op this UNet needs.
OPSETS = range(17, 21)
#: Calibration methods of onnxruntime.quantization.CalibrationMethod we offer (int8 exports).
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
