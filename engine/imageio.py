"""Image files in and out, in [0, 1], and the one [0, 1] <-> [-1, 1] conversion (docs/algorithm.md §1).

Files are (C, H, W) float32 tensors in [0, 1] with C = 3: grey images are
repeated to three channels and alpha is dropped, as the official scripts do
(`cv2.imread` + GRAY2RGB). Pillow decodes 8-bit files; 16-bit PNG and TIFF go
through pypng and tifffile, because Pillow keeps only the high byte of 16-bit RGB.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffpir_rt.errors import DiffPIRError, TooLargeError
from diffpir_rt.lazy import lazy_module

from .paths import MAX_PIXELS, InputFile, as_input, read_npy, shown, temporary_name

torch = lazy_module("torch")

PathLike = str | os.PathLike
ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, "torch.Tensor")

#: Output formats by suffix, with the bit depths each can hold.
WRITE_FORMATS: dict[str, tuple[str, tuple[int, ...]]] = {
    ".png": ("PNG", (8, 16)),
    ".jpg": ("JPEG", (8,)),
    ".jpeg": ("JPEG", (8,)),
    ".tif": ("TIFF", (8, 16)),
    ".tiff": ("TIFF", (8, 16)),
    ".webp": ("WEBP", (8,)),
}
READ_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
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
    # what else a parser fed arbitrary bytes was seen to raise (Pillow's TIFF/JPEG plugins, tifffile)
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    MemoryError,
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
    """[0, 1] image -> [-1, 1] model units (docs/algorithm.md §1: x_model = 2*x01 - 1)."""
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
    pixels, max_value = _read_pixels(path, "image")
    x = torch.from_numpy(pixels.astype(np.float32) / np.float32(max_value))
    return x.permute(2, 0, 1).contiguous(), 16 if max_value > 255 else 8


def read_mask(source: PathLike | InputFile, max_pixels: int | None = None) -> torch.Tensor:
    """Read an inpainting mask (a path or an upload) as a (1, H, W) float32 tensor: 1 = observed, 0 = missing.

    Any nonzero pixel counts as observed (spec: masks store 255 = keep), so
    JPEG masks are unsafe: compression noise in black areas reads as observed.
    """
    pixels, _ = _read_pixels(source, "mask", max_pixels)
    observed = (pixels != 0).any(axis=-1)
    return torch.from_numpy(observed.astype(np.float32))[None]


def decode_image(data: bytes, what: str = "image", max_pixels: int | None = None) -> tuple[torch.Tensor, int]:
    """read_image_and_depth of a file's bytes in memory (an upload): ((3, H, W) in [0, 1], bit depth).

    what: names the input in messages (e.g. "image upload.png"); max_pixels: refuse
    larger images from the header, before decoding them.
    """
    pixels, max_value = _read_pixels(_upload(data, what), what.split(" ")[0], max_pixels)
    x = torch.from_numpy(pixels.astype(np.float32) / np.float32(max_value))
    return x.permute(2, 0, 1).contiguous(), 16 if max_value > 255 else 8


def decode_mask(data: bytes, what: str = "mask", max_pixels: int | None = None) -> torch.Tensor:
    """read_mask of a file's bytes in memory: (1, H, W), 1 = observed (any nonzero pixel)."""
    return read_mask(_upload(data, what), max_pixels)


@dataclass(frozen=True)
class Photo:
    """A picture as a user has it: what the restorer sees, and what goes back into the output.

    Attributes:
        rgb: (3, H, W) float32 in [0, 1], upright (EXIF orientation applied); grey pictures
            repeat their one channel (the prior is a 3-channel model).
        bit_depth: 8 or 16, the file's sample depth; the output keeps it.
        grayscale: the file had one colour channel; the output is grey again.
        alpha: (H, W) float32 in [0, 1] if the file had an alpha channel: carried through
            untouched (resized by pixel replication when the output is larger, as for SR).
    """

    rgb: torch.Tensor
    bit_depth: int
    grayscale: bool = False
    alpha: torch.Tensor | None = None

    def output(self, restored: torch.Tensor) -> torch.Tensor:
        """The restored (3, H', W') image in the file's layout: grey (the channels' mean) and/or
        with the alpha channel appended, (1 | 2 | 3 | 4, H', W')."""
        image = restored.mean(dim=0, keepdim=True) if self.grayscale else restored
        if self.alpha is None:
            return image
        alpha = self.alpha.to(image.device, image.dtype)
        h, w = image.shape[-2:]
        if alpha.shape != (h, w):
            if h % alpha.shape[0] or w % alpha.shape[1]:
                raise DiffPIRError(f"alpha: {alpha.shape[1]}x{alpha.shape[0]} does not scale to the {w}x{h} output")
            alpha = alpha.repeat_interleave(h // alpha.shape[0], 0).repeat_interleave(w // alpha.shape[1], 1)
        return torch.cat([image, alpha[None]])


def _photo(pixels: np.ndarray, max_value: int) -> Photo:
    values = torch.from_numpy(pixels.astype(np.float32) / np.float32(max_value)).permute(2, 0, 1).contiguous()
    channels = values.shape[0]
    alpha = values[-1] if channels in (2, 4) else None
    colour = values[:1].expand(3, -1, -1).contiguous() if channels <= 2 else values[:3].contiguous()
    return Photo(colour, 16 if max_value > 255 else 8, grayscale=channels <= 2, alpha=alpha)


def read_photo(source: PathLike | InputFile, max_pixels: int | None = None, what: str = "image") -> Photo:
    """Read a PNG / JPEG / TIFF (a path or an upload) as a Photo: upright, grey and alpha
    remembered, bit depth kept."""
    source = as_input(source, what)
    return _photo(*_decode_channels(source.source(), what, source.name, max_pixels))


def decode_photo(data: bytes, what: str = "image", max_pixels: int | None = None) -> Photo:
    """read_photo of a file's bytes in memory (an upload)."""
    return read_photo(_upload(data, what), max_pixels, what.split(" ")[0])


def read_measurement(source: PathLike | InputFile, max_pixels: int | None = None) -> Photo:
    """A measurement y as a Photo: an image file (upright, grey and alpha remembered, bit depth
    kept), or a (C, H, W) / (H, W) .npy in [0, 1], kept unclipped (16-bit output by default).
    The one reader of `diffpir restore`'s --input, the service's image field and batch jobs."""
    source = as_input(source, "input")
    # a file on disk is what its name says; an upload may have no telling name, so its header decides
    if source.suffix == ".npy" or (source.path is None and source.head(6) == b"\x93NUMPY"):
        array = read_npy(source, "input", ndim=(2, 3))
        if array.ndim == 2:
            array = array[None]
        if array.shape[0] not in (1, 3):
            raise DiffPIRError(f"input {source.name}: expected a (C, H, W) array with C in {{1, 3}}, got shape {array.shape}")
        if max_pixels is not None and array.shape[-1] * array.shape[-2] > max_pixels:
            raise TooLargeError(
                f"input {source.name}: {array.shape[-1]}x{array.shape[-2]} is more than {max_pixels:,} pixels are accepted"
            )
        if array.shape[0] == 1:
            array = np.repeat(array, 3, axis=0)
        photo = Photo(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), 16)
    else:
        photo = read_photo(source, max_pixels, "image")
    check_finite(photo.rgb, f"input {source.name}")
    return photo


def encode_image(x: torch.Tensor, fmt: str = "png", bit_depth: int = 8) -> bytes:
    """write_image's file as bytes: fmt "png" (8/16), "jpeg" (8) or "tiff" (8/16)."""
    suffix = "." + fmt.lower().lstrip(".")
    if suffix not in WRITE_FORMATS:
        raise DiffPIRError(f"format {fmt!r}: expected one of {', '.join(sorted({s[1:] for s in WRITE_FORMATS}))}")
    name, depths = WRITE_FORMATS[suffix]
    if bit_depth not in depths:
        raise DiffPIRError(f"format {fmt}: bit_depth {bit_depth} not possible for {name}; expected one of {depths}")
    return _encode(_quantise(x, bit_depth, Path(f"image{suffix}")), name, bit_depth)


def _upload(data: bytes, what: str) -> InputFile:
    """An upload named by `what` ("image upload.png": role "image", name "upload.png")."""
    role, _, name = what.partition(" ")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DiffPIRError(f"{what}: expected bytes, got {type(data).__name__}")
    return InputFile.from_bytes(name or "(upload)", bytes(data), role)


def _read_pixels(source: PathLike | InputFile, what: str, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """(H, W, 3) unsigned integer pixels and their full-scale value (255 or 65535)."""
    source = as_input(source, what)  # a folder, FIFO or device says so, and is never opened
    return _decode_pixels(source.source(), what, source.name, max_pixels)


@contextlib.contextmanager
def _quiet_decoders():
    """Pillow's and NumPy's warnings and tifffile's log lines silenced while a file is decoded:
    a bad file gives one error line (raised below), not a warning printed before it."""
    tiff_log = logging.getLogger("tifffile")
    disabled = tiff_log.disabled
    tiff_log.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        tiff_log.disabled = disabled


def _decode_channels(source: Path | bytes, what: str, label: object, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """All of a file's channels, (H, W, C) with C = 1 grey, 2 grey + alpha, 3 RGB or 4 RGBA,
    upright (its EXIF orientation applied), and the full-scale value; `label` names it in messages.

    max_pixels: refuse images with more pixels, from the header, before decoding them
    (default: paths.MAX_PIXELS; decompression bombs never reach the decoder).
    """
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    try:
        with _quiet_decoders(), Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.format not in READ_FORMATS:
                raise DiffPIRError(
                    f"{what} {label}: unsupported format {im.format}; expected one of {', '.join(READ_FORMATS)}"
                )
            if im.width * im.height > max_pixels:
                raise TooLargeError(
                    f"{what} {label}: {im.width}x{im.height} is {im.width * im.height:,} pixels; at most {max_pixels:,} are accepted"
                )
            if im.width < 1 or im.height < 1:
                raise DiffPIRError(f"{what} {label}: the image is {im.width}x{im.height}; it has no pixels")
            if im.format == "PNG" and _png_bit_depth(source) == 16:
                pixels = _read_png16(source, what, label)
            elif im.format == "TIFF" and max(_tiff_bits_per_sample(im)) > 8:
                pixels = _read_tiff16(source, what, label)
            else:  # 8-bit samples in any mode (palette, CMYK JPEG, ...), kept grey / alpha where present
                mode = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGBA": "RGBA", "RGBa": "RGBA", "PA": "RGBA"}.get(im.mode)
                if mode is None and im.mode == "P":
                    mode = "RGBA" if "transparency" in im.info else "RGB"
                pixels = np.asarray(im.convert(mode or "RGB"))
            orientation = _exif_orientation(im)
    except DiffPIRError:
        raise
    except _DECODE_ERRORS as e:
        if not (isinstance(e, UnidentifiedImageError) and _is_tiff(source)):
            raise _decode_error(what, label, e) from e
        # Pillow does not open every TIFF layout (16-bit grey + alpha, for one); tifffile does.
        pixels, orientation = _read_tiff16(source, what, label), 1
        if pixels.ndim >= 2 and pixels.shape[0] * pixels.shape[1] > max_pixels:
            raise TooLargeError(f"{what} {label}: more than {max_pixels:,} pixels are not accepted") from None
    if pixels.dtype == np.uint8:
        max_value = 255
    elif pixels.dtype == np.uint16:
        max_value = 65535
    else:
        raise DiffPIRError(f"{what} {label}: unsupported sample type {pixels.dtype}; expected 8- or 16-bit integers")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4) or 0 in pixels.shape:
        raise DiffPIRError(f"{what} {label}: unsupported pixel layout {pixels.shape}; expected grey or RGB(A)")
    return np.ascontiguousarray(upright(pixels, orientation)), max_value


def _decode_pixels(source: Path | bytes, what: str, label: object, max_pixels: int | None = None) -> tuple[np.ndarray, int]:
    """_decode_channels as (H, W, 3) RGB: grey repeated, alpha dropped (what the restorer sees)."""
    pixels, max_value = _decode_channels(source, what, label, max_pixels)
    return np.ascontiguousarray(_rgb(pixels)), max_value


def _rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[..., :1], 3, axis=-1) if pixels.shape[-1] <= 2 else pixels[..., :3]


#: EXIF orientation tag -> the array operation that shows the image upright.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, k=-1),
    7: lambda a: np.rot90(a, k=2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, k=1),
}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels as a viewer shows them, given the file's EXIF orientation (1..8)."""
    return _ORIENT.get(orientation, lambda a: a)(pixels)


def _exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (274) of an open image, 1 (as stored) when absent or unreadable."""
    try:
        value = int(im.getexif().get(274, 1))
    except Exception:  # noqa: BLE001 - a malformed EXIF block only loses the orientation
        return 1
    return value if 1 <= value <= 8 else 1


def _decode_error(what: str, path: object, e: BaseException) -> DiffPIRError:
    if isinstance(e, UnidentifiedImageError):
        return DiffPIRError(f"{what} {path}: not a PNG, JPEG, TIFF or WebP image (or a corrupt one)")
    if isinstance(e, MemoryError):
        return DiffPIRError(f"{what} {path}: too large to decode in the memory available")
    if isinstance(e, Image.DecompressionBombError):
        return TooLargeError(f"{what} {path}: declares too many pixels (a decompression bomb?); at most {MAX_PIXELS:,} are accepted")
    text = str(e).replace(" <_io.BytesIO object", "").split(" at 0x")[0] if "<_io.BytesIO" in str(e) else str(e)
    text = (text.strip().splitlines() or [""])[0].replace(str(path), "the file")
    detail = f"{type(e).__name__}: {text[:100]}" if text else type(e).__name__
    return DiffPIRError(f"{what} {path}: cannot decode, the file is corrupt or truncated ({detail})")


def _is_tiff(source: Path | bytes) -> bool:
    if isinstance(source, bytes):
        return source[:4] in (b"II*\x00", b"MM\x00*")
    with open(source, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*")


def _png_bit_depth(source: Path | bytes) -> int:
    """Bit depth byte of the IHDR chunk (Pillow has already checked that it is there)."""
    if isinstance(source, bytes):
        return source[24]
    with open(source, "rb") as f:
        return f.read(25)[24]


def _read_png16(source: Path | bytes, what: str, label: object = None) -> np.ndarray:
    """16-bit PNG via pypng: (H, W, planes) uint16."""
    png = _pypng()
    try:
        reader = png.Reader(bytes=source) if isinstance(source, bytes) else png.Reader(filename=str(source))
        width, height, rows, info = reader.asDirect()
        pixels = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except png.Error as e:  # pypng's own errors (not in _DECODE_ERRORS, which must not import it)
        raise _decode_error(what, source if label is None else label, e) from e
    pixels = pixels.reshape(height, width, info["planes"])
    if info["bitdepth"] != 16:  # an sBIT chunk made pypng rescale to fewer bits
        pixels = np.round(pixels * (65535 / (2 ** info["bitdepth"] - 1))).astype(np.uint16)
    return pixels


def _tiff_bits_per_sample(im: Image.Image) -> tuple[int, ...]:
    bits = im.tag_v2.get(258, (8,))  # BitsPerSample
    return tuple(bits) if isinstance(bits, (tuple, list)) else (int(bits),)


def _read_tiff16(source: Path | bytes, what: str = "image", label: object = None) -> np.ndarray:
    """16-bit TIFF via tifffile: the first page, samples last."""
    import tifffile  # lazy: only 16-bit TIFFs need it

    try:
        with _quiet_decoders(), tifffile.TiffFile(io.BytesIO(source) if isinstance(source, bytes) else source) as tif:
            if not len(tif.pages):
                raise DiffPIRError(f"{what} {label}: a TIFF without an image (no readable page)")
            page = tif.pages[0]
            if page.dtype is None or page.dtype.kind != "u" or page.dtype.itemsize > 2:
                # float, signed or 32-bit samples: refused from the header, before decoding
                raise DiffPIRError(f"{what} {label}: unsupported sample type {page.dtype}; expected 8- or 16-bit integers")
            if page.size > 4 * MAX_PIXELS:
                raise TooLargeError(f"{what} {label}: its first page holds {page.size:,} samples; at most {4 * MAX_PIXELS:,} are read")
            pixels = page.asarray()
            if page.axes == "SYX":  # planar configuration "separate"
                pixels = np.moveaxis(pixels, 0, -1)
    except DiffPIRError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile on arbitrary bytes raises IndexError, KeyError, TypeError, ...
        raise _decode_error(what, label, e) from e
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
    check_finite(array, f"the array to write to {out}")
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
    if "\0" in str(out):
        raise DiffPIRError(f"output {shown(str(out))!r}: the name contains a NUL byte")
    try:
        is_dir = out.is_dir()
    except (OSError, ValueError) as e:  # a name too long, an embedded NUL byte
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DiffPIRError(f"output {shown(out)}: not a usable file name ({reason.lower()})") from None
    if is_dir:
        raise DiffPIRError(f"output {shown(out)}: is a directory; expected a file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for parent in out.parents:  # "File exists" / "Not a directory" mean: a parent is a file
            if os.path.lexists(parent):
                if not os.path.isdir(parent):
                    raise DiffPIRError(f"output {shown(out)}: {shown(parent)} is a file, not a folder") from None
                break
        raise DiffPIRError(f"output {shown(out)}: cannot create the folder {shown(out.parent)} ({e.strerror or e})") from None


def _refuse_protected(out: Path, protect: Iterable[PathLike] | PathLike) -> None:
    if isinstance(protect, (str, os.PathLike)):  # one path, not an iterable of characters
        protect = [protect]
    from .paths import same_file

    for p in protect:
        q = Path(p)
        if same_file(out, q):
            raise DiffPIRError(f"output {shown(out)}: is the input {shown(q)}; refusing to overwrite an input")


def _quantise(x: torch.Tensor, bit_depth: int, out: Path) -> np.ndarray:
    """(C, H, W) or (1, C, H, W) tensor -> (H, W, C) uint8/uint16 array."""
    if not isinstance(x, torch.Tensor):
        raise DiffPIRError(f"output {out}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 2, 3, 4) or x.shape[1] == 0 or x.shape[2] == 0:
        raise DiffPIRError(
            f"output {out}: image shape {tuple(x.shape)}; expected (C, H, W) or (1, C, H, W), C in 1..4 (grey/RGB, +alpha)"
        )
    if x.shape[0] in (2, 4) and out.suffix.lower() in (".jpg", ".jpeg"):
        raise DiffPIRError(f"output {out}: JPEG cannot store the input's alpha channel; write a .png or .tif")
    check_finite(x, f"the image to write to {out}")
    full_scale = 2**bit_depth - 1
    # float64: round(x*255) is the exact product of the stored value, not a float32 rounding of it
    values = x.detach().to("cpu", torch.float64).clamp(0, 1).permute(1, 2, 0).numpy()
    return np.round(values * full_scale).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _encode(pixels: np.ndarray, fmt: str, bit_depth: int) -> bytes:
    """The whole file in memory, so nothing touches the disk until encoding has succeeded."""
    height, width, channels = pixels.shape
    buffer = io.BytesIO()
    if bit_depth == 8:
        im = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode={1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels])
        options: dict = {"quality": JPEG_QUALITY} if fmt == "JPEG" else {}
        if fmt == "WEBP":  # RGB(A) only; lossless, so the file holds exactly the restored pixels
            im = im.convert("RGBA" if channels in (2, 4) else "RGB")
            options = {"lossless": True}
        im.save(buffer, format=fmt, **options)
    elif fmt == "PNG":
        writer = _pypng().Writer(width, height, greyscale=channels <= 2, alpha=channels in (2, 4), bitdepth=16)
        writer.write(buffer, pixels.reshape(height, width * channels))
    else:
        import tifffile  # lazy: only 16-bit TIFF output needs it

        if channels == 1:
            tifffile.imwrite(buffer, pixels[..., 0], photometric="minisblack")
        else:
            extra = {"extrasamples": ["unassalpha"]} if channels in (2, 4) else {}
            tifffile.imwrite(buffer, pixels, photometric="rgb" if channels >= 3 else "minisblack", **extra)
    return buffer.getvalue()


def _write_atomic(out: Path, data: bytes) -> None:
    """Write `data` to a fresh temp file beside `out`, then os.replace it into place."""
    tmp = temporary_name(out)
    try:
        # os.open with mode 0o666 lets the umask set the final permissions, as a plain open would
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise DiffPIRError(f"output {shown(out)}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
