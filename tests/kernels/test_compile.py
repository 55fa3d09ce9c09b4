"""Every kernels/*.cu compiles with nvcc, exports its unmangled entry points, and CMake builds
the fatbins. Runs wherever nvcc (and cmake) are on PATH; no GPU needed.

Budget on 2 busy cores: nvcc -cubin per file and arch ~1-2 s; the CMake build is restricted
to sm_80 + sm_90 (+PTX) here (all five archs take ~18 s; CMakeLists.txt builds all by default).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from diffpir_rt.kernels import _loader

from ..gpu_support import requires_nvcc

ROOT = Path(__file__).resolve().parents[2]
KERNELS = sorted(_loader.KERNEL_DIR.glob("*.cu"))
#: Entry points each wrapper launches, by kernel source name.
ENTRY_POINTS = {
    name: importlib.import_module(f"diffpir_rt.kernels.{name}").CUDA_FUNCTIONS
    for name in ("diffpir_step", "fourier_correction")
}
ARCHS = ("sm_80", "sm_90")


def test_every_kernel_source_has_a_wrapper() -> None:
    assert sorted(p.stem for p in KERNELS) == sorted(ENTRY_POINTS)
    for source in KERNELS:
        assert (source.with_suffix(".py")).is_file(), f"{source.name} has no {source.stem}.py wrapper"


def test_cmake_uses_the_loaders_nvcc_flags() -> None:
    cmake = (ROOT / "CMakeLists.txt").read_text()
    flags = re.search(r"set\(DIFFPIR_NVCC_FLAGS ([^)]*)\)", cmake)
    assert flags is not None and tuple(flags.group(1).split()) == _loader.NVCC_FLAGS


@requires_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_nvcc_compiles_without_spills_and_exports_entry_points(source: Path, arch: str, tmp_path: Path) -> None:
    cubin = tmp_path / f"{source.stem}.{arch}.cubin"
    result = subprocess.run(
        ["nvcc", "-cubin", f"-arch={arch}", *_loader.NVCC_FLAGS, "-Xptxas", "-v", "--Werror", "all-warnings",
         "-o", str(cubin), str(source)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # ptxas -v: a register array indexed at run time lands in local memory, which is slow.
    for frame, stores, loads in re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", result.stderr):
        assert (frame, stores, loads) == ("0", "0", "0"), result.stderr
    data = cubin.read_bytes()
    for function in ENTRY_POINTS[source.stem]:
        # extern "C": the ELF section is named after the plain symbol (a mangled one starts _Z).
        assert b".text." + function.encode() + b"\x00" in data, f"{function} not exported unmangled by {source.name}"


@requires_nvcc
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on PATH")
def test_cmake_builds_fatbins_with_source_digests(tmp_path: Path) -> None:
    build, out = tmp_path / "build", tmp_path / "prebuilt"
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DDIFFPIR_CUDA_ARCHS=80;90", f"-DDIFFPIR_KERNEL_DIR={out}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run(["cmake", "--build", str(build), "-j", "2"], capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    for source in KERNELS:
        fatbin = out / f"{source.stem}.fatbin"
        assert fatbin.stat().st_size > 0
        assert (out / f"{source.stem}.fatbin.sha256").read_text().strip() == _loader.source_digest(source.stem)


def _nvrtc_library() -> Optional[Path]:
    """libnvrtc from the CUDA toolkit or the nvidia-cuda-nvrtc wheel (what CuPy uses), if present."""
    found = ctypes.util.find_library("nvrtc")
    if found:
        return Path(found)
    try:
        import nvidia.cu13  # nvidia-cuda-nvrtc for CUDA 13 (cupy-cuda13x's dependency)
    except ImportError:
        return None
    libs = sorted(Path(list(nvidia.cu13.__path__)[0]).glob("lib/libnvrtc.so*"))
    return libs[0] if libs else None


@pytest.mark.skipif(_nvrtc_library() is None, reason="libnvrtc not found (CUDA toolkit lib or nvidia-cuda-nvrtc wheel)")
@pytest.mark.parametrize("source", KERNELS, ids=lambda p: p.name)
def test_nvrtc_compiles_with_the_loaders_options(source: Path) -> None:
    """The fallback path: what CuPy's RawModule(code=...) does without a fatbin."""
    library = _nvrtc_library()
    for builtins in sorted(library.parent.glob("libnvrtc-builtins.so*")):  # NVRTC dlopens it by name
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(library))
    program = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(program), source.read_bytes(), source.name.encode(), 0, None, None) == 0
    options = [o.encode() for o in (*_loader.NVRTC_OPTIONS, "-arch=compute_80")]
    status = lib.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(program, log)
    lib.nvrtcDestroyProgram(ctypes.byref(program))
    assert status == 0, log.value.decode()
