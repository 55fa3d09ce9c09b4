"""`diffpir bench` and `diffpir eval` under hostile arguments.

Every case is the validation the commands must have: a regression fails. A bench whose
arguments are accepted never gets to run its sweep here: `latency.run` is replaced by a stub
that fails the case at once, so an accepted hostile argument costs milliseconds, not a benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from . import makers
from .conftest import Runner, World

class Accepted(BaseException):
    """The bench accepted its arguments and started the sweep."""


@pytest.fixture
def bench_stub(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffpir_rt.benchmarks import latency

    def run(args: Any) -> Any:
        raise Accepted("the bench accepted a hostile argument and started its sweep")

    monkeypatch.setattr(latency, "run", run, raising=False)


def _bench(d: Path, **override: list[str]) -> list[str]:
    options = {
        "--device": ["cpu"], "--random-weights": [], "--arch": ["tiny"], "--tasks": ["deblur"], "--sizes": ["16"],
        "--batches": ["1"], "--steps": ["2"], "--warmup": ["0"], "--repeats": ["1"], "--no-plot": [],
        "--history": ["none"], "--out-dir": [str(d / "bench")], "--time-budget": ["5"],
    }  # fmt: skip
    options.update(override)
    return ["bench", *[x for flag, values in options.items() for x in (flag, *values)]]


BENCH: dict[str, tuple[dict[str, list[str]], str]] = {
    "--sizes 0": ({"--sizes": ["0"]}, "--sizes"),
    "--sizes -16": ({"--sizes": ["-16"]}, "--sizes"),
    "--sizes 17 (not a multiple of 2)": ({"--sizes": ["17"]}, "multiple"),
    "--sizes 16 0": ({"--sizes": ["16", "0"]}, "--sizes"),
    "--sizes 10^6": ({"--sizes": ["1000000"]}, "--sizes"),
    "--batches 0": ({"--batches": ["0"]}, "--batches"),
    "--batches -1": ({"--batches": ["-1"]}, "--batches"),
    "--batches 10^9": ({"--batches": ["1000000000"]}, "--batches"),
    "--threads -1": ({"--threads": ["-1"]}, "--threads"),
    "--threads 0": ({"--threads": ["0"]}, "--threads"),
    "--threads 10^9": ({"--threads": ["1000000000"]}, "--threads"),
    "--steps 0": ({"--steps": ["0"]}, "--steps"),
    "--warmup -1": ({"--warmup": ["-1"]}, "--warmup"),
    "--repeats 0": ({"--repeats": ["0"]}, "--repeats"),
    "--time-budget -1": ({"--time-budget": ["-1"]}, "--time-budget"),
    "--time-budget nan": ({"--time-budget": ["nan"]}, "--time-budget"),
    "--device meta": ({"--device": ["meta"]}, "meta"),
    "--device mps": ({"--device": ["mps"]}, "mps"),
    "--device xla": ({"--device": ["xla"]}, "xla"),
    "--device bogus": ({"--device": ["bogus"]}, "not a device name"),
    "--device cpu:1": ({"--device": ["cpu:1"]}, "one CPU device"),
    "--device cuda:99": ({"--device": ["cuda:99"]}, "cuda"),
    "--arch nope": ({"--arch": ["nope"]}, "invalid choice"),
    "--checkpoint missing": ({"--random-weights": [], "--checkpoint": ["{d}/missing.pt"]}, "no such file"),
    "--out-dir under a file": ({"--out-dir": ["{d}/file.txt/out"]}, "is a file, not a folder"),
    "--out-dir is a file": ({"--out-dir": ["{d}/file.txt"]}, "file.txt"),
    "--out-dir in /sys": ({"--out-dir": ["/sys/bench"]}, "writ"),
    "--history under a file": ({"--history": ["{d}/file.txt/h.jsonl"]}, "is a file, not a folder"),
    "--history is a folder": ({"--history": ["{d}"]}, "is a folder"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BENCH))
def test_bench_argument(cli: Runner, world: World, tmp_path: Path, bench_stub: None, case: str) -> None:
    override, expect = BENCH[case]
    makers.write(tmp_path / "file.txt", b"not a folder")
    override = {k: [v.format(d=tmp_path) for v in values] for k, values in override.items()}
    argv = _bench(tmp_path, **override)
    if "--random-weights" in override:  # a key given twice means: drop it
        argv.remove("--random-weights")
    cli(argv, expect=expect, limit=10)


def test_bench_stub_sees_valid_arguments(world: World, tmp_path: Path, bench_stub: None) -> None:
    """The stub works: valid arguments reach the sweep (so a refused case above was refused)."""
    from .harness import run_cli

    outcome = run_cli(_bench(tmp_path), [tmp_path], limit=10)
    assert outcome.escaped is not None and "Accepted" in outcome.escaped, outcome.err


def test_bench_leaves_no_report_after_a_crash(cli: Runner, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep that crashes after its first arm: one line, exit 2, no latency.json/.md left behind
    (reports are written once, atomically, when the run ends)."""
    from diffpir_rt.benchmarks import report

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated crash while writing the report")

    monkeypatch.setattr(report, "markdown", crash)
    cli([*_bench(tmp_path), "--backends", "reference"], expect="simulated crash", limit=60)


def _eval(d: Path, *extra: str) -> list[str]:
    images = d / "imgs"
    images.mkdir(exist_ok=True)
    if not any(images.iterdir()):
        makers.write(images / "a.png", makers.png_bytes((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)))
    return ["eval", "--data", str(images), "--tasks", "denoise", "--methods", "nlmeans", "--noise", "0.05",
            "--out", str(d / "out"), "--quiet", "--grid-images", "0", *extra]  # fmt: skip


EVAL: dict[str, tuple[list[str], str]] = {
    "1x1 image": (["--data", "{d}/one"], "1x1"),
    "only a broken image": (["--data", "{d}/broken"], "broken.png"),
    "empty folder": (["--data", "{d}/nothing"], "no"),
    "--data a file": (["--data", "{d}/file.txt"], "file.txt"),
    "--crop 0": (["--crop", "0"], "--crop"),
    "--crop -8": (["--crop", "-8"], "--crop"),
    "--crop 100000": (["--crop", "100000"], "crop"),
    "--max-images 0": (["--max-images", "0"], "--max-images"),
    "--noise 2": (["--noise", "2"], "--noise"),
    "--noise nan": (["--noise", "nan"], "--noise"),
    "--kernel-size 0": (["--kernel-size", "0"], "--kernel-size"),
    "--box-margin -1": (["--box-margin", "-1"], "--box-margin"),
    "--grid-images -1": (["--grid-images", "-1"], "--grid-images"),
    "--seed -1": (["--seed", "-1"], "--seed"),
    "--seed 2^64": (["--seed", str(2**64)], str(2**64)),
    "--steps 0": (["--steps", "0"], "--steps"),
    "--device meta": (["--methods", "diffpir", "--random-weights", "--steps", "2", "--device", "meta"], "meta"),
    "--device bogus": (["--methods", "diffpir", "--random-weights", "--steps", "2", "--device", "bogus"], "not a device name"),
    "--threads 0": (["--threads", "0"], "--threads"),
    "--out under a file": (["--out", "{d}/file.txt/out"], "is a file, not a folder"),
    "--out is a file": (["--out", "{d}/file.txt"], "file.txt"),
    "--out in /sys": (["--out", "/sys/eval"], "writ"),
    "--lpips-weights missing": (["--lpips-weights", "{d}/missing.pth"], "missing.pth"),
    "--lpips-weights a folder": (["--lpips-weights", "{d}/imgs"], "imgs"),
    "--lpips-weights a pickle": (["--lpips-weights", "{d}/evil.pth"], "lpips"),
    "--fid-weights a FIFO": (["--fid-weights", "{d}/fifo.pth"], "fifo.pth"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EVAL))
def test_eval_argument(cli: Runner, world: World, tmp_path: Path, case: str) -> None:
    import os

    extra, expect = EVAL[case]
    for name in ("one", "broken", "nothing"):
        (tmp_path / name).mkdir()
    makers.write(tmp_path / "one" / "one.png", makers.png_bytes(np.zeros((1, 1, 3), np.uint8)))
    makers.write(tmp_path / "broken" / "broken.png", b"not a png")
    makers.write(tmp_path / "file.txt", b"not a folder")
    makers.write(tmp_path / "evil.pth", makers.torch_pickle(tmp_path / "PWNED"))
    os.mkfifo(tmp_path / "fifo.pth")
    argv = _eval(tmp_path)
    extra = [e.format(d=tmp_path) for e in extra]
    if "--data" in extra:  # replace the default data folder
        i = argv.index("--data")
        del argv[i : i + 2]
    cli([*argv, *extra], expect=expect, limit=30)
    assert not (tmp_path / "PWNED").exists()
