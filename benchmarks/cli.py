"""Sub-commands of the benchmarks room, plugged into `diffpir` by diffpir_rt/cli.py.

* `diffpir eval`: the quality benchmark (benchmarks/quality.py).
* `diffpir bench`: the latency/throughput harness, benchmarks/latency.py's
  `main(argv) -> int`, imported only when run; every argument after `bench` is
  passed to it untouched (its own --help included).
"""

from __future__ import annotations

from typing import Sequence

import argparse
import importlib

from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError

LATENCY_MODULE = "diffpir_rt.benchmarks.latency"


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    cliargs.add_passthrough_parser(subparsers, "bench", run_bench)


def run_bench(argv: list[str]) -> int:
    try:
        latency = importlib.import_module(LATENCY_MODULE)
    except ModuleNotFoundError as e:
        if e.name != LATENCY_MODULE:
            raise
        raise DiffPIRError("the latency harness (benchmarks/latency.py) is not available in this build") from None
    entry = getattr(latency, "main", None)
    if not callable(entry):
        raise DiffPIRError("benchmarks/latency.py has no main(argv); cannot run it")
    return int(entry(argv) or 0)


def add_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    """Register `eval` and `bench` (called by diffpir_rt.cli)."""
    from .quality import add_eval_parser

    add_eval_parser(subparsers)
    add_bench_parser(subparsers)
