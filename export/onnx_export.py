"""Stage 1: torch UNet -> ONNX, proved equal to torch by ONNX Runtime (style: export/).

`export_onnx(checkpoint, output)` traces `UNetDenoiser` (so the graph returns eps
only: the learned-variance half is sliced inside) with torch's TorchScript
exporter. torch 2.13 defaults to the dynamo exporter, which needs onnxscript and
is not needed here: this UNet is a plain module without control flow, and the
TorchScript path writes the same bytes for the same inputs (checked by a test).

The .onnx carries its provenance in metadata_props (`contract.METADATA_KEYS`),
which the runtimes read; a sidecar `unet.onnx.json` adds the parity measured at
export (ORT vs torch fp32 at two sizes and batches), shapes and tool versions.
Nothing is written at the output path unless the checker, the contract check and
the parity check all pass.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import logging
import os
import shutil
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from diffpir_rt.engine import ModelSource as EngineModelSource
from diffpir_rt.engine import prior
from diffpir_rt.engine.archs import UNetConfig
from diffpir_rt.engine.artifacts import sha256_files, tool_versions, write_sidecar
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.paths import temporary_name
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.engine.backends.contract import BATCH, HEIGHT, METADATA_KEYS, WIDTH, CONTRACT_VERSION, IOContract, Precision, contract_from_dims, fix_axes, unet_contract

from .options import DEFAULT_OPSET, OPSETS

logger = logging.getLogger(__name__)

#: Protobuf cannot hold a message of 2 GiB or more; weights above this go to one external file.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
#: Parity criterion: max|ORT - torch fp32| <= tol * max(1, max|torch fp32|). fp32 is summation
#: order only; fp16 carries half precision through ~40 convs (norms, softmax stay fp32).
PARITY_TOLERANCE = {Precision.FP32: 1e-4, Precision.FP16: 2e-2}
PARITY_CRITERION = "max|ort - torch_fp32| <= tolerance * max(1, max|torch_fp32|)"
#: Ops that must compute in float32 in an fp16 export (GD nn.py GroupNorm32, fp32 softmax).
FP32_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization", "Softmax")
#: Timesteps tried in the parity check, spread over the schedule.
PARITY_TIMESTEPS = (999, 500, 250, 10, 0)
EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"


@dataclass(frozen=True)
class OnnxExportConfig:
    """How to export (everything but the weights).

    Args:
        opset: ONNX opset, 17..20.
        precision: fp32, or fp16 weights and activations with GroupNorm and
            softmax in fp32; I/O stays fp32 either way.
        dynamic_batch: batch axis dynamic (else fixed to `batch`).
        dynamic_size: H and W dynamic (else fixed to `height` x `width`).
        batch, height, width: the traced shape, and the fixed one for static axes;
            height/width default to the arch's image_size.
        external_data: weights in `<name>.data` beside the .onnx; None decides by
            size (needed past the 2 GiB protobuf limit, e.g. imagenet256_uncond).
    """

    opset: int = DEFAULT_OPSET
    precision: Precision = Precision.FP32
    dynamic_batch: bool = False
    dynamic_size: bool = False
    batch: int = 1
    height: int | None = None
    width: int | None = None
    external_data: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        if isinstance(self.opset, bool) or self.opset not in OPSETS:
            raise DiffPIRError(f"opset: expected one of {list(OPSETS)}, got {self.opset!r}")
        for name in ("batch", "height", "width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DiffPIRError(f"{name}: expected a positive int, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision.value}


@dataclass(frozen=True)
class WeightsRecord:
    """Where the exported weights came from, for the metadata and the sidecar."""

    kind: str  # "checkpoint" | "bundled" | "random"
    sha256: str
    path: str | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class ParityCase:
    batch: int
    height: int
    width: int
    timesteps: list[int]
    max_abs_error: float
    max_abs_reference: float
    passed: bool = field(default=False)


# ----------------------------------------------------------------------------- model source


def _state_dict_sha256(module: torch.nn.Module) -> str:
    """Content hash of weights that have no file (random init): key names and fp32 bytes."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_model(
    checkpoint: str | os.PathLike[str] | None,
    arch: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> tuple[UNetDenoiser, WeightsRecord]:
    """The fp32 CPU denoiser to export, and where its weights came from.

    A checkpoint wins; else the bundled prior when this build ships one; else
    random weights, only when asked for (benchmarks). Loading is the engine's one
    model-source resolver; this adds only the export's own argument rules.

    Raises:
        DiffPIRError: no source of weights, a conflicting arch, or a bad checkpoint.
    """
    if checkpoint is not None and random_weights:
        raise DiffPIRError("--random-weights: conflicts with --checkpoint; pass one of them")
    if checkpoint is None and not random_weights and arch is not None:
        card = prior.bundled_card()
        if card is not None and arch != card["arch"]:
            raise DiffPIRError(f"--arch {arch}: the bundled prior is arch {card['arch']!r}; drop --arch or pass --checkpoint")
        arch = None  # the bundled prior's own
    if checkpoint is not None:
        source = EngineModelSource("checkpoint", checkpoint, arch)
    elif random_weights:
        source = EngineModelSource("random", None, arch, seed=seed)
    elif prior.bundled_card() is None:
        raise DiffPIRError(
            "no checkpoint: this installation ships no bundled prior; pass --checkpoint PATH "
            "(a guided-diffusion UNet .pt/.safetensors) with --arch, or --random-weights for benchmarks"
        )
    else:
        source = EngineModelSource("bundled")
    denoiser = source.load_torch()
    if source.kind == "random":
        return denoiser, WeightsRecord("random", _state_dict_sha256(denoiser.unet), seed=seed)
    return denoiser, WeightsRecord(source.kind, source.sha256(), path=source.label() if source.kind == "bundled" else str(checkpoint))


# ----------------------------------------------------------------------------- ONNX helpers


def _onnx():
    try:
        import onnx
    except ImportError:
        raise DiffPIRError("ONNX export needs onnx and onnxruntime: pip install 'diffpir-rt[onnx]'") from None
    return onnx


def onnx_io(model: Any) -> tuple[dict[str, tuple[str | int, ...]], dict[str, str]]:
    """Declared dims (int fixed, str dynamic) and numpy dtype names of a ModelProto's I/O."""
    onnx = _onnx()
    dims: dict[str, tuple[str | int, ...]] = {}
    dtypes: dict[str, str] = {}
    for value in (*model.graph.input, *model.graph.output):
        tensor = value.type.tensor_type
        dims[value.name] = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim)
        dtypes[value.name] = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    return dims, dtypes


def check_onnx_contract(model: Any, contract: IOContract, artifact: str) -> IOContract:
    """The contract specialised to this graph's static axes; raises if names, ranks or dtypes differ."""
    dims, dtypes = onnx_io(model)
    specialised = contract_from_dims(contract, dims, artifact)
    for spec in (*contract.inputs, *contract.outputs):
        if dtypes[spec.name] != spec.dtype:
            raise DiffPIRError(f"{artifact}: {spec.name} is {dtypes[spec.name]}; expected {spec.describe()}")
    return specialised


def precision_report(model: Any) -> dict[str, dict[str, int]]:
    """For each op of `FP32_OPS`: how many nodes take a float32 / float16 first input.

    Runs ONNX shape inference on the graph (types only, so external weights need
    not be loaded).
    """
    onnx = _onnx()
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.value_info, *graph.input, *graph.output)}
    types.update({init.name: init.data_type for init in graph.initializer})
    counts: dict[str, Counter[str]] = {}
    for node in graph.node:
        if node.op_type in FP32_OPS:
            elem = types.get(node.input[0], 0)
            name = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name if elem else "unknown"
            counts.setdefault(node.op_type, Counter())[name] += 1
    return {op: dict(sorted(c.items())) for op, c in sorted(counts.items())}


def _fp32_ops_in_fp16(report: dict[str, dict[str, int]]) -> list[str]:
    return [f"{op}: {c}" for op, c in report.items() if any(k != "float32" for k in c)]


# ----------------------------------------------------------------------------- export


def _parity_cases(config: OnnxExportConfig, height: int, width: int, multiple: int) -> list[tuple[int, int, int]]:
    """Two (B, H, W) cases: the traced shape, and another batch and non-square size where dynamic."""
    b0 = config.batch
    b1 = b0 + 1 if config.dynamic_batch else b0
    if config.dynamic_size:
        # Smaller than traced (cheap on big archs), non-square, still multiples.
        h1 = max(multiple, (height // 2) // multiple * multiple)
        w1 = max(multiple, (width // 2) // multiple * multiple + multiple)
    else:
        h1, w1 = height, width
    cases = [(b0, height, width), (b1, h1, w1)]
    return cases if cases[0] != cases[1] else cases[:1]


def _measure_parity(
    onnx_path: Path, reference: UNetDenoiser, cases: list[tuple[int, int, int]], tolerance: float
) -> list[ParityCase]:
    """Run the ONNX Runtime backend and the torch fp32 reference on seeded inputs."""
    from diffpir_rt.engine.backends.onnxruntime_backend import OnnxRuntimeDenoiser

    runtime = OnnxRuntimeDenoiser(onnx_path, device="cpu")
    generator = torch.Generator().manual_seed(0)
    results = []
    for batch, height, width in cases:
        x_t = torch.randn(batch, reference.config.in_channels, height, width, generator=generator)
        t = torch.tensor([PARITY_TIMESTEPS[i % len(PARITY_TIMESTEPS)] for i in range(batch)], dtype=torch.int64)
        with torch.no_grad():
            expected = reference(x_t, t)
        got = runtime(x_t, t)
        error = float((got - expected).abs().max())
        scale = float(expected.abs().max())
        case = ParityCase(batch, height, width, t.tolist(), error, scale)
        case.passed = bool(np.isfinite(error) and error <= tolerance * max(1.0, scale))
        results.append(case)
    return results


@torch.no_grad()
def _trace(module: torch.nn.Module, args: tuple[torch.Tensor, ...], path: Path, contract: IOContract, config: OnnxExportConfig) -> None:
    dynamic = set()
    if config.dynamic_batch:
        dynamic.add(BATCH)
    if config.dynamic_size:
        dynamic.update((HEIGHT, WIDTH))
    with warnings.catch_warnings():
        # The legacy exporter is chosen on purpose (module docstring). F.group_norm's training-mode
        # batch-size check (_verify_batch_size) makes the tracer warn once per GroupNorm; it never
        # reaches the graph. Other tracer warnings stay visible; the parity check at a second
        # size and batch is what proves the graph general.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        # torch >= 2.9 defaults to the dynamo exporter; older releases lack the argument.
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(
            module,
            args,
            str(path),
            **legacy,
            opset_version=config.opset,
            input_names=contract.input_names,
            output_names=contract.output_names,
            dynamic_axes=contract.dynamic_axes(dynamic),
            do_constant_folding=True,
            export_params=True,
        )


@dataclass(frozen=True)
class _ExportPlan:
    """What `export_onnx` decided before writing anything, shared by its steps."""

    output: Path
    config: OnnxExportConfig
    reference: UNetDenoiser
    source: WeightsRecord
    module: torch.nn.Module
    height: int
    width: int
    contract: IOContract
    artifact_contract: IOContract
    external: bool
    metadata: dict[str, str]

    @property
    def data_name(self) -> str:
        """File name of the external weights, beside the .onnx."""
        return self.output.name + ".data"


def _check_output_path(config: OnnxExportConfig, output: str | os.PathLike[str]) -> Path:
    """Reject an int8 request or a bad output path before the weights are loaded."""
    if config.precision is Precision.INT8:
        raise DiffPIRError("precision int8: an int8 graph is quantised from an fp32 export; use export.export_int8 "
                           "(`diffpir export onnx --dtype int8`)")  # fmt: skip
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise DiffPIRError(f"--output {output}: expected a .onnx path")
    if output.is_dir():
        raise DiffPIRError(f"--output {output}: is a directory; expected a file path")
    return output


def _traced_size(config: OnnxExportConfig, reference: UNetDenoiser) -> tuple[int, int]:
    """The traced (height, width): the arch's image size unless given, and a multiple the UNet accepts."""
    unet_config: UNetConfig = reference.config
    multiple = reference.size_multiple
    height = config.height or unet_config.image_size
    width = config.width or unet_config.image_size
    if height % multiple or width % multiple:
        raise DiffPIRError(f"--width/--height: {width}x{height} must be multiples of {multiple} for arch {reference.arch}")
    return height, width


def _export_metadata(reference: UNetDenoiser, precision: Precision, source: WeightsRecord) -> dict[str, str]:
    """The metadata_props the runtimes read, in `METADATA_KEYS` order."""
    metadata = {
        "diffpir_contract": CONTRACT_VERSION,
        "arch": reference.arch or "custom",
        "size_multiple": str(reference.size_multiple),
        "in_channels": str(reference.config.in_channels),
        "precision": precision.value,
        "checkpoint_sha256": source.sha256,
    }
    assert tuple(metadata) == METADATA_KEYS
    return metadata


def _plan_export(
    checkpoint: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    config: OnnxExportConfig,
    arch: str | None,
    random_weights: bool,
    seed: int,
) -> _ExportPlan:
    """Validate the request and load the weights, so that bad input fails before anything is written."""
    output = _check_output_path(config, output)
    reference, source = resolve_model(checkpoint, arch, random_weights, seed)
    height, width = _traced_size(config, reference)
    precision = config.precision
    module = reference if precision is Precision.FP32 else copy.deepcopy(reference).to(torch.float16)
    contract = unet_contract(reference.config.in_channels, reference.size_multiple)
    fixed = {} if config.dynamic_batch else {BATCH: config.batch}
    if not config.dynamic_size:
        fixed.update({HEIGHT: height, WIDTH: width})
    artifact_contract = fix_axes(contract, fixed)
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = config.external_data if config.external_data is not None else param_bytes > EXTERNAL_DATA_THRESHOLD
    metadata = _export_metadata(reference, precision, source)
    return _ExportPlan(output, config, reference, source, module, height, width, contract, artifact_contract, external, metadata)


def make_work_dir(output: Path) -> Path:
    """A private scratch folder beside the output (also quantize's), so the final moves are same-filesystem renames."""
    work = temporary_name(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
    except OSError as e:
        raise DiffPIRError(f"--output {output}: cannot write in {output.parent} ({e.strerror or e})") from None
    return work


def _trace_and_save(onnx: Any, plan: _ExportPlan, work: Path) -> Path:
    """Trace into work/raw, then re-save with metadata in one deterministic layout (inline, or all weights in <name>.data)."""
    # The exporter may split >2 GiB models into one file per tensor; hence the re-save.
    config, output = plan.config, plan.output
    raw = work / "raw" / output.name
    raw.parent.mkdir()
    generator = torch.Generator().manual_seed(0)
    x_t = torch.randn(config.batch, plan.reference.config.in_channels, plan.height, plan.width, generator=generator)
    t = torch.full((config.batch,), 500, dtype=torch.int64)
    logger.info("tracing %s (%s) at %s", plan.reference.arch, config.precision.value, tuple(x_t.shape))
    _trace(plan.module, (x_t, t), raw, plan.contract, config)

    model = onnx.load(str(raw))
    del model.metadata_props[:]
    for key, value in plan.metadata.items():
        model.metadata_props.add(key=key, value=value)
    final = work / output.name
    if plan.external:
        onnx.save_model(model, str(final), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=plan.data_name, size_threshold=1024)
    else:
        onnx.save_model(model, str(final))
    shutil.rmtree(raw.parent)
    return final


def _check_graph(onnx: Any, final: Path, plan: _ExportPlan) -> dict[str, dict[str, int]]:
    """ONNX checker with full shape inference, the I/O contract and fp32 norms/softmax; returns the precision report."""
    try:
        onnx.checker.check_model(str(final), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise RuntimeError(f"exported graph fails onnx.checker: {e}") from e
    header = onnx.load(str(final), load_external_data=False)
    specialised = check_onnx_contract(header, plan.contract, f"export {plan.output}")
    if specialised != plan.artifact_contract:
        raise RuntimeError(f"exported axes {specialised.to_dict()} differ from the requested {plan.artifact_contract.to_dict()}")
    report = precision_report(header)
    if plan.config.precision is Precision.FP16 and _fp32_ops_in_fp16(report):
        raise RuntimeError(f"fp16 export computes {_fp32_ops_in_fp16(report)} outside float32")
    return report


def _export_record(
    plan: _ExportPlan, final: Path, work: Path, report: dict[str, dict[str, int]], cases: list[ParityCase], tolerance: float
) -> dict[str, Any]:
    """The sidecar record: provenance, contract, precision report and measured parity."""
    parity = {
        "reference": "torch fp32 UNetDenoiser, CPU",
        "runtime": "onnxruntime CPUExecutionProvider",
        "criterion": PARITY_CRITERION,
        "tolerance": tolerance,
        "cases": [asdict(c) for c in cases],
        "passed": all(c.passed for c in cases),
    }
    files = [final] + ([work / plan.data_name] if plan.external else [])
    return {
        "artifact": plan.output.name,
        "external_data": plan.data_name if plan.external else None,
        "onnx_sha256": sha256_files(files),
        "exporter": EXPORTER,
        "checkpoint": plan.source.to_dict(),
        "arch": plan.reference.arch,
        "unet_config": plan.reference.config.as_dict(),
        "export": {**plan.config.to_dict(), "height": plan.height, "width": plan.width},
        "contract": plan.artifact_contract.to_dict(),
        "metadata": plan.metadata,
        "fp32_ops": report,
        "parity": parity,
        "tools": tool_versions("torch", "onnx", "onnxruntime"),
    }


def _require_parity(cases: list[ParityCase], output: Path, tolerance: float) -> None:
    """Refuse to write a graph that disagrees with torch, naming the worst case."""
    if all(c.passed for c in cases):
        return
    worst = max(cases, key=lambda c: c.max_abs_error / max(1.0, c.max_abs_reference))
    raise DiffPIRError(
        f"export {output}: ONNX Runtime disagrees with torch: max abs error {worst.max_abs_error:.3g} at "
        f"{(worst.batch, worst.height, worst.width)} > tolerance {tolerance:g} x max(1, {worst.max_abs_reference:.3g}); "
        "nothing written"
    )


def _move_into_place(plan: _ExportPlan, final: Path, work: Path, record: dict[str, Any]) -> None:
    """Publish the artifact: external data first, so the .onnx never points at a missing file."""
    output = plan.output
    if plan.external:
        shutil.copymode(final, work / plan.data_name)  # onnx writes it 0600; give it the .onnx's mode
        os.replace(work / plan.data_name, output.parent / plan.data_name)
    os.replace(final, output)
    write_sidecar(output, record)


def _log_parity(cases: list[ParityCase], tolerance: float) -> None:
    """One log line per parity case, after the artifact is in place."""
    for case in cases:
        logger.info(
            "parity %s: B=%d %dx%d max|ort - torch| = %.3g (max|torch| %.3g, tolerance %g)",
            "ok" if case.passed else "FAILED", case.batch, case.height, case.width,
            case.max_abs_error, case.max_abs_reference, tolerance,
        )


def export_onnx(
    checkpoint: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    config: OnnxExportConfig | None = None,
    *,
    arch: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> Path:
    """Export a UNet checkpoint to an ONNX denoiser graph `(x_t, t) -> eps`, parity-checked.

    Args:
        checkpoint: UNet weights; None: the bundled prior, or random weights with
            `random_weights` (benchmarks only).
        output: the .onnx path; `<output>.json` (sidecar) and, for external data,
            `<output>.data` are written beside it.
        config: opset, precision, dynamic axes, traced shape.
        arch: UNet preset of `checkpoint` / of the random weights (default ffhq_10m).
        seed: seeds the random weights.

    Returns:
        The .onnx path.

    Raises:
        DiffPIRError: bad arguments or checkpoint, or a parity check that failed
            (then nothing is written).
    """
    onnx = _onnx()
    config = config or OnnxExportConfig()
    plan = _plan_export(checkpoint, output, config, arch, random_weights, seed)
    work = make_work_dir(plan.output)
    try:
        final = _trace_and_save(onnx, plan, work)
        report = _check_graph(onnx, final, plan)
        # Parity: ONNX Runtime (CPU) against the fp32 torch UNet, at two shapes.
        tolerance = PARITY_TOLERANCE[config.precision]
        cases = _measure_parity(final, plan.reference, _parity_cases(config, plan.height, plan.width, plan.reference.size_multiple), tolerance)
        record = _export_record(plan, final, work, report, cases, tolerance)
        _require_parity(cases, plan.output, tolerance)
        _move_into_place(plan, final, work, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _log_parity(cases, tolerance)
    return plan.output


def iter_parity_lines(record: dict[str, Any]) -> Iterator[str]:
    """Human-readable parity lines of a sidecar record (what the CLI prints)."""
    parity = record["parity"]
    yield f"parity vs {parity['reference']} ({parity['criterion']}, tolerance {parity['tolerance']:g}):"
    for case in parity["cases"]:
        yield (
            f"  B={case['batch']} {case['width']}x{case['height']} t={case['timesteps']}: "
            f"max abs error {case['max_abs_error']:.3g} (max|torch| {case['max_abs_reference']:.3g}) "
            f"{'ok' if case['passed'] else 'FAILED'}"
        )
