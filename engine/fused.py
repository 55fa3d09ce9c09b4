"""The one seam between the engine's DiffPIR step math and the fused CUDA kernels.

Each function here computes one formula of engine/step.py and engine/operators.py,
either with those torch functions (impl="torch") or with the kernel of kernels/ that
fuses it (impl="cupy"); impl="auto" picks the kernel for CUDA tensors when CuPy works.
The kernels are tested against these torch paths, so the reference and the fast path
compute one formula.
"""

from __future__ import annotations

from diffpir_rt.lazy import lazy_module

import math
from typing import TYPE_CHECKING, Optional

from diffpir_rt.kernels import (
    Impl,
    launch_fourier_correction,
    launch_predict_x0_01,
    launch_step_correction,
    launch_step_mask,
    resolve_impl,
)

from .imageio import from_model
from .operators import ElementwiseDataStep, FourierDataStep
from .step import StepCoefficients, diffpir_update, predict_x0

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

__all__ = ["Impl", "fourier_correction", "kernel_coefficients", "predict_x0_01", "step_elementwise", "step_fourier"]


def kernel_coefficients(c: StepCoefficients) -> tuple[float, ...]:
    """The fused step's scalars in its parameter order (kernels.diffpir_step.COEFFICIENT_NAMES).

    1 / sqrt(1 - a_t) is formed in fp32 from the fp32-rounded scalar, as torch on CUDA
    does when it divides a tensor by a Python scalar, so the kernel rounds as torch does.
    """
    inv_sqrt_1m_a = float(torch.tensor(1.0, dtype=torch.float32) / torch.tensor(c.sqrt_1m_a, dtype=torch.float32))
    return (
        c.sqrt_recip_a, c.sqrt_recipm1_a, c.sqrt_a, inv_sqrt_1m_a, c.sqrt_a_next, c.sqrt_1m_a_next,
        math.sqrt(1.0 - c.zeta), math.sqrt(c.zeta),
    )  # fmt: skip


def _into(out: Optional[Tensor], result: Tensor) -> Tensor:
    """The torch path's result, written into `out` when one is given (the kernels' contract)."""
    return result if out is None else out.copy_(result)


def _output(like: Tensor, out: Optional[Tensor]) -> Tensor:
    return torch.empty_like(like, memory_format=torch.contiguous_format) if out is None else out


def predict_x0_01(x_t: Tensor, eps: Tensor, c: StepCoefficients, *, impl: Impl = "auto", out: Optional[Tensor] = None) -> Tensor:
    """from_model(predict_x0(x_t, eps, c)): the Fourier data step's FFT input, (B, C, H, W)."""
    if resolve_impl(impl, x_t, "diffpir_step") == "torch":
        return _into(out, from_model(predict_x0(x_t, eps, c)))
    return launch_predict_x0_01(x_t, eps, c.sqrt_recip_a, c.sqrt_recipm1_a, _output(x_t, out))


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
    """One whole DiffPIR step with the mask prox (inpaint, denoise): diffpir_update with data_step(., rho)."""
    if resolve_impl(impl, x_t, "diffpir_step") == "torch":
        return _into(out, diffpir_update(x_t, eps, z, c, lambda x0: data_step(x0, rho)))
    return launch_step_mask(x_t, eps, z, data_step.mask, data_step.y, rho, kernel_coefficients(c), _output(x_t, out))


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
    """One whole DiffPIR step whose data step adds a Fourier correction spectrum (deblur, SR).

    The CUDA path runs the inverse FFT through torch, then one kernel reads its real part.
    """
    if resolve_impl(impl, x_t, "diffpir_step") == "torch":
        return _into(out, diffpir_update(x_t, eps, z, c, lambda x0: data_step.apply_correction(x0, correction)))
    return launch_step_correction(x_t, eps, z, torch.fft.ifft2(correction), kernel_coefficients(c), _output(x_t, out))


def fourier_correction(
    data_step: FourierDataStep, x0_spectrum: Tensor, rho: float, *, impl: Impl = "auto", out: Optional[Tensor] = None
) -> Tensor:
    """data_step.correction(x0_spectrum, rho): the spectral part of the Fourier data step."""
    if resolve_impl(impl, x0_spectrum, "fourier_correction") == "torch":
        return _into(out, data_step.correction(x0_spectrum, rho))
    return launch_fourier_correction(
        x0_spectrum, data_step.otf, data_step.otf_abs2_folded, data_step.y_spectrum, data_step.sf, rho,
        torch.empty_like(x0_spectrum) if out is None else out,
    )  # fmt: skip
