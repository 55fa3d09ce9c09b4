"""Skip markers for GPU-only tests, each with the reason it skipped, and
`record_measurement` for the figures a GPU run must report."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

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

#: The GPU suite (benchmarks/gpu_suite.sh) points this at a JSON-lines file that its summary reads.
MEASUREMENTS_ENV = "DIFFPIR_SUITE_MEASUREMENTS"


def record_measurement(name: str, value: float, **context: Any) -> None:
    """Print a measured figure (pytest -rA shows it) and, under the GPU suite, append it as one
    JSON line to $DIFFPIR_SUITE_MEASUREMENTS, which the suite's summary.json lists. Call it
    before asserting on the value, so a failing run still reports it."""
    record = {"name": name, "value": float(value), **context}
    print(f"MEASURED {name} = {float(value):.3f} {json.dumps(context, sort_keys=True)}")
    path = os.environ.get(MEASUREMENTS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
