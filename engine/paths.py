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
import os
import stat
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from diffpir_rt.errors import DiffPIRError

PathLike = Union[str, "os.PathLike[str]"]
#: Largest array an .npy input may declare (elements): 64 megapixels x 4 channels.
MAX_NPY_ELEMENTS = 64 * 1024 * 1024 * 4


def _stat(path: Path, what: str) -> Optional[os.stat_result]:
    """os.stat, with the OS errors a hostile name can raise turned into one-line messages."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            raise DiffPIRError(f"{what} {str(path)[:80]}...: the file name is longer than the file system allows") from None
        if e.errno == errno.ENOTDIR:
            return None
        if e.errno in (errno.EACCES, errno.EPERM):
            raise DiffPIRError(f"{what} {path}: permission denied") from None
        if e.errno == errno.ELOOP:
            raise DiffPIRError(f"{what} {path}: a symbolic link loop") from None
        raise DiffPIRError(f"{what} {path}: cannot be examined ({e.strerror})") from None


def check_input_file(path: PathLike, what: str) -> Path:
    """A regular, readable file, or a DiffPIRError naming what the path is instead."""
    path = Path(path)
    info = _stat(path, what)
    if info is None:
        raise DiffPIRError(f"{what} {path}: no such file")
    if stat.S_ISDIR(info.st_mode):
        raise DiffPIRError(f"{what} {path}: is a folder; expected a file")
    if not stat.S_ISREG(info.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(info.st_mode) else "a device" if (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file"
        raise DiffPIRError(f"{what} {path}: is {kind}; expected a regular file")
    if info.st_size == 0:
        raise DiffPIRError(f"{what} {path}: the file is empty")
    if not os.access(path, os.R_OK):
        raise DiffPIRError(f"{what} {path}: permission denied")
    return path


def same_file(a: Path, b: Path) -> bool:
    """True if a and b name the same file (resolved spelling, or the same inode once both exist)."""
    try:
        if a.resolve() == b.resolve():
            return True
    except (OSError, RuntimeError):
        pass
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


# ----------------------------------------------------------------------------- .npy


_NUMERIC_KINDS = "buif"


def read_npy(path: PathLike, what: str, ndim: Sequence[int] = (2, 3), max_elements: int = MAX_NPY_ELEMENTS) -> np.ndarray:
    """A numeric .npy array as float64, checked from its header before any data is read.

    Refused, each with its own message: an empty or truncated file, an .npz or other
    format under an .npy name, pickled object arrays (never unpickled), complex, string,
    structured or datetime dtypes, a declared size beyond `max_elements`, zero-size
    arrays, the wrong number of dimensions. Integer arrays are scaled by their type's
    range (uint8 255 -> 1.0), as images are; bool becomes 0/1.
    """
    path = check_input_file(path, what)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic[:4] == b"PK\x03\x04":
                raise DiffPIRError(f"{what} {path}: is a zip (.npz) archive, not an .npy array")
            if magic != b"\x93NUMPY":
                raise DiffPIRError(f"{what} {path}: not an .npy file (no NumPy header)")
            f.seek(0)
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)  # header only
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:  # 3.0 exists only for structured dtypes with non-ASCII names
                    raise DiffPIRError(f"{what} {path}: .npy format {version[0]}.{version[1]} is not read; save a plain numeric array")
            except (ValueError, SyntaxError, EOFError, TypeError, KeyError, OverflowError, MemoryError):
                raise DiffPIRError(f"{what} {path}: the .npy header is corrupt") from None
            if dtype.hasobject:
                raise DiffPIRError(f"{what} {path}: holds Python objects (a pickle); only numeric arrays are read")
            if dtype.fields is not None or dtype.kind not in _NUMERIC_KINDS:
                raise DiffPIRError(f"{what} {path}: dtype {dtype} is not a real number type")
            if len(shape) not in ndim:
                raise DiffPIRError(f"{what} {path}: expected {' or '.join(f'{n}-D' for n in ndim)}, got shape {shape}")
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if count == 0:
                raise DiffPIRError(f"{what} {path}: the array is empty (shape {shape})")
            if count > max_elements:
                raise DiffPIRError(f"{what} {path}: declares {count:,} values (shape {shape}); at most {max_elements:,} are read")
            data = f.read(count * dtype.itemsize)
            if len(data) != count * dtype.itemsize:
                raise DiffPIRError(f"{what} {path}: truncated ({len(data)} of {count * dtype.itemsize} data bytes)")
    except OSError as e:
        raise DiffPIRError(f"{what} {path}: cannot be read ({e.strerror})") from None
    array = np.frombuffer(data, dtype=dtype)
    array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
    if dtype.kind == "b":
        return array.astype(np.float64)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return array.astype(np.float64) / float(info.max)
    out = array.astype(np.float64)
    if not np.isfinite(out).all():
        raise DiffPIRError(f"{what} {path}: {int((~np.isfinite(out)).sum())} NaN or Inf value(s); expected finite values")
    return out


# ----------------------------------------------------------------------------- outputs


class OutputPlan:
    """Every path a command writes, checked against its inputs and each other up front.

    Args:
        inputs: the command's input files (None entries are skipped). No output may be
            one of them, in any spelling (symlink, relative path, hard link).
    """

    def __init__(self, inputs: Sequence[Optional[PathLike]]) -> None:
        self.inputs: list[Path] = [Path(p) for p in inputs if p is not None]
        self.outputs: list[tuple[Path, str]] = []

    def add(self, path: PathLike, what: str, suffixes: Optional[Sequence[str]] = None) -> Path:
        """Check one output path and keep it; returns it as a Path."""
        text = os.fspath(path)
        out = Path(text)
        if text.endswith(("/", os.sep)) or text in ("", "."):
            raise DiffPIRError(f"{what} {text}: names a folder; expected a file name")
        if suffixes is not None and out.suffix.lower() not in suffixes:
            raise DiffPIRError(f"{what} {out}: unsupported suffix {out.suffix!r}; expected one of {', '.join(suffixes)}")
        info = _stat(out, what)
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise DiffPIRError(f"{what} {out}: is a folder; expected a file name")
        if info is not None and not stat.S_ISREG(info.st_mode):
            raise DiffPIRError(f"{what} {out}: exists and is not a regular file")
        parent = out.parent if str(out.parent) else Path(".")
        parent_info = _stat(parent, what)
        if parent_info is not None and not stat.S_ISDIR(parent_info.st_mode):
            raise DiffPIRError(f"{what} {out}: its parent {parent} is a file, not a folder")
        for existing in (*parent.parents, parent) if parent_info is None else ():
            info_up = _stat(existing, what)
            if info_up is not None and not stat.S_ISDIR(info_up.st_mode):
                raise DiffPIRError(f"{what} {out}: {existing} is a file, not a folder")
        if parent_info is not None and not os.access(parent, os.W_OK | os.X_OK):
            raise DiffPIRError(f"{what} {out}: the folder {parent} is not writable")
        for source in self.inputs:
            if same_file(out, source):
                raise DiffPIRError(f"{what} {out}: is the input {source}; refusing to overwrite an input")
        for other, other_what in self.outputs:
            if same_file(out, other):
                raise DiffPIRError(f"{what} {out}: is also {other_what}; each output needs its own path")
        self.outputs.append((out, what))
        return out

    @contextlib.contextmanager
    def transaction(self) -> Iterator["OutputPlan"]:
        """Write inside this block; on any exception, outputs it created are removed."""
        existed = {out: out.exists() for out, _ in self.outputs}
        try:
            yield self
        except BaseException:
            for out, _ in self.outputs:
                if not existed[out]:
                    with contextlib.suppress(OSError):
                        out.unlink()
            raise
