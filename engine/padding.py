"""Pad images up to the size the UNet needs, consistently with the operator, so any size works.

FFT operators assume a periodic image, so they pad circularly; mask operators pad
by mirror reflection. Padding goes at the bottom/right only, so cropping back is
``x[..., :H, :W]``. Indices are built explicitly, so a pad larger than the image
works (torch's F.pad refuses that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

PAD_MODES = ("circular", "reflect")


def _pad_indices(n: int, n_padded: int, mode: str, device: torch.device) -> Tensor:
    i = torch.arange(n_padded, device=device)
    if mode == "circular" or n == 1:
        return i % n
    period = 2 * (n - 1)  # reflect without repeating the edge pixel: 0 1 2 1 0 1 2 ...
    i = i % period
    return torch.where(i < n, i, period - i)


def padded_size(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_to_multiple(x: Tensor, multiple: int, mode: str) -> Tensor:
    """Pad (.., H, W) at the bottom/right to multiples of `multiple` ('circular' or 'reflect')."""
    if mode not in PAD_MODES:
        raise DiffPIRError(f"pad mode: expected one of {PAD_MODES}, got {mode!r}")
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, multiple), padded_size(w, multiple)
    if (hp, wp) == (h, w):
        return x
    rows = _pad_indices(h, hp, mode, x.device)
    cols = _pad_indices(w, wp, mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)
