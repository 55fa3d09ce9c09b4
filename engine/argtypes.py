"""argparse types shared by every command line of the project (one range check, one message)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable

from diffpir_rt.errors import one_line


def _echo(text: str) -> str:
    """The user's text as a message quotes it: repr (escapes included), long text elided."""
    if len(text) > 40:
        return repr(text[:20]) + "..." + repr(text[-12:])
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def in_range(kind: type, low: float, high: float, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: `kind` parsed from text, within [low, high] (or (low, high])."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {_echo(text)}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {_echo(text)}")
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"expected a value in {'(' if low_open else '['}{low}, {high}], got {_echo(text)}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_float = in_range(float, 0.0, float("inf"), low_open=True)
positive_int = in_range(int, 1, float("inf"))
non_negative_int = in_range(int, 0, float("inf"))
#: torch generators take seeds in [0, 2^64).
seed = in_range(int, 0, 2**64 - 1)
#: numpy's legacy RandomState (the official protocol's masks and noise) takes seeds in [0, 2^32).
seed32 = in_range(int, 0, 2**32 - 1)
#: CPU threads: more than this is a typo, and asking torch for a billion threads is not harmless.
thread_count = in_range(int, 1, 1024)
unit_float = in_range(float, 0.0, 1.0)
num_steps = in_range(int, 2, 1000)
timestep = in_range(int, 0, 999)


def output_path(text: str) -> Path:
    """An argparse type for a file to write: refuses '', a trailing separator ('o.png/' names a
    folder; Path() would silently drop the slash and write a file 'o.png') and NUL bytes."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{_echo(text)} names a folder (trailing separator); expected a file name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{_echo(text)} contains a NUL byte")
    return Path(text)


output_path.__name__ = "path"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit code 2.

    Every command line of the project uses it, so a bad flag reads like every other error.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" once, and only where there is a default to show (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_passthrough_parser(subparsers: argparse._SubParsersAction, name: str, help: str, handler: Callable[[list[str]], int]) -> None:
    """A sub-command whose arguments all go, untouched, to a program with its own parser
    (`diffpir bench ...`, `diffpir train ...`): handler(argv) gets them, its --help included."""
    # prefix_chars="+": no option of this parser starts with '-', so every '-x'/'--x' reaches the handler.
    p = subparsers.add_parser(name, help=help, add_help=False, prefix_chars="+")
    p.add_argument("passthrough_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=lambda args: int(handler(list(args.passthrough_args)) or 0))
