"""The ONNX graph of a torch model, exported once and kept in the user's cache folder.

The CPU fast path runs the UNet in ONNX Runtime; the graph is exported (fp32, dynamic
batch and size, parity-checked by the exporter) the first time a model is used and
reused afterwards, keyed by the weights' SHA-256, the arch and the precision (int8:
quantised from the fp32 export, export/quantize.py). Beside each export ONNX Runtime's
optimised graph is kept for this machine (engine.backends.onnxruntime_backend), so a
run only loads it. The folder is $DIFFPIR_RT_CACHE, else $XDG_CACHE_HOME/diffpir-rt,
else ~/.cache/diffpir-rt.
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


#: Precisions the cache exports ("int8": ONNX Runtime's static quantisation of the fp32 export).
CACHED_PRECISIONS = ("fp32", "int8")


def cached_onnx(source: ModelSource, notify=None, refresh: bool = False, precision: str = "fp32",
                optimized: bool = True) -> Path:  # fmt: skip
    """The cached dynamic-shape ONNX export of `source` (a bundled or checkpoint model).

    Args:
        notify: called with one line when an export is made (it takes seconds).
        refresh: export again even if the cache holds the graph (it proved unusable).
        precision: "fp32", or "int8" (quantised from the cached fp32 export, calibrated on
            images the model draws itself; export/quantize.py).
        optimized: also keep ONNX Runtime's optimised graph of it for this machine (made
            again when missing, stale or damaged), which the onnxruntime backend then loads.

    Raises:
        DiffPIRError: the source is not a torch model, the cache folder is not writable,
            or the export's parity check failed.
    """
    if source.kind not in ("bundled", "checkpoint", "random"):
        raise DiffPIRError(f"model source {source.kind}: only a torch model is exported to ONNX")
    if precision not in CACHED_PRECISIONS:
        raise DiffPIRError(f"precision {precision!r}: the ONNX cache exports {', '.join(CACHED_PRECISIONS)}")
    key = f"{source.arch_name}-{source.sha256()[:16]}-{precision}-dynamic"
    path = cache_dir() / "onnx" / f"{key}.onnx"
    sidecar = path.with_name(path.name + ".json")
    if refresh:
        for stale in (path, sidecar):
            stale.unlink(missing_ok=True)
        _drop_optimized(path)
    if not (path.is_file() and sidecar.is_file()):
        _export(source, path, precision, notify)
    if optimized:
        _keep_optimized(path)
    return path


def _drop_optimized(path: Path) -> None:
    from diffpir_rt.engine.backends.onnxruntime_backend import drop_optimized_graph

    drop_optimized_graph(path)


def _keep_optimized(path: Path) -> None:
    """ONNX Runtime's optimised graph beside the export, made when missing or made for another
    export, onnxruntime or CPU. Not keeping it only costs start-up time, so a failure is a warning."""
    from diffpir_rt.engine.backends.onnxruntime_backend import keep_optimized_graph, optimized_graph_matches

    if optimized_graph_matches(path):
        return
    try:
        keep_optimized_graph(path)
    except DiffPIRError as e:
        logger.warning("%s; ONNX Runtime will optimise the graph on every run", e)


def _export(source: ModelSource, path: Path, precision: str, notify) -> None:
    """Export `source` to `path` (fp32), or quantise its cached fp32 export (int8)."""
    from diffpir_rt.export import OnnxExportConfig, export_onnx

    if precision == "int8":
        from diffpir_rt.export import quantize_onnx

        fp32 = cached_onnx(source, notify=notify, optimized=False)
        if notify is not None:
            notify(f"quantising the model to int8 once (calibration over the whole timestep range; cached in {path.parent})")
        quantize_onnx(fp32, path)
        return
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
