"""`diffpir train`: the training program of the bundled prior, as a sub-command.

Every argument after `train` goes to training/train.py's own parser untouched
(`diffpir train --help`, `diffpir train export --help`).
"""

from __future__ import annotations

import argparse


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    # prefix_chars="+": no option here starts with '-', so every '-x' reaches train.main.
    p = subparsers.add_parser(
        "train",
        help="train the bundled prior (resumable; `diffpir train --help`), or `train export` its weights",
        add_help=False,
        prefix_chars="+",
    )
    p.add_argument("train_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train import main

    return int(main(list(args.train_args)) or 0)
