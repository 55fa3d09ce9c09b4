"""`diffpir train`: the training program of the bundled prior, as a sub-command.

Every argument after `train` goes to training/train.py's own parser untouched
(`diffpir train --help`, `diffpir train export --help`); `diffpir train curve` measures
checkpoints on held-out crops (training/curve.py).
"""

from __future__ import annotations

from typing import Sequence

import argparse

from diffpir_rt import cliargs


def add_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    cliargs.add_passthrough_parser(
        subparsers, "train",
        "train the bundled prior (resumable; `diffpir train --help`), `train export` its weights, "
        "`train curve` measure them, `train tune` their defaults",
        run_train,
    )  # fmt: skip


def run_train(argv: list[str]) -> int:
    if argv[:1] == ["curve"]:
        from .curve import main as curve

        return int(curve(argv[1:]) or 0)
    if argv[:1] == ["tune"]:
        from .tune import main as tune

        return int(tune(argv[1:]) or 0)
    from .train import main

    return int(main(argv) or 0)
