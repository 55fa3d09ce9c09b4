"""The denoiser's I/O contract, declared once, for every exporter, builder and runtime.

The exporter names and marks dynamic axes from it, the TensorRT builder plans its
optimization profile from it, and the runtimes allocate buffers and check inputs
with it. Pure Python: no onnx, onnxruntime or tensorrt import.

I/O stays float32 at every precision: an fp16 export casts inside the graph, so the
sampler's fp32 state never changes dtype at the backend boundary (docs/runtime.md, "Precision").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Mapping

from diffpir_rt.errors import DiffPIRError

#: Symbolic axis names; an int axis is fixed.
BATCH, HEIGHT, WIDTH = "batch", "height", "width"
SIZE_AXES = (HEIGHT, WIDTH)
#: Keys of the ONNX metadata_props the exporter writes and the runtimes read.
METADATA_KEYS = ("diffpir_contract", "arch", "size_multiple", "in_channels", "precision", "checkpoint_sha256")
#: Bumped when names, dtypes or axes change; runtimes refuse other versions.
CONTRACT_VERSION = "1"
#: Bounds on what an artifact's metadata may claim (a forged file must not make the runtime pad
#: every image to a billion pixels): UNet size multiples are powers of two up to 2^8 in every
#: preset, channels a handful.
MAX_SIZE_MULTIPLE = 1024
MAX_IN_CHANNELS = 64
#: Largest fixed axes an artifact may declare: a static 8192 x 8192 (64 MP, the input limit)
#: graph, batch 1024. A forged graph fixed to 100000 x 100000 would make the runtime pad
#: every image to 120 GB.
MAX_FIXED_SIZE = {BATCH: 1024, HEIGHT: 8192, WIDTH: 8192}


class Precision(str, enum.Enum):
    """Compute precision of an exported artifact (the one precision enum of export/)."""

    FP32 = "fp32"
    FP16 = "fp16"
    #: ONNX only: static QDQ int8 convolutions, everything else fp32 (export/quantize.py).
    INT8 = "int8"

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise DiffPIRError(f"precision: expected one of {[p.value for p in cls]}, got {value!r}") from None


def parse_metadata(found: Mapping[str, Any], artifact: str) -> dict[str, Any]:
    """An exported artifact's DiffPIR metadata, checked: every key present, the contract version
    this build reads, size_multiple an integer in 1..MAX_SIZE_MULTIPLE, in_channels in
    1..MAX_IN_CHANNELS, a known precision. Returns the strings with those two as ints.

    Raises:
        DiffPIRError: naming the artifact and the first bad field (a forged or foreign file).
    """
    missing = [k for k in METADATA_KEYS if k not in found]
    if missing:
        raise DiffPIRError(
            f"{artifact}: no DiffPIR metadata ({', '.join(missing)} missing); export it with `diffpir export onnx`"
        )
    if str(found["diffpir_contract"]) != CONTRACT_VERSION:
        raise DiffPIRError(
            f"{artifact}: I/O contract version {str(found['diffpir_contract'])[:20]!r}; this build reads "
            f"{CONTRACT_VERSION!r}; re-export it"
        )
    out: dict[str, Any] = {k: str(v) for k, v in found.items() if k in METADATA_KEYS}
    for key, high in (("size_multiple", MAX_SIZE_MULTIPLE), ("in_channels", MAX_IN_CHANNELS)):
        text = out[key].strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= high:
            raise DiffPIRError(f"{artifact}: metadata {key} is {out[key][:20]!r}; expected an integer in 1..{high} (a forged file?)")
        out[key] = int(text)
    out["precision"] = Precision.parse(out["precision"]).value
    return out


@dataclass(frozen=True)
class TensorSpec:
    """One named I/O tensor: numpy dtype name and axes (a symbol is dynamic, an int fixed)."""

    name: str
    dtype: str
    axes: tuple[str | int, ...]

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """Concrete shape for the given symbol sizes."""
        return tuple(axis if isinstance(axis, int) else int(sizes[axis]) for axis in self.axes)

    def describe(self) -> str:
        return f"{self.name} {self.dtype} ({', '.join(str(a) for a in self.axes)})"


@dataclass(frozen=True)
class ShapeRange:
    """min <= opt <= max of one dynamic axis (a TensorRT profile dimension)."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        values = (self.min, self.opt, self.max)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise DiffPIRError(f"shape range: expected positive ints, got min/opt/max {values}")
        if not self.min <= self.opt <= self.max:
            raise DiffPIRError(f"shape range: expected min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def fixed(cls, value: int) -> "ShapeRange":
        return cls(value, value, value)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)

    def __str__(self) -> str:
        """As typed on the command line: N or MIN:OPT:MAX."""
        return str(self.min) if self.min == self.max else f"{self.min}:{self.opt}:{self.max}"


#: One TensorRT optimization profile: input name -> (min, opt, max) shapes.
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


@dataclass(frozen=True)
class IOContract:
    """Names, dtypes and axes of a denoiser's inputs and outputs, plus its size rule.

    Attributes:
        inputs, outputs: tensor specs, in call order; output names differ from
            input names (a name shared by an input and an output breaks IO binding).
        size_multiple: height and width must be multiples of this.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    size_multiple: int

    def __post_init__(self) -> None:
        names = [spec.name for spec in (*self.inputs, *self.outputs)]
        if len(set(names)) != len(names):
            raise DiffPIRError(f"I/O contract: tensor names must be unique, got {names}")

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def spec(self, name: str) -> TensorSpec:
        for spec in (*self.inputs, *self.outputs):
            if spec.name == name:
                return spec
        raise KeyError(name)

    def dynamic_axes(self, dynamic: set[str] | frozenset[str]) -> dict[str, dict[int, str]]:
        """torch.onnx.export's dynamic_axes for the given dynamic symbols (others are traced fixed)."""
        result: dict[str, dict[int, str]] = {}
        for spec in (*self.inputs, *self.outputs):
            axes = {i: axis for i, axis in enumerate(spec.axes) if isinstance(axis, str) and axis in dynamic}
            if axes:
                result[spec.name] = axes
        return result

    def shapes(self, sizes: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Every tensor's concrete shape for the given symbol sizes (runtime buffer allocation)."""
        return {spec.name: spec.shape(sizes) for spec in (*self.inputs, *self.outputs)}

    def sizes_of(self, x_shape: tuple[int, ...]) -> dict[str, int]:
        """Symbol sizes from the first input's shape, checked against fixed axes and size_multiple.

        Raises:
            DiffPIRError: wrong rank, a fixed axis differs, or H/W not a multiple.
        """
        first = self.inputs[0]
        expected = f"({', '.join(str(a) for a in first.axes)})"
        if len(x_shape) != len(first.axes):
            raise DiffPIRError(f"{first.name}: expected shape {expected}, got {tuple(x_shape)}")
        sizes: dict[str, int] = {}
        for axis, value in zip(first.axes, x_shape):
            if isinstance(axis, int):
                if value != axis:
                    raise DiffPIRError(f"{first.name}: expected shape {expected}, got {tuple(x_shape)}")
            else:
                sizes[axis] = int(value)
        bad = [sizes[a] for a in SIZE_AXES if a in sizes and sizes[a] % self.size_multiple]
        if bad or any(sizes.get(a, 1) < 1 for a in sizes):
            raise DiffPIRError(
                f"{first.name}: H and W must be positive multiples of {self.size_multiple}, "
                f"got {tuple(x_shape[-2:])}"
            )
        return sizes

    def profile(self, ranges: Mapping[str, ShapeRange]) -> Profile:
        """(min, opt, max) shape of every input for per-symbol ranges (TensorRT profile)."""
        missing = sorted({a for s in self.inputs for a in s.axes if isinstance(a, str)} - set(ranges))
        if missing:
            raise DiffPIRError(f"profile: no range for dynamic axes {missing}")
        result: Profile = {}
        for spec in self.inputs:
            low, opt, high = (spec.shape({k: r.as_tuple()[i] for k, r in ranges.items()}) for i in range(3))
            result[spec.name] = (low, opt, high)
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CONTRACT_VERSION,
            "inputs": [{"name": s.name, "dtype": s.dtype, "axes": list(s.axes)} for s in self.inputs],
            "outputs": [{"name": s.name, "dtype": s.dtype, "axes": list(s.axes)} for s in self.outputs],
            "size_multiple": self.size_multiple,
        }


def contract_from_dict(record: Mapping[str, Any]) -> IOContract:
    """Inverse of `IOContract.to_dict` (sidecars store the contract an artifact was built with)."""
    if record.get("version") != CONTRACT_VERSION:
        raise DiffPIRError(f"I/O contract version {record.get('version')!r}; this build reads {CONTRACT_VERSION!r}")

    def specs(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(i["name"], i["dtype"], tuple(i["axes"])) for i in items)

    return IOContract(specs(record["inputs"]), specs(record["outputs"]), int(record["size_multiple"]))


def unet_contract(in_channels: int = 3, size_multiple: int = 1) -> IOContract:
    """The Denoiser contract: (x_t float32 (B, C, H, W), t int64 (B,)) -> eps float32 (B, C, H, W).

    x_t is in model range [-1, 1]; t holds integer timesteps 0..999, one per batch
    element (the graph broadcasts nothing: backends expand a shared t first).
    """
    return IOContract(
        inputs=(
            TensorSpec("x_t", "float32", (BATCH, in_channels, HEIGHT, WIDTH)),
            TensorSpec("t", "int64", (BATCH,)),
        ),
        outputs=(TensorSpec("eps", "float32", (BATCH, in_channels, HEIGHT, WIDTH)),),
        size_multiple=size_multiple,
    )


def fix_axes(contract: IOContract, fixed: Mapping[str, int]) -> IOContract:
    """The contract with some symbols replaced by fixed sizes (a static-shape artifact)."""

    def fix(spec: TensorSpec) -> TensorSpec:
        axes = tuple(fixed.get(a, a) if isinstance(a, str) else a for a in spec.axes)
        return TensorSpec(spec.name, spec.dtype, axes)

    return IOContract(tuple(map(fix, contract.inputs)), tuple(map(fix, contract.outputs)), contract.size_multiple)


def contract_from_dims(
    contract: IOContract, dims: Mapping[str, tuple[str | int | None, ...]], artifact: str
) -> IOContract:
    """Specialise `contract` to an artifact's declared I/O dims (ONNX graph or TRT engine).

    `dims` maps each tensor name to its declared axes: an int is fixed, a str or
    None (or -1) dynamic. Names, ranks and fixed channel counts must match the
    contract; dynamic symbols that the artifact fixed become fixed here.

    Raises:
        DiffPIRError: a missing or extra tensor, or a rank/axis mismatch.
    """
    expected = {s.name for s in (*contract.inputs, *contract.outputs)}
    if set(dims) != expected:
        raise DiffPIRError(
            f"{artifact}: I/O tensors {sorted(dims)} do not match the DiffPIR denoiser contract "
            f"{[s.describe() for s in (*contract.inputs, *contract.outputs)]}; export it with `diffpir export onnx`"
        )
    fixed: dict[str, int] = {}
    for spec in (*contract.inputs, *contract.outputs):
        declared = dims[spec.name]
        if len(declared) != len(spec.axes):
            raise DiffPIRError(f"{artifact}: {spec.name} has rank {len(declared)}; expected {spec.describe()}")
        for axis, value in zip(spec.axes, declared):
            static = isinstance(value, int) and value >= 0
            if isinstance(axis, int) and (not static or value != axis):
                raise DiffPIRError(f"{artifact}: {spec.name} has axes {tuple(declared)}; expected {spec.describe()}")
            if isinstance(axis, str) and static:
                if fixed.setdefault(axis, int(value)) != value:  # type: ignore[arg-type]
                    raise DiffPIRError(f"{artifact}: axis {axis} is fixed to both {fixed[axis]} and {value}")
    for axis, value in fixed.items():
        high = MAX_FIXED_SIZE.get(axis)
        if high is not None and not 1 <= value <= high:
            raise DiffPIRError(f"{artifact}: its {axis} axis is fixed to {value}; expected 1..{high} (a forged file?)")
    return fix_axes(contract, fixed)
