"""argparse types shared by every command line of the project (one range check, one message)."""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable


def in_range(kind: type, low: float, high: float, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: `kind` parsed from text, within [low, high] (or (low, high])."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"expected a value in {'(' if low_open else '['}{low}, {high}], got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_float = in_range(float, 0.0, float("inf"), low_open=True)
positive_int = in_range(int, 1, float("inf"))
non_negative_int = in_range(int, 0, float("inf"))
#: torch generators take seeds in [0, 2^64).
seed = in_range(int, 0, 2**64 - 1)
unit_float = in_range(float, 0.0, 1.0)
num_steps = in_range(int, 2, 1000)
timestep = in_range(int, 0, 999)
