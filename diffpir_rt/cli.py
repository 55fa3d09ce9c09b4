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
from dataclasses import dataclass
from typing import Optional, Sequence

from diffpir_rt import __version__
from diffpir_rt.cliargs import OneLineParser
from diffpir_rt.errors import DiffPIRError


@dataclass(frozen=True)
class Command:
    """A sub-command: the room's command-line module that registers it (with
    `add_parsers(subparsers, argv)`), and the line `diffpir --help` lists for it."""

    module: str
    help: str


#: Every sub-command, in the order `diffpir --help` lists them. Only the room of the command
#: being run is imported: `diffpir --help` and a mistyped command load no room at all.
COMMANDS: dict[str, Command] = {
    "restore": Command("diffpir_rt.runtime.cli", "restore a degraded image, or a folder of them (DiffPIR or another method of the family)"),
    "degrade": Command("diffpir_rt.runtime.cli", "synthesise a measurement by the official DiffPIR protocol"),
    "generate": Command("diffpir_rt.runtime.cli", "draw images from the prior alone into a grid"),
    "export": Command("diffpir_rt.export.cli", "export the UNet to ONNX, or build a TensorRT engine from the ONNX"),
    "eval": Command("diffpir_rt.benchmarks.cli", "quality benchmark: the method family and baselines, PSNR/SSIM (+LPIPS/FID) tables, grids, ablation"),
    "bench": Command("diffpir_rt.benchmarks.cli", "latency / throughput benchmark (`diffpir bench --help` for its options)"),
    "train": Command("diffpir_rt.training.cli", "train the bundled prior (resumable; `diffpir train --help`), `train export` its weights, `train curve` measure them, `train tune` their defaults"),
    "serve": Command("diffpir_rt.service.cli", "run the restoration service (Ray Serve: HTTP API, dynamic batching, replicas, a web page)"),
    "request": Command("diffpir_rt.service.cli", "send a restore to a `diffpir serve` server"),
    "batch": Command("diffpir_rt.service.cli", "restore a folder or a list of files with Ray Data (resumable)"),
}  # fmt: skip


class _Commands(argparse._SubParsersAction):
    """The sub-parsers, each listed with its line from COMMANDS (the rooms give descriptions only)."""

    def add_parser(self, name: str, **kwargs):
        kwargs.setdefault("help", COMMANDS[name].help)
        return super().add_parser(name, **kwargs)


def command_of(argv: Sequence[str]) -> Optional[str]:
    """The sub-command argv names (the first word that is not a top-level option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def version_text() -> str:
    """The version line, read from the installed packages' metadata: importing torch would cost a second."""
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"diffpir-rt {__version__} (torch {torch_version}, Python {platform.python_version()})"


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; `argv` lets a sub-command tailor its --help (restore --help --method NAME)."""
    parser = OneLineParser(
        prog="diffpir",
        description="DiffPIR-RT: diffusion plug-and-play image restoration (deblur, SR, inpaint, denoise).",
    )
    parser.add_argument("--version", action="version", version=version_text())
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the engine does")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser, action=_Commands
    )
    chosen = COMMANDS.get(command_of(argv) or "")
    for name, command in COMMANDS.items():
        if name in subparsers.choices:
            continue
        if command == chosen or (chosen is not None and command.module == chosen.module):
            importlib.import_module(command.module).add_parsers(subparsers, argv)
        else:
            subparsers.add_parser(name, add_help=False)  # listed only: argv runs another command
    for sub in subparsers.choices.values():
        # -v is accepted after the sub-command too; SUPPRESS keeps the top-level value otherwise.
        if "-v" not in sub._option_string_actions and "+" not in sub.prefix_chars:
            sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log what the engine does")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answered before any sub-command (and its imports) is registered
        print(version_text())
        return 0
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
    except SystemExit as e:  # a pass-through program's own --help or argument error (bench, train)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
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
