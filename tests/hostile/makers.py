"""Hostile files, made on the spot: broken, huge, odd and malicious inputs of every kind the
engine reads (paths, images, .npy arrays, kernels, masks, checkpoints, ONNX graphs).

Every maker takes the case folder and returns the path to pass (or the bytes to write).
Nothing here is large on disk: "huge" inputs are headers that declare huge sizes.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

# ----------------------------------------------------------------------------- malicious pickles


class Payload:
    """Unpickling this object runs code that creates `marker` (a file): proof it never runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def payload_bytes(marker: Path, protocol: int = 2) -> bytes:
    """A plain pickle that creates `marker` when loaded."""
    return pickle.dumps({"weight": Payload(marker)}, protocol=protocol)


def torch_pickle(marker: Path, nested: bool = False) -> bytes:
    """A torch.save zip checkpoint whose pickle runs code (next to real tensors)."""
    import torch

    state: dict[str, Any] = {"input_blocks.0.0.weight": torch.zeros(2), "evil": Payload(marker)}
    buffer = io.BytesIO()
    torch.save({"state_dict": state} if nested else state, buffer)
    return buffer.getvalue()


def npy_object_pickle(marker: Path) -> bytes:
    """An .npy of dtype object whose pickled items run code (np.load(allow_pickle=True) would)."""
    array = np.empty((2, 2), dtype=object)
    array[0, 0] = Payload(marker)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- .npy


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def npy_header(descr: str, shape: Any, fortran: bool = False, version: tuple[int, int] = (1, 0), data: bytes = b"") -> bytes:
    """An .npy file with a hand-written header (any shape, even one numpy would never write)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}".encode("latin1")
    if version == (1, 0):
        pad = 16 - (10 + len(header) + 1) % 16
        header += b" " * pad + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data
    pad = 16 - (12 + len(header) + 1) % 16
    header += b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(header)) + header + data


def npy_raw_header(text: bytes, data: bytes = b"") -> bytes:
    """An .npy whose header dictionary is arbitrary text (numpy parses it with literal_eval)."""
    pad = 16 - (10 + len(text) + 1) % 16
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def npz_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros((3, 16, 16), np.float32))
    return buffer.getvalue()


# ----------------------------------------------------------------------------- images


def png_bytes(array: np.ndarray, mode: str | None = None, **save: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def image_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **save: Any) -> bytes:
    from PIL import Image

    im = Image.fromarray(array)
    if mode is not None:
        im = im.convert(mode)
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, bit_depth: int = 8, colour: int = 2, rows: int = 4) -> bytes:
    """A PNG whose header declares width x height, with only a few rows of data (a bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\x00" + b"\x00" * (max(width, 1) * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(min(rows, max(height, 1)))) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def png_ztxt_bomb() -> bytes:
    """A valid 8x8 PNG with a zTXt chunk that inflates to 64 MB (Pillow caps text chunks)."""
    good = png_bytes(np.zeros((8, 8, 3), np.uint8))
    compressor = zlib.compressobj(9)
    text = b"".join(compressor.compress(b"\x00" * (1 << 20)) for _ in range(64)) + compressor.flush()
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + text)
    return good[:33] + ztxt + good[33:]


def tiff_declaring(width: int, height: int, bits: int = 16, sample_format: int = 1, data: bytes | None = None) -> bytes:
    """A minimal little-endian one-strip grey TIFF; the header may declare more than the data holds."""
    tags = []
    strip = data if data is not None else b"\x00" * min(width * height * bits // 8, 64)
    offset_data = 8
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, bits),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, offset_data),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, width * height * bits // 8),  # StripByteCounts (as declared)
        (339, 3, 1, sample_format),  # SampleFormat: 1 uint, 2 int, 3 float
    ]
    ifd_offset = offset_data + len(strip) + (len(strip) % 2)
    for tag, kind, count, value in entries:
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        tags.append(struct.pack("<HHI", tag, kind, count) + packed)
    ifd = struct.pack("<H", len(tags)) + b"".join(tags) + struct.pack("<I", 0)
    body = strip + (b"\x00" if len(strip) % 2 else b"")
    return b"II*\x00" + struct.pack("<I", ifd_offset) + body + ifd


def tiff_array(array: np.ndarray) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def png16(array: np.ndarray) -> bytes:
    import png

    buffer = io.BytesIO()
    height, width = array.shape[:2]
    planes = 1 if array.ndim == 2 else array.shape[2]
    png.Writer(width, height, greyscale=planes == 1, bitdepth=16).write(buffer, array.reshape(height, width * planes))
    return buffer.getvalue()


# ----------------------------------------------------------------------------- .mat kernels


def mat_v5(variables: dict[str, Any], **options: Any) -> bytes:
    import scipy.io

    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables, **options)
    return buffer.getvalue()


def cell(*items: Any) -> np.ndarray:
    out = np.empty((1, len(items)), dtype=object)
    for i, item in enumerate(items):
        out[0, i] = item
    return out


def mat_v5_zip_bomb(expanded_mb: int) -> bytes:
    """A MATLAB v5 file holding one miCOMPRESSED element that inflates to `expanded_mb` MB."""
    header = b"MATLAB 5.0 MAT-file, hostile".ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0100) + b"IM"
    compressor = zlib.compressobj(9)
    # a miMATRIX tag declaring the whole expanded size, then zeros
    inner = struct.pack("<II", 14, expanded_mb << 20)
    stream = compressor.compress(inner) + b"".join(compressor.compress(b"\x00" * (1 << 20)) for _ in range(expanded_mb))
    stream += compressor.flush()
    return header + struct.pack("<II", 15, len(stream)) + stream


def hdf5_mat(path: Path, build: Callable[[Any], None]) -> Path:
    """A MATLAB v7.3 (HDF5) file written by `build(h5py.File)`."""
    import h5py

    with h5py.File(path, "w") as f:
        build(f)
    return path


# ----------------------------------------------------------------------------- file-system oddities


def make_socket(path: Path) -> Path:
    os.mknod(path, stat.S_IFSOCK | 0o600)
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
