"""The command lines' shared argparse pieces: value types, flags generated from parameter
declarations, the one-line parser.

Command-line modules only (runtime/cli.py, service/cli.py, export/cli.py, the benchmarks'
and training's parsers): the engine and the runtime's public API take typed configs and
requests, never an `argparse.Namespace`. A flag for a declared parameter is generated from its
`diffpir_rt.params.Param` (`add_param_flags`), so its type, range and help are the ones every
other surface (service form, eval, batch jobs) reads from the same declaration.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from diffpir_rt.errors import one_line
from diffpir_rt.params import Param, ParamError, echo


# ----------------------------------------------------------------------------- declared parameters


def flag_name(name: str) -> str:
    """A declared parameter's command-line flag: sigma_n -> --sigma-n."""
    return "--" + name.replace("_", "-")


def param_type(spec: Param) -> Callable[[str], Any]:
    """An argparse type for a declared parameter (its message is the declaration's)."""

    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ParamError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = spec.kind.__name__
    return parse


def param_help(spec: Param, default: Any = None) -> str:
    text = f"{spec.help} ({spec.expected()}"
    return text + (f"; default: {default})" if default is not None else ")")


def add_param_flags(
    group: Any,
    params: Mapping[str, Param],
    defaults: Optional[Mapping[str, Any]] = None,
    skip: Sequence[str] = (),
) -> list[str]:
    """One flag per declared parameter, value None when not given (the model's or the method's
    default then applies); returns the destination names added.

    Args:
        group: an argparse parser or argument group.
        params: name -> Param (e.g. `engine.method_params()`), in display order.
        defaults: shown in the help where known (a default is not set on the flag: None means
            "not given", so the surface can tell an explicit value from a default).
        skip: names another flag of the command already covers.
    """
    added = []
    for name, spec in params.items():
        if name in skip:
            continue
        default = (defaults or {}).get(name)
        if spec.kind is bool and default is False:  # an off-by-default switch: a plain flag turns it on
            group.add_argument(flag_name(name), action="store_const", const=True, default=None, dest=name, help=spec.help)
            added.append(name)
            continue
        kwargs: dict[str, Any] = {"default": None, "dest": name, "help": param_help(spec, default)}
        if spec.choices is not None and not spec.words and not spec.optional:
            kwargs["metavar"] = "{" + ",".join(map(str, spec.choices)) + "}"
        group.add_argument(flag_name(name), type=param_type(spec), **kwargs)
        added.append(name)
    return added


def given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The declared parameters a command line set (name -> value), leaving out those not given."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}



def in_range(kind: type, low: float, high: float, low_open: bool = False) -> Callable[[str], Any]:
    """An argparse type: `kind` parsed from text, within [low, high] (or (low, high]), checked by
    the same `Param` every declared parameter uses."""
    spec = Param("", kind, low, None if math.isinf(high) else high, low_open)
    return param_type(spec)


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
        raise argparse.ArgumentTypeError(f"{echo(text)} names a folder (trailing separator); expected a file name")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"{echo(text)} contains a NUL byte")
    return Path(text)


output_path.__name__ = "path"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), exit code 2, with a
    "did you mean" for a mistyped option.

    Every command line of the project uses it, so a bad flag reads like every other error.
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {one_line(message)}{self._suggestion(message)} (see --help)\n")

    def _suggestion(self, message: str) -> str:
        match = re.search(r"unrecognized arguments: (\S+)", message)
        if not match or not match.group(1).startswith("--"):
            return ""
        typed = match.group(1).split("=", 1)[0]
        # argparse reports unknown options from the top-level parser: look in the sub-commands too
        known: list[str] = []
        parsers = [self]
        while parsers:
            parser = parsers.pop()
            for action in parser._actions:
                known += [option for option in action.option_strings if option.startswith("--")]
                if isinstance(action, argparse._SubParsersAction):
                    parsers += list(action.choices.values())
        close = difflib.get_close_matches(typed, known, n=1, cutoff=0.6)
        return f"; did you mean {close[0]}?" if close else ""


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" once, and only where there is a default to show (not None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or "default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def add_passthrough_parser(subparsers: argparse._SubParsersAction, name: str, handler: Callable[[list[str]], int]) -> None:
    """A sub-command whose arguments all go, untouched, to a program with its own parser
    (`diffpir bench ...`, `diffpir train ...`): handler(argv) gets them, its --help included."""
    # prefix_chars="+": no option of this parser starts with '-', so every '-x'/'--x' reaches the handler.
    p = subparsers.add_parser(name, add_help=False, prefix_chars="+")
    p.add_argument("passthrough_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=lambda args: int(handler(list(args.passthrough_args)) or 0))
