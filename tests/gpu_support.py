"""Skip markers for GPU-only tests, each with the reason it skipped (style.md tests/)."""

from __future__ import annotations

import shutil

import pytest
import torch

from diffpir_rt.kernels._loader import cupy_problem

HAS_CUDA = torch.cuda.is_available()
_CUPY_PROBLEM = cupy_problem() if HAS_CUDA else "no CUDA device"

#: Needs a CUDA device (torch sees one).
requires_cuda = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (torch.cuda.is_available() is False)")]
#: Needs a CUDA device and a working CuPy (the fused kernels).
requires_cupy = [
    pytest.mark.gpu,
    pytest.mark.skipif(_CUPY_PROBLEM is not None, reason=f"needs CUDA and CuPy: {_CUPY_PROBLEM}"),
]
#: Needs nvcc on PATH.
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
