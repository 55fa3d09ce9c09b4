"""The hostile-input contract, checked around one in-process run of an entry point.

For every case: the exit code is 0 with a valid output, or 2 with one line on stderr (at
most ~200 characters once the user's own paths are set aside) and no traceback; the run
ends within a time limit; every file that existed before has the same bytes after; on
failure no new file or folder exists; on success only the declared outputs are new.
Warnings (Python's, and log records at WARNING or above) count as stderr lines.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import signal
import stat
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

#: What a one-line message may hold once the user's own arguments are replaced by "<arg>".
MAX_MESSAGE = 200
#: Seconds one case may take (in-process: a SIGALRM ends it); the cases take well under one.
TIME_LIMIT = 60.0


class TimeLimit(BaseException):
    """Raised inside the run when the time limit is reached (a hang). A BaseException, so an
    entry point's own `except Exception` (a benchmark that keeps going) cannot swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeLimit(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(roots: Iterable[Path], hash_limit: int = 1 << 20) -> dict[str, tuple]:
    """Every entry under `roots` (not following symlinks): kind plus content identity.

    Regular files up to `hash_limit` bytes are hashed; larger ones are identified by
    (inode, size, mtime_ns), which an atomic replace or a write changes. FIFOs, sockets
    and devices are recorded by kind only and never opened.
    """
    entries: dict[str, tuple] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    children = list(it)
            except OSError:
                continue
            for entry in children:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    entries[entry.path] = ("dir",)
                    stack.append(entry.path)
                elif stat.S_ISLNK(info.st_mode):
                    entries[entry.path] = ("link", os.readlink(entry.path))
                elif stat.S_ISREG(info.st_mode):
                    if info.st_size <= hash_limit:
                        try:
                            with open(entry.path, "rb") as f:
                                digest = hashlib.sha256(f.read()).hexdigest()
                        except OSError:
                            digest = "unreadable"
                        entries[entry.path] = ("file", digest)
                    else:
                        entries[entry.path] = ("file", info.st_ino, info.st_size, info.st_mtime_ns)
                else:
                    entries[entry.path] = ("special", stat.S_IFMT(info.st_mode))
    return entries


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"[{record.levelname}] {record.getMessage()}")


@dataclass
class Outcome:
    """What one run did."""

    code: Optional[int]
    out: str
    err: str
    escaped: Optional[str]  # the traceback of an exception that escaped the entry point
    new: list[str]
    changed: list[str]
    removed: list[str]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lines(self) -> list[str]:
        """What a user would see on stderr: warnings, log lines, then what was printed."""
        return [*self.warnings, *self.err.splitlines()]


def run(entry: Callable[[], Any], roots: Sequence[Path], limit: float = TIME_LIMIT) -> Outcome:
    """Call `entry()` (returns an exit code, or raises) with stdout/stderr captured, warnings
    and log records collected, under a time limit, and compare `roots` before and after."""
    before = snapshot(roots)
    out, err = io.StringIO(), io.StringIO()
    records = _Records()
    root_logger = logging.getLogger()
    root_logger.addHandler(records)
    escaped = None
    code: Optional[int] = None
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), time_limit(limit):
                result = entry()
            code = int(result) if result is not None else 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - anything that escapes is a traceback for the user
            escaped = traceback.format_exc()
        finally:
            root_logger.removeHandler(records)
    seconds = time.perf_counter() - start
    after = snapshot(roots)
    changed = [p for p in before if p in after and before[p] != after[p]]
    removed = [p for p in before if p not in after]
    new = [p for p in after if p not in before]
    messages = [f"[{w.category.__name__}] {w.message}" for w in caught] + records.lines
    return Outcome(code, out.getvalue(), err.getvalue(), escaped, sorted(new), changed, removed, messages, seconds)


def run_cli(argv: Sequence[str], roots: Sequence[Path], limit: float = TIME_LIMIT) -> Outcome:
    from diffpir_rt.cli import main

    return run(lambda: main(list(argv)), roots, limit)


def message_length(line: str, argv: Sequence[str], roots: Sequence[Path] = ()) -> int:
    """Length of an error line's message with the user's own arguments set aside."""
    from diffpir_rt.engine.paths import shown
    from diffpir_rt.errors import one_line

    message = line.split(": error: ", 1)[-1]
    pieces: set[str] = set()
    for arg in [*map(str, argv), *map(str, roots)]:
        if len(arg) >= 3:
            for form in (arg, one_line(arg), shown(arg), repr(arg), os.path.abspath(arg) if "\0" not in arg else arg):
                pieces.add(form)
    for piece in sorted(pieces, key=len, reverse=True):
        message = message.replace(piece, "<arg>")
    return len(message)


def describe(o: Outcome) -> str:
    return (
        f"code {o.code}\nstderr lines: {o.lines!r}\nstdout: {o.out[-500:]!r}\nnew: {o.new}\nchanged: {o.changed}\n"
        f"removed: {o.removed}\nseconds: {o.seconds:.2f}\n{o.escaped or ''}"
    )


def check_contract(
    o: Outcome,
    argv: Sequence[str] = (),
    *,
    expect: Optional[str] = None,
    outputs: Sequence[Path] = (),
    roots: Sequence[Path] = (),
) -> None:
    """Assert the hostile-input contract for one outcome.

    Args:
        expect: "ok" (must succeed), "any" (either is fine), or a substring the error
            line must contain (must fail); None = "any".
        outputs: what a success may create (each checked to be a readable, finite image
            or array; a success must create at least the first one).
    """
    info = describe(o)
    assert o.escaped is None, f"an exception escaped (a traceback for the user):\n{info}"
    assert o.code in (0, 2), f"exit code {o.code}, expected 0 or 2\n{info}"
    declared = {str(p) for p in outputs} | {str(p) + ".json" for p in outputs}
    # an existing output may be replaced by a success; nothing else, and nothing on failure
    touched = [p for p in o.changed if o.code != 0 or p not in declared]
    assert not touched, f"existing files were modified: {touched}\n{info}"
    assert not o.removed, f"existing files were removed: {o.removed}\n{info}"
    assert "Traceback" not in o.err, info
    if o.code == 2:
        assert expect != "ok", f"expected success\n{info}"
        assert len(o.lines) == 1 and o.err.endswith("\n"), f"expected exactly one stderr line\n{info}"
        assert message_length(o.lines[0], argv, roots) <= MAX_MESSAGE, f"message too long ({len(o.lines[0])})\n{info}"
        assert not o.new, f"a failing command left new files: {o.new}\n{info}"
        if expect not in (None, "any", "ok"):
            assert expect.lower() in o.err.lower(), f"expected {expect!r} in the message\n{info}"
    else:
        assert expect in (None, "any", "ok"), f"expected an error containing {expect!r}, got success\n{info}"
        stray = [p for p in o.new if p not in declared and not any(str(a).startswith(p + os.sep) for a in outputs)]
        assert not stray, f"a successful command left unexpected files: {stray}\n{info}"
        if outputs:
            assert os.path.isfile(outputs[0]), f"no output {outputs[0]}\n{info}"
            check_output_file(Path(outputs[0]))


def check_output_file(path: Path) -> None:
    """The output is a readable image or a finite .npy array."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        assert array.size and np.isfinite(array).all(), f"{path}: not a finite array"
    elif path.suffix.lower() == ".onnx":
        assert path.stat().st_size > 0
    else:
        from diffpir_rt.engine.imageio import read_image

        x = read_image(path)
        assert x.ndim == 3 and x.shape[0] == 3 and x.numel() > 0
