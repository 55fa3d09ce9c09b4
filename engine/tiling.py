"""Tiled denoising: an eps-model that runs another one on overlapping tiles of a large image.

`TiledDenoiser(inner, tile, overlap)` is itself an eps-model ``(x_t, t) -> eps``, so every
method, the reference sampler and the CUDA-graph runtime use it unchanged: the loop asks it
for eps once per step, exactly as it asks the plain denoiser, and the data step (one FFT or
one mask over the whole image) never sees tiles. For an image larger than the tile it

1. cuts x_t into tiles of the tile size whose starts are spread evenly so that neighbours
   overlap by at least `overlap` pixels, the first and last tile flush with the borders;
2. runs the inner denoiser on the tiles, `batch` tiles per call (all images of the batch
   and all tiles go through the backend as one stack, split into calls of at most `batch`);
3. blends the tiles' eps with separable windows: along each axis a tile's weight is one,
   falling as sin^2 over the part it shares with a neighbour, where the neighbour's weight
   rises as cos^2 = 1 - sin^2; the windows are divided by their sum, so the weights of
   every pixel sum to one whatever the tile layout (docs/algorithm.md §12).

An image no larger than the tile in either direction goes to the inner model as it is,
so the algorithm is unchanged below the tile size. A direction smaller than the tile
gets one tile of the image's extent there; only a backend whose artifact fixes H and W
(a static-shape ONNX graph or TensorRT plan) has such tiles padded up to its size.

Everything here is torch slicing, stacking and multiply-adds on shapes known from x_t's
shape alone: nothing reads tensor values on the host, so a CUDA graph records it, and
autograd differentiates through it (DPS) when the inner model is differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from diffpir_rt.errors import DiffPIRError

from .backends.base import batch_timesteps
from .padding import PAD_MODES, _pad_indices

__all__ = ["DEFAULT_TILE_BATCH", "TilePlan", "TiledDenoiser", "blend_windows", "tile_starts"]

#: Tiles per inner call unless told: bounds the activations the backend holds at once.
DEFAULT_TILE_BATCH = 8

TileSize = Union[int, tuple[int, int]]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Starts of the fewest tiles of size `tile` covering [0, length) with neighbours
    overlapping by >= `overlap`: the first at 0, the last at length - tile, the others
    spread evenly between (on multiples of `align` where that keeps the overlap).

    A length no larger than the tile is one tile at 0 (of the length's extent).
    """
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise DiffPIRError(f"overlap: expected 0 <= overlap < tile ({tile}), got {overlap}")
    stride = tile - overlap
    last = length - tile
    n = max(2, math.ceil((length - overlap) / stride))
    while True:
        starts = [round(i * last / (n - 1)) for i in range(n)]
        if align > 1:
            aligned = [min(last, round(s / align) * align) for s in starts[:-1]] + [last]
            if all(b - a <= stride for a, b in zip(aligned, aligned[1:])) and len(set(aligned)) == n:
                starts = aligned
        if all(b - a <= stride for a, b in zip(starts, starts[1:])):
            return starts
        n += 1  # rounding left a gap wider than the stride: one tile more


def _ramp(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """sin^2 rising over n pixels, strictly inside (0, 1); its reverse is 1 - it (cos^2)."""
    k = torch.arange(n, dtype=torch.float64, device=device)
    return torch.sin(0.5 * math.pi * (k + 0.5) / n).pow(2).to(dtype)


def blend_windows(length: int, extent: int, starts: list[int], dtype: torch.dtype = torch.float32,
                  device: Union[str, torch.device] = "cpu") -> Tensor:
    """(n, extent) one-axis windows of the tiles at `starts`, normalised so that at every
    position of [0, length) the windows of the tiles covering it sum to one."""
    device = torch.device(device)
    windows = torch.ones(len(starts), extent, dtype=torch.float64, device=device)
    for i, start in enumerate(starts):
        if i > 0:  # shared with the previous tile: rise
            shared = starts[i - 1] + extent - start
            if shared > 0:
                windows[i, :shared] *= _ramp(shared, torch.float64, device)
        if i + 1 < len(starts):  # shared with the next tile: fall
            shared = start + extent - starts[i + 1]
            if shared > 0:
                windows[i, extent - shared:] *= _ramp(shared, torch.float64, device).flip(0)
    total = torch.zeros(max(length, extent), dtype=torch.float64, device=device)
    for i, start in enumerate(starts):
        total[start:start + extent] += windows[i]
    for i, start in enumerate(starts):
        windows[i] /= total[start:start + extent]
    return windows.to(dtype)


@dataclass(frozen=True)
class TilePlan:
    """How one (H, W) image is cut: tile extent, starts per axis, the padded size, if any."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    padded: tuple[int, int]  # the size tiles are cut from (> (H, W) only for fixed-size backends)

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def to_dict(self) -> dict[str, Any]:
        return {"image": [self.height, self.width], "tile": [self.tile_h, self.tile_w], "tiles": self.count,
                "grid": [len(self.rows), len(self.cols)]}  # fmt: skip


def backend_limits(inner: Any) -> tuple[Optional[int], Optional[int], Optional[tuple[int, int]], Optional[tuple[int, int]]]:
    """(fixed batch, max batch, fixed (H, W), max (H, W)) an inner denoiser's artifact imposes:
    an exported graph's I/O contract (fixed axes), a TensorRT plan's optimization profile."""
    fixed_batch = max_batch = fixed_hw = max_hw = None
    contract = getattr(inner, "contract", None)
    if contract is not None and getattr(contract, "inputs", None):
        axes = contract.inputs[0].axes
        if isinstance(axes[0], int):
            fixed_batch = axes[0]
        if isinstance(axes[-2], int) and isinstance(axes[-1], int):
            fixed_hw = (axes[-2], axes[-1])
    profile = getattr(inner, "profile", None)
    if isinstance(profile, dict) and "x_t" in profile:
        high = profile["x_t"][2]
        max_batch, max_hw = int(high[0]), (int(high[-2]), int(high[-1]))
    return fixed_batch, max_batch, fixed_hw, max_hw


class TiledDenoiser:
    """An eps-model that runs `inner` on overlapping tiles of images larger than the tile.

    Args:
        inner: an eps-model ``(x_t, t) -> eps`` (a backend's Denoiser, a UNetDenoiser, ...);
            its `size_multiple` is this model's, so `pad_model` pads as before.
        tile: the tile side (or (height, width)), a multiple of inner's size_multiple;
            near the model's training resolution.
        overlap: pixels neighbouring tiles share at least (0 <= overlap < tile).
        batch: tiles per inner call at most (default DEFAULT_TILE_BATCH); peak memory
            follows it, not the image size.
        min_pixels: tile only images of more than this many pixels (H * W) that are also
            larger than the tile; default: every image larger than the tile.
        pad_mode: how tiles are padded up to a fixed-size backend's shape ("reflect" or
            "circular"); unused for backends that take any multiple of size_multiple.

    Raises:
        DiffPIRError: a tile that is not a positive multiple of size_multiple, an overlap
            outside [0, tile), a batch < 1, a tile the backend's artifact cannot take.
    """

    def __init__(
        self,
        inner: Callable[[Tensor, Tensor], Tensor],
        tile: TileSize,
        overlap: int = 32,
        batch: Optional[int] = None,
        *,
        min_pixels: Optional[int] = None,
        pad_mode: str = "reflect",
    ) -> None:
        if isinstance(inner, TiledDenoiser):
            raise DiffPIRError("TiledDenoiser: the inner model is already tiled")
        if not callable(inner):
            raise DiffPIRError(f"TiledDenoiser: expected a callable (x_t, t) -> eps, got {type(inner).__name__}")
        self.inner = inner
        self.size_multiple = int(getattr(inner, "size_multiple", 1))
        self.fixed_batch, max_batch, self.fixed_hw, max_hw = backend_limits(inner)
        if self.fixed_hw is not None:
            tile = self.fixed_hw
        th, tw = (tile, tile) if not isinstance(tile, (tuple, list)) else tuple(tile)
        for side in (th, tw):
            if isinstance(side, bool) or not isinstance(side, int) or side < 1 or side % self.size_multiple:
                raise DiffPIRError(f"tile: expected a positive multiple of {self.size_multiple} (the model's size multiple), got {tile!r}")
        if max_hw is not None and (th > max_hw[0] or tw > max_hw[1]):
            raise DiffPIRError(f"tile {th}x{tw}: larger than the backend's largest input {max_hw[0]}x{max_hw[1]}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < min(th, tw):
            raise DiffPIRError(f"overlap: expected an integer in [0, {min(th, tw)}) (below the tile), got {overlap!r}")
        if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
            raise DiffPIRError(f"tile batch: expected a positive integer, got {batch!r}")
        if min_pixels is not None and (isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 0):
            raise DiffPIRError(f"min_pixels: expected a non-negative integer, got {min_pixels!r}")
        if pad_mode not in PAD_MODES:
            raise DiffPIRError(f"pad mode: expected one of {PAD_MODES}, got {pad_mode!r}")
        self.tile = (th, tw)
        self.overlap = overlap
        self.batch = self.fixed_batch or min(batch or DEFAULT_TILE_BATCH, max_batch or math.inf)
        self.min_pixels = min_pixels
        self.pad_mode = pad_mode
        self.name = getattr(inner, "name", type(inner).__name__)
        self._windows: dict[tuple, Tensor] = {}
        if getattr(inner, "eps_and_variance", None) is not None:
            self.eps_and_variance = self._eps_and_variance

    # ------------------------------------------------------------------ planning

    def tiles(self, height: int, width: int) -> bool:
        """Whether an (H, W) image (as the loop hands it over, padded) is cut into tiles."""
        if self.fixed_hw is not None and (height, width) != self.fixed_hw:
            return True  # the backend takes no other size: tile (and pad) whatever the image
        th, tw = self.tile
        if height <= th and width <= tw:
            return False
        return self.min_pixels is None or height * width > self.min_pixels

    def plan(self, height: int, width: int) -> Optional[TilePlan]:
        """The tiling of an (H, W) image, or None when it goes to the inner model whole."""
        if not self.tiles(height, width):
            return None
        th, tw = self.tile
        fixed = self.fixed_hw is not None
        eh, ew = (th, tw) if fixed else (min(th, height), min(tw, width))
        ph, pw = max(height, eh), max(width, ew)
        align = self.size_multiple
        rows = tuple(tile_starts(ph, eh, self.overlap, align))
        cols = tuple(tile_starts(pw, ew, self.overlap, align))
        return TilePlan(height, width, eh, ew, rows, cols, (ph, pw))

    def _weights(self, plan: TilePlan, like: Tensor) -> Tensor:
        """(n_tiles, 1, 1, th, tw) blend weights of the plan (cached per plan, device, dtype)."""
        key = (plan, like.device, like.dtype)
        found = self._windows.get(key)
        if found is None:
            wy = blend_windows(plan.padded[0], plan.tile_h, list(plan.rows), torch.float64, like.device)
            wx = blend_windows(plan.padded[1], plan.tile_w, list(plan.cols), torch.float64, like.device)
            found = (wy[:, None, :, None] * wx[None, :, None, :]).reshape(-1, 1, 1, plan.tile_h, plan.tile_w).to(like.dtype)
            # Kept for good: a captured CUDA graph reads this very tensor on every replay.
            self._windows[key] = found
        return found

    # ------------------------------------------------------------------ running

    def _pad(self, x: Tensor, plan: TilePlan) -> Tensor:
        h, w = x.shape[-2:]
        ph, pw = plan.padded
        if (ph, pw) == (h, w):
            return x
        rows = _pad_indices(h, ph, self.pad_mode, x.device)
        cols = _pad_indices(w, pw, self.pad_mode, x.device)
        return x.index_select(-2, rows).index_select(-1, cols)

    def _run(self, query: Callable[[Tensor, Tensor], Any], x_t: Tensor, t: Tensor, plan: TilePlan, outputs: int) -> list[Tensor]:
        b = x_t.shape[0]
        th, tw = plan.tile_h, plan.tile_w
        x = self._pad(x_t, plan)
        steps = batch_timesteps(t, b, x_t.device)
        cuts = [(y0, x0) for y0 in plan.rows for x0 in plan.cols]
        # Tile-major stack: rows k*B .. k*B + B - 1 are tile k of every image.
        stack = torch.stack([x[..., y0:y0 + th, x0:x0 + tw] for y0, x0 in cuts]).reshape(-1, *x.shape[1:-2], th, tw)
        timesteps = steps.repeat(len(cuts))
        results: list[list[Tensor]] = [[] for _ in range(outputs)]
        size = self.batch if self.fixed_batch is None else self.fixed_batch
        for start in range(0, stack.shape[0], size):
            chunk, chunk_t = stack[start:start + size], timesteps[start:start + size]
            short = size - chunk.shape[0] if self.fixed_batch is not None else 0
            if short:  # a fixed-batch artifact: fill the last call with copies, drop their output
                chunk = torch.cat([chunk, chunk[-1:].expand(short, *chunk.shape[1:])])
                chunk_t = torch.cat([chunk_t, chunk_t[-1:].expand(short)])
            out = query(chunk, chunk_t)
            out = (out,) if outputs == 1 else tuple(out)
            for i in range(outputs):
                results[i].append(out[i][: out[i].shape[0] - short])
        weights = self._weights(plan, x_t)
        blended = []
        for parts in results:
            tiles = torch.cat(parts).reshape(len(cuts), b, *x.shape[1:-2], th, tw)
            tiles = tiles * weights.to(tiles.dtype)
            canvas = torch.zeros(*x.shape[:-2], *plan.padded, dtype=tiles.dtype, device=tiles.device)
            for k, (y0, x0) in enumerate(cuts):
                canvas[..., y0:y0 + th, x0:x0 + tw] += tiles[k]
            blended.append(canvas[..., : plan.height, : plan.width])
        return blended

    def __call__(self, x_t: Tensor, t: Union[Tensor, int]) -> Tensor:
        plan = self.plan(*x_t.shape[-2:])
        if plan is None:
            return self.inner(x_t, t)
        return self._run(self.inner, x_t, t, plan, 1)[0]

    def _eps_and_variance(self, x_t: Tensor, t: Union[Tensor, int]) -> tuple[Tensor, Tensor]:
        """(eps, variance) of the inner model's eps_and_variance, both blended alike."""
        plan = self.plan(*x_t.shape[-2:])
        if plan is None:
            return self.inner.eps_and_variance(x_t, t)  # type: ignore[attr-defined]
        eps, variance = self._run(self.inner.eps_and_variance, x_t, t, plan, 2)  # type: ignore[attr-defined]
        return eps, variance

    def settings(self) -> dict[str, Any]:
        """The tiling's own settings, for records."""
        return {"tile": list(self.tile), "overlap": self.overlap, "batch": self.batch, "min_pixels": self.min_pixels,
                "pad_mode": self.pad_mode if self.fixed_hw is not None else None}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The inner model's description with the tiling's settings added."""
        describe = getattr(self.inner, "describe", None)
        base = dict(describe()) if callable(describe) else {"backend": self.name}
        return {**base, "tiling": self.settings()}
