"""The ONNX Runtime backend: an exported denoiser graph (`diffpir export onnx`) as a Denoiser.

Providers are tried in the order TensorRT, CUDA, CPU, keeping those installed;
the one the session ended up on is logged and reported by `describe()`. On GPU,
inputs and outputs are bound by IO binding to torch tensors' device pointers, on
torch's current stream, so nothing goes through host memory.

ONNX Runtime optimises a graph every time it opens a session (fusions, and on CPUs the
blocked NCHWc layout). For the runtime's own cached exports that work is done once:
`keep_optimized_graph` writes the optimised graph beside the export with a record of what
it was made from (the export's size and mtime, onnxruntime's version, the CPU's
instruction-set flags, since NCHWc blocking follows the vector width), and `load` opens it
with optimisation off when the record and its SHA-256 still match; otherwise it opens the
export itself and drops the stale copy, which the cache then makes again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from .contract import IOContract, contract_from_dims, parse_metadata, unet_contract

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module
from .base import Backend, batch_timesteps, check_image_input

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

logger = logging.getLogger(__name__)

#: Preference order; each is used only if this onnxruntime build has it.
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PROVIDER_ORDER[:2]
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64}


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DiffPIRError("the onnxruntime backend needs onnxruntime: pip install 'diffpir-rt[onnx]'") from None
    return onnxruntime


def onnxruntime_problem(device: str | torch.device = "cpu", export: bool = False) -> str | None:
    """Why ONNX Runtime must not run the UNet on `device`, or None if it may.

    It must be importable (and onnx too when a graph is to be exported here). On a CUDA device
    it needs a GPU provider: a CPU build of onnxruntime would run every UNet call on the host
    and copy each step's tensors back and forth.
    """
    try:
        import onnxruntime
    except ImportError as exc:
        return f"onnxruntime is not importable ({exc}; pip install 'diffpir-rt[onnx]')"
    if export:
        # Only looked up, not imported: importing onnx took 1.0-1.4 s on the loaded 2-core machine,
        # on every CPU start-up; it is loaded when an export runs.
        import importlib.util

        if importlib.util.find_spec("onnx") is None:
            return "onnx is not installed (pip install 'diffpir-rt[onnx]')"
    if torch.device(device).type != "cuda":
        return None
    available = list(onnxruntime.get_available_providers())
    if not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(available):
        return (f"onnxruntime {onnxruntime.__version__} is a CPU build (providers {available}); "
                "a CUDA run needs onnxruntime-gpu")  # fmt: skip
    return None


def physical_cores(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> int:
    """Physical cores this process may use: distinct (physical id, core id) pairs, capped by affinity.

    Hyper-threads share a core's FMA units, so more intra-op threads than cores
    only adds contention for conv-heavy graphs.
    """
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    physical = core = None
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "physical id":
                physical = value.strip()
            elif key == "core id":
                core = value.strip()
            elif not line.strip():
                if core is not None:
                    cores.add((physical or "0", core))
                physical = core = None
        if core is not None:
            cores.add((physical or "0", core))
    except OSError:
        pass
    return max(1, min(usable, len(cores) or usable))


def choose_providers(available: Sequence[str], device: torch.device) -> list[str]:
    """PROVIDER_ORDER filtered by what is installed; GPU providers only for a CUDA device.

    Raises:
        DiffPIRError: a CUDA device but no GPU provider in this onnxruntime.
    """
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise DiffPIRError(f"device: the onnxruntime backend runs on cpu or cuda, got {device}")
    chosen = [p for p in PROVIDER_ORDER if p in available]
    if not any(p in GPU_PROVIDERS for p in chosen):
        raise DiffPIRError(
            f"device {device}: this onnxruntime has no GPU provider (has {list(available)}); "
            "pip install onnxruntime-gpu, or use --device cpu"
        )
    return chosen


class OnnxRuntimeDenoiser:
    """eps from an exported ONNX denoiser graph.

    Args:
        onnx: the .onnx written by `export_onnx` (external data beside it).
        device: "cpu" or "cuda[:N]"; inputs on another device are moved.
        intra_op_threads: CPU threads per op; default: physical cores.
        providers: override PROVIDER_ORDER (names onnxruntime knows).
        optimized_model: if set, ORT writes its optimized graph there (`keep_optimized_graph`).
        graph_optimization: "all" (ORT_ENABLE_ALL, for a graph as exported), "basic" or
            "disabled" (for a graph ORT has already optimised on this machine).
        optimized_from: the export an already-optimised graph was made from (for records).

    Raises:
        DiffPIRError: missing/corrupt/truncated file, a graph that is not a DiffPIR
            denoiser (I/O contract or metadata), or an unusable device.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        optimized_model: str | os.PathLike[str] | None = None,
        graph_optimization: str = "all",
        optimized_from: str | os.PathLike[str] | None = None,
    ) -> None:
        ort = _onnxruntime()
        self.path = Path(onnx)
        self.device = torch.device(device)
        self._stream: int | None = None
        from ..paths import check_input_file, shown

        check_input_file(self.path, "onnx")  # a folder, FIFO or device says so, and is never opened
        if self.device.type not in ("cpu", "cuda"):
            raise DiffPIRError(f"device: the onnxruntime backend runs on cpu or cuda, got {self.device}")
        if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1):
            raise DiffPIRError(f"threads: expected a positive int, got {intra_op_threads!r}")
        chosen = list(providers) if providers is not None else choose_providers(ort.get_available_providers(), self.device)

        if graph_optimization not in OPTIMIZATION_LEVELS:
            raise DiffPIRError(f"graph_optimization {graph_optimization!r}: expected one of {', '.join(OPTIMIZATION_LEVELS)}")
        self.graph_optimization = OPTIMIZATION_LEVELS[graph_optimization]
        self.optimized_from = Path(optimized_from) if optimized_from is not None else None
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.graph_optimization)
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # One chain of ops: inter-op parallelism has nothing to overlap, intra-op gets the cores.
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = intra_op_threads or physical_cores()
        options.log_severity_level = 3  # errors only; ours go through logging
        if optimized_model is not None:
            options.optimized_model_filepath = str(optimized_model)
        self.intra_op_threads = options.intra_op_num_threads

        provider_options = [self._provider_options(p) for p in chosen]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=chosen, provider_options=provider_options)
        except Exception as e:  # ORT raises its own Fail/InvalidProtobuf/... types, all RuntimeError-like
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = first.replace(str(self.path), "the file").split("] ")[-1]  # ORT's "[ONNXRuntimeError] : 7 : ..." prefix
            raise DiffPIRError(f"onnx {shown(self.path)}: not a loadable ONNX model ({first[:100]})") from None
        self.providers: list[str] = self.session.get_providers()
        self.provider = self.providers[0]
        if self.provider != chosen[0]:
            logger.warning("onnxruntime: %s unavailable for %s, running on %s", chosen[0], self.path, self.provider)
        self.metadata = self._read_metadata()
        self.size_multiple = self.metadata["size_multiple"]
        self.in_channels = self.metadata["in_channels"]
        self.precision = self.metadata["precision"]
        dims = {v.name: tuple(d if isinstance(d, int) else None for d in v.shape) for v in (*self.session.get_inputs(), *self.session.get_outputs())}
        self.contract: IOContract = contract_from_dims(unet_contract(self.in_channels, self.size_multiple), dims, f"onnx {self.path}")
        types = {v.name: v.type for v in (*self.session.get_inputs(), *self.session.get_outputs())}
        for spec in (*self.contract.inputs, *self.contract.outputs):
            if types[spec.name] != f"tensor({'float' if spec.dtype == 'float32' else spec.dtype})":
                raise DiffPIRError(f"onnx {self.path}: {spec.name} is {types[spec.name]}; expected {spec.describe()}")
        self._io_binding = self.provider in GPU_PROVIDERS and self.device.type == "cuda"
        logger.info(
            "onnxruntime %s: %s on %s (%d intra-op threads, arch %s, %s)",
            ort.__version__, self.path, self.provider, self.intra_op_threads, self.metadata["arch"], self.precision,
        )

    def _provider_options(self, provider: str) -> dict[str, Any]:
        if provider not in GPU_PROVIDERS:
            return {}
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        stream = torch.cuda.current_stream(index).cuda_stream
        # Run on torch's stream: the step math queued before and after stays in order, no syncs.
        self._stream = stream
        options = {"device_id": str(index), "has_user_compute_stream": "1", "user_compute_stream": str(stream)}
        if provider == "TensorrtExecutionProvider":
            # ORT's TensorRT provider builds an engine on first run; keep it (and its timings) beside
            # the .onnx, where ORT keys it by model and GPU itself.
            cache = str(self.path.parent / f"{self.path.name}.ort_trt_cache")
            options.update({"trt_engine_cache_enable": "1", "trt_engine_cache_path": cache,
                            "trt_timing_cache_enable": "1", "trt_timing_cache_path": cache})
        return options

    def _read_metadata(self) -> dict[str, Any]:
        from ..paths import shown

        found = dict(self.session.get_modelmeta().custom_metadata_map)
        return parse_metadata(found, f"onnx {shown(self.path)}")

    def __call__(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        check_image_input(x_t, self.in_channels)
        try:
            sizes = self.contract.sizes_of(tuple(x_t.shape))
        except DiffPIRError as e:
            if self.contract != unet_contract(self.in_channels, self.size_multiple):  # some axes fixed
                raise DiffPIRError(
                    f"{e}; onnx {self.path} was exported with fixed shapes: re-export it with --dynamic-batch/--dynamic-size"
                ) from None
            raise
        shapes = self.contract.shapes(sizes)
        x = x_t.detach().to(device=self.device, dtype=torch.float32).contiguous()
        steps = batch_timesteps(t, x.shape[0], x.device)
        if self._io_binding:
            eps = self._run_bound(x, steps, shapes["eps"])
        else:
            feed = {"x_t": x.cpu().numpy(), "t": steps.cpu().numpy()}
            eps = torch.from_numpy(self.session.run(["eps"], feed)[0]).to(self.device)
        return eps.to(device=x_t.device, dtype=x_t.dtype)

    def _run_bound(self, x: Tensor, t: Tensor, eps_shape: tuple[int, ...]) -> Tensor:
        """IO binding on device pointers: ORT reads x/t and writes eps in place, no host copies."""
        index = x.device.index or 0
        if torch.cuda.current_stream(x.device).cuda_stream != self._stream:
            # The session was bound to another stream: make this one's pending writes visible first.
            torch.cuda.current_stream(x.device).synchronize()
        eps = torch.empty(eps_shape, dtype=torch.float32, device=x.device)
        binding = self.session.io_binding()
        for name, tensor in (("x_t", x), ("t", t)):
            binding.bind_input(name, "cuda", index, _NUMPY_DTYPES[self.contract.spec(name).dtype], tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output("eps", "cuda", index, np.float32, eps_shape, eps.data_ptr())
        self.session.run_with_iobinding(binding)
        return eps

    def describe(self) -> dict[str, Any]:
        import onnxruntime

        return {
            "backend": self.name,
            "onnx": str(self.optimized_from or self.path),
            "optimized_graph": str(self.path) if self.optimized_from is not None else None,
            "device": str(self.device),
            "provider": self.provider,
            "providers": self.providers,
            "io_binding": self._io_binding,
            "intra_op_threads": self.intra_op_threads,
            "graph_optimization": self.graph_optimization,
            "precision": self.precision,
            "arch": self.metadata["arch"],
            "checkpoint_sha256": self.metadata["checkpoint_sha256"],
            "onnxruntime": onnxruntime.__version__,
        }


# ----------------------------------------------------------------------------- the kept optimised graph

#: Session graph-optimisation levels by their names here.
OPTIMIZATION_LEVELS = {"all": "ORT_ENABLE_ALL", "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
#: What an ORT-optimised graph depends on besides the export: x86 vector extensions decide
#: the NCHWc block size and which fused kernels the graph names.
_CPU_FLAG_PREFIXES = ("avx", "fma", "amx", "sse", "f16c", "asimd", "sve", "neon", "bf16", "i8mm")


def optimized_graph_path(onnx: str | os.PathLike[str]) -> Path:
    """unet.onnx -> unet.ort.onnx: where `keep_optimized_graph` keeps ORT's optimised graph."""
    onnx = Path(onnx)
    stem = onnx.name[:-5] if onnx.name.lower().endswith(".onnx") else onnx.name
    return onnx.with_name(stem + ".ort.onnx")


def machine_key() -> dict[str, Any]:
    """What an optimised graph was made for: onnxruntime, the CPU's instruction sets, the level."""
    import onnxruntime

    from ..device import cpu_flags

    flags = sorted(f for f in cpu_flags() if f.startswith(_CPU_FLAG_PREFIXES))
    return {
        "onnxruntime": onnxruntime.__version__,
        "machine": platform.machine(),
        "cpu_flags_sha256": hashlib.sha256(" ".join(flags).encode()).hexdigest()[:16],
        "provider": "CPUExecutionProvider",
        "graph_optimization": OPTIMIZATION_LEVELS["all"],
    }


def _file_key(path: Path) -> dict[str, Any]:
    info = path.stat()
    return {"name": path.name, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _read_record(graph: Path) -> dict[str, Any] | None:
    import json

    try:
        record = json.loads(graph.with_name(graph.name + ".json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def optimized_graph_matches(onnx: str | os.PathLike[str]) -> bool:
    """Whether the kept optimised graph of `onnx` was made from this file, for this machine,
    and still has its size (cheap: its content is checked by `load` when it opens it)."""
    onnx = Path(onnx)
    graph = optimized_graph_path(onnx)
    record = _read_record(graph)
    try:
        return (record is not None and record.get("source") == _file_key(onnx) and record.get("machine") == machine_key()
                and graph.stat().st_size == record.get("optimized", {}).get("size"))  # fmt: skip
    except OSError:
        return False


def drop_optimized_graph(onnx: str | os.PathLike[str]) -> None:
    """Remove the kept optimised graph of `onnx` and its record (stale or damaged)."""
    graph = optimized_graph_path(onnx)
    for path in (graph, graph.with_name(graph.name + ".json")):
        path.unlink(missing_ok=True)


def keep_optimized_graph(onnx: str | os.PathLike[str]) -> Path:
    """Let ONNX Runtime optimise `onnx` once (ORT_ENABLE_ALL, CPU) and keep the result beside
    it, with its record, for `load` to open without optimising again. Written atomically.

    Raises:
        DiffPIRError: the graph does not load, has external data, or the folder is not writable.
    """
    import json

    from ..artifacts import sha256_file

    ort = _onnxruntime()
    onnx = Path(onnx)
    if onnx.with_name(onnx.name + ".data").exists():
        raise DiffPIRError(f"onnx {onnx}: weights in external data; its optimised graph is not kept")
    graph = optimized_graph_path(onnx)
    source = _file_key(onnx)
    work = graph.with_name(f".{graph.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        options.optimized_model_filepath = str(work)
        try:
            ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT's own error types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DiffPIRError(f"onnx {onnx}: ONNX Runtime cannot optimise it ({first[:100]})") from None
        record = {"source": source, "machine": machine_key(),
                  "optimized": {"size": work.stat().st_size, "sha256": sha256_file(work)}}  # fmt: skip
        os.replace(work, graph)
        sidecar = graph.with_name(graph.name + ".json")
        temporary = sidecar.with_name(f".{sidecar.name}.{uuid.uuid4().hex[:12]}.tmp")
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, sidecar)
    except OSError as e:
        raise DiffPIRError(f"onnx {onnx}: cannot keep its optimised graph in {graph.parent} ({e.strerror or e})") from None
    finally:
        work.unlink(missing_ok=True)
    return graph


def open_kept_optimized(onnx: str | os.PathLike[str], device: Any = "cpu", threads: Optional[int] = None) -> "OnnxRuntimeDenoiser | None":
    """The session of the kept optimised graph of `onnx`, opened without optimising, or None
    when there is none for this file and machine. A copy whose bytes no longer match its record,
    or that ONNX Runtime cannot open, is removed (the cache makes it again) and None returned."""
    from ..artifacts import sha256_file

    onnx = Path(onnx)
    if torch.device(device).type != "cpu" or not optimized_graph_matches(onnx):
        return None
    graph = optimized_graph_path(onnx)
    record = _read_record(graph) or {}
    try:
        intact = sha256_file(graph) == record.get("optimized", {}).get("sha256")
    except OSError:
        intact = False
    if intact:
        try:
            return OnnxRuntimeDenoiser(graph, device=device, intra_op_threads=threads, graph_optimization="disabled",
                                       optimized_from=onnx)  # fmt: skip
        except DiffPIRError as e:
            logger.warning("onnxruntime: the optimised graph kept for %s does not load (%s); using the export", onnx, e)
    else:
        logger.warning("onnxruntime: the optimised graph kept for %s is damaged; using the export", onnx)
    drop_optimized_graph(onnx)
    return None


def load(source: Any, device: Any = "cpu", precision: str = "fp32", threads: Optional[int] = None, **_: Any) -> "OnnxRuntimeDenoiser":
    """An ONNX graph (from `diffpir export onnx`, or the runtime's cached export) on ONNX Runtime:
    its kept optimised graph when one matches (`keep_optimized_graph`), else the graph itself."""
    kept = open_kept_optimized(source.path, device=device, threads=threads)
    return kept if kept is not None else OnnxRuntimeDenoiser(source.path, device=device, intra_op_threads=threads)


BACKEND = Backend(
    name="onnxruntime",
    description="ONNX Runtime running the exported UNet graph (the fastest CPU UNet measured here)",
    file_kind="onnx",
    file_flag="--onnx",
    file_help="an ONNX graph from `diffpir export onnx` instead of torch weights",
    runs_kinds=("onnx",),
    made_from_torch="onnx",
    devices=("cpu",),
    precisions=("fp32", "int8"),
    tolerance="fp32: 1e-4 on the restored image, >= 99.9 % of 8-bit pixels within 1 level of the reference; "
    "int8: eps relative RMS <= 0.1 at export, restorations within 0.02 dB (docs/runtime.md)",
    load=load,
    auto_rank={"cpu": 0},
    path_name="onnxruntime",
    problem=lambda device: onnxruntime_problem(device, export=True),
)
