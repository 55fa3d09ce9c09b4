"""Image files in and out, in [0, 1], and the one [0, 1] <-> [-1, 1] conversion (spec §1).

Files are (C, H, W) float32 tensors in [0, 1] with C = 3: grey images are
repeated to three channels and alpha is dropped, as the official scripts do
(`cv2.imread` + GRAY2RGB). Pillow decodes 8-bit files; 16-bit PNG and TIFF go
through pypng and tifffile, because Pillow keeps only the high byte of 16-bit RGB.
"""

from __future__ import annotations

import io
import os
import struct
import uuid
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from diffpir_rt.errors import DiffPIRError

PathLike = str | os.PathLike
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)

#: Output formats by suffix, with the bit depths each can hold.
WRITE_FORMATS: dict[str, tuple[str, tuple[int, ...]]] = {
    ".png": ("PNG", (8, 16)),
    ".jpg": ("JPEG", (8,)),
    ".jpeg": ("JPEG", (8,)),
    ".tif": ("TIFF", (8, 16)),
    ".tiff": ("TIFF", (8, 16)),
}
READ_FORMATS = ("PNG", "JPEG", "TIFF")
JPEG_QUALITY = 95  # cv2.imwrite's default, which the official scripts use
# what the decoders raise on a corrupt or truncated file (tifffile's TiffFileError is a ValueError)
_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    zlib.error,
    struct.error,
)


def _pypng():
    """pypng, imported only where a 16-bit PNG is read or written.

    The GPU image installs the project with --no-deps and has no pypng: every module of the
    GPU path imports this one through `engine`, so a module-level import would break them all.
    (tifffile, for 16-bit TIFF, is imported lazily too: 0.2 s.)
    """
    try:
        import png  # pypng, pure Python
    except ImportError as e:
        raise DiffPIRError(
            f"16-bit PNG needs pypng, which is not installed ({e}); run `pip install pypng`"
        ) from e
    return png


def to_model(x01: ArrayOrTensor) -> ArrayOrTensor:
    """[0, 1] image -> [-1, 1] model units (spec §1: x_model = 2*x01 - 1)."""
    return 2 * x01 - 1


def from_model(x: ArrayOrTensor) -> ArrayOrTensor:
    """[-1, 1] model units -> [0, 1] image; the inverse of `to_model`."""
    return x / 2 + 0.5


def check_finite(x: np.ndarray | torch.Tensor, name: str) -> None:
    """Raise DiffPIRError if `x` holds NaN or Inf; `name` says which input."""
    finite = torch.isfinite(x) if isinstance(x, torch.Tensor) else np.isfinite(np.asarray(x))
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DiffPIRError(f"{name}: {bad} NaN or Inf value(s); expected finite values")


# ----------------------------------------------------------------------------- reading


def read_image(path: PathLike) -> torch.Tensor:
    """Read a PNG / JPEG / TIFF (8 or 16 bit) as a (3, H, W) float32 tensor in [0, 1]."""
    return read_image_and_depth(path)[0]


def read_image_and_depth(path: PathLike) -> tuple[torch.Tensor, int]:
    """read_image, and the file's bit depth (8 or 16), so outputs can keep it."""
    pixels, max_value = _read_pixels(Path(path), "image")
    x = torch.from_numpy(pixels.astype(np.float32) / np.float32(max_value))
    return x.permute(2, 0, 1).contiguous(), 16 if max_value > 255 else 8


def read_mask(path: PathLike) -> torch.Tensor:
    """Read an inpainting mask as a (1, H, W) float32 tensor: 1 = observed, 0 = missing.

    Any nonzero pixel counts as observed (spec: masks store 255 = keep), so
    JPEG masks are unsafe: compression noise in black areas reads as observed.
    """
    pixels, _ = _read_pixels(Path(path), "mask")
    observed = (pixels != 0).any(axis=-1)
    return torch.from_numpy(observed.astype(np.float32))[None]


def _read_pixels(path: Path, what: str) -> tuple[np.ndarray, int]:
    """(H, W, 3) unsigned integer pixels and their full-scale value (255 or 65535)."""
    if not path.is_file():
        raise DiffPIRError(f"{what} {path}: file not found")
    try:
        with Image.open(path) as im:
            if im.format not in READ_FORMATS:
                raise DiffPIRError(
                    f"{what} {path}: unsupported format {im.format}; expected one of {', '.join(READ_FORMATS)}"
                )
            if im.format == "PNG" and _png_bit_depth(path) == 16:
                pixels = _read_png16(path, what)
            elif im.format == "TIFF" and max(_tiff_bits_per_sample(im)) > 8:
                pixels = _read_tiff16(path)
            else:  # 8-bit samples in any mode (palette, grey+alpha, CMYK JPEG, ...)
                pixels = np.asarray(im.convert("RGB"))
    except DiffPIRError:
        raise
    except _DECODE_ERRORS as e:
        raise _decode_error(what, path, e) from e
    if pixels.dtype == np.uint8:
        max_value = 255
    elif pixels.dtype == np.uint16:
        max_value = 65535
    else:
        raise DiffPIRError(f"{what} {path}: unsupported sample type {pixels.dtype}; expected 8- or 16-bit integers")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or 0 in pixels.shape:
        raise DiffPIRError(f"{what} {path}: unsupported pixel layout {pixels.shape}; expected grey or RGB(A)")
    # grey(+alpha) -> repeat grey; RGB(A) -> RGB
    pixels = np.repeat(pixels[..., :1], 3, axis=-1) if pixels.shape[-1] <= 2 else pixels[..., :3]
    return np.ascontiguousarray(pixels), max_value


def _decode_error(what: str, path: Path, e: BaseException) -> DiffPIRError:
    return DiffPIRError(f"{what} {path}: cannot decode ({type(e).__name__}: {e})")


def _png_bit_depth(path: Path) -> int:
    """Bit depth byte of the IHDR chunk (Pillow has already checked that it is there)."""
    with open(path, "rb") as f:
        return f.read(25)[24]


def _read_png16(path: Path, what: str) -> np.ndarray:
    """16-bit PNG via pypng: (H, W, planes) uint16."""
    png = _pypng()
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except png.Error as e:  # pypng's own errors (not in _DECODE_ERRORS, which must not import it)
        raise _decode_error(what, path, e) from e
    pixels = pixels.reshape(height, width, info["planes"])
    if info["bitdepth"] != 16:  # an sBIT chunk made pypng rescale to fewer bits
        pixels = np.round(pixels * (65535 / (2 ** info["bitdepth"] - 1))).astype(np.uint16)
    return pixels


def _tiff_bits_per_sample(im: Image.Image) -> tuple[int, ...]:
    bits = im.tag_v2.get(258, (8,))  # BitsPerSample
    return tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)


def _read_tiff16(path: Path) -> np.ndarray:
    """16-bit TIFF via tifffile: the first page, samples last."""
    import tifffile  # lazy: only 16-bit TIFFs need it

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        pixels = page.asarray()
        if page.axes == "SYX":  # planar configuration "separate"
            pixels = np.moveaxis(pixels, 0, -1)
    return pixels


# ----------------------------------------------------------------------------- writing


def write_image(
    path: PathLike,
    x: torch.Tensor,
    bit_depth: int = 8,
    protect: Iterable[PathLike] | PathLike = (),
) -> Path:
    """Write a [0, 1] image of shape (C, H, W) or (1, C, H, W), C in {1, 3}, atomically.

    Values are clamped to [0, 1] and rounded half-to-even: round(x*255) or
    round(x*65535). The format comes from the suffix (.png 8/16, .jpg/.jpeg 8
    at quality 95, .tif/.tiff 8/16). The file is written to a temporary file
    in the target folder and moved into place with os.replace, so a failure
    never leaves a half-written output.

    Args:
        protect: input path(s) that must never be overwritten (compared after
            resolving symlinks and relative parts, and as the same file).

    Returns:
        The path written.
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix not in WRITE_FORMATS:
        raise DiffPIRError(
            f"output {out}: unsupported suffix {suffix!r}; expected one of {', '.join(WRITE_FORMATS)}"
        )
    fmt, depths = WRITE_FORMATS[suffix]
    if bit_depth not in depths:
        raise DiffPIRError(f"output {out}: bit_depth {bit_depth} not possible for {fmt}; expected one of {depths}")
    _refuse_protected(out, protect)
    pixels = _quantise(x, bit_depth, out)
    _prepare_folder(out)
    _write_atomic(out, _encode(pixels, fmt, bit_depth))
    return out


def write_npy(path: PathLike, x: torch.Tensor | np.ndarray, protect: Iterable[PathLike] | PathLike = ()) -> Path:
    """Write an array as float32 .npy, unclipped and unquantised (exact measurements), atomically."""
    out = Path(path)
    if out.suffix.lower() != ".npy":
        raise DiffPIRError(f"output {out}: unsupported suffix {out.suffix.lower()!r}; expected '.npy'")
    _refuse_protected(out, protect)
    array = x.detach().to("cpu", torch.float32).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
    check_finite(array, f"output {out}")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    _prepare_folder(out)
    _write_atomic(out, buffer.getvalue())
    return out


def write_text(path: PathLike, text: str, protect: Iterable[PathLike] | PathLike = ()) -> Path:
    """Write UTF-8 text (e.g. a run's JSON record) atomically."""
    out = Path(path)
    _refuse_protected(out, protect)
    _prepare_folder(out)
    _write_atomic(out, text.encode("utf-8"))
    return out


def _prepare_folder(out: Path) -> None:
    if out.is_dir():
        raise DiffPIRError(f"output {out}: is a directory; expected a file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffPIRError(f"output {out}: cannot create folder {out.parent} ({e})") from e


def _refuse_protected(out: Path, protect: Iterable[PathLike] | PathLike) -> None:
    if isinstance(protect, (str, os.PathLike)):  # one path, not an iterable of characters
        protect = [protect]
    target = out.resolve()
    for p in protect:
        q = Path(p)
        same = q.resolve() == target or (q.exists() and out.exists() and os.path.samefile(q, out))
        if same:
            raise DiffPIRError(f"output {out}: is the input {q}; refusing to overwrite an input")


def _quantise(x: torch.Tensor, bit_depth: int, out: Path) -> np.ndarray:
    """(C, H, W) or (1, C, H, W) tensor -> (H, W, C) uint8/uint16 array."""
    if not isinstance(x, torch.Tensor):
        raise DiffPIRError(f"output {out}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3) or x.shape[1] == 0 or x.shape[2] == 0:
        raise DiffPIRError(
            f"output {out}: image shape {tuple(x.shape)}; expected (C, H, W) or (1, C, H, W), C in {{1, 3}}"
        )
    check_finite(x, f"output {out}")
    full_scale = 2**bit_depth - 1
    # float64: round(x*255) is the exact product of the stored value, not a float32 rounding of it
    values = x.detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(values * full_scale).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _encode(pixels: np.ndarray, fmt: str, bit_depth: int) -> bytes:
    """The whole file in memory, so nothing touches the disk until encoding has succeeded."""
    height, width, channels = pixels.shape
    buffer = io.BytesIO()
    if bit_depth == 8:
        im = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        im.save(buffer, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {}))
    elif fmt == "PNG":
        writer = _pypng().Writer(width, height, greyscale=channels == 1, bitdepth=16)
        writer.write(buffer, pixels.reshape(height, width * channels))
    else:
        import tifffile  # lazy: only 16-bit TIFF output needs it

        if channels == 1:
            tifffile.imwrite(buffer, pixels[..., 0], photometric="minisblack")
        else:
            tifffile.imwrite(buffer, pixels, photometric="rgb")
    return buffer.getvalue()


def _write_atomic(out: Path, data: bytes) -> None:
    """Write `data` to a fresh temp file beside `out`, then os.replace it into place."""
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open with mode 0o666 lets the umask set the final permissions, as a plain open would
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DiffPIRError(f"output {out}: cannot write ({e})") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
