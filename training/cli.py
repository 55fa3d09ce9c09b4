"""`diffpir train`: the training program of the bundled prior, as a sub-command.

`diffpir train ...` trains (or resumes) a run, `diffpir train export` writes its weights,
`diffpir train curve` measures checkpoints on held-out crops (training/curve.py), `diffpir
train tune` re-tunes the per-task defaults (training/tune.py). Each program's arguments go to
its own parser untouched; the training code (and torch) loads only once they parse.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from diffpir_rt import cliargs
from diffpir_rt.engine import check_input_file
from diffpir_rt.errors import DiffPIRError

from .options import Recipe, Stage, export_parser, train_parser


def add_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    cliargs.add_passthrough_parser(subparsers, "train", run_train)


def run_train(argv: list[str]) -> int:
    if argv[:1] == ["curve"]:
        from .curve import main as curve

        return int(curve(argv[1:]) or 0)
    if argv[:1] == ["tune"]:
        from .tune import main as tune

        return int(tune(argv[1:]) or 0)
    logging.basicConfig(level=logging.INFO, format="[%(levelname).1s] %(message)s")
    try:
        if argv[:1] == ["export"]:
            return run_export(export_parser().parse_args(argv[1:]))
        if argv[:1] == ["train"]:
            argv = argv[1:]
        return run_training(train_parser().parse_args(argv))
    except DiffPIRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_export(args: argparse.Namespace) -> int:
    from .train import export_prior

    defaults = json.loads(check_input_file(args.task_defaults, "--task-defaults").read_text()) if args.task_defaults else None
    curve = json.loads(check_input_file(args.curve, "--curve").read_text()) if args.curve else None
    quality = check_input_file(args.quality, "--quality").read_text() if args.quality else None
    card = export_prior(args.checkpoint, args.name, args.weights_dir, task_defaults=defaults, curve=curve, quality=quality)
    print(f"[I] wrote {Path(args.weights_dir) / card['weights']} ({card['bytes'] / 1e6:.2f} MB, "
          f"step {card['checkpoint_step']}, sha256 {card['sha256'][:16]}…); "
          f"fp16 max |d eps| = {card['fp16_check']['max_abs_eps_diff']:.2e}")  # fmt: skip
    return 0


def run_training(args: argparse.Namespace) -> int:
    given = {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name) is not None}
    stage = Stage(
        data=args.data, out=args.out, device=args.device, threads=args.threads, max_steps=args.max_steps,
        max_minutes=args.max_minutes, max_cpu_minutes=args.max_cpu_minutes, checkpoint_minutes=args.checkpoint_minutes,
        log_every=args.log_every, resume=args.resume, progress=not args.quiet, init_weights=args.init_weights,
    )  # fmt: skip
    from .train import CHECKPOINT_NAME, read_checkpoint, train

    if args.resume:
        stored = Recipe(**read_checkpoint(Path(args.out) / CHECKPOINT_NAME)["recipe"])
        recipe = Recipe(**{**stored.to_dict(), **given})
    else:
        recipe = Recipe(**given)
    stop_flag = {"stop": False}

    def request_stop(signum: int, frame: object) -> None:
        stop_flag["stop"] = True

    # SIGTERM / Ctrl-C end the stage after the current step, with a checkpoint.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        trainer = train(recipe, stage, stop=lambda: stop_flag["stop"])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"[I] step {trainer.step}, {trainer.train_seconds / 3600:.2f} h in total, "
          f"final loss {trainer.final_loss}; checkpoint {Path(args.out) / CHECKPOINT_NAME}")
    return 0
