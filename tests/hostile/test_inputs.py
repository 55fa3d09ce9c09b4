"""Hostile inputs x entry points: every kind of file the engine reads, broken in every way
found, given to every command that reads it (restore, degrade, generate, export).

Each case: exit 0 with a valid output or exit 2 with one line (the expected one), no
traceback, no hang, inputs unchanged, nothing new left behind on failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from . import makers
from .conftest import Runner, World

# ----------------------------------------------------------------------------- entry points

Role = Callable[[World, Path, str], tuple[list[str], list[Path]]]


def _restore(task: str, *extra: str) -> Role:
    def role(w: World, d: Path, p: str) -> tuple[list[str], list[Path]]:
        out = d / "o.png"
        args = ["restore", "--task", task, "--output", str(out), "--quiet", *extra]
        return [a.format(p=p, clean32=w.clean32, clean16=w.clean16, ckpt=w.checkpoint) for a in args] + w.model(), [out]

    return role


ROLES: dict[str, Role] = {
    "restore --input": _restore("denoise", "--input", "{p}"),
    "restore --kernel": _restore("deblur", "--input", "{clean32}", "--kernel", "{p}"),
    "restore --kernel (sr)": _restore("sr", "--scale", "2", "--input", "{clean16}", "--kernel", "{p}"),
    "restore --mask": _restore("inpaint", "--input", "{clean32}", "--mask", "{p}"),
    "degrade --input": lambda w, d, p: (["degrade", "--task", "denoise", "--input", p, "--output", str(d / "y.png")], [d / "y.png"]),
    "degrade --kernel": lambda w, d, p: (
        ["degrade", "--task", "deblur", "--kernel", p, "--input", str(w.clean32), "--output", str(d / "y.npy")], [d / "y.npy"]),
    "degrade --mask": lambda w, d, p: (
        ["degrade", "--task", "inpaint", "--mask", p, "--input", str(w.clean32), "--output", str(d / "y.png")], [d / "y.png"]),
    "restore --checkpoint": lambda w, d, p: (
        ["restore", "--task", "denoise", "--input", str(w.clean16), "--output", str(d / "o.png"), "--quiet", "--checkpoint", p,
         "--arch", "tiny", "--steps", "3", "--backend", "torch"], [d / "o.png"]),
    "generate --checkpoint": lambda w, d, p: (
        ["generate", "--checkpoint", p, "--arch", "tiny", "--steps", "3", "--num", "1", "--size", "16", "--backend", "torch",
         "--output", str(d / "g.png"), "--quiet"], [d / "g.png"]),
    "export onnx --checkpoint": lambda w, d, p: (
        ["export", "onnx", "--checkpoint", p, "--arch", "tiny", "--output", str(d / "u.onnx")], [d / "u.onnx"]),
    "restore --onnx": lambda w, d, p: (
        ["restore", "--task", "denoise", "--input", str(w.clean16), "--output", str(d / "o.png"), "--quiet", "--onnx", p,
         "--steps", "3"], [d / "o.png"]),
    "generate --onnx": lambda w, d, p: (
        ["generate", "--onnx", p, "--steps", "3", "--num", "1", "--size", "16", "--output", str(d / "g.png"), "--quiet"],
        [d / "g.png"]),
    "export trt --onnx": lambda w, d, p: (["export", "trt", "--onnx", p, "--output", str(d / "u.plan")], [d / "u.plan"]),
}  # fmt: skip
SUFFIX = {"input": ".png", "kernel": ".npy", "mask": ".png", "checkpoint": ".safetensors", "onnx": ".onnx"}


def _suffix(role: str) -> str:
    return SUFFIX[role.split("--")[1].split()[0]]


# ----------------------------------------------------------------------------- 1. paths

PathMaker = Callable[[Path, str], str]


def _loop(d: Path, s: str) -> str:
    os.symlink(d / f"b{s}", d / f"a{s}")
    os.symlink(d / f"a{s}", d / f"b{s}")
    return str(d / f"a{s}")


def _unreadable(d: Path, s: str) -> str:
    p = d / f"locked{s}"
    p.write_bytes(b"x" * 64)
    p.chmod(0)
    return str(p)


PATHS: dict[str, tuple[PathMaker, str]] = {
    "missing": (lambda d, s: str(d / f"missing{s}"), "no such file"),
    "folder": (lambda d, s: (d / f"folder{s}").mkdir() or str(d / f"folder{s}"), "is a folder"),
    "folder with slash": (lambda d, s: (d / f"folder{s}").mkdir() or str(d / f"folder{s}") + "/", "is a folder"),
    "fifo": (lambda d, s: os.mkfifo(d / f"fifo{s}") or str(d / f"fifo{s}"), "FIFO"),
    "socket": (lambda d, s: str(makers.make_socket(d / f"sock{s}")), "socket"),
    "/dev/null": (lambda d, s: "/dev/null", "is a device"),
    "/dev/zero": (lambda d, s: "/dev/zero", "is a device"),
    "/proc": (lambda d, s: "/proc", "is a folder"),
    "empty file": (lambda d, s: str(makers.write(d / f"empty{s}", b"")), "the file is empty"),
    "name too long": (lambda d, s: str(d / ("n" * 300 + s)), "longer than the file system allows"),
    "path too long": (lambda d, s: str(d / "/".join(["p" * 200] * 25)) + s, "longer than the file system allows"),
    "NUL in name": (lambda d, s: str(d / f"a\0b{s}"), "NUL byte"),
    "newline in name": (lambda d, s: str(d / f"line1\nline2{s}"), "no such file"),
    "broken symlink": (lambda d, s: os.symlink(d / "gone", d / f"dangling{s}") or str(d / f"dangling{s}"), "broken symbolic link"),
    "symlink loop": (_loop, "symbolic link loop"),
    "parent is a file": (lambda d, s: makers.write(d / "file.txt", b"x") and str(d / "file.txt" / f"x{s}"), "is a file, not a folder"),
    "unreadable": (_unreadable, "any"),  # as root it is readable (and then not a valid file)
}


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize("kind", list(PATHS))
def test_path(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    make, expect = PATHS[kind]
    if role == "restore --input" and expect == "is a folder":
        expect = "a folder without images"  # restore takes a folder of inputs: this one has none
    path = make(tmp_path, _suffix(role))
    argv, outputs = ROLES[role](world, tmp_path, path)
    if expect == "any" and role.startswith("export onnx"):
        pytest.skip("a readable junk checkpoint is covered by the checkpoint family")
    cli(argv, expect=expect, outputs=outputs)


# ----------------------------------------------------------------------------- 2. image files

_rng = np.random.default_rng(7)
_rgb32 = (_rng.random((32, 32, 3)) * 255).astype(np.uint8)


def _truncated_png() -> bytes:
    data = makers.png_bytes(_rgb32)
    return data[: len(data) // 2]


def _bad_crc() -> bytes:
    data = bytearray(makers.png_bytes(_rgb32))
    data[60] ^= 0xFF  # inside the IDAT data
    return bytes(data)


#: name -> (file name, bytes, expected message as an input image; "ok" = a valid odd image)
IMAGES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "random bytes": ("random.png", lambda: os.urandom(2048), "not a PNG, JPEG, TIFF or WebP"),
    "text": ("text.png", lambda: b"this is not an image\n" * 10, "not a PNG, JPEG, TIFF or WebP"),
    "truncated PNG": ("trunc.png", _truncated_png, "corrupt or truncated"),
    "PNG with a bad CRC": ("crc.png", _bad_crc, "corrupt"),
    "PNG bomb 10000^2": ("bomb.png", lambda: makers.png_declaring(10000, 10000), "pixels; at most"),
    "PNG bomb 100000^2": ("bomb2.png", lambda: makers.png_declaring(100000, 100000), "decompression bomb"),
    "16-bit PNG bomb": ("bomb16.png", lambda: makers.png_declaring(9000, 9000, bit_depth=16), "pixels; at most"),
    "PNG 1 x 2^31": ("thin.png", lambda: makers.png_declaring(1, 2**31 - 1, colour=0), "decompression bomb"),
    "PNG with width 0": ("zero.png", lambda: makers.png_declaring(0, 16), "not a PNG, JPEG, TIFF or WebP"),
    "zTXt bomb": ("ztxt.png", makers.png_ztxt_bomb, "corrupt or truncated"),
    "truncated JPEG": ("trunc.jpg", lambda: makers.image_bytes(_rgb32, "JPEG")[:300], "corrupt or truncated"),
    "GIF": ("anim.gif", lambda: makers.image_bytes(_rgb32, "GIF"), "unsupported format GIF"),
    "BMP": ("image.bmp", lambda: makers.image_bytes(_rgb32, "BMP"), "unsupported format BMP"),
    "WebP": ("image.webp", lambda: makers.image_bytes(_rgb32, "WEBP"), "ok"),
    "float TIFF": ("float.tif", lambda: makers.tiff_array(_rng.random((16, 16)).astype(np.float32)), "unsupported sample type float32"),
    "int32 TIFF": ("int32.tif", lambda: makers.tiff_array(np.ones((16, 16), np.int32)), "unsupported sample type int32"),
    "TIFF bomb": ("bomb.tif", lambda: makers.tiff_declaring(20000, 20000), "decompression bomb"),
    "TIFF 9000^2 16-bit": ("big.tif", lambda: makers.tiff_declaring(9000, 9000), "pixels; at most"),
    "truncated TIFF": ("trunc.tif", lambda: makers.tiff_declaring(64, 64, bits=16, data=b"\x00" * 10), "corrupt or truncated"),
    # a TIFF header then random bytes, either byte order: Pillow gives up, tifffile finds no page (or an
    # IndexError deep inside): one line naming the file, never a traceback
    "random-bytes TIFF (II)": ("rand_ii.tif", lambda: b"II*\x00" + np.random.default_rng(1).bytes(2000), "rand_ii.tif"),
    "random-bytes TIFF (MM)": ("rand_mm.tif", lambda: b"MM\x00*" + np.random.default_rng(2).bytes(2000), "rand_mm.tif"),
    ".npy named .png": ("array.png", lambda: makers.npy_bytes(np.zeros((3, 16, 16), np.float32)), "not a PNG, JPEG, TIFF or WebP"),
    # valid but odd: must work as an input
    "1x1 PNG": ("one.png", lambda: makers.png_bytes(np.full((1, 1, 3), 128, np.uint8)), "ok"),
    "1x40 PNG": ("line.png", lambda: makers.png_bytes(np.full((1, 40), 9, np.uint8)), "ok"),
    "RGBA PNG": ("rgba.png", lambda: makers.png_bytes(np.full((16, 16, 4), 200, np.uint8)), "ok"),
    "palette PNG with transparency": (
        "pal.png", lambda: makers.image_bytes(_rgb32, "PNG", mode="P", transparency=0), "ok"),
    "grey+alpha PNG": ("la.png", lambda: makers.png_bytes(np.full((16, 16, 2), 90, np.uint8)), "ok"),
    "16-bit PNG": ("deep.png", lambda: makers.png16((_rng.random((16, 16, 3)) * 65535).astype(np.uint16)), "ok"),
    "16-bit TIFF": ("deep.tif", lambda: makers.tiff_array((_rng.random((16, 16, 3)) * 65535).astype(np.uint16)), "ok"),
    "CMYK JPEG": ("cmyk.jpg", lambda: makers.image_bytes(_rgb32, "JPEG", mode="CMYK"), "ok"),
    "PNG named .jpg": ("png.jpg", lambda: makers.png_bytes(_rgb32), "ok"),
    "1-bit PNG": ("bits.png", lambda: makers.image_bytes(_rgb32, "PNG", mode="1"), "ok"),
}
IMAGE_ROLES = ["restore --input", "degrade --input", "restore --mask", "degrade --mask", "restore --kernel", "degrade --kernel"]


@pytest.mark.parametrize("role", IMAGE_ROLES)
@pytest.mark.parametrize("kind", list(IMAGES))
def test_image_file(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    name, make, expect = IMAGES[kind]
    if "kernel" in role and not name.endswith(".png"):
        expect = "unsupported suffix"  # kernels are .npy, .png or .mat
    elif expect == "ok" and "--input" not in role:
        expect = "any"  # a valid odd mask or kernel may not fit the 32x32 image: either answer is fine
    path = makers.write(tmp_path / name, make())
    argv, outputs = ROLES[role](world, tmp_path, str(path))
    cli(argv, expect=expect, outputs=outputs)


# ----------------------------------------------------------------------------- 3. .npy arrays


def _marker(d: Path) -> Path:
    return d / "PWNED"


#: name -> (maker(folder, two_d) -> bytes, expected as a measurement, expected as a kernel)
NPY: dict[str, tuple[Callable[[Path, bool], bytes], str, str]] = {
    "complex64": (lambda d, k: makers.npy_bytes(np.ones((5, 5) if k else (3, 16, 16), np.complex64)), "complex numbers", "complex numbers"),
    "complex128": (lambda d, k: makers.npy_bytes(np.ones((5, 5) if k else (3, 16, 16), complex) / 25), "complex numbers", "complex numbers"),
    "unicode": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), "x")), "text", "text"),
    "bytes": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), b"x")), "bytes", "bytes"),
    "void": (lambda d, k: makers.npy_bytes(np.zeros((5, 5) if k else (3, 16, 16), "V4")), "raw bytes", "raw bytes"),
    "structured": (lambda d, k: makers.npy_bytes(np.zeros((5, 5) if k else (3, 16, 16), [("a", "f4"), ("b", "f4")])), "structured", "structured"),
    "datetime64": (lambda d, k: makers.npy_bytes(np.zeros((5, 5) if k else (3, 16, 16), "datetime64[s]")), "dates", "dates"),
    "timedelta64": (lambda d, k: makers.npy_bytes(np.zeros((5, 5) if k else (3, 16, 16), "timedelta64[s]")), "time spans", "time spans"),
    "object pickle": (lambda d, k: makers.npy_object_pickle(_marker(d)), "Python objects", "Python objects"),
    "zero size": (lambda d, k: makers.npy_bytes(np.zeros((0, 5) if k else (3, 0, 16), np.float32)), "empty", "empty"),
    "0-d": (lambda d, k: makers.npy_bytes(np.float32(0.5)), "expected 2-D or 3-D", "expected 2-D"),
    "1-D": (lambda d, k: makers.npy_bytes(np.ones(16, np.float32)), "expected 2-D or 3-D", "expected 2-D"),
    "4-D": (lambda d, k: makers.npy_bytes(np.ones((1, 3, 16, 16), np.float32)), "expected 2-D or 3-D", "expected 2-D"),
    "5 channels": (lambda d, k: makers.npy_bytes(np.ones((5, 16, 16), np.float32)), "C in {1, 3}", "expected 2-D"),
    "huge header": (lambda d, k: makers.npy_header("<f4", (100000, 100000) if k else (3, 100000, 100000)), "declares", "declares"),
    "overflowing shape": (lambda d, k: makers.npy_header("<f4", (2**40, 2**40) if k else (3, 2**40, 2**40)), "declares", "declares"),
    "shape product 2^64": (lambda d, k: makers.npy_header("<f4", (2**32, 2**32) if k else (1, 2**32, 2**32)), "declares", "declares"),
    "negative shape": (lambda d, k: makers.npy_header("<f4", (-4, 4) if k else (3, -4, 16)), "corrupt", "corrupt"),
    "float shape": (lambda d, k: makers.npy_raw_header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3.5, 2), }"), "corrupt", "corrupt"),
    "code in header": (lambda d, k: makers.npy_raw_header(
        f"{{'descr': __import__('os').system('touch {_marker(d)}'), 'fortran_order': False, 'shape': (2, 2), }}".encode()),
        "corrupt", "corrupt"),
    "truncated data": (lambda d, k: makers.npy_bytes(np.ones((8, 8) if k else (3, 16, 16), np.float32))[:-40], "truncated", "truncated"),
    "header only": (lambda d, k: b"\x93NUMPY\x01\x00" + os.urandom(200), "corrupt", "corrupt"),
    "huge header length": (lambda d, k: b"\x93NUMPY\x02\x00" + b"\xff\xff\xff\x7f" + os.urandom(64), "corrupt", "corrupt"),
    "format 3.0": (lambda d, k: makers.npy_header("<f4", (4, 4), version=(3, 0), data=b"\x00" * 64), "format 3.0", "format 3.0"),
    "random bytes": (lambda d, k: os.urandom(512), "not an .npy file", "not an .npy file"),
    "npz archive": (lambda d, k: makers.npz_bytes(), "zip (.npz)", "zip (.npz)"),
    "PNG named .npy": (lambda d, k: makers.png_bytes(_rgb32), "not an .npy file", "not an .npy file"),
    "NaN": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), np.nan, np.float32)), "NaN or Inf", "NaN or Inf"),
    "Inf": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), np.inf)), "NaN or Inf", "NaN or Inf"),
    "beyond float32": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 1e300)), "float32 range", "ok"),
    # valid odd arrays: a measurement reads them (integers scaled by their type's range);
    # a kernel normalises any positive sum to 1 (with a warning), refuses sums <= 0
    "uint8": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 200, np.uint8)), "ok", "ok"),
    "uint16": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 40000, np.uint16)), "ok", "ok"),
    "int16 negative": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), -300, np.int16)), "ok", "sums to"),
    "int64": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 7, np.int64)), "ok", "ok"),
    "bool": (lambda d, k: makers.npy_bytes(np.ones((5, 5) if k else (3, 16, 16), bool)), "ok", "ok"),
    "float16": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 0.04, np.float16)), "ok", "ok"),
    "big-endian": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 0.04, ">f8")), "ok", "ok"),
    "fortran order": (lambda d, k: makers.npy_bytes(np.asfortranarray(np.full((5, 5) if k else (3, 16, 16), 0.04))), "ok", "ok"),
    "grey (H, W)": (lambda d, k: makers.npy_bytes(np.full((16, 16), 0.5, np.float32)), "ok", "ok"),
    "1x1": (lambda d, k: makers.npy_bytes(np.full((1, 1) if k else (3, 1, 1), 0.5, np.float32)), "ok", "ok"),
    "longdouble": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 0.04, np.longdouble)), "ok", "ok"),
    "trailing bytes": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 0.04, np.float32)) + b"junk", "ok", "ok"),
    # kernels only: their own ways of being wrong
    "absurd sum": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 1e6, np.float32)), "ok", "ok"),
    "zero sum": (lambda d, k: makers.npy_bytes(np.zeros((5, 5) if k else (3, 16, 16), np.float32)), "ok", "sums to 0"),
    "kernel larger than image": (lambda d, k: makers.npy_bytes(np.full((40, 40) if k else (3, 16, 16), 1 / 1600)), "ok", "larger than"),
    "kernel 1x10000": (lambda d, k: makers.npy_bytes(np.full((1, 10000) if k else (3, 16, 16), 1e-4)), "ok", "larger than"),
    "kernel 5000x5000": (lambda d, k: makers.npy_header("<f4", (5000, 5000) if k else (3, 16, 16)), "truncated", "declares"),
    "denormal values": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 1e-320)), "ok", "ok"),
    "sum overflows": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), 1e308)), "float32 range", "sum overflows"),
    "longdouble beyond float64": (lambda d, k: makers.npy_bytes(np.full((5, 5) if k else (3, 16, 16), np.longdouble("1e4000"))),
                                  "float32 range", "beyond the float64 range"),
}  # fmt: skip
NPY_ROLES = ["restore --input", "restore --kernel", "degrade --kernel"]


@pytest.mark.parametrize("role", NPY_ROLES)
@pytest.mark.parametrize("kind", list(NPY))
def test_npy_file(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    make, as_input, as_kernel = NPY[kind]
    kernel = "kernel" in role
    path = makers.write(tmp_path / ("k.npy" if kernel else "y.npy"), make(tmp_path, kernel))
    argv, outputs = ROLES[role](world, tmp_path, str(path))
    cli(argv, expect=as_kernel if kernel else as_input, outputs=outputs)
    assert not _marker(tmp_path).exists(), "a pickle or header in an .npy ran code"


# ----------------------------------------------------------------------------- 4. .mat and .png kernels


def _hdf5(build: Callable) -> Callable[[Path], Path]:
    return lambda d: makers.hdf5_mat(d / "k73.mat", build)


def _hdf5_cell(count: int) -> Callable:
    def build(f) -> None:
        import h5py

        refs = []
        for i in range(count):
            ds = f.create_dataset(f"#refs#/k{i}", data=np.full((5, 5), 1 / 25))
            refs.append(ds.ref)
        f.create_dataset("kernels", data=np.array(refs, dtype=h5py.ref_dtype).reshape(-1, 1) if refs else np.empty((0, 1), h5py.ref_dtype))

    return build


def _hdf5_huge(f) -> None:
    f.create_dataset("kernels", shape=(100000, 100000), dtype="f8")  # declared, never allocated


def _hdf5_huge_in_cell(f) -> None:
    import h5py

    ds = f.create_dataset("#refs#/k0", shape=(60000, 60000), dtype="f4")
    f.create_dataset("kernels", data=np.array([[ds.ref]], dtype=h5py.ref_dtype))


def _hdf5_complex(f) -> None:
    f.create_dataset("kernels", data=np.ones((5, 5), [("real", "f8"), ("imag", "f8")]))


def _mat(name: str, variables: dict, **options) -> Callable[[Path], Path]:
    return lambda d: makers.write(d / name, makers.mat_v5(variables, **options))


_k5 = np.full((5, 5), 1 / 25)
KERNEL_FILES: dict[str, tuple[Callable[[Path], Path], list[str], str]] = {
    "v5 matrix": (_mat("k.mat", {"kernels": _k5}), [], "ok"),
    "v5 compressed": (_mat("k.mat", {"kernels": _k5}, do_compression=True), [], "ok"),
    "v4 matrix": (_mat("k.mat", {"kernels": _k5}, format="4"), [], "ok"),
    "v5 cell of 2, no index": (_mat("k.mat", {"kernels": makers.cell(_k5, _k5)}), [], "holds 2 kernels; pass index 0..1"),
    "v5 cell of 2, index 1": (_mat("k.mat", {"kernels": makers.cell(_k5, _k5)}), ["--kernel-index", "1"], "ok"),
    "v5 cell of 2, index 7": (_mat("k.mat", {"kernels": makers.cell(_k5, _k5)}), ["--kernel-index", "7"], "out of range"),
    "v5 cell, index 10^30": (_mat("k.mat", {"kernels": makers.cell(_k5)}), ["--kernel-index", str(10**30)], "out of range"),
    "v5 empty cell": (_mat("k.mat", {"kernels": np.empty((1, 0), dtype=object)}), [], "holds no kernel"),
    "v5 no 'kernels'": (_mat("k.mat", {"psf": _k5}), [], "no variable 'kernels'"),
    "v5 string": (_mat("k.mat", {"kernels": "gaussian"}), [], "expected real numbers"),
    "v5 cell of a string": (_mat("k.mat", {"kernels": makers.cell("x")}), [], "expected real numbers"),
    "v5 nested cell": (_mat("k.mat", {"kernels": makers.cell(makers.cell(_k5))}), [], "expected real numbers"),
    "v5 struct": (_mat("k.mat", {"kernels": {"a": _k5}}), [], "expected real numbers"),
    "v5 complex": (_mat("k.mat", {"kernels": _k5 * (1 + 1j)}), [], "complex numbers"),
    "v5 3-D": (_mat("k.mat", {"kernels": np.ones((3, 3, 3)) / 27}), [], "2-D"),
    "v5 integer, sum 2295": (_mat("k.mat", {"kernels": np.full((3, 3), 255, np.uint8)}), [], "ok"),
    "v5 negative sum": (_mat("k.mat", {"kernels": -_k5}), [], "sums to -1"),
    "v5 truncated": (lambda d: makers.write(d / "k.mat", makers.mat_v5({"kernels": np.ones((30, 30)) / 900})[:400]), [], "cannot read MATLAB file"),
    "v5 truncated compressed": (lambda d: makers.write(d / "k.mat", makers.mat_v5({"kernels": _k5}, do_compression=True)[:170]), [], "cannot read MATLAB file"),
    "v5 zip bomb (300 MB)": (lambda d: makers.write(d / "k.mat", _zip_bomb()), [], "zip bomb"),
    "random bytes .mat": (lambda d: makers.write(d / "k.mat", os.urandom(1000)), [], "cannot read MATLAB file"),
    "PNG named .mat": (lambda d: makers.write(d / "k.mat", makers.png_bytes(_rgb32)), [], "cannot read MATLAB file"),
    "v7.3 matrix": (_hdf5(lambda f: f.create_dataset("kernels", data=_k5)), [], "ok"),
    "v7.3 cell of 3, index 2": (_hdf5(_hdf5_cell(3)), ["--kernel-index", "2"], "ok"),
    "v7.3 cell of 3, no index": (_hdf5(_hdf5_cell(3)), [], "holds 3 kernels"),
    "v7.3 empty cell": (_hdf5(_hdf5_cell(0)), [], "holds no kernel"),
    "v7.3 huge matrix": (_hdf5(_hdf5_huge), [], "declares 10,000,000,000 values"),
    "v7.3 huge matrix in a cell": (_hdf5(_hdf5_huge_in_cell), [], "declares 3,600,000,000 values"),
    "v7.3 complex": (_hdf5(_hdf5_complex), [], "complex numbers"),
    "v7.3 group": (_hdf5(lambda f: f.create_group("kernels")), [], "is a Group"),
    "v7.3 strings": (_hdf5(lambda f: f.create_dataset("kernels", data=np.array([b"abc"]))), [], "expected real numbers"),
    "v7.3 no 'kernels'": (_hdf5(lambda f: f.create_dataset("psf", data=_k5)), [], "no variable 'kernels'"),
    "v7.3 truncated": (lambda d: _truncated_hdf5(d), [], "cannot read"),
    "PNG kernel, all black": (lambda d: makers.write(d / "k.png", makers.png_bytes(np.zeros((5, 5), np.uint8))), [], "all black"),
    "PNG kernel, RGB": (lambda d: makers.write(d / "k.png", makers.png_bytes(_rgb32[:5, :5])), [], "ok"),
    "PNG kernel, 16-bit": (lambda d: makers.write(d / "k.png", makers.png16(np.full((5, 5), 4000, np.uint16))), [], "ok"),
    "PNG kernel bomb": (lambda d: makers.write(d / "k.png", makers.png_declaring(12000, 12000)), [], "pixels; at most"),
    "PNG kernel 5000x1": (lambda d: makers.write(d / "k.png", makers.png_bytes(np.full((1, 5000), 255, np.uint8))), [], "larger than"),
    "text kernel": (lambda d: makers.write(d / "k.txt", b"1 2 3"), [], "unsupported suffix '.txt'"),
    "index with .npy": (lambda d: makers.write(d / "k.npy", makers.npy_bytes(_k5)), ["--kernel-index", "0"], "only .mat files"),
}  # fmt: skip
_BOMB: list[bytes] = []


def _truncated_hdf5(d: Path) -> Path:
    full = makers.hdf5_mat(d / "full.h5", lambda f: f.create_dataset("kernels", data=np.ones((64, 64)) / 4096))
    data = full.read_bytes()
    full.unlink()
    return makers.write(d / "k.mat", data[: len(data) // 2])


def _zip_bomb() -> bytes:
    if not _BOMB:  # ~300 KB on disk, 300 MB inflated; made once
        _BOMB.append(makers.mat_v5_zip_bomb(300))
    return _BOMB[0]


@pytest.mark.parametrize("role", ["restore --kernel", "degrade --kernel"])
@pytest.mark.parametrize("kind", list(KERNEL_FILES))
def test_kernel_file(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    make, extra, expect = KERNEL_FILES[kind]
    path = make(tmp_path)
    argv, outputs = ROLES[role](world, tmp_path, str(path))
    cli([*argv, *extra], expect=expect, outputs=outputs)


def test_integer_kernel_is_normalised_with_a_note(cli: Runner, world: World, tmp_path: Path) -> None:
    """The uint8 kernel summing to 2295 of the issue: used with sum 1, and the user is told."""
    path = makers.write(tmp_path / "k.npy", makers.npy_bytes(np.full((3, 3), 255, np.uint8)))
    saved = tmp_path / "used.npy"
    argv, outputs = ROLES["degrade --kernel"](world, tmp_path, str(path))
    outcome = cli([*argv, "--save-kernel", str(saved)], expect="ok", outputs=[*outputs, saved])
    assert any("summing to 2295; normalised to sum 1" in line for line in outcome.lines), outcome.lines
    assert abs(float(np.load(saved).sum()) - 1) < 1e-6


# ----------------------------------------------------------------------------- 5. masks


MASKS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "all missing": (lambda d: makers.write(d / "m.png", makers.png_bytes(np.zeros((32, 32), np.uint8))), "ok"),
    "grey levels": (lambda d: makers.write(d / "m.png", makers.png_bytes(np.full((32, 32), 128, np.uint8))), "ok"),
    "16-bit": (lambda d: makers.write(d / "m.png", makers.png16(np.full((32, 32), 65535, np.uint16))), "ok"),
    "JPEG": (lambda d: makers.write(d / "m.jpg", makers.image_bytes(np.full((32, 32), 255, np.uint8), "JPEG")), "ok"),
    "16x16 for a 32x32 image": (lambda d: makers.write(d / "m.png", makers.png_bytes(np.full((16, 16), 255, np.uint8))), "does not match the 32x32 image"),
    "32 wide, 16 high": (lambda d: makers.write(d / "m.png", makers.png_bytes(np.full((16, 32), 255, np.uint8))), "size 32x16 does not match"),
    ".npy mask": (lambda d: makers.write(d / "m.npy", makers.npy_bytes(np.ones((32, 32), np.float32))), "not a PNG, JPEG, TIFF or WebP"),
}  # fmt: skip


@pytest.mark.parametrize("role", ["restore --mask", "degrade --mask"])
@pytest.mark.parametrize("kind", list(MASKS))
def test_mask_file(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    make, expect = MASKS[kind]
    argv, outputs = ROLES[role](world, tmp_path, str(make(tmp_path)))
    cli(argv, expect=expect, outputs=outputs)


# ----------------------------------------------------------------------------- 6. checkpoints


def _tiny_state(dtype=None) -> dict:
    from diffpir_rt.engine import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in build_unet("tiny").state_dict().items()}
    return {k: v.to(dtype) for k, v in state.items()} if dtype is not None else state


def _torch_file(name: str, make_obj: Callable[[], object]) -> Callable[[Path, World], Path]:
    def make(d: Path, w: World) -> Path:
        torch.save(make_obj(), d / name)
        return d / name

    return make


def _safetensors(name: str, make_state: Callable[[], dict]) -> Callable[[Path, World], Path]:
    def make(d: Path, w: World) -> Path:
        from safetensors.torch import save_file

        save_file(make_state(), str(d / name))
        return d / name

    return make


def _forged_safetensors_header(d: Path, w: World) -> Path:
    data = bytearray(w.checkpoint.read_bytes()[:4096])
    data[:8] = (174812789).to_bytes(8, "little")
    return makers.write(d / "forged.safetensors", bytes(data))


def _nan_state() -> dict:
    state = _tiny_state()
    state["out.2.weight"] = torch.full_like(state["out.2.weight"], float("nan"))
    return state


CHECKPOINTS: dict[str, tuple[Callable[[Path, World], Path], str]] = {
    "pickle (zip)": (lambda d, w: makers.write(d / "evil.pt", makers.torch_pickle(_marker(d))), "pickled Python objects"),
    "pickle in a state_dict wrapper": (lambda d, w: makers.write(d / "evil.pth", makers.torch_pickle(_marker(d), nested=True)), "pickled Python objects"),
    "legacy pickle": (lambda d, w: makers.write(d / "evil.ckpt", makers.payload_bytes(_marker(d))), "pickled Python objects"),
    "legacy pickle protocol 4": (lambda d, w: makers.write(d / "evil.bin", makers.payload_bytes(_marker(d), 4)), "it was not loaded"),
    "integer tensors": (_torch_file("ints.pt", lambda: _tiny_state(torch.int64)), "not floating point"),
    "bool tensors": (_safetensors("bools.safetensors", lambda: _tiny_state(torch.bool)), "not floating point"),
    "complex tensors": (_torch_file("cplx.pt", lambda: _tiny_state(torch.complex64)), "not floating point"),
    "NaN weights": (_safetensors("nan.safetensors", _nan_state), "hold NaN or Inf"),
    "random bytes .pt": (lambda d, w: makers.write(d / "junk.pt", os.urandom(4000)), "not a PyTorch checkpoint"),
    "text .pt": (lambda d, w: makers.write(d / "junk.pt", b"hello world " * 100), "not a PyTorch checkpoint"),
    "random bytes .safetensors": (lambda d, w: makers.write(d / "junk.safetensors", os.urandom(4000)), "not a readable safetensors file"),
    "forged header length": (_forged_safetensors_header, "not a readable safetensors file"),
    "truncated .safetensors": (lambda d, w: makers.write(d / "t.safetensors", w.checkpoint.read_bytes()[:100000]), "not a readable safetensors file"),
    "truncated zip .pt": (lambda d, w: makers.write(d / "t.pt", _zip_checkpoint()[:5000]), "corrupt or truncated PyTorch checkpoint"),
    "zip header only": (lambda d, w: makers.write(d / "z.pt", b"PK\x03\x04" + os.urandom(100)), "corrupt or truncated PyTorch checkpoint"),
    "empty dict": (_torch_file("empty.pt", dict), "holds no tensors"),
    "a tensor, not a dict": (_torch_file("tensor.pt", lambda: torch.zeros(3)), "expected a dict of tensors"),
    "a list": (_torch_file("list.pt", lambda: [torch.zeros(3)]), "expected a dict of tensors"),
    "non-tensor entry": (_torch_file("mixed.pt", lambda: {"w": torch.zeros(2), "epoch": 3}), "is a int, not a tensor"),
    "foreign keys": (_safetensors("foreign.safetensors", lambda: {"encoder.weight": torch.zeros(3, 3)}), "matches no known arch"),
    "one tensor mis-shaped": (_safetensors("shape.safetensors", lambda: {**_tiny_state(), "out.2.bias": torch.zeros(3)}), "wrong shapes: 1"),
    "unsupported suffix": (lambda d, w: makers.write(d / "w.h5", b"x" * 10), "unsupported suffix '.h5'"),
    "an ONNX file": (lambda d, w: Path(shutil.copy(w.onnx, d / "model.onnx")), "unsupported suffix '.onnx'"),
    "fp16 weights": (_safetensors("half.safetensors", lambda: _tiny_state(torch.float16)), "ok"),
    "bf16 weights in a training wrapper": (_torch_file("wrapped.pt", lambda: {"ema": _tiny_state(torch.bfloat16), "step": 3}), "ok"),
}  # fmt: skip
_ZIP: list[bytes] = []


def _zip_checkpoint() -> bytes:
    if not _ZIP:
        import io

        buffer = io.BytesIO()
        torch.save(_tiny_state(), buffer)
        _ZIP.append(buffer.getvalue())
    return _ZIP[0]


CHECKPOINT_ROLES = ["restore --checkpoint", "generate --checkpoint", "export onnx --checkpoint"]


@pytest.mark.parametrize("role", CHECKPOINT_ROLES)
@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_checkpoint(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    make, expect = CHECKPOINTS[kind]
    if expect == "ok" and role.startswith("export"):
        pytest.skip("a successful export takes seconds; covered by tests/export")
    argv, outputs = ROLES[role](world, tmp_path, str(make(tmp_path, world)))
    cli(argv, expect=expect, outputs=outputs)
    assert not _marker(tmp_path).exists(), "a pickled checkpoint ran code"


def test_wrong_arch_message_is_short_and_names_the_right_arch(cli: Runner, world: World, tmp_path: Path) -> None:
    argv, _ = ROLES["restore --checkpoint"](world, tmp_path, str(world.checkpoint))
    argv[argv.index("tiny")] = "ffhq_10m"
    outcome = cli(argv, expect="it matches arch 'tiny': use --arch tiny")
    assert len(outcome.err.split(": error: ")[1].replace(str(world.checkpoint), "")) <= 200


# ----------------------------------------------------------------------------- 7. ONNX graphs


def _onnx_with(metadata: dict | None = None, drop: tuple = (), dims: dict | None = None) -> Callable[[Path, World], Path]:
    def make(d: Path, w: World) -> Path:
        import onnx

        model = onnx.load(str(w.onnx))
        props = {p.key: p.value for p in model.metadata_props}
        props.update(metadata or {})
        for key in drop:
            props.pop(key, None)
        del model.metadata_props[:]
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        for value_info in model.graph.input:
            for axis, size in (dims or {}).get(value_info.name, {}).items():
                value_info.type.tensor_type.shape.dim[axis].dim_value = size
        onnx.save(model, str(d / "forged.onnx"))
        return d / "forged.onnx"

    return make


ONNX: dict[str, tuple[Callable[[Path, World], Path], str]] = {
    "valid": (lambda d, w: Path(shutil.copy(w.onnx, d / "u.onnx")), "ok"),
    "random bytes": (lambda d, w: makers.write(d / "r.onnx", os.urandom(3000)), "not a loadable ONNX model"),
    "truncated": (lambda d, w: makers.write(d / "t.onnx", w.onnx.read_bytes()[: w.onnx.stat().st_size // 2]), "not a loadable ONNX model"),
    "a PNG": (lambda d, w: makers.write(d / "p.onnx", makers.png_bytes(_rgb32)), "not a loadable ONNX model"),
    "no metadata": (_onnx_with(drop=("diffpir_contract", "arch", "size_multiple", "in_channels", "precision", "checkpoint_sha256")), "no DiffPIR metadata"),
    "contract version 99": (_onnx_with({"diffpir_contract": "99"}), "contract version"),
}  # fmt: skip
for _value in ("abc", "0", "-8", "1.5", "1e9", "99999999999999999999", "", " ", "\uff18", "0x10", "nan", "2048"):
    ONNX[f"size_multiple {_value!r}"] = (_onnx_with({"size_multiple": _value}), "metadata size_multiple")
for _value in ("0", "abc", "100000", "-3"):
    ONNX[f"in_channels {_value!r}"] = (_onnx_with({"in_channels": _value}), "metadata in_channels")
ONNX["in_channels 1 (graph has 3)"] = (_onnx_with({"in_channels": "1"}), "any")
ONNX["precision fp8"] = (_onnx_with({"precision": "fp8"}), "precision")


def _with_sidecar(text: bytes) -> Callable[[Path, World], Path]:
    def make(d: Path, w: World) -> Path:
        onnx = Path(shutil.copy(w.onnx, d / "u.onnx"))
        makers.write(d / "u.onnx.json", text)
        return onnx

    return make


for _name, _text in {
    "a list": b"[1, 2]", "null": b"null", "not JSON": b"{{{", "deeply nested": b"[" * 100000 + b"]" * 100000,
    "metadata a number": b'{"onnx_metadata": 5}', "metadata with objects": b'{"onnx_metadata": {"arch": {"x": [1]}}}',
    "binary": bytes(range(256)),
}.items():  # fmt: skip
    ONNX[f"sidecar: {_name}"] = (_with_sidecar(_text), "ok")
ONNX["static 100000x100000 input"] = (_onnx_with(dims={"x_t": {2: 100000, 3: 100000}}), "fixed to 100000")
ONNX["static batch 10^9"] = (_onnx_with(dims={"x_t": {0: 10**9}, "t": {0: 10**9}}), "fixed to 1000000000")


#: generate reads ONNX files through the same loader: a few kinds are enough there
GENERATE_ONNX = ("valid", "random bytes", "no metadata", "size_multiple '0'", "in_channels '0'", "static 100000x100000 input")


@pytest.mark.parametrize(
    "role, kind", [("restore --onnx", k) for k in ONNX] + [("generate --onnx", k) for k in GENERATE_ONNX]
)
def test_onnx(cli: Runner, world: World, tmp_path: Path, role: str, kind: str) -> None:
    make, expect = ONNX[kind]
    argv, outputs = ROLES[role](world, tmp_path, str(make(tmp_path, world)))
    cli(argv, expect=expect, outputs=outputs)
