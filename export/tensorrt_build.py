"""Stage 2: ONNX -> TensorRT plan, with an optimization profile, a timing cache and an engine cache.

Written against TensorRT 10's Python API (trt.Builder, OnnxParser,
build_serialized_network); `tensorrt` is imported inside the functions that need
it, so everything else here (profile planning from the I/O contract, the engine
cache key, sidecar staleness checks) is plain Python, tested without a GPU.

A plan is only valid for the ONNX, TensorRT version, GPU and precision it was
built for: that key sits in the plan's sidecar (`unet.plan.json`). The builder
reuses a plan whose key matches and rebuilds otherwise; the runtime refuses a
plan whose key does not match where it runs.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diffpir_rt.errors import DiffPIRError

from diffpir_rt.engine.backends.tensorrt_backend import (
    GpuInfo,
    check_plan,
    current_gpu,
    import_tensorrt,
    onnx_files,
)
from diffpir_rt.engine.artifacts import canonical_sha256, read_sidecar, sha256_files, tool_versions, write_bytes, write_sidecar
from diffpir_rt.engine.backends.contract import (
    BATCH,
    HEIGHT,
    METADATA_KEYS,
    WIDTH,
    IOContract,
    Precision,
    Profile,
    ShapeRange,
    unet_contract,
)

logger = logging.getLogger(__name__)

DEFAULT_BATCH = ShapeRange(1, 1, 4)
DEFAULT_WORKSPACE_GIB = 8.0


# ----------------------------------------------------------------------------- profile planning


def parse_range(text: str, flag: str) -> ShapeRange:
    """'N' (fixed) or 'MIN:OPT:MAX' from the command line."""
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        return ShapeRange.fixed(values[0]) if values[0] >= 1 else _bad_range(text, flag)
    if len(values) != 3:
        return _bad_range(text, flag)
    try:
        return ShapeRange(*values)
    except DiffPIRError as e:
        raise DiffPIRError(f"{flag} {text}: {e}") from None


def _bad_range(text: str, flag: str) -> ShapeRange:
    raise DiffPIRError(f"{flag} {text}: expected N or MIN:OPT:MAX (positive ints, min <= opt <= max)")


def fixed_symbols(generic: IOContract, specialised: IOContract) -> dict[str, int]:
    """Symbols of `generic`'s first input that the artifact (`specialised`) fixes, with their sizes."""
    return {
        axis: value
        for axis, value in zip(generic.inputs[0].axes, specialised.inputs[0].axes)
        if isinstance(axis, str) and isinstance(value, int)
    }


def plan_profile(
    generic: IOContract,
    specialised: IOContract,
    batch: ShapeRange | None = None,
    height: ShapeRange | None = None,
    width: ShapeRange | None = None,
    opt_size: tuple[int, int] = (256, 256),
) -> tuple[dict[str, ShapeRange], Profile]:
    """Per-symbol ranges and the TensorRT profile for an ONNX with the given static axes.

    An axis the ONNX fixes takes that size (a different request is an error);
    a dynamic one takes the request, or a default: batch 1:1:4, sizes opt/2:opt:2·opt
    around `opt_size` (the traced shape). Sizes must be multiples of size_multiple.

    Raises:
        DiffPIRError: a range for a fixed axis that differs, or sizes not multiples.
    """
    multiple = generic.size_multiple
    fixed = fixed_symbols(generic, specialised)
    requested = {BATCH: batch, HEIGHT: height, WIDTH: width}
    flags = {BATCH: "--batch", HEIGHT: "--height", WIDTH: "--width"}
    ranges: dict[str, ShapeRange] = {}
    for symbol, request in requested.items():
        if symbol in fixed:
            if request is not None and request != ShapeRange.fixed(fixed[symbol]):
                what = "--dynamic-batch" if symbol == BATCH else "--dynamic-size"
                raise DiffPIRError(
                    f"{flags[symbol]} {request}: the ONNX has a fixed {symbol} of "
                    f"{fixed[symbol]}; re-export it with {what} or drop {flags[symbol]}"
                )
            ranges[symbol] = ShapeRange.fixed(fixed[symbol])
        elif request is not None:
            ranges[symbol] = request
        elif symbol == BATCH:
            ranges[symbol] = DEFAULT_BATCH
        else:
            opt = opt_size[0 if symbol == HEIGHT else 1]
            low = max(multiple, (opt // 2) // multiple * multiple)
            ranges[symbol] = ShapeRange(low, opt, 2 * opt)
    for symbol in (HEIGHT, WIDTH):
        bad = [v for v in ranges[symbol].as_tuple() if v % multiple]
        if bad:
            raise DiffPIRError(f"{flags[symbol]}: sizes {ranges[symbol].as_tuple()} must be multiples of {multiple}")
    return ranges, generic.profile(ranges)


# ----------------------------------------------------------------------------- engine cache key


@dataclass(frozen=True)
class EngineKey:
    """What a plan depends on; equal keys mean a plan can be reused as is."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]

    @classmethod
    def make(
        cls, onnx_sha256: str, tensorrt_version: str, gpu: GpuInfo, precision: Precision | str, profile: Profile
    ) -> "EngineKey":
        entries = tuple((name, tuple(lo), tuple(opt), tuple(hi)) for name, (lo, opt, hi) in sorted(profile.items()))
        return cls(onnx_sha256, tensorrt_version, gpu.name, gpu.compute_capability, Precision.parse(precision).value, entries)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["profile"] = {name: [list(lo), list(opt), list(hi)] for name, lo, opt, hi in self.profile}
        return record

    def digest(self) -> str:
        return canonical_sha256(self.to_dict())


def default_timing_cache(plan: Path, tensorrt_version: str, gpu: GpuInfo) -> Path:
    """Timing cache beside the plan, named by TensorRT version and compute capability (its validity)."""
    tag = re.sub(r"[^0-9A-Za-z.]+", "_", f"trt{tensorrt_version}_sm{gpu.compute_capability.replace('.', '')}")
    return plan.parent / f"timing_{tag}.cache"


# ----------------------------------------------------------------------------- build


def resolve_build_precision(onnx_precision: str, fp16: bool, has_fp16_flag: bool) -> tuple[Precision, bool]:
    """(engine precision, strongly typed?) for an ONNX's precision and the --dtype fp16 request.

    An fp16 ONNX already pins GroupNorm and softmax to fp32 with casts, so it is
    built strongly typed: TensorRT keeps every tensor's ONNX type. An fp32 ONNX
    with --dtype fp16 falls back to the FP16 builder flag (weak typing: TensorRT picks
    per layer), which TensorRT 11 no longer has.
    """
    onnx_precision = Precision.parse(onnx_precision)
    if onnx_precision is Precision.INT8:
        raise DiffPIRError("--onnx: an int8 graph is quantised for ONNX Runtime's CPU kernels; build the engine "
                           "from the fp32 or fp16 export")  # fmt: skip
    if onnx_precision is Precision.FP16:
        return Precision.FP16, True
    if not fp16:
        return Precision.FP32, True
    if not has_fp16_flag:
        raise DiffPIRError(
            "--dtype fp16: this TensorRT builds strongly typed networks only; export the ONNX with "
            "`diffpir export onnx --dtype fp16` and build from that"
        )
    return Precision.FP16, False


def _trt_logger(trt: Any) -> Any:
    class _Logger(trt.ILogger):
        """TensorRT's messages into our logging, so they obey -v like everything else."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            levels = trt.ILogger.Severity
            if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                logger.error("tensorrt: %s", msg)
            elif severity == levels.WARNING:
                logger.warning("tensorrt: %s", msg)
            else:
                logger.debug("tensorrt: %s", msg)

    return _Logger()


@dataclass(frozen=True)
class _OnnxSource:
    """What `build_engine` learned from the ONNX, all checked before TensorRT is imported."""

    path: Path
    metadata: dict[str, str]
    specialised: IOContract
    ranges: dict[str, ShapeRange]
    profile: Profile
    sha256: str


def _check_build_paths(onnx_path: Path, plan: Path) -> None:
    """Reject a wrong plan suffix or a missing ONNX before reading anything."""
    if plan.suffix.lower() not in (".plan", ".engine", ".trt"):
        raise DiffPIRError(f"--output {plan}: expected a .plan (or .engine/.trt) path")
    if not onnx_path.is_file():
        raise DiffPIRError(f"--onnx {onnx_path}: file not found")


def _read_onnx_header(onnx_lib: Any, onnx_path: Path) -> tuple[Any, dict[str, str]]:
    """The graph without its weights, and the DiffPIR metadata that only `export_onnx` writes."""
    try:
        header = onnx_lib.load(str(onnx_path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends
        raise DiffPIRError(f"--onnx {onnx_path}: not a readable ONNX model ({e})") from e
    metadata = {p.key: p.value for p in header.metadata_props}
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise DiffPIRError(f"--onnx {onnx_path}: no DiffPIR metadata ({', '.join(missing)}); export it with `diffpir export onnx`")
    return header, metadata


def _inspect_onnx(
    onnx_path: Path, plan: Path, batch: ShapeRange | None, height: ShapeRange | None, width: ShapeRange | None
) -> _OnnxSource:
    """Check the ONNX, its contract, profile and weight files, so a bad input fails without a GPU."""
    import onnx as onnx_lib

    from .onnx_export import check_onnx_contract

    _check_build_paths(onnx_path, plan)
    header, metadata = _read_onnx_header(onnx_lib, onnx_path)
    generic = unet_contract(int(metadata["in_channels"]), int(metadata["size_multiple"]))
    specialised = check_onnx_contract(header, generic, f"--onnx {onnx_path}")
    export_record = _optional_sidecar(onnx_path)
    opt_size = (256, 256)
    if export_record is not None:
        opt_size = (export_record["export"]["height"], export_record["export"]["width"])
    ranges, profile = plan_profile(generic, specialised, batch, height, width, opt_size)
    files = onnx_files(onnx_path, header)
    absent = [str(f) for f in files if not f.is_file()]
    if absent:
        raise DiffPIRError(f"--onnx {onnx_path}: external data {absent} not found beside it")
    return _OnnxSource(onnx_path, metadata, specialised, ranges, profile, sha256_files(files))


def _cached_plan_matches(plan: Path, source: _OnnxSource, trt_version: str, gpu: GpuInfo, key: EngineKey, force: bool) -> bool:
    """Whether the plan already on disk was built for this key: a build takes minutes, a check milliseconds."""
    if not plan.is_file() or force:
        return False
    try:
        record = check_plan(plan, trt_version, gpu, source.sha256)
        if record["key_sha256"] == key.digest():
            logger.info("engine cache hit: %s matches %s", plan, source.path)
            return True
        logger.info("engine %s: profile or precision changed; rebuilding", plan)
    except DiffPIRError as e:
        logger.info("rebuilding: %s", e)
    return False


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    """Network creation flags: explicit batch where TensorRT still has the flag, strong typing when asked."""
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        # Always explicit batch in TensorRT 10 (the flag is ignored there); required before.
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _parse_onnx(parser: Any, onnx_path: Path) -> None:
    """Parse from the file, so the parser finds external data beside it; its errors become one line."""
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DiffPIRError(f"--onnx {onnx_path}: TensorRT's ONNX parser failed: {errors}")


def _set_precision(trt: Any, config: Any, precision: Precision, strongly_typed: bool, workspace_gib: float) -> None:
    """Workspace limit and precision flags of the builder config."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        logger.warning("building fp16 from an fp32 ONNX with the FP16 flag; an `export onnx --dtype fp16` graph keeps norms in fp32")
    elif precision is Precision.FP32 and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 is on by default and costs ~1e-3 relative error; fp32 means fp32 here.
        config.clear_flag(trt.BuilderFlag.TF32)


def _build_serialized(
    trt: Any, source: _OnnxSource, gpu: GpuInfo, precision: Precision, strongly_typed: bool, workspace_gib: float, cache_path: Path
) -> tuple[bytes, bytes]:
    """Run the TensorRT builder; returns (plan bytes, updated timing cache bytes).

    Builder, network, parser, profile and timing cache all stay referenced here
    until the build has finished.
    """
    trt_logger = _trt_logger(trt)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, trt_logger)
    _parse_onnx(parser, source.path)

    config = builder.create_builder_config()
    _set_precision(trt, config, precision, strongly_typed, workspace_gib)
    trt_profile = builder.create_optimization_profile()
    for name, (low, opt, high) in source.profile.items():
        trt_profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(trt_profile)
    cache_bytes = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("timing cache %s does not fit this TensorRT/GPU; starting an empty one", cache_path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    logger.info("building %s engine for %s on %s (profile %s)", precision.value, source.path, gpu.name, source.profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DiffPIRError(f"--onnx {source.path}: TensorRT could not build an engine (see the tensorrt log lines above)")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def _plan_record(
    plan: Path, key: EngineKey, source: _OnnxSource, strongly_typed: bool, cache_path: Path, trt_version: str
) -> dict[str, Any]:
    """The plan's sidecar: its engine key (what the runtime checks) and how it was built."""
    return {
        "artifact": plan.name,
        "plan_sha256": sha256_files([plan]),
        "key": key.to_dict(),
        "key_sha256": key.digest(),
        "onnx": str(source.path),
        "onnx_metadata": {k: source.metadata[k] for k in METADATA_KEYS},
        "contract": source.specialised.to_dict(),
        "ranges": {name: list(r.as_tuple()) for name, r in source.ranges.items()},
        "profile": {name: [list(s) for s in shapes] for name, shapes in source.profile.items()},
        "strongly_typed": strongly_typed,
        "timing_cache": str(cache_path),
        "tools": {**tool_versions("torch", "onnx"), "tensorrt": trt_version},
    }


def build_engine(
    onnx: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    fp16: bool = False,
    batch: ShapeRange | None = None,
    height: ShapeRange | None = None,
    width: ShapeRange | None = None,
    timing_cache: str | os.PathLike[str] | None = None,
    device: str = "cuda",
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    force: bool = False,
) -> Path:
    """Build (or reuse) a TensorRT plan for an exported ONNX denoiser.

    Args:
        onnx: written by `export_onnx` (metadata and I/O contract are checked).
        output: the .plan path; its sidecar `<output>.json` holds the engine key.
        fp16: fp16 engine (see `resolve_build_precision`); an fp16 ONNX is fp16 anyway.
        batch, height, width: min/opt/max ranges of the dynamic axes (`plan_profile`).
        timing_cache: read and updated across builds; default beside the plan.
        force: rebuild even if the cached plan's key matches.

    Returns:
        The plan path.

    Raises:
        DiffPIRError: TensorRT missing, no GPU, a bad ONNX or profile, or a failed build.
    """
    plan = Path(output)
    source = _inspect_onnx(Path(onnx), plan, batch, height, width)

    trt = import_tensorrt()
    gpu = current_gpu(device)
    precision, strongly_typed = resolve_build_precision(source.metadata["precision"], fp16, hasattr(trt.BuilderFlag, "FP16"))
    key = EngineKey.make(source.sha256, trt.__version__, gpu, precision, source.profile)
    if _cached_plan_matches(plan, source, trt.__version__, gpu, key, force):
        return plan

    cache_path = Path(timing_cache) if timing_cache is not None else default_timing_cache(plan, trt.__version__, gpu)
    plan_bytes, cache_bytes = _build_serialized(trt, source, gpu, precision, strongly_typed, workspace_gib, cache_path)
    write_bytes(cache_path, cache_bytes)
    write_bytes(plan, plan_bytes)
    write_sidecar(plan, _plan_record(plan, key, source, strongly_typed, cache_path, trt.__version__))
    return plan


def _optional_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        return read_sidecar(path, "onnx")
    except DiffPIRError:
        return None
