"""The CuPy path on CPU: each .cu compiled as host C++ and launched through the wrappers.

`_loader.launch` is swapped for a ctypes call into the host build, thread by thread on a
small emulated grid (3 blocks x 5 threads, so the grid-stride loops wrap), and the wrappers
run their real CUDA-path code: argument packing, variant choice (v1/v4), broadcasting
strides. Results must equal the torch path to fp32 rounding. IEEE fp32 without contraction
(-ffp-contract=off) mirrors the device build's -fmad=false.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.schedule import linear_schedule
from diffpir_rt.engine.step import StepCoefficients
from diffpir_rt.engine import fused
from diffpir_rt.engine.fused import fourier_correction, predict_x0_01, step_elementwise, step_fourier
from diffpir_rt.kernels import _loader

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH")

SHIM = Path(__file__).with_name("host_shim.h")
GRID, BLOCK = 3, 5
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def host_libraries(tmp_path_factory) -> dict[str, ctypes.CDLL]:
    out = tmp_path_factory.mktemp("host_kernels")
    libraries = {}
    for source in sorted(_loader.KERNEL_DIR.glob("*.cu")):
        library = out / f"lib{source.stem}.so"
        subprocess.run(
            ["g++", "-x", "c++", "-std=c++17", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-fPIC", "-shared",
             "-Wno-unknown-pragmas", "-include", str(SHIM), "-o", str(library), str(source)],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        libraries[source.stem] = ctypes.CDLL(str(library))
    return libraries


def _ctype(value):
    if isinstance(value, np.uint64):
        return ctypes.c_void_p(int(value))
    if isinstance(value, np.int64):
        return ctypes.c_longlong(int(value))
    if isinstance(value, np.float32):
        return ctypes.c_float(float(value))
    raise TypeError(f"kernel argument of unexpected type {type(value).__name__}")


@pytest.fixture
def launches(monkeypatch, host_libraries) -> list[str]:
    """Route the wrappers' CUDA path to the host builds; returns the launched function names."""
    launched: list[str] = []

    def launch(name, function, work_items, args, like):
        library = host_libraries[name]
        kernel = getattr(library, function)
        kernel.restype = None
        arguments = [_ctype(a) for a in args]
        for block in range(GRID):
            for thread in range(BLOCK):
                library.host_emulation_set_thread(block, thread, BLOCK, GRID)
                kernel(*arguments)
        launched.append(function)

    monkeypatch.setattr(_loader, "launch", launch)
    monkeypatch.setattr(fused, "resolve_impl", lambda impl, like, kernel: impl if impl == "torch" else "cupy")
    return launched


def assert_close(got: torch.Tensor, ref: torch.Tensor) -> None:
    values = torch.view_as_real(got) if got.is_complex() else got
    assert torch.isfinite(values).all(), "NaN left: an element was not written"
    scale = ref.abs().max()
    assert (got - ref).abs().max() <= TOLERANCE * scale, f"{(got - ref).abs().max():.3e} vs scale {scale:.3e}"


def poisoned(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, math.nan)


def state(shape, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=g) for _ in range(3))


@pytest.mark.parametrize("shape, variant", [((2, 3, 8, 8), "v4"), ((1, 3, 5, 7), "v1")])
@pytest.mark.parametrize("mask_kind", ["per_sample", "shared", "per_channel", "shared_per_channel", "denoise"])
def test_step_elementwise(shape, variant, mask_kind, launches, rng) -> None:
    batch, channels, height, width = shape
    mask_shapes = {"per_sample": (batch, 1), "shared": (1, 1), "per_channel": (batch, channels),
                   "shared_per_channel": (1, channels)}  # fmt: skip
    if mask_kind == "denoise":
        op = Denoise()
    else:
        op = Inpaint((rng.random((*mask_shapes[mask_kind], height, width)) > 0.5).astype(np.float32))
    y = torch.rand(shape)
    data_step = op.data_step(y)
    c = StepCoefficients.at(linear_schedule(), 311, 274, 0.3)
    x, eps, z = state(shape)
    ref = step_elementwise(x, eps, z, c, data_step, 0.02, impl="torch")
    got = step_elementwise(x, eps, z, c, data_step, 0.02, impl="cupy", out=poisoned(x))
    assert launches == [f"diffpir_step_mask_{variant}"]
    assert_close(got, ref)


@pytest.mark.parametrize("shape, variant", [((2, 3, 8, 8), "v4"), ((1, 3, 5, 7), "v1")])
def test_step_fourier_and_predict(shape, variant, launches, rng) -> None:
    data_step = Deblur(rng.random((3, 3)) + 0.1).data_step(torch.rand(shape))
    c = StepCoefficients.at(linear_schedule(), 999, 770, 0.3)
    x, eps, z = state(shape)
    correction = torch.fft.fft2(0.3 * torch.randn(shape))
    assert_close(step_fourier(x, eps, z, c, data_step, correction, impl="cupy", out=poisoned(x)),
                 step_fourier(x, eps, z, c, data_step, correction, impl="torch"))  # fmt: skip
    assert_close(predict_x0_01(2 * x, eps, c, impl="cupy", out=poisoned(x)), predict_x0_01(2 * x, eps, c, impl="torch"))
    assert launches == [f"diffpir_step_correction_{variant}", "diffpir_predict_x0_01"]


@pytest.mark.parametrize("sf, size, batch, kernels", [(1, 6, 2, 2), (2, 8, 2, 1), (3, 9, 1, 1), (4, 8, 2, 2)])
def test_fourier_correction(sf, size, batch, kernels, launches, rng) -> None:
    k = rng.random((kernels, 3, 3)) + 0.1
    op = Deblur(k) if sf == 1 else SuperResolution(sf, k)
    data_step = op.data_step(torch.rand(batch, 3, size // sf, size // sf))
    spectrum = torch.fft.fft2(torch.rand(batch, 3, size, size))
    ref = fourier_correction(data_step, spectrum, 1e-3, impl="torch")
    assert_close(fourier_correction(data_step, spectrum, 1e-3, impl="cupy", out=poisoned(spectrum)), ref)
    in_place = spectrum.clone()
    assert_close(fourier_correction(data_step, in_place, 1e-3, impl="cupy", out=in_place), ref)
    assert launches == [f"fourier_correction_sf{sf}"] * 2


def test_nan_propagates_like_torch(launches) -> None:
    """The clamp must not turn NaN into +-1 (a NaN must reach the output, where the runtime reports it)."""
    c = StepCoefficients.at(linear_schedule(), 999, 770, 0.3)
    x = torch.zeros(1, 3, 4, 4)
    eps = torch.zeros_like(x)
    eps[0, 0, 0, 0] = math.nan
    got = predict_x0_01(x, eps, c, impl="cupy")
    assert math.isnan(got[0, 0, 0, 0]) and torch.isnan(predict_x0_01(x, eps, c, impl="torch")[0, 0, 0, 0])
    assert torch.isfinite(got.flatten()[1:]).all()
