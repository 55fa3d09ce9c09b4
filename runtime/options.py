"""The runtime's typed options, declared once: what runs a restoration (`RuntimeOptions`) and
what a request asks beside its method's hyperparameters (`RequestOptions`).

Each field is a declared user parameter (diffpir_rt.params): the command lines' model and
runtime flags, `diffpir serve`'s replica settings, the service's form fields and the batch
job's options are generated from these fields, and the Python API takes these dataclasses
(never an argparse namespace).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from diffpir_rt.engine import BACKENDS, BOUNDARIES, ModelSource, arch_names, boundary_help
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import Param, check_fields, declared, param

#: UNet precisions a user may ask for ("auto": fp16 on CUDA; on a CPU bf16 where it is native, else fp32;
#: int8: the statically quantised ONNX graph on a CPU, opt-in).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


#: sigma_n when a user gives none for a photo (`diffpir restore`, the service, batch jobs, and
#: Restorer.restore without a config): estimated from the measurement, which restored better on
#: average than the model's fixed per-task default (docs/blind.md §1.4). Where no estimate can be
#: made (too few observed pixels) the fixed default applies, with a note. `diffpir eval` keeps the
#: official protocol's explicit values.
DEFAULT_SIGMA_N = "auto"


def backend_choices() -> tuple[str, ...]:
    return ("auto", *BACKENDS)


@dataclass(frozen=True)
class RuntimeOptions:
    """What runs a restoration: the model and how the Restorer runs it (see `Restorer`).

    Attributes:
        model: where the weights come from (the bundled prior by default).
        backend: what runs the UNet; "auto" = the fastest tested path for the device.
        device: cpu, cuda, cuda:N or auto.
        dtype: the UNet's precision; auto = fp16 on CUDA, fp32 on CPU.
        reference: the exact fp32 eager loop (slow, for checking).
        threads: CPU threads (None: torch's / the physical cores).
        tile: the UNet on overlapping tiles: auto, off, or a tile side.
        overlap: pixels neighbouring tiles share at least (None: tile/8, at least 16).
    """

    model: ModelSource = field(default_factory=ModelSource)
    backend: str = param("auto", help="what runs the UNet; auto = the fastest tested path for the device", kind=str)
    device: str = param("auto", help="cpu, cuda, cuda:N or auto", kind=str)
    dtype: str = param("auto", help="UNet precision; auto = fp16 on CUDA, bf16 on a CPU with native bf16, else fp32 "
                       "(int8: the quantised ONNX graph on a CPU; fp16 is refused on CPU)", kind=str, choices=PRECISIONS)  # fmt: skip
    reference: bool = param(False, help="run the exact fp32 eager reference loop (slow, for checking)", kind=bool)
    threads: Optional[int] = param(None, help="CPU threads (default: torch's / the physical cores)", kind=int, low=1,
                                   high=1024, optional=True)  # fmt: skip
    tile: Union[str, int, None] = param("auto", help="run the UNet on overlapping tiles: auto (images above ~640x640), "
                                        "off, or a tile side in pixels", kind=int, low=1, words=("auto", "off"))  # fmt: skip
    overlap: Optional[int] = param(None, help="pixels neighbouring tiles share at least (default: tile/8, at least 16)",
                                   kind=int, low=0, optional=True)  # fmt: skip

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelSource):
            raise DiffPIRError(f"model: expected a ModelSource, got {type(self.model).__name__}")
        check_fields(self)
        if self.backend not in backend_choices():
            raise DiffPIRError(f"--backend {self.backend!r}: expected one of {', '.join(backend_choices())}")

    @classmethod
    def params(cls) -> dict[str, Param]:
        return declared(cls)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (service settings, run records): the model as kind/path/arch/seed."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        m = self.model
        return {"model": {"kind": m.kind, "path": str(m.path) if m.path else None, "arch": m.arch, "seed": m.seed}, **values}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RuntimeOptions":
        data = dict(data)
        m = dict(data.pop("model", None) or {})
        model = ModelSource(m.get("kind", "bundled"), Path(m["path"]) if m.get("path") else None, m.get("arch"), int(m.get("seed", 0)))
        return cls(model=model, **{k: v for k, v in data.items() if k in declared(cls)})


def arch_param() -> Param:
    """--arch: the UNet preset of torch weights (a checkpoint, random weights)."""
    return Param("UNet architecture of --checkpoint (default for a checkpoint: ffhq_10m)", str, choices=arch_names())


@dataclass(frozen=True)
class RequestOptions:
    """What a restore request asks besides its task inputs and its method's hyperparameters.

    Attributes:
        seed: the sampler's seed.
        boundary: how the image's edges are modelled (see `Task.resolve_boundary`).
        bit_depth: output bit depth (None: the input's).
    """

    seed: int = param(0, help="random seed", kind=int, low=0, high=2**64 - 1)
    boundary: str = param("auto", help=boundary_help(), kind=str, choices=BOUNDARIES)
    bit_depth: Optional[int] = param(None, help="output bit depth (default: the input's)", kind=int, choices=(8, 16),
                                     optional=True)  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def params(cls) -> dict[str, Param]:
        return declared(cls)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
