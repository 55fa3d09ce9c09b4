"""The fused DiffPIR step (kernels/diffpir_step.cu) and its torch twin, engine/step.py.

One formula, two executions: the torch path *is* `engine.step.diffpir_update` with the
engine's data step, so the sampler, the CUDA-graph runtime's torch path and the tests'
reference are the same code. The CUDA path does predict-x0, the data step and the
re-noising in one pass over the image (fp32; impl="cupy" needs CUDA tensors and CuPy).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from diffpir_rt.engine.errors import DiffPIRError
from diffpir_rt.engine.imageio import from_model
from diffpir_rt.engine.operators import ElementwiseDataStep, FourierDataStep
from diffpir_rt.engine.step import StepCoefficients, diffpir_update, predict_x0

from . import _loader
from ._loader import Impl, pointer

NAME = "diffpir_step"
#: The extern "C" entry points of diffpir_step.cu, as RawModule.get_function names them.
CUDA_FUNCTIONS = (
    "diffpir_predict_x0_01",
    "diffpir_step_mask_v1",
    "diffpir_step_mask_v4",
    "diffpir_step_correction_v1",
    "diffpir_step_correction_v4",
)


def _coefficient_args(c: StepCoefficients) -> tuple[np.float32, ...]:
    """The kernel's coefficient parameters, rounded to fp32 as torch rounds Python scalars."""
    values = (
        c.sqrt_recip_a,
        c.sqrt_recipm1_a,
        c.sqrt_a,
        c.sqrt_1m_a,
        c.sqrt_a_next,
        c.sqrt_1m_a_next,
        math.sqrt(1.0 - c.zeta),
        math.sqrt(c.zeta),
    )
    return tuple(np.float32(v) for v in values)


def _check_state(kernel: str, x_t: Tensor, **others: Tensor) -> None:
    """fp32, contiguous, same device and shape (B, C, H, W) as x_t."""
    if x_t.ndim != 4:
        raise DiffPIRError(f"{kernel}: x_t expected (B, C, H, W), got shape {tuple(x_t.shape)}")
    for label, t in others.items():
        if t.shape != x_t.shape:
            raise DiffPIRError(f"{kernel}: {label} has shape {tuple(t.shape)}, expected {tuple(x_t.shape)}")
    _loader.check_tensors(
        kernel, x_t.device, x_t=(x_t, torch.float32), **{k: (t, torch.float32) for k, t in others.items()}
    )


def _output(x_t: Tensor, out: Optional[Tensor]) -> Tensor:
    return torch.empty_like(x_t, memory_format=torch.contiguous_format) if out is None else out


def _into(out: Optional[Tensor], result: Tensor) -> Tensor:
    """The torch path's result, written into `out` when one is given (same contract as CUDA)."""
    return result if out is None else out.copy_(result)


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


def predict_x0_01(
    x_t: Tensor, eps: Tensor, c: StepCoefficients, *, impl: Impl = "auto", out: Optional[Tensor] = None
) -> Tensor:
    """x0 from eps, clamped, then in [0, 1] (spec §3, §1): the Fourier data step's FFT input.

    Args:
        x_t, eps: (B, C, H, W) fp32 in model units.
        out: optional result buffer (fp32, contiguous, not aliasing the inputs).
    Returns:
        from_model(predict_x0(x_t, eps, c)), (B, C, H, W).
    """
    if _loader.resolve_impl(impl, x_t, NAME) == "torch":
        return _into(out, from_model(predict_x0(x_t, eps, c)))
    out = _output(x_t, out)
    _check_state(NAME, x_t, eps=eps, out=out)
    n = x_t.numel()
    args = (pointer(x_t), pointer(eps), pointer(out), np.int64(n), *_coefficient_args(c)[:2])
    _loader.launch(NAME, "diffpir_predict_x0_01", n, args, x_t)
    return out


def step_elementwise(
    x_t: Tensor,
    eps: Tensor,
    z: Tensor,
    c: StepCoefficients,
    data_step: ElementwiseDataStep,
    rho: float,
    *,
    impl: Impl = "auto",
    out: Optional[Tensor] = None,
) -> Tensor:
    """One whole step with the mask prox (inpaint, denoise; spec §3, §4, §6.1) folded in.

    Args:
        x_t, eps, z: (B, C, H, W) fp32: state, model output, fresh N(0, I) noise.
        data_step: the operator's bound mask step (mask (Bm, Cm, H, W) or a scalar, y).
        rho: rho_t.
        out: optional result buffer (fp32, contiguous, not aliasing the inputs).
    Returns:
        x_t' (B, C, H, W) = diffpir_update(x_t, eps, z, c, data_step(., rho)).
    """
    if _loader.resolve_impl(impl, x_t, NAME) == "torch":
        return _into(out, diffpir_update(x_t, eps, z, c, lambda x0: data_step(x0, rho)))
    mask, y = data_step.mask, data_step.y
    out = _output(x_t, out)
    _check_state(NAME, x_t, eps=eps, z=z, y=y, out=out)
    batch, channels, height, width = x_t.shape
    hw = height * width
    strides = _mask_strides(mask, batch, channels, height, width)
    _loader.check_tensors(NAME, x_t.device, mask=(mask, torch.float32))
    n = x_t.numel()
    vector = _vectorizable(n, hw, x_t, eps, z, y, out, mask)
    args = (
        pointer(x_t), pointer(eps), pointer(z), pointer(mask), pointer(y), pointer(out),
        np.int64(n), np.int64(hw), np.int64(channels), *(np.int64(s) for s in strides), np.float32(rho),
        *_coefficient_args(c),
    )  # fmt: skip
    function = "diffpir_step_mask_v4" if vector else "diffpir_step_mask_v1"
    _loader.launch(NAME, function, n // 4 if vector else n, args, x_t)
    return out


def step_fourier(
    x_t: Tensor,
    eps: Tensor,
    z: Tensor,
    c: StepCoefficients,
    data_step: FourierDataStep,
    correction: Tensor,
    *,
    impl: Impl = "auto",
    out: Optional[Tensor] = None,
) -> Tensor:
    """One whole step whose data step adds a Fourier correction (deblur, SR; spec §6.2-6.3).

    Args:
        x_t, eps, z: (B, C, H, W) fp32.
        data_step: the operator's bound Fourier step (its `apply_correction` is the reference).
        correction: (B, C, H, W) complex64 correction spectrum, from `fourier_correction`.
        out: optional result buffer (fp32, contiguous, not aliasing the inputs).
    Returns:
        x_t' = diffpir_update(x_t, eps, z, c, data_step.apply_correction(., correction)).
        The CUDA path runs the inverse FFT through torch, then one kernel reads its real part.
    """
    if _loader.resolve_impl(impl, x_t, NAME) == "torch":
        return _into(out, diffpir_update(x_t, eps, z, c, lambda x0: data_step.apply_correction(x0, correction)))
    out = _output(x_t, out)
    _check_state(NAME, x_t, eps=eps, z=z, out=out)
    if correction.shape != x_t.shape:
        raise DiffPIRError(f"{NAME}: correction has shape {tuple(correction.shape)}, expected {tuple(x_t.shape)}")
    correction_image = torch.fft.ifft2(correction)
    _loader.check_tensors(NAME, x_t.device, correction=(correction_image, torch.complex64))
    n = x_t.numel()
    vector = _vectorizable(n, 4, x_t, eps, z, correction_image, out)
    args = (pointer(x_t), pointer(eps), pointer(z), pointer(correction_image), pointer(out), np.int64(n),
            *_coefficient_args(c))  # fmt: skip
    function = "diffpir_step_correction_v4" if vector else "diffpir_step_correction_v1"
    _loader.launch(NAME, function, n // 4 if vector else n, args, x_t)
    return out
