"""Stage 1b: the fp32 ONNX denoiser -> an int8 one (ONNX Runtime static quantisation).

`quantize_onnx(fp32_onnx, output)` rewrites the graph in QDQ form: weights int8 with one
scale per output channel, activations uint8 with one scale per tensor, measured on
calibration inputs. Only convolutions run in int8 (`Int8Config.ops`): GroupNorm, SiLU,
the attention softmax and the residual adds stay fp32, so each int8 convolution pays a
quantise of its input and a dequantise of its output. On the bundled prior, quantising the
attention and time-embedding matmuls as well was slower (ONNX Runtime then quantises the
softmax too) and no more accurate.

Calibration must cover the whole timestep range: a diffusion UNet sees almost pure noise at
t = 999 and an almost clean image at t = 0, and its activations differ accordingly. Each
calibration input is x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (the forward
process, which is also what DiffPIR's re-noising step feeds the UNet) at timesteps spread
evenly over [0, T-1], for x0 from the caller's images or, by default, images the fp32 graph
draws itself (DDIM from the prior), so an export needs nothing but the model.

Like every export, the result proves its parity: eps of the int8 graph against the fp32
graph on held-out inputs (other images' noise, every timestep decile), recorded in the
sidecar; an error above `INT8_PARITY_TOLERANCE` writes nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from diffpir_rt.engine import NUM_TRAIN_TIMESTEPS, linear_schedule, read_image, to_model
from diffpir_rt.engine.artifacts import read_sidecar, sha256_files, tool_versions, write_sidecar
from diffpir_rt.engine.backends.contract import Precision
from diffpir_rt.errors import DiffPIRError

from .options import CALIBRATION_METHODS

logger = logging.getLogger(__name__)

#: Parity criterion of an int8 graph: relative RMS error of eps against the fp32 graph,
#: ||eps_int8 - eps_fp32|| / ||eps_fp32|| over all held-out inputs. Measured (onnxruntime 1.32,
#: x86 VNNI/AMX): 0.038 on the bundled prior (0.094 with the input convolution quantised too),
#: 0.053-0.064 on seeded random tiny UNets; 0.1 refuses a broken quantisation (a saturating
#: kernel, a calibration that missed a timestep range) without refusing a good one.
INT8_PARITY_TOLERANCE = 0.1
INT8_PARITY_CRITERION = "||eps_int8 - eps_fp32||_2 / ||eps_fp32||_2 <= tolerance, over all held-out inputs"
#: Held-out timesteps of the parity check: every decile of the schedule and both ends.
PARITY_TIMESTEPS = (999, 900, 750, 500, 250, 100, 20, 0)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class Int8Config:
    """How to quantise (the fp32 graph and the calibration images are arguments, not config).

    Args:
        timesteps: calibration timesteps, evenly spaced over [0, T-1] (both ends included).
        samples: x0 images per timestep (drawn by the model when no images are given).
        size: side of the calibration inputs (default: the arch's training size, else
            4 times the graph's size multiple).
        method: "minmax" (default: the widest range seen; fast, no outlier clipping),
            "percentile" (99.999th) or "entropy" (KL-optimal clipping).
        ops: ONNX op types run in int8.
        draw_steps: DDIM steps used to draw x0 when no images are given.
        seed: seeds the drawn images, the noise and the held-out parity inputs.
    """

    timesteps: int = 16
    samples: int = 4
    size: int | None = None
    method: str = "minmax"
    ops: tuple[str, ...] = ("Conv",)
    draw_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("timesteps", 2), ("samples", 1), ("draw_steps", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise DiffPIRError(f"{name}: expected an integer >= {low}, got {value!r}")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise DiffPIRError(f"size: expected a positive int, got {self.size!r}")
        if self.method not in CALIBRATION_METHODS:
            raise DiffPIRError(f"calibration method {self.method!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
        object.__setattr__(self, "ops", tuple(self.ops))
        if not self.ops or not all(isinstance(op, str) and op for op in self.ops):
            raise DiffPIRError(f"ops: expected ONNX op type names, got {self.ops!r}")

    def calibration_timesteps(self) -> list[int]:
        """Evenly spaced over [0, T-1], both ends included, high noise first."""
        grid = np.linspace(NUM_TRAIN_TIMESTEPS - 1, 0, self.timesteps)
        return sorted({int(round(t)) for t in grid}, reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {"timesteps": self.timesteps, "samples": self.samples, "size": self.size, "method": self.method,
                "ops": list(self.ops), "draw_steps": self.draw_steps, "seed": self.seed}  # fmt: skip


@dataclass
class Calibration:
    """The calibration inputs: (x_t, t) pairs, and where their x0 came from."""

    inputs: list[tuple[np.ndarray, np.ndarray]]
    x0_source: str
    timesteps: list[int] = field(default_factory=list)

    def reader(self) -> Any:
        from onnxruntime.quantization import CalibrationDataReader

        inputs = self.inputs

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._items: Iterator[dict[str, np.ndarray]] = iter({"x_t": x, "t": t} for x, t in inputs)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._items, None)

        return Reader()


def _quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise DiffPIRError("int8 export needs onnxruntime's quantization tools: pip install 'diffpir-rt[onnx]'") from None
    return quantization


def calibration_images(paths: Sequence[str | os.PathLike[str]], size: int, count: int) -> torch.Tensor:
    """Up to `count` centre crops (side `size`, smaller images upscaled) of image files or of the
    images in folders, in sorted order: (N, 3, size, size) in [0, 1].

    Raises:
        DiffPIRError: a path that is neither an image nor a folder of images, or no image at all.
    """
    files: list[Path] = []
    for given in paths:
        given = Path(given)
        if given.is_dir():
            files += sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif given.is_file():
            files.append(given)
        else:
            raise DiffPIRError(f"--calibration {given}: no such file or folder")
    if not files:
        raise DiffPIRError(f"--calibration {', '.join(map(str, paths))}: expected images ({', '.join(IMAGE_SUFFIXES)})")
    crops = []
    for path in files[:count]:
        image = read_image(path)
        side = min(image.shape[-2:])
        if side < size:
            image = torch.nn.functional.interpolate(image[None], scale_factor=size / side, mode="bicubic", align_corners=False)[0]
        top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
        crops.append(image[:, top : top + size, left : left + size].clamp(0, 1))
    return torch.stack(crops)


def drawn_images(denoiser: Any, size: int, count: int, steps: int, seed: int) -> torch.Tensor:
    """`count` images the model draws itself (DDIM, `steps` steps): (N, 3, size, size) in [0, 1]."""
    from diffpir_rt.engine import DEFAULT_SAMPLER, config_class, generate

    config = config_class(DEFAULT_SAMPLER)(steps=steps)
    return generate(denoiser, (count, denoiser.in_channels, size, size), config, seed=seed)


def _training_size(arch: str, size_multiple: int) -> int:
    """The arch's training image side (its activations' home ground), else 4 size multiples."""
    from diffpir_rt.engine import resolve_arch

    try:
        return resolve_arch(arch)[1].image_size
    except DiffPIRError:
        return 4 * size_multiple


def noised_inputs(x0: torch.Tensor, timesteps: Sequence[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x_t, t) for every image of x0 ([0, 1]) at every timestep: x_t = sqrt(alpha_bar_t) x0 +
    sqrt(1 - alpha_bar_t) eps in model units, one image per input (batch 1)."""
    alpha_bar = linear_schedule().alpha_bar
    generator = torch.Generator().manual_seed(seed)
    model_x0 = to_model(x0.double())
    out = []
    for t in timesteps:
        for image in model_x0:
            eps = torch.randn(image.shape, generator=generator, dtype=torch.float64)
            x_t = np.sqrt(alpha_bar[t]) * image + np.sqrt(1.0 - alpha_bar[t]) * eps
            out.append((x_t[None].float().numpy(), np.array([t], dtype=np.int64)))
    return out


def make_calibration(
    fp32_onnx: Path, config: Int8Config, images: Sequence[str | os.PathLike[str]] = ()
) -> tuple[Calibration, Calibration, Any]:
    """(calibration inputs, held-out parity inputs, the fp32 ORT denoiser) for a graph."""
    from diffpir_rt.engine.backends.onnxruntime_backend import OnnxRuntimeDenoiser

    fp32 = OnnxRuntimeDenoiser(fp32_onnx, device="cpu")
    size = config.size or _training_size(fp32.metadata["arch"], fp32.size_multiple)
    if size % fp32.size_multiple:
        raise DiffPIRError(f"calibration size {size}: expected a multiple of {fp32.size_multiple} (the UNet's size multiple)")
    timesteps = config.calibration_timesteps()
    if images:
        x0 = calibration_images(images, size, config.samples)
        source = f"{len(x0)} image(s) from {', '.join(str(Path(p)) for p in images)}"
    else:
        x0 = drawn_images(fp32, size, config.samples, config.draw_steps, config.seed)
        source = f"{config.samples} images drawn by the fp32 graph (DDIM, {config.draw_steps} steps, seed {config.seed})"
    calibration = Calibration(noised_inputs(x0, timesteps, config.seed), source, timesteps)
    # Held-out: the same images under fresh noise, at timesteps the calibration grid does not hold.
    held_out = Calibration(noised_inputs(x0[:2], PARITY_TIMESTEPS, config.seed + 1), source, list(PARITY_TIMESTEPS))
    return calibration, held_out, fp32


def measure_int8_parity(int8_onnx: Path, fp32: Any, held_out: Calibration) -> dict[str, Any]:
    """eps of the int8 graph against the fp32 graph's on the held-out inputs."""
    from diffpir_rt.engine.backends.onnxruntime_backend import OnnxRuntimeDenoiser

    int8 = OnnxRuntimeDenoiser(int8_onnx, device="cpu")
    squared_error = squared_reference = 0.0
    per_t: dict[int, list[float]] = {}
    max_abs = 0.0
    for x, t in held_out.inputs:
        x_t, steps = torch.from_numpy(x), torch.from_numpy(t)
        expected, got = fp32(x_t, steps).double(), int8(x_t, steps).double()
        error = float((got - expected).pow(2).sum())
        reference = float(expected.pow(2).sum())
        squared_error, squared_reference = squared_error + error, squared_reference + reference
        per_t.setdefault(int(t[0]), []).append(np.sqrt(error / max(reference, 1e-30)))
        max_abs = max(max_abs, float((got - expected).abs().max()))
    relative = float(np.sqrt(squared_error / max(squared_reference, 1e-30)))
    return {
        "reference": "the fp32 graph on onnxruntime CPUExecutionProvider",
        "criterion": INT8_PARITY_CRITERION,
        "tolerance": INT8_PARITY_TOLERANCE,
        "relative_rms_error": relative,
        "relative_rms_error_per_timestep": {str(t): float(np.mean(v)) for t, v in sorted(per_t.items(), reverse=True)},
        "max_abs_error": max_abs,
        "inputs": len(held_out.inputs),
        "passed": bool(np.isfinite(relative) and relative <= INT8_PARITY_TOLERANCE),
    }


def _check_fp32_source(fp32_onnx: Path, precision: str) -> None:
    """int8 is quantised from an inline fp32 export only: refuse anything else before any work."""
    if precision != Precision.FP32.value:
        raise DiffPIRError(f"onnx {fp32_onnx}: is a {precision} graph; int8 is quantised from an fp32 export")
    if (fp32_onnx.parent / (fp32_onnx.name + ".data")).exists():
        raise DiffPIRError(f"onnx {fp32_onnx}: weights in external data; int8 quantisation takes inline graphs (< 2 GB)")


def _quantize_static(quantization: Any, fp32_onnx: Path, quantized: Path, config: Int8Config, calibration: Calibration) -> None:
    """Pre-process the fp32 graph and write its static QDQ quantisation to `quantized` (same folder)."""
    # Shape inference and ONNX Runtime's basic fusions first, as the quantiser expects. Its
    # symbolic shape inference cannot follow the timestep embedding's dynamic Reshape; ONNX's does.
    prepared = quantized.parent / "prepared.onnx"
    quantization.shape_inference.quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
    # Static QDQ quantisation: int8 weights per output channel (symmetric), uint8
    # activations per tensor (asymmetric): the u8 x s8 products x86 VNNI/AMX kernels take.
    method = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}[config.method]
    quantization.quantize_static(
        str(prepared), str(quantized), calibration.reader(),
        quant_format=quantization.QuantFormat.QDQ, per_channel=True, reduce_range=False,
        activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
        op_types_to_quantize=list(config.ops), calibrate_method=getattr(quantization.CalibrationMethod, method),
        nodes_to_exclude=_end_nodes(prepared),
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )  # fmt: skip


def _stamp_int8_metadata(onnx: Any, quantized: Path, fp32_onnx: Path, ops: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Give the int8 graph the fp32 graph's DiffPIR metadata with precision int8, as every runtime reads it.

    Returns the fp32 metadata and the op types that really run int8.
    """
    model = onnx.load(str(quantized))
    found = {p.key: p.value for p in onnx.load(str(fp32_onnx), load_external_data=False).metadata_props}
    del model.metadata_props[:]
    for key, value in {**found, "precision": Precision.INT8.value}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(quantized))
    quantized_ops = sorted({n.op_type for n in model.graph.node if n.op_type in ops and _quantized_input(model, n)})
    return found, quantized_ops


def _require_int8_parity(parity: dict[str, Any], output: Path) -> None:
    """Refuse to write an int8 graph outside its tolerance of the fp32 one."""
    if not parity["passed"]:
        raise DiffPIRError(
            f"export {output}: the int8 graph is {parity['relative_rms_error']:.3g} (relative RMS of eps) from the "
            f"fp32 graph, above the tolerance {INT8_PARITY_TOLERANCE:g}; nothing written"
        )


def _int8_record(
    output: Path,
    quantized: Path,
    fp32_onnx: Path,
    found: dict[str, str],
    quantized_ops: list[str],
    config: Int8Config,
    calibration: Calibration,
    parity: dict[str, Any],
) -> dict[str, Any]:
    """The int8 sidecar: provenance (with the fp32 graph's own sidecar), quantisation settings and parity."""
    try:
        fp32_record = read_sidecar(fp32_onnx, "onnx")
    except DiffPIRError:
        fp32_record = None
    return {
        "artifact": output.name,
        "external_data": None,
        "onnx_sha256": sha256_files([quantized]),
        "quantized_from": {"onnx": fp32_onnx.name, "onnx_sha256": sha256_files([fp32_onnx]),
                           "sidecar": fp32_record},  # fmt: skip
        "quantization": {
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "weights": "int8, symmetric, per output channel",
            "activations": "uint8, asymmetric, per tensor",
            "ops": quantized_ops,
            "config": config.to_dict(),
            "calibration": {"x0": calibration.x0_source, "timesteps": calibration.timesteps,
                            "inputs": len(calibration.inputs), "size": int(calibration.inputs[0][0].shape[-1])},  # fmt: skip
        },
        "arch": found.get("arch"),
        "metadata": {**found, "precision": Precision.INT8.value},
        "parity": parity,
        "tools": tool_versions("torch", "onnx", "onnxruntime"),
    }


def quantize_onnx(
    fp32_onnx: str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: Int8Config | None = None,
    images: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Quantise an fp32 ONNX denoiser (from `export_onnx`) to int8, parity-checked.

    Args:
        fp32_onnx: the fp32 graph (inline weights).
        output: the .onnx to write; `<output>.json` (sidecar) beside it.
        config: calibration and quantisation settings.
        images: calibration images (files or folders); none: the model draws its own.

    Returns:
        The .onnx path.

    Raises:
        DiffPIRError: not an fp32 DiffPIR graph, bad calibration images, or an int8 graph
            outside its tolerance of the fp32 one (then nothing is written).
    """
    import onnx

    from .onnx_export import make_work_dir

    quantization = _quantization()
    config = config or Int8Config()
    fp32_onnx, output = Path(fp32_onnx), Path(output)
    if output.suffix.lower() != ".onnx":
        raise DiffPIRError(f"--output {output}: expected a .onnx path")
    calibration, held_out, fp32 = make_calibration(fp32_onnx, config, images)
    _check_fp32_source(fp32_onnx, fp32.precision)

    work = make_work_dir(output)
    try:
        quantized = work / output.name
        _quantize_static(quantization, fp32_onnx, quantized, config, calibration)
        found, quantized_ops = _stamp_int8_metadata(onnx, quantized, fp32_onnx, config.ops)
        # Parity against the fp32 graph on held-out inputs.
        parity = measure_int8_parity(quantized, fp32, held_out)
        _require_int8_parity(parity, output)
        record = _int8_record(output, quantized, fp32_onnx, found, quantized_ops, config, calibration, parity)
        os.replace(quantized, output)
        write_sidecar(output, record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("int8 %s: relative RMS error of eps vs fp32 %.3g (tolerance %g)", output, parity["relative_rms_error"],
                INT8_PARITY_TOLERANCE)  # fmt: skip
    return output


def export_int8(
    checkpoint: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    config: Any = None,
    int8: Int8Config | None = None,
    images: Sequence[str | os.PathLike[str]] = (),
    *,
    arch: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> Path:
    """Export a UNet checkpoint to an int8 ONNX denoiser: `export_onnx` in fp32 (parity-checked
    against torch) into a temporary folder, then `quantize_onnx` (parity-checked against it).

    Args:
        config: the fp32 export's OnnxExportConfig (its precision is ignored; default: dynamic
            batch and size).
        int8, images: as in `quantize_onnx`.
        checkpoint, arch, random_weights, seed: as in `export_onnx`.
    """
    from dataclasses import replace

    from .onnx_export import OnnxExportConfig, export_onnx

    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise DiffPIRError(f"--output {output}: expected a .onnx path")
    config = replace(config or OnnxExportConfig(dynamic_batch=True, dynamic_size=True), precision=Precision.FP32)
    if config.external_data:
        raise DiffPIRError("--external-data always: int8 quantisation takes inline graphs (< 2 GB)")
    work = output.parent / f".{output.name[:64]}.{uuid.uuid4().hex[:12]}.fp32.tmp"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
    except OSError as e:
        raise DiffPIRError(f"--output {output}: cannot write in {output.parent} ({e.strerror or e})") from None
    try:
        fp32 = export_onnx(checkpoint, work / "fp32.onnx", replace(config, external_data=False), arch=arch,
                           random_weights=random_weights, seed=seed)  # fmt: skip
        return quantize_onnx(fp32, output, int8, images)
    finally:
        shutil.rmtree(work, ignore_errors=True)


#: Ops that only move or select data: the walk from x_t / to eps passes through them.
_PASS_THROUGH = ("Slice", "Split", "Reshape", "Identity", "Cast", "Pad", "Transpose", "Squeeze", "Unsqueeze")


def _end_nodes(path: Path) -> list[str]:
    """The convolutions that read x_t or write eps: kept fp32.

    One uint8 scale for x_t must span the pure noise of t = 999 (about +-4.5), which makes its
    step (~0.035) as large as the whole noise of small t: quantised, the input convolution
    cannot see the noise it has to predict there. The output convolution gives eps itself.
    Both are a few channels wide, so they cost little in fp32.
    """
    import onnx

    graph = onnx.load(str(path)).graph
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        if node.input:
            consumers.setdefault(node.input[0], []).append(node)  # data inputs only, not shapes
    producers = {out: node for node in graph.node for out in node.output}
    found: list[str] = []
    frontier = [v.name for v in graph.input]
    while frontier:  # forward from x_t
        for node in consumers.get(frontier.pop(), []):
            if node.op_type == "Conv":
                found.append(node.name)
            elif node.op_type in _PASS_THROUGH:
                frontier.extend(node.output)
    frontier = [v.name for v in graph.output]
    while frontier:  # backward from eps
        node = producers.get(frontier.pop())
        if node is None:
            continue
        if node.op_type == "Conv":
            found.append(node.name)
        elif node.op_type in _PASS_THROUGH:
            frontier.append(node.input[0])
    return sorted(set(found))


def _quantized_input(model: Any, node: Any) -> bool:
    """Whether a node reads a DequantizeLinear output (the QDQ form of an int8 input)."""
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    return any(producers.get(name) == "DequantizeLinear" for name in node.input)


def iter_int8_lines(record: dict[str, Any]) -> Iterator[str]:
    """Human-readable lines of an int8 sidecar (what the CLI prints)."""
    q, parity = record["quantization"], record["parity"]
    yield f"int8 ({q['format']}, weights {q['weights']}; {', '.join(q['ops'])} in int8), calibrated on {q['calibration']['x0']}"
    yield f"  at {len(q['calibration']['timesteps'])} timesteps from {q['calibration']['timesteps'][0]} to {q['calibration']['timesteps'][-1]}"
    yield (f"parity vs {parity['reference']}: relative RMS error of eps {parity['relative_rms_error']:.3g} "
           f"(tolerance {parity['tolerance']:g}) over {parity['inputs']} held-out inputs "
           f"{'ok' if parity['passed'] else 'FAILED'}")  # fmt: skip
