"""Progress of long work, on a terminal and in logs alike.

On a terminal: a tqdm bar with rate and ETA. Piped (a log file, a CI job, a service's
stderr): one plain line at most every `interval` seconds and one at the end, so a
minutes-long run is never silent and never floods the log with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, TextIO


class Progress:
    """Counts `total` units of work; use as a context manager or call close().

    Args:
        total: units expected (e.g. UNet calls).
        desc: what is being done, shown first.
        unit: the unit's name.
        enabled: False prints nothing at all (--quiet).
        stream: where to write (default stderr).
        interval: seconds between plain-text lines when not on a terminal.
    """

    def __init__(
        self, total: int, desc: str, unit: str = "step", enabled: bool = True,
        stream: Optional[TextIO] = None, interval: float = 10.0,
    ) -> None:  # fmt: skip
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.interval = interval
        self.done = 0
        self.start = time.monotonic()
        self._last_line = self.start
        self._printed = -1  # `done` when the last plain line was printed: the final one is never printed twice
        self._bar: Any = None
        if enabled and self.stream.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._line(now)

    def _line(self, now: float) -> None:
        self._printed = self.done
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 and self.total else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), {elapsed:.0f} s elapsed, "
              f"ETA {eta:.0f} s", file=self.stream, flush=True)  # fmt: skip

    def callback(self, info: dict[str, Any]) -> None:
        """A sampler callback: one step done."""
        self.update(1)

    def write(self, line: str, file: Optional[TextIO] = None) -> None:
        """A result line (stdout by default: one per finished image) that does not break the bar."""
        file = file or sys.stdout
        if self._bar is not None:
            self._bar.write(line, file=file)
        else:
            print(line, file=file, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.done and self.done != self._printed and time.monotonic() - self.start >= self.interval:
            self._line(time.monotonic())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
