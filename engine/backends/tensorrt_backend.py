"""The TensorRT backend: a plan from `diffpir export trt`, run on torch's CUDA stream.

Inputs and outputs are torch tensors whose device pointers are handed to the
execution context (set_tensor_address), and execute_async_v3 is queued on
torch's current stream: no host copies, no synchronisation, so a whole step can
be captured in a CUDA graph. As TensorRT requires, call it once with the
capture's shapes before capturing (the CUDA-graph runtime's warm-up does).

The plan's sidecar must match this TensorRT version and GPU (and the ONNX, if
given); a foreign or stale plan is refused, never run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .contract import contract_from_dict, contract_from_dims
from diffpir_rt.export.tensorrt_build import check_plan, current_gpu, import_tensorrt, shapes_outside_profile

from diffpir_rt.errors import DiffPIRError
from .base import batch_timesteps, check_image_input

logger = logging.getLogger(__name__)

_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}


class TensorRTDenoiser:
    """eps from a TensorRT engine plan.

    Args:
        engine: the .plan written by `build_engine` (its sidecar beside it).
        device: a CUDA device.
        onnx: optionally the ONNX the plan should come from; a plan built from
            another ONNX is refused as stale.

    Raises:
        DiffPIRError: TensorRT missing, no GPU, a missing/foreign/stale/corrupt plan.
    """

    name = "tensorrt"

    def __init__(
        self,
        engine: str | os.PathLike[str],
        device: str | torch.device = "cuda",
        onnx: str | os.PathLike[str] | None = None,
    ) -> None:
        trt = import_tensorrt()
        self.path = Path(engine)
        self.device = torch.device(device)
        gpu = current_gpu(self.device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        onnx_sha256 = None
        if onnx is not None:
            from diffpir_rt.export.artifacts import sha256_files
            from diffpir_rt.export.tensorrt_build import onnx_files

            import onnx as onnx_lib

            onnx_path = Path(onnx)
            if not onnx_path.is_file():
                raise DiffPIRError(f"onnx {onnx_path}: file not found")
            onnx_sha256 = sha256_files(onnx_files(onnx_path, onnx_lib.load(str(onnx_path), load_external_data=False)))
        self.record = check_plan(self.path, trt.__version__, gpu, onnx_sha256)
        self.metadata: dict[str, str] = self.record["onnx_metadata"]
        self.size_multiple = int(self.metadata["size_multiple"])
        self.in_channels = int(self.metadata["in_channels"])
        self.precision = self.record["key"]["precision"]
        self.profile = {name: tuple(tuple(s) for s in shapes) for name, shapes in self.record["profile"].items()}
        self.gpu = gpu

        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise DiffPIRError(f"engine {self.path}: TensorRT could not deserialize it; rebuild with `diffpir export trt`")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        dims = {name: tuple(int(d) if int(d) >= 0 else None for d in self.engine.get_tensor_shape(name)) for name in names}
        self.contract = contract_from_dims(contract_from_dict(self.record["contract"]), dims, f"engine {self.path}")
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        logger.info("tensorrt %s: %s on %s (sm %s, %s)", trt.__version__, self.path, gpu.name, gpu.compute_capability, self.precision)

    def __call__(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        check_image_input(x_t, self.in_channels)
        shapes = self.contract.shapes(self.contract.sizes_of(tuple(x_t.shape)))
        outside = shapes_outside_profile(self.profile, shapes)
        if outside:
            raise DiffPIRError(
                f"x_t {tuple(x_t.shape)}: outside engine {self.path}'s optimization profile ({'; '.join(outside)}); "
                "rebuild it with wider --batch/--height/--width"
            )
        tensors = {
            "x_t": x_t.detach().to(device=self.device, dtype=torch.float32).contiguous(),
            "t": batch_timesteps(t, x_t.shape[0], self.device),
        }
        for spec in self.contract.outputs:
            tensors[spec.name] = torch.empty(shapes[spec.name], dtype=_TORCH_DTYPES[spec.dtype], device=self.device)
        for name in self._inputs:
            self.context.set_input_shape(name, shapes[name])
        for name, tensor in tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = torch.cuda.current_stream(self.device).cuda_stream
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"tensorrt: execute_async_v3 failed for engine {self.path} at shapes {shapes}")
        return tensors["eps"].to(x_t.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "engine": str(self.path),
            "device": str(self.device),
            "gpu": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "precision": self.precision,
            "profile": {k: [list(s) for s in v] for k, v in self.profile.items()},
            "arch": self.metadata["arch"],
            "checkpoint_sha256": self.metadata["checkpoint_sha256"],
            "tensorrt": self.record["key"]["tensorrt_version"],
        }
