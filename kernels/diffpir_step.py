"""Launchers of the fused DiffPIR step (kernels/diffpir_step.cu).

The kernel computes predict-x0, the data step and the re-noising in one pass over the
image, fp32. Its torch twin, and the choice between the two, live in the engine
(`diffpir_rt.engine.fused`): this module only checks raw tensors and launches, so the
kernels room depends on nothing of the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from . import _loader
from ._loader import pointer

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

NAME = "diffpir_step"
#: The extern "C" entry points of diffpir_step.cu, as RawModule.get_function names them.
CUDA_FUNCTIONS = (
    "diffpir_predict_x0_01",
    "diffpir_step_mask_v1",
    "diffpir_step_mask_v4",
    "diffpir_step_correction_v1",
    "diffpir_step_correction_v4",
)
#: The step's scalars, in the kernel's parameter order.
COEFFICIENT_NAMES = (
    "sqrt_recip_a", "sqrt_recipm1_a", "sqrt_a", "inv_sqrt_1m_a", "sqrt_a_next", "sqrt_1m_a_next", "w_eps", "w_z",
)  # fmt: skip


def _float32_args(coefficients: Sequence[float]) -> tuple[np.float32, ...]:
    """The coefficients rounded to fp32, as torch rounds Python scalars for fp32 tensors."""
    if len(coefficients) != len(COEFFICIENT_NAMES):
        raise DiffPIRError(f"{NAME}: expected {len(COEFFICIENT_NAMES)} coefficients {COEFFICIENT_NAMES}, got {len(coefficients)}")
    return tuple(np.float32(v) for v in coefficients)


def _check_state(x_t: Tensor, **others: Tensor) -> None:
    """fp32, contiguous, same device and shape (B, C, H, W) as x_t."""
    if x_t.ndim != 4:
        raise DiffPIRError(f"{NAME}: x_t expected (B, C, H, W), got shape {tuple(x_t.shape)}")
    for label, t in others.items():
        if t.shape != x_t.shape:
            raise DiffPIRError(f"{NAME}: {label} has shape {tuple(t.shape)}, expected {tuple(x_t.shape)}")
    _loader.check_tensors(NAME, x_t.device, x_t=(x_t, torch.float32), **{k: (t, torch.float32) for k, t in others.items()})


def _mask_strides(mask: Tensor, batch: int, channels: int, height: int, width: int) -> tuple[int, int, int]:
    """(batch, channel, pixel) strides of a scalar or (1|B, 1|C, H, W) mask; 0 broadcasts."""
    hw = height * width
    if mask.numel() == 1:
        return 0, 0, 0
    if mask.ndim == 4 and mask.shape[-2:] == (height, width) and mask.shape[0] in (1, batch) and mask.shape[1] in (1, channels):
        mask_channels = mask.shape[1]
        return (0 if mask.shape[0] == 1 else mask_channels * hw), (0 if mask_channels == 1 else hw), 1
    raise DiffPIRError(
        f"{NAME}: mask expected a scalar or (1 or {batch}, 1 or {channels}, {height}, {width}), got {tuple(mask.shape)}"
    )


def _vectorizable(n: int, hw: int, *tensors: Tensor) -> bool:
    return n % 4 == 0 and hw % 4 == 0 and _loader.is_aligned(*tensors)


def launch_predict_x0_01(x_t: Tensor, eps: Tensor, sqrt_recip_a: float, sqrt_recipm1_a: float, out: Tensor) -> Tensor:
    """out = clamp(sqrt_recip_a x_t - sqrt_recipm1_a eps, -1, 1) / 2 + 1/2, all (B, C, H, W) fp32."""
    _check_state(x_t, eps=eps, out=out)
    n = x_t.numel()
    args = (pointer(x_t), pointer(eps), pointer(out), np.int64(n), np.float32(sqrt_recip_a), np.float32(sqrt_recipm1_a))
    _loader.launch(NAME, "diffpir_predict_x0_01", n, args, x_t)
    return out


def launch_step_mask(
    x_t: Tensor, eps: Tensor, z: Tensor, mask: Tensor, y: Tensor, rho: float, coefficients: Sequence[float], out: Tensor
) -> Tensor:
    """One whole step with the mask prox folded in; mask a scalar or (1|B, 1|C, H, W)."""
    _check_state(x_t, eps=eps, z=z, y=y, out=out)
    batch, channels, height, width = x_t.shape
    hw = height * width
    strides = _mask_strides(mask, batch, channels, height, width)
    _loader.check_tensors(NAME, x_t.device, mask=(mask, torch.float32))
    n = x_t.numel()
    vector = _vectorizable(n, hw, x_t, eps, z, y, out, mask)
    args = (
        pointer(x_t), pointer(eps), pointer(z), pointer(mask), pointer(y), pointer(out),
        np.int64(n), np.int64(hw), np.int64(channels), *(np.int64(s) for s in strides), np.float32(rho),
        *_float32_args(coefficients),
    )  # fmt: skip
    function = "diffpir_step_mask_v4" if vector else "diffpir_step_mask_v1"
    _loader.launch(NAME, function, n // 4 if vector else n, args, x_t)
    return out


def launch_step_correction(
    x_t: Tensor, eps: Tensor, z: Tensor, correction_image: Tensor, coefficients: Sequence[float], out: Tensor
) -> Tensor:
    """One whole step adding Re(correction_image), the inverse FFT of the Fourier correction (complex64)."""
    _check_state(x_t, eps=eps, z=z, out=out)
    if correction_image.shape != x_t.shape:
        raise DiffPIRError(f"{NAME}: correction has shape {tuple(correction_image.shape)}, expected {tuple(x_t.shape)}")
    _loader.check_tensors(NAME, x_t.device, correction=(correction_image, torch.complex64))
    n = x_t.numel()
    vector = _vectorizable(n, 4, x_t, eps, z, correction_image, out)
    args = (pointer(x_t), pointer(eps), pointer(z), pointer(correction_image), pointer(out), np.int64(n),
            *_float32_args(coefficients))  # fmt: skip
    function = "diffpir_step_correction_v4" if vector else "diffpir_step_correction_v1"
    _loader.launch(NAME, function, n // 4 if vector else n, args, x_t)
    return out
