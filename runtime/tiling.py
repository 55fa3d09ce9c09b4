"""The Restorer's tiling policy: when the UNet runs on tiles, of what size, and what the run record says.

`--tile auto` (the default) tiles images above AUTO_MIN_PIXELS with a tile near the
model's training resolution; `--tile off` never tiles; `--tile N` tiles every image
larger than N x N. The tiled denoiser itself is engine.TiledDenoiser; the loop, the
data step and every method are unchanged (docs/algorithm.md §12).
"""

from __future__ import annotations

from typing import Any, Optional, Union

from diffpir_rt.engine import TiledDenoiser
from diffpir_rt.errors import DiffPIRError

#: `--tile auto`: tiles only images of more pixels than this. Measured on CPU with the bundled
#: prior (ONNX Runtime, one thread; docs/algorithm.md §12): the whole-image UNet's time per
#: pixel grows with the image (attention at 1/8 and 1/16 resolution; 1024² costs ~2x per pixel
#: what 512² does), while tiles cost the same per pixel at any size, plus their overlap
#: (~1.3-1.4x at tile 128, overlap 16). The two cross between 512² and 768²; below that the whole
#: image is as fast, so 256² (the official protocol's size) and 512² run untiled by default.
AUTO_MIN_PIXELS = 640 * 640
#: The smallest automatic tile (a model trained at 64 px is tiled at 128: per pixel a 64-px tile
#: is no faster on CPU, and needs more overlap).
AUTO_MIN_TILE = 128
#: Tiles per UNet call when the model runs on a CPU (unless `batch` is given). Measured with the
#: bundled prior (ONNX Runtime, one thread; benchmarks/results/tile_cost/): a 128² tile costs
#: ~20 % less per pixel alone than in a batch of 8, whose activations outgrow the caches. On a
#: GPU the engine's DEFAULT_TILE_BATCH keeps the device busy.
CPU_TILE_BATCH = 1


def parse_tile(value: Union[None, str, int]) -> Union[None, str, int]:
    """None/'off' (no tiling), 'auto', or a positive tile side."""
    if value is None or value == "off":
        return None
    if value == "auto":
        return "auto"
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise DiffPIRError(f"--tile {value!r}: expected auto, off or a tile side in pixels") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DiffPIRError(f"--tile {value!r}: expected auto, off or a positive tile side in pixels")
    return value


class TilingPolicy:
    """What `Restorer(tile=, overlap=)` asked for, the tiled models it made, and the last run's plan.

    Args:
        tile: "auto", None/"off", or a tile side (a multiple of the model's size multiple).
        overlap: pixels neighbouring tiles share at least; default tile // 8 (at least 16).
        batch: tiles per UNet call (default: CPU_TILE_BATCH for a model on a CPU, else the
            engine's DEFAULT_TILE_BATCH).
        training_size: the model's training resolution (for "auto").
    """

    def __init__(self, tile: Union[None, str, int], overlap: Optional[int], training_size: int, batch: Optional[int] = None) -> None:
        self.mode = parse_tile(tile)
        if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0):
            raise DiffPIRError(f"--overlap {overlap!r}: expected a non-negative integer")
        if self.mode is None and overlap is not None:
            raise DiffPIRError("--overlap: applies with tiling; drop it or set --tile auto / a size")
        self.tile = max(int(training_size), AUTO_MIN_TILE) if self.mode == "auto" else self.mode
        self.overlap = overlap if overlap is not None else (None if self.tile is None else min(max(16, self.tile // 8), self.tile // 2))
        self.batch = batch
        self._wrapped: dict[int, Any] = {}
        self.last: dict[str, Any] = {"mode": "off" if self.mode is None else self.mode, "used": False}

    def wrap(self, model: Any) -> Any:
        """`model` as the loop should call it: tiled (a TiledDenoiser, made once per model) or as it is."""
        if self.mode is None:
            return model
        found = self._wrapped.get(id(model))
        if found is None or found.inner is not model:
            tile = self.tile
            if self.mode == "auto":  # within what a TensorRT plan's profile takes
                from diffpir_rt.engine.tiling import backend_limits

                high = backend_limits(model)[3]
                if high is not None:
                    multiple = int(getattr(model, "size_multiple", 1))
                    tile = max(multiple, min(tile, *high) // multiple * multiple)
            on_cpu = getattr(getattr(model, "device", None), "type", None) == "cpu"
            batch = self.batch if self.batch is not None else (CPU_TILE_BATCH if on_cpu else None)
            found = TiledDenoiser(model, tile, min(self.overlap, tile // 2) if self.mode == "auto" else self.overlap,
                                  batch, min_pixels=AUTO_MIN_PIXELS if self.mode == "auto" else None)  # fmt: skip
            self._wrapped[id(model)] = found
        return found

    def note(self, model: Any, image_shape: Any) -> dict[str, Any]:
        """Record whether (and how) an image of `image_shape` (B, C, H, W) runs tiled with `model`."""
        record: dict[str, Any] = {"mode": "off" if self.mode is None else self.mode, "used": False}
        if isinstance(model, TiledDenoiser):
            multiple = model.size_multiple
            height, width = (-(-int(s) // multiple) * multiple for s in tuple(image_shape)[-2:])  # as pad_model pads
            plan = model.plan(height, width)
            record.update(model.settings())
            record["used"] = plan is not None
            if plan is not None:
                record.update(plan.to_dict())
        self.last = record
        return record

    def describe(self) -> dict[str, Any]:
        """The last restoration's tiling (the run record's "tiling")."""
        return dict(self.last)


__all__ = ["AUTO_MIN_PIXELS", "AUTO_MIN_TILE", "CPU_TILE_BATCH", "TilingPolicy", "parse_tile"]
