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
from typing import TYPE_CHECKING, Any, Optional

from dataclasses import dataclass
from typing import Mapping

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from ..artifacts import read_sidecar, sha256_files
from .base import Backend, batch_timesteps, check_image_input
from .contract import contract_from_dict, contract_from_dims, parse_metadata

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

logger = logging.getLogger(__name__)

TRT_MISSING = "TensorRT is not installed (pip install tensorrt; needs an NVIDIA GPU)"
#: Key fields that describe the machine a plan runs on (a plan moved elsewhere fails these).
ENVIRONMENT_FIELDS = ("tensorrt_version", "gpu_name", "compute_capability")


def import_tensorrt() -> Any:
    """The tensorrt module, or the one-line install hint as a DiffPIRError."""
    try:
        import tensorrt
    except ImportError:
        raise DiffPIRError(TRT_MISSING) from None
    return tensorrt


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0"


def current_gpu(device: Any = "cuda") -> GpuInfo:
    """Name and compute capability of the CUDA device (part of the engine key)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        raise DiffPIRError(f"device {device}: TensorRT runs on a CUDA device, e.g. cuda or cuda:0")
    if not torch.cuda.is_available():
        raise DiffPIRError("TensorRT needs an NVIDIA GPU, and torch sees no CUDA device here")
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(torch.cuda.get_device_name(index), f"{major}.{minor}")


def shapes_outside_profile(profile: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """One line per input whose shape lies outside the profile's [min, max] (empty if all fit)."""
    problems = []
    for name, (low, _, high) in profile.items():
        shape = tuple(shapes[name])
        if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape, low, high)):
            problems.append(f"{name} {shape} not within min {tuple(low)} .. max {tuple(high)}")
    return problems


def key_mismatches(recorded: Mapping[str, Any], expected: Mapping[str, Any], fields: tuple[str, ...] | None = None) -> list[str]:
    """'field: plan X, here Y' for each key field (default all) that differs."""
    fields = fields or tuple(expected)
    return [f"{f}: plan {recorded.get(f)!r}, here {expected[f]!r}" for f in fields if recorded.get(f) != expected[f]]


def check_plan(
    plan: str | os.PathLike[str],
    tensorrt_version: str,
    gpu: GpuInfo,
    onnx_sha256: str | None = None,
) -> dict[str, Any]:
    """The plan's sidecar record, if the plan may run here; else a DiffPIRError saying why.

    Checks the plan bytes against the recorded hash (a replaced or truncated
    file), the TensorRT version and GPU it was built for, and, if given, the hash
    of the ONNX it should come from (a stale plan).
    """
    plan = Path(plan)
    if not plan.is_file():
        raise DiffPIRError(f"engine {plan}: file not found")
    record = read_sidecar(plan, "engine")
    key = record.get("key")
    if not isinstance(key, dict) or "plan_sha256" not in record:
        raise DiffPIRError(f"engine {plan}: sidecar {plan.name}.json has no engine key; rebuild the plan")
    rebuild = f"rebuild it with `diffpir export trt --onnx {record.get('onnx', 'unet.onnx')} --output {plan}`"
    if sha256_files([plan]) != record["plan_sha256"]:
        raise DiffPIRError(f"engine {plan}: the file changed since it was built (SHA-256 differs from its sidecar); {rebuild}")
    here = {"tensorrt_version": tensorrt_version, "gpu_name": gpu.name, "compute_capability": gpu.compute_capability}
    problems = key_mismatches(key, here)
    if onnx_sha256 is not None and key.get("onnx_sha256") != onnx_sha256:
        problems.append("onnx_sha256: the ONNX differs from the one the plan was built from")
    if problems:
        raise DiffPIRError(f"engine {plan} was built elsewhere or is stale ({'; '.join(problems)}); {rebuild}")
    return record


def onnx_files(onnx_path: Path, model_header: Any) -> list[Path]:
    """The .onnx and the external-data files it references, in a stable order (its content hash)."""
    locations = set()
    for init in model_header.graph.initializer:
        if init.data_location == 1:  # TensorProto.EXTERNAL
            for entry in init.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return [onnx_path] + [onnx_path.parent / name for name in sorted(locations)]


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

            import onnx as onnx_lib

            onnx_path = Path(onnx)
            if not onnx_path.is_file():
                raise DiffPIRError(f"onnx {onnx_path}: file not found")
            onnx_sha256 = sha256_files(onnx_files(onnx_path, onnx_lib.load(str(onnx_path), load_external_data=False)))
        self.record = check_plan(self.path, trt.__version__, gpu, onnx_sha256)
        # the sidecar's copy of the ONNX metadata, checked as the ONNX Runtime backend checks it
        metadata = self.record.get("onnx_metadata")
        self.metadata: dict[str, Any] = parse_metadata(metadata if isinstance(metadata, dict) else {}, f"engine {self.path}")
        self.size_multiple = self.metadata["size_multiple"]
        self.in_channels = self.metadata["in_channels"]
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
            tensors[spec.name] = torch.empty(shapes[spec.name], dtype=getattr(torch, spec.dtype), device=self.device)
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


def _problem(device: str) -> Optional[str]:
    try:
        import_tensorrt()
    except DiffPIRError as e:
        return str(e)
    return None


def load(source: Any, device: Any = "cuda", precision: str = "fp16", threads: Optional[int] = None, **_: Any) -> TensorRTDenoiser:
    """A TensorRT plan from `diffpir export trt` (checked against this GPU and TensorRT)."""
    return TensorRTDenoiser(source.path, device=device)


BACKEND = Backend(
    name="tensorrt",
    description="a TensorRT engine plan built from the ONNX graph (NVIDIA GPUs)",
    file_kind="tensorrt",
    file_flag="--engine",
    file_help="a TensorRT plan from `diffpir export trt`",
    runs_kinds=("tensorrt",),
    devices=("cuda",),
    precisions=("fp16", "fp32"),
    tolerance="fp16 plan: PSNR against the fp32 path recorded by the GPU suite (not yet measured on a GPU)",
    load=load,
    path_name="tensorrt",
    graph_capture=True,
    problem=_problem,
)

