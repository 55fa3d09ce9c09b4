"""Launcher of the Fourier data step's spectral update (kernels/fourier_correction.cu).

The kernel fuses the multiply, sf x sf block average, division, tiling and final
multiply of the correction into one pass that reads the spectrum once and writes the
correction once: deblurring is sf = 1, super-resolution sf = 2..4. Its torch twin
(`FourierDataStep.correction`) and the choice between the two live in the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from . import _loader
from ._loader import pointer

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

NAME = "fourier_correction"
SCALES = (1, 2, 3, 4)
CUDA_FUNCTIONS = tuple(f"fourier_correction_sf{sf}" for sf in SCALES)


def launch_fourier_correction(
    x0_spectrum: Tensor, otf: Tensor, abs2: Tensor, y_spectrum: Tensor, sf: int, rho: float, out: Tensor
) -> Tensor:
    """out = otf_conj * tile((Y - fold(otf * X0)) / (fold(|otf|^2) + rho)), all complex64 but abs2.

    Args:
        x0_spectrum: FFT(x0), (B, C, H, W), x0 in [0, 1].
        otf: (1 or B, 1, H, W); abs2: fold(|otf|^2), (1 or B, 1, H/sf, W/sf) fp32.
        y_spectrum: (B, C, H/sf, W/sf).
        out: (B, C, H, W) result buffer; may be x0_spectrum.
    """
    if sf not in SCALES:
        raise DiffPIRError(f"{NAME}: scale expected one of {SCALES}, got {sf}")
    if x0_spectrum.ndim != 4:
        raise DiffPIRError(f"{NAME}: x0_spectrum expected (B, C, H, W), got shape {tuple(x0_spectrum.shape)}")
    batch, channels, height, width = x0_spectrum.shape
    h, w = height // sf, width // sf
    expected = {
        "otf": (otf, (1, height, width)),
        "otf_abs2_folded": (abs2, (1, h, w)),
    }
    for label, (t, tail) in expected.items():
        if t.ndim != 4 or tuple(t.shape[1:]) != tail or t.shape[0] not in (1, batch):
            raise DiffPIRError(f"{NAME}: {label} expected (1 or {batch}, {', '.join(map(str, tail))}), got {tuple(t.shape)}")
    if height % sf or width % sf or tuple(y_spectrum.shape) != (batch, channels, h, w):
        raise DiffPIRError(
            f"{NAME}: y_spectrum {tuple(y_spectrum.shape)} does not fit a {width}x{height} spectrum at scale {sf}"
        )
    complex64 = torch.complex64
    _loader.check_tensors(
        NAME,
        x0_spectrum.device,
        x0_spectrum=(x0_spectrum, complex64),
        otf=(otf, complex64),
        otf_abs2_folded=(abs2, torch.float32),
        y_spectrum=(y_spectrum, complex64),
        out=(out, complex64),
    )
    if out.shape != x0_spectrum.shape:
        raise DiffPIRError(f"{NAME}: out has shape {tuple(out.shape)}, expected {tuple(x0_spectrum.shape)}")
    for label, t in (("x0_spectrum", x0_spectrum), ("otf", otf), ("y_spectrum", y_spectrum)):
        if t.is_conj():
            raise DiffPIRError(f"{NAME}: {label} has torch's lazy conjugate bit set; pass t.resolve_conj()")
    n_low = batch * channels * h * w
    args = (
        pointer(x0_spectrum), pointer(otf), pointer(abs2), pointer(y_spectrum), pointer(out),
        np.int64(n_low), np.int64(channels), np.int64(h), np.int64(w),
        np.int64(0 if otf.shape[0] == 1 else height * width), np.int64(0 if abs2.shape[0] == 1 else h * w),
        np.float32(rho),
    )  # fmt: skip
    _loader.launch(NAME, f"fourier_correction_sf{sf}", n_low, args, x0_spectrum)
    return out
