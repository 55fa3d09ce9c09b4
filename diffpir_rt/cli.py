"""`diffpir`: one command line over every room's sub-commands.

Each room registers its own sub-commands (restore/degrade/generate from the runtime,
export, eval/bench, train, serve/request/batch); this module only assembles them, so
it sits above every room. User errors (DiffPIRError, bad arguments) print one line on
stderr and exit with code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
import sys
from typing import Optional, Sequence

from diffpir_rt import __version__
from diffpir_rt.cliargs import OneLineParser
from diffpir_rt.errors import DiffPIRError

#: (module, registrar): each registrar adds its sub-parsers and sets `handler`.
REGISTRARS = (
    ("diffpir_rt.runtime.cli", "add_parsers"),
    ("diffpir_rt.export.cli", "add_export_parser"),
    ("diffpir_rt.benchmarks.cli", "add_parsers"),
    ("diffpir_rt.training.cli", "add_parsers"),
    ("diffpir_rt.service.cli", "add_parsers"),
)


def version_text() -> str:
    import torch

    return f"diffpir-rt {__version__} (torch {torch.__version__}, Python {platform.python_version()})"


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; `argv` lets a sub-command tailor its --help (restore --help --method NAME)."""
    parser = OneLineParser(
        prog="diffpir",
        description="DiffPIR-RT: diffusion plug-and-play image restoration (deblur, SR, inpaint, denoise).",
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for module, name in REGISTRARS:
        getattr(importlib.import_module(module), name)(subparsers, argv)
    for sub in subparsers.choices.values():
        # -v is accepted after the sub-command too; SUPPRESS keeps the top-level value otherwise.
        if "-v" not in sub._option_string_actions and "+" not in sub.prefix_chars:
            sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what the engine does")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a one-line argument error: a code, not an exit
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="[%(levelname)s] %(message)s")
    try:
        return int(args.handler(args) or 0)
    except DiffPIRError as e:
        print(f"diffpir {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("diffpir: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"diffpir {args.command}: error: out of memory (a smaller image, batch or --tile may fit)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `diffpir ... | head`: the reader left; nothing to report
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
