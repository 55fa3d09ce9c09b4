"""Where a model's weights come from, resolved once for every entry point.

A model source is the bundled prior, a guided-diffusion checkpoint with its arch, an
exported ONNX graph, a TensorRT plan, or (for benchmarks) seeded random weights. The
source also decides which task defaults apply: a prior's tuned defaults follow its
weights wherever they are loaded from (the shipped file, a copy of it passed as a
checkpoint, or a graph exported from it), matched by the weights' SHA-256.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from diffpir_rt.errors import DiffPIRError

from .artifacts import sha256_file
from .backends import BUILTIN_KINDS, BACKENDS, backend_for_kind, model_kinds
from .prior import bundled_card, bundled_weights_path, load_bundled_prior
from .tasks import get_task
from .archs import ARCH_PRESETS, DEFAULT_CHECKPOINT_ARCH, resolve_arch

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ModelSource:
    """One model's weights and how to read them.

    Attributes:
        kind: "bundled", "random", or the model-file kind of a backend (engine.backends:
            "checkpoint", "onnx", "tensorrt", ...).
        path: the file (checkpoint, .onnx, TensorRT plan); None for bundled/random.
        arch: the UNet preset of a checkpoint or of random weights.
        seed: seeds random weights.
    """

    kind: str = "bundled"
    path: Optional[Path] = None
    arch: Optional[str] = None
    seed: int = 0

    def __post_init__(self) -> None:
        kinds = model_kinds()
        if self.kind not in kinds:
            raise DiffPIRError(f"model source: expected one of {kinds}, got {self.kind!r}")
        if self.kind not in BUILTIN_KINDS and self.path is None:
            raise DiffPIRError(f"model source {self.kind}: needs a path")
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        if self.arch is not None:
            if not self.takes_arch:
                what = "the bundled prior knows its own arch" if self.kind == "bundled" else f"a {self.kind} file records its own"
                raise DiffPIRError(f"--arch applies to torch weights (--checkpoint); {what}")
            resolve_arch(self.arch)

    @property
    def takes_arch(self) -> bool:
        """Whether the weights need an architecture to be read (torch weights other than the bundled prior's)."""
        return self.kind == "random" or (self.kind != "bundled" and self.kind == backend_for_kind(self.kind).file_kind
                                         and "bundled" in backend_for_kind(self.kind).runs_kinds)  # fmt: skip

    @classmethod
    def from_files(cls, files: dict[str, Optional[Path]], arch: Optional[str] = None, random_weights: bool = False) -> "ModelSource":
        """The source named by a command line's model-file flags (generated from the backends'
        declarations: --checkpoint, --onnx, --engine, ...) and --random-weights.

        Args:
            files: a backend's model-file kind -> the path given for it, or None.
        """
        flags = {b.file_kind: b.file_flag for b in BACKENDS.values() if b.file_kind}
        given = [(kind, path) for kind, path in files.items() if path is not None]
        named = [flags.get(kind, kind) for kind, _ in given] + (["--random-weights"] if random_weights else [])
        if len(named) > 1:
            raise DiffPIRError(f"{' and '.join(named)}: name one model source")
        if given:
            kind, path = given[0]
            return cls(kind, path, arch)
        return cls("random" if random_weights else "bundled", None, arch)

    # ------------------------------------------------------------------ identity

    @property
    def arch_name(self) -> str:
        """The UNet preset (for bundled: the card's; for ONNX/TensorRT: their sidecar's, if any)."""
        if self.kind == "bundled":
            card = bundled_card()
            if card is None:
                bundled_weights_path()  # raises the "no bundled prior" message
            return card["arch"]
        if self.takes_arch:
            return self.arch or DEFAULT_CHECKPOINT_ARCH
        return str(self._artifact_metadata().get("arch") or "unknown")

    def sha256(self) -> str:
        """The weights' SHA-256 (of the file; for ONNX/TensorRT, of the checkpoint they came from)."""
        if self.kind == "bundled":
            return bundled_card()["sha256"] if bundled_card() else sha256_file(bundled_weights_path())
        if self.kind == "random":
            return f"random-{self.arch_name}-seed{self.seed}"
        if self.takes_arch:  # torch weights: the file itself
            return _file_sha256(self.path)
        return str(self._artifact_metadata().get("checkpoint_sha256") or _file_sha256(self.path))

    def label(self) -> str:
        """A short name for run records: bundled:<file>, the path, or random:<arch>."""
        if self.kind == "bundled":
            card = bundled_card()
            return f"bundled:{card['weights']}" if card else "bundled"
        if self.kind == "random":
            return f"random:{self.arch_name}:seed{self.seed}"
        return f"{self.kind}:{self.path}"

    def _artifact_metadata(self) -> dict[str, Any]:
        """An exported artifact's recorded metadata (its `<file>.json` sidecar), or {}."""
        sidecar = self.path.with_name(self.path.name + ".json")
        if not sidecar.is_file():
            return {}
        try:
            if sidecar.stat().st_size > 1 << 20:  # a sidecar is a few KB; a huge one is not read
                return {}
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(record, dict):
            return {}
        metadata = record.get("onnx_metadata") or record.get("metadata") or {}
        return {k: v for k, v in metadata.items() if isinstance(v, (str, int, float))} if isinstance(metadata, dict) else {}

    # ------------------------------------------------------------------ defaults

    def card(self) -> Optional[dict[str, Any]]:
        """The model card whose tuned defaults apply: the bundled prior's, when these are its weights."""
        card = bundled_card()
        if card is None or self.kind == "random":
            return None
        if self.kind == "bundled":
            return card
        try:
            return card if self.sha256() == card["sha256"] else None
        except OSError:
            return None

    def tuned_defaults(self, method: str, task: str) -> dict[str, Any]:
        """This model's tuned values for `method` on `task` (its card's table, with their
        "source"), or {} when the model has none for them."""
        card = self.card()
        if not card or card.get("defaults_method") != method:
            return {}
        entry = (card.get("task_defaults") or {}).get(task)
        return dict(entry) if isinstance(entry, dict) else {}

    def default_sigma_n(self, task: str) -> float:
        """The noise level assumed when the user gives none: the card's for the task, else the task's."""
        card = self.card()
        entry = ((card or {}).get("task_defaults") or {}).get(task)
        if isinstance(entry, dict) and isinstance(entry.get("sigma_n"), (int, float)):
            return float(entry["sigma_n"])
        return get_task(task).default_sigma_n

    # ------------------------------------------------------------------ loading

    def load_torch(self, device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None):
        """The torch UNetDenoiser of a bundled, checkpoint or random source (float32 unless `dtype`)."""
        import torch  # here, not at the top: a source is declared and checked without torch

        from .denoiser import UNetDenoiser, load_unet
        from .unet import build_unet

        dtype = torch.float32 if dtype is None else dtype

        if self.kind == "bundled":
            return load_bundled_prior(device=device, dtype=dtype)
        if self.takes_arch and self.kind != "random":
            return load_unet(self.path, self.arch_name, device=device, dtype=dtype)
        if self.kind == "random":
            name, config = resolve_arch(self.arch_name)
            # A forked RNG: random weights are reproducible without touching the caller's.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                unet = build_unet(config)
            return UNetDenoiser(unet.to(device=device, dtype=dtype).eval().requires_grad_(False), arch=name).eval()
        raise DiffPIRError(f"model source {self.kind}: is not a torch model; use its backend")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label(), "arch": self.arch_name}


def _file_sha256(path: Path) -> str:
    """sha256_file, remembered per (path, size, mtime): a service asks for every request, and
    hashing a 2 GB checkpoint each time would cost seconds."""
    info = path.stat()
    return _cached_sha256(str(path.resolve()), info.st_size, info.st_mtime_ns)


@lru_cache(maxsize=64)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def arch_names() -> tuple[str, ...]:
    return tuple(sorted(ARCH_PRESETS))
