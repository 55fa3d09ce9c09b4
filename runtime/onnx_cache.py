"""The ONNX graph of a torch model, exported once and kept in the user's cache folder.

The CPU fast path runs the UNet in ONNX Runtime; the graph is exported (fp32, dynamic
batch and size, parity-checked by the exporter) the first time a model is used and
reused afterwards, keyed by the weights' SHA-256 and the arch. The folder is
$DIFFPIR_RT_CACHE, else $XDG_CACHE_HOME/diffpir-rt, else ~/.cache/diffpir-rt.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from diffpir_rt.engine import ModelSource
from diffpir_rt.errors import DiffPIRError

logger = logging.getLogger(__name__)

CACHE_ENV = "DIFFPIR_RT_CACHE"


def cache_dir() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "diffpir-rt"


def cached_onnx(source: ModelSource, notify=None, refresh: bool = False) -> Path:
    """The cached fp32 dynamic-shape ONNX export of `source` (a bundled or checkpoint model).

    Args:
        notify: called with one line when an export is made (it takes seconds).
        refresh: export again even if the cache holds the graph (it proved unusable).

    Raises:
        DiffPIRError: the source is not a torch model, the cache folder is not writable,
            or the export's parity check failed.
    """
    from diffpir_rt.export import OnnxExportConfig, export_onnx

    if source.kind not in ("bundled", "checkpoint", "random"):
        raise DiffPIRError(f"model source {source.kind}: only a torch model is exported to ONNX")
    key = f"{source.arch_name}-{source.sha256()[:16]}-fp32-dynamic"
    path = cache_dir() / "onnx" / f"{key}.onnx"
    sidecar = path.with_name(path.name + ".json")
    if refresh:
        for stale in (path, sidecar):
            stale.unlink(missing_ok=True)
    if path.is_file() and sidecar.is_file():
        return path
    source.load_torch()  # a broken checkpoint says so before anything is exported
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffPIRError(f"ONNX cache {path.parent}: cannot create it ({e.strerror}); set {CACHE_ENV}") from None
    if notify is not None:
        notify(f"exporting the model to ONNX once for the fast CPU path (cached in {path.parent})")
    checkpoint = source.path if source.kind == "checkpoint" else None
    export_onnx(
        checkpoint, path, OnnxExportConfig(dynamic_batch=True, dynamic_size=True),
        arch=source.arch if source.kind != "bundled" else None,
        random_weights=source.kind == "random", seed=source.seed,
    )  # fmt: skip
    return path
