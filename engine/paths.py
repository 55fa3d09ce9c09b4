"""Files in and out, checked in one place: what a command reads, and what it may write.

Inputs: `check_input_file` says precisely what is wrong with a path (missing, a folder,
a FIFO or device, unreadable, a name the file system cannot hold) instead of a
traceback from deep inside a reader; `read_npy` checks an .npy header (dtype, shape,
size) before it allocates anything.

Outputs: an `OutputPlan` collects every path a command will write (main output, run
record, saved kernel or mask, reports) and checks them against every input and against
each other before anything is written; `transaction()` removes whatever the command
wrote if it fails halfway, so on any error nothing new exists. Each file is written
atomically (a temporary file in the same folder, then os.replace).
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence, Union

import numpy as np

from diffpir_rt.errors import DiffPIRError, TooLargeError

PathLike = Union[str, "os.PathLike[str]"]
#: Largest image an input may be (pixels): 64 megapixels, checked from a file's header.
MAX_PIXELS = 64 * 1024 * 1024
#: Largest array an .npy input may declare (elements): 64 megapixels x 4 channels.
MAX_NPY_ELEMENTS = MAX_PIXELS * 4
#: Paths longer than this are shortened in messages (the middle elided).
SHOWN_PATH_CHARS = 120


def shown(path: PathLike) -> str:
    """A path as messages print it: long ones with the middle elided, so a line stays short."""
    text = os.fspath(path) if not isinstance(path, str) else path
    if len(text) <= SHOWN_PATH_CHARS:
        return text
    return f"{text[:60]}...{text[-40:]}"


def _stat(path: Path, what: str) -> Optional[os.stat_result]:
    """os.stat, with the OS errors a hostile name can raise turned into one-line messages.

    None when nothing is there (or a parent is not a folder): callers say why.
    """
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except ValueError:  # an embedded NUL byte: no file system can hold the name
        raise DiffPIRError(f"{what} {shown(path)}: the name contains a NUL byte") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise DiffPIRError(f"{what} {shown(path)}: the file name is longer than the file system allows") from None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise DiffPIRError(f"{what} {shown(path)}: permission denied") from None
        if e.errno == errno.ELOOP:
            raise DiffPIRError(f"{what} {shown(path)}: a symbolic link loop") from None
        raise DiffPIRError(f"{what} {shown(path)}: cannot be examined ({e.strerror})") from None


def _why_missing(path: Path) -> str:
    """' (a broken symbolic link)', ' (X is a file, not a folder)' or '' for a path with nothing there."""
    try:
        if os.path.islink(path):
            return " (a broken symbolic link)"
        for parent in path.parents:
            if os.path.lexists(parent):
                return "" if os.path.isdir(parent) else f" ({shown(parent)} is a file, not a folder)"
    except (OSError, ValueError):
        pass
    return ""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input_file(path: PathLike, what: str) -> Path:
    """A regular, readable, non-empty file, or a DiffPIRError naming what the path is instead.

    Nothing is opened: a FIFO or a device is refused from its metadata, so a read never blocks.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise DiffPIRError(f"{what}: expected a file path, got {type(path).__name__}")
    path = Path(path)
    if not os.fspath(path):
        raise DiffPIRError(f"{what}: the path is empty")
    info = _stat(path, what)
    if info is None:
        raise DiffPIRError(f"{what} {shown(path)}: no such file{_why_missing(path)}")
    if not stat.S_ISREG(info.st_mode):
        raise DiffPIRError(f"{what} {shown(path)}: is {_kind(info.st_mode)}; expected a regular file")
    if info.st_size == 0:
        raise DiffPIRError(f"{what} {shown(path)}: the file is empty")
    if not os.access(path, os.R_OK):
        raise DiffPIRError(f"{what} {shown(path)}: permission denied")
    return path


def same_file(a: Path, b: Path) -> bool:
    """True if a and b name the same file (resolved spelling, or the same inode once both exist)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError, ValueError):
        pass
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class InputFile:
    """A user's input file, on disk or uploaded: every reader of the engine takes either.

    The command line names files by path, the service receives their bytes; both become an
    InputFile, and one reader (kernel, mask, measurement, .npy) decodes it, with the same
    checks and the same messages, which name `name` (the path as shown, or the upload's name).
    """

    name: str
    path: Optional[Path] = None
    data: Optional[bytes] = None

    @classmethod
    def from_path(cls, path: PathLike, what: str) -> "InputFile":
        """A checked file on disk (see check_input_file)."""
        checked = check_input_file(path, what)
        return cls(shown(checked), path=checked)

    @classmethod
    def from_bytes(cls, name: str, data: bytes, what: str) -> "InputFile":
        """An upload; empty data is refused as an empty file is."""
        if not isinstance(data, (bytes, bytearray)):
            raise DiffPIRError(f"{what} {name}: expected the file's bytes, got {type(data).__name__}")
        if not data:
            raise DiffPIRError(f"{what} {name}: the file is empty")
        return cls(name, data=bytes(data))

    @property
    def suffix(self) -> str:
        return Path(self.path if self.path is not None else self.name).suffix.lower()

    def open(self) -> BinaryIO:
        """A binary file object on the contents (the caller closes it)."""
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data or b"")

    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data or b"")

    def head(self, n: int) -> bytes:
        with self.open() as f:
            return f.read(n)

    def source(self) -> Union[Path, bytes]:
        """What the image decoders take: the path, or the bytes."""
        return self.path if self.path is not None else (self.data or b"")


def as_input(source: Union[PathLike, InputFile], what: str) -> InputFile:
    """An InputFile for a path (checked) or an InputFile as it is."""
    return source if isinstance(source, InputFile) else InputFile.from_path(source, what)


# ----------------------------------------------------------------------------- .npy


_NUMERIC_KINDS = "buif"
_KIND_NAMES = {
    "c": "complex numbers",
    "U": "text (a string array)",
    "S": "bytes (a bytes array)",
    "V": "raw bytes (a void array)",
    "M": "dates (datetime64)",
    "m": "time spans (timedelta64)",
}


def read_npy_array(
    path: Union[PathLike, InputFile], what: str, ndim: Sequence[int] = (2, 3), max_elements: int = MAX_NPY_ELEMENTS
) -> np.ndarray:
    """A real numeric .npy array in its stored dtype, checked from its header before any data is read.

    Refused, each with its own message: an empty or truncated file, an .npz or other
    format under an .npy name, pickled object arrays (never unpickled), complex, string,
    bytes, void, structured or datetime dtypes, a declared size beyond `max_elements`,
    zero-size arrays, the wrong number of dimensions.
    """
    source = as_input(path, what)
    name = source.name
    try:
        with source.open() as f:
            magic = f.read(6)
            if magic[:4] == b"PK\x03\x04":
                raise DiffPIRError(f"{what} {name}: is a zip (.npz) archive, not an .npy array")
            if magic != b"\x93NUMPY":
                raise DiffPIRError(f"{what} {name}: not an .npy file (no NumPy header)")
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)  # header only
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # 3.0 exists only for structured dtypes with non-ASCII names
                    raise DiffPIRError(f"{what} {name}: .npy format {version[0]}.{version[1]} is not read; save a plain numeric array")
            except DiffPIRError:
                raise
            except Exception:  # numpy's header parser on arbitrary bytes: ValueError, SyntaxError, ...
                raise DiffPIRError(f"{what} {name}: the .npy header is corrupt") from None
            if not isinstance(shape, tuple) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape):
                raise DiffPIRError(f"{what} {name}: the .npy header is corrupt (shape {shape!r})")
            if dtype.hasobject:
                raise DiffPIRError(f"{what} {name}: holds Python objects (a pickle), which are never loaded; save a numeric array")
            if dtype.fields is not None:
                raise DiffPIRError(f"{what} {name}: is a structured (record) array; expected plain real numbers")
            if dtype.kind not in _NUMERIC_KINDS:
                kind = _KIND_NAMES.get(dtype.kind, f"dtype {dtype}")
                raise DiffPIRError(f"{what} {name}: holds {kind} (dtype {dtype.str}); expected real numbers")
            count = math.prod(shape)
            if count == 0:
                raise DiffPIRError(f"{what} {name}: the array is empty (shape {shape})")
            if count > max_elements:
                raise TooLargeError(f"{what} {name}: declares {count:,} values (shape {shape}); at most {max_elements:,} are read")
            if len(shape) not in ndim:
                raise DiffPIRError(f"{what} {name}: expected {' or '.join(f'{n}-D' for n in ndim)}, got shape {shape}")
            size = count * dtype.itemsize
            data = f.read(size)
            if len(data) != size:
                raise DiffPIRError(f"{what} {name}: truncated ({len(data):,} of {size:,} data bytes)")
    except OSError as e:
        raise DiffPIRError(f"{what} {name}: cannot be read ({e.strerror or e})") from None
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def read_npy(
    path: Union[PathLike, InputFile], what: str, ndim: Sequence[int] = (2, 3), max_elements: int = MAX_NPY_ELEMENTS
) -> np.ndarray:
    """A numeric .npy array as float64 (see `read_npy_array` for what is refused).

    Integer arrays are scaled by their type's range (uint8 255 -> 1.0, uint16 65535 -> 1.0),
    as image files are; bool becomes 0/1. Floats must be finite and within float32's range
    (the engine computes in float32).
    """
    source = as_input(path, what)
    array = read_npy_array(source, what, ndim, max_elements)
    if array.dtype.kind == "b":
        return array.astype(np.float64)
    if array.dtype.kind in "ui":
        return array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    return check_float_values(array, f"{what} {source.name}").astype(np.float64)


def check_float_values(array: np.ndarray, name: str) -> np.ndarray:
    """`array` if every value is finite and within float32's range, else a DiffPIRError saying which
    (checked in the array's own precision, so a float128 beyond float64 is named as such)."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(array)
        if not finite.all():
            raise DiffPIRError(f"{name}: {int((~finite).sum())} NaN or Inf value(s); expected finite values")
        largest = np.abs(array).max() if array.size else 0.0
        if largest > np.finfo(np.float32).max:
            raise DiffPIRError(f"{name}: values up to {float(largest):.3g} exceed the float32 range")
    return array


# ----------------------------------------------------------------------------- outputs

#: Most bytes a file name may have on the file systems this runs on (ext4, xfs, tmpfs, APFS).
NAME_MAX = 255


def temporary_name(out: Path) -> Path:
    """The temporary file beside `out` that an atomic write goes through (a short, unique name)."""
    return out.with_name(f".{out.name[:64]}.{uuid.uuid4().hex[:12]}.tmp")


class OutputPlan:
    """Every path a command writes, checked against its inputs and each other up front.

    `add` refuses, before anything is written: a name ending in a separator or naming a
    folder, a wrong suffix, an existing folder / FIFO / device, a name the file system
    cannot hold, a parent that is a file, a folder that cannot be written (tried by
    creating and removing a temporary file there, so read-only mounts are found too), an
    input in any spelling (symlink, relative path, hard link), another output.

    Args:
        inputs: the command's input files (None entries are skipped).
    """

    def __init__(self, inputs: Sequence[Optional[PathLike]]) -> None:
        self.inputs: list[Path] = [Path(p) for p in inputs if p is not None]
        self.outputs: list[tuple[Path, str]] = []
        self._writable: set[Path] = set()

    def add(self, path: PathLike, what: str, suffixes: Optional[Sequence[str]] = None) -> Path:
        """Check one output path and keep it; returns it as a Path."""
        if not isinstance(path, (str, os.PathLike)):
            raise DiffPIRError(f"{what}: expected a file path, got {type(path).__name__}")
        text = os.fspath(path)
        out = Path(text)
        if text.endswith(("/", os.sep)) or out.name in ("", ".", ".."):
            raise DiffPIRError(f"{what} {shown(text)}: names a folder; expected a file name")
        info = _stat(out, what)
        if info is not None and stat.S_ISDIR(info.st_mode):  # said first: a folder's "suffix" means nothing
            raise DiffPIRError(f"{what} {shown(out)}: is a folder; expected a file name")
        if suffixes is not None and out.suffix.lower() not in suffixes:
            found = repr(out.suffix) if out.suffix else "none"
            raise DiffPIRError(f"{what} {shown(out)}: unsupported suffix {found}; expected one of {', '.join(suffixes)}")
        if len(os.fsencode(out.name)) > NAME_MAX:
            raise DiffPIRError(f"{what} {shown(out)}: the file name is longer than the file system allows ({NAME_MAX} bytes)")
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise DiffPIRError(f"{what} {shown(out)}: exists and is {_kind(info.st_mode)}; expected a regular file or a new name")
        folder = self._existing_folder(out, what)
        self._check_writable(folder, out, what)
        for source in self.inputs:
            if same_file(out, source):
                raise DiffPIRError(f"{what} {shown(out)}: is the input {shown(source)}; refusing to overwrite an input")
        for other, other_what in self.outputs:
            if same_file(out, other):
                raise DiffPIRError(f"{what} {shown(out)}: is also {other_what}; each output needs its own path")
        self.outputs.append((out, what))
        return out

    @staticmethod
    def _existing_folder(out: Path, what: str) -> Path:
        """The nearest existing ancestor of `out` (the writes create the folders below it)."""
        for parent in out.parents if str(out.parent) not in ("", ".") else [Path(".")]:
            info = _stat(parent, what)
            if info is None:
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise DiffPIRError(f"{what} {shown(out)}: {shown(parent)} is a file, not a folder")
            return parent
        return Path(".")

    def _check_writable(self, folder: Path, out: Path, what: str) -> None:
        if folder in self._writable:
            return
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DiffPIRError(f"{what} {shown(out)}: the folder {shown(folder)} is not writable")
        probe = folder / f".diffpir-probe-{uuid.uuid4().hex[:12]}.tmp"
        try:  # as root, os.access says yes to read-only mounts, /sys, /proc: try it
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as e:
            reason = (e.strerror or str(e)).lower()
            raise DiffPIRError(f"{what} {shown(out)}: cannot write in the folder {shown(folder)} ({reason})") from None
        with contextlib.suppress(OSError):
            os.unlink(probe)
        self._writable.add(folder)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["OutputPlan"]:
        """Write inside this block, all or nothing: on any exception, outputs it created are
        removed (and the folders it created for them, if left empty), and outputs that existed
        before get their earlier content back (kept aside as a hard link, or a copy, meanwhile)."""
        import shutil

        kept: dict[Path, Path] = {}
        created: list[Path] = []
        missing_folders: list[Path] = []
        try:
            for out, _ in self.outputs:
                if os.path.isfile(out) and not os.path.islink(out):
                    backup = temporary_name(out)
                    try:
                        os.link(out, backup)
                    except OSError:
                        shutil.copy2(out, backup)
                    kept[out] = backup
                elif not os.path.lexists(out):
                    created.append(out)
                for parent in out.parents:
                    if os.path.lexists(parent):
                        break
                    if parent not in missing_folders:
                        missing_folders.append(parent)
        except OSError as e:
            for backup in kept.values():
                with contextlib.suppress(OSError):
                    backup.unlink()
            raise DiffPIRError(f"cannot keep the earlier {shown(out)} aside while writing ({e.strerror or e})") from None
        try:
            yield self
        except BaseException:
            for out in created:
                with contextlib.suppress(OSError):
                    out.unlink()
            for out, backup in kept.items():
                with contextlib.suppress(OSError):
                    os.replace(backup, out)
            for folder in sorted(missing_folders, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        for backup in kept.values():
            with contextlib.suppress(OSError):
                backup.unlink()
