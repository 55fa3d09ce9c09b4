"""Hostile argument values x commands: seeds beyond 64 bits, devices torch knows but the
engine cannot use, numbers out of range, parameters a method does not have, flags a task does not take.
Each is refused in one line (argparse's or the engine's), or works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from . import makers
from .conftest import Runner, World

Command = Callable[[World, Path], tuple[list[str], list[Path]]]
COMMANDS: dict[str, Command] = {
    "restore": lambda w, d: (["restore", "--task", "denoise", "--input", str(w.clean16), "--output", str(d / "o.png"), "--quiet",
                              *w.model()], [d / "o.png"]),
    "generate": lambda w, d: (["generate", "--num", "1", "--size", "16", "--output", str(d / "g.png"), "--quiet", *w.model()],
                              [d / "g.png"]),
}  # fmt: skip

SEEDS: dict[str, str] = {
    "-1": "expected an integer in [0, 18446744073709551615], got -1",
    "18446744073709551616": "got 18446744073709551616",
    "340282366920938463463374607431768211456": "got 340282366920938463463374607431768211456",
    "9" * 5000: "expected an integer",
    "1e3": "expected an integer in [0, 18446744073709551615], got 1e3",
    "3.0": "expected an integer",
    "0x10": "expected an integer",
    "abc": "expected an integer",
    "": "expected an integer",
    "nan": "expected an integer",
    "-0": "ok",
    " 7 ": "ok",
    "18446744073709551615": "ok",
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("seed", list(SEEDS), ids=lambda s: s if len(s) < 40 else f"{len(s)} digits")
def test_seed(cli: Runner, world: World, tmp_path: Path, command: str, seed: str) -> None:
    argv, outputs = COMMANDS[command](world, tmp_path)
    outcome = cli([*argv, "--seed", seed], expect=SEEDS[seed], outputs=outputs)
    if outcome.code == 2 and seed.isdigit() and len(seed) < 100:
        assert seed in outcome.err, "a huge seed must be echoed as the number given"


@pytest.mark.parametrize(
    "flag, value, expect",
    [
        ("--noise-seed", "4294967296", "expected an integer in [0, 4294967295], got 4294967296"),
        ("--noise-seed", "18446744073709551615", "expected an integer in [0, 4294967295]"),
        ("--noise-seed", "-1", "expected an integer in"),
        ("--noise-seed", "4294967295", "ok"),
        ("--mask-seed", str(2**64), "expected an integer in [0, 4294967295]"),
        ("--mask-seed", "4294967295", "ok"),
    ],
)
def test_degrade_seeds(cli: Runner, world: World, tmp_path: Path, flag: str, value: str, expect: str) -> None:
    out = tmp_path / "y.png"
    task = ["--task", "inpaint", "--mask", "random"] if flag == "--mask-seed" else ["--task", "denoise"]
    cli(["degrade", *task, "--input", str(world.clean16), "--output", str(out), flag, value], expect=expect, outputs=[out])


DEVICES: dict[str, str] = {
    "meta": "does not run on meta devices",
    "mps": "does not run on mps devices",
    "xla": "does not run on xla devices",
    "hpu": "does not run on hpu devices",
    "xpu": "does not run on xpu devices",
    "privateuseone": "does not run on privateuseone devices",
    "vulkan": "does not run on vulkan devices",
    "cuda:99": "cuda:99",  # no CUDA here, or no 100th GPU
    "cuda:-1": "cuda:-1",
    "cpu:1": "one CPU device",
    "bogus": "not a device name",
    "": "not a device name",
    "CPU": "not a device name",
    "cpu ": "not a device name",
    "cuda:0:0": "not a device name",
    "cpu\nrm -rf": "not a device name",
    "cpu": "ok",
    "cpu:0": "ok",
    "auto": "ok",
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("device", list(DEVICES))
def test_device(cli: Runner, world: World, tmp_path: Path, command: str, device: str) -> None:
    argv, outputs = COMMANDS[command](world, tmp_path)
    cli([*argv, "--device", device], expect=DEVICES[device], outputs=outputs)


def test_cuda_without_a_gpu(cli: Runner, world: World, tmp_path: Path) -> None:
    import torch

    argv, outputs = COMMANDS["restore"](world, tmp_path)
    cli([*argv, "--device", "cuda"], expect="any" if torch.cuda.is_available() else "CUDA is not available", outputs=outputs)


RESTORE_VALUES: list[tuple[list[str], str]] = [
    (["--steps", "0"], "expected an integer in [1, 1000]"),
    (["--steps", "1"], "expected an integer in [2, 1000]"),
    (["--steps", "1001"], "expected an integer in [1, 1000]"),
    (["--steps", "3.5"], "expected an integer"),
    (["--lam", "0"], "expected a number > 0"),
    (["--lam", "-1"], "expected a number > 0"),
    (["--lam", "nan"], "expected a number > 0, got nan"),
    (["--lam", "inf"], "expected a number > 0, got inf"),
    (["--lam", "1e400"], "expected a number > 0, got 1e400"),
    (["--zeta", "2"], "expected a number in [0, 1]"),
    (["--zeta", "-0.1"], "expected a number >= 0"),
    (["--sigma-n", "1.5"], "expected a number in [0, 1]"),
    (["--sigma-n", "nan"], "expected a number in [0, 1], or auto, got nan"),
    (["--t-start", "1000"], "expected an integer in [0, 999]"),
    (["--t-start", "-1"], "expected an integer in [0, 999]"),
    (["--threads", "0"], "expected an integer in [1, 1024]"),
    (["--threads", "-1"], "expected an integer in [1, 1024]"),
    (["--threads", "1000000000"], "expected an integer in [1, 1024]"),
    (["--bit-depth", "12"], "expected one of 8, 16"),
    (["--dtype", "fp16"], "use --dtype bf16 or fp32"),
    (["--dtype", "int4"], "expected one of auto, fp32, fp16, bf16, int8"),
    (["--backend", "tensorrt"], "--backend tensorrt: runs on cuda, not cpu"),
    (["--backend", "cuda"], "expected one of auto, torch"),
    (["--method", "nope"], "invalid choice"),
    (["--arch", "ffhq_256"], "expected one of compact_fast"),
    (["--steps", "1e400"], "expected an integer"),
    (["--steps", "abc"], "expected an integer"),
    (["--zeta", "true"], "expected a number"),
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--lamb", "1"], "did you mean --lam?"),
    (["--t-start", "5000"], "expected an integer in [0, 999]"),
    (["--skip", "sideways"], "expected one of quad, uniform"),
    (["--eta", "0.5"], "method diffpir: has no parameter 'eta'"),
    (["--method", "ddim"], "invalid choice: 'ddim'"),
    (["--method", "ddrm", "--eta", "2"], "expected a number in [0, 1]"),
    (["--method", "dps", "--steps", "3", "--sigma-n", "0.05"], "ok"),
    (["--method", "dpir", "--steps", "2"], "ok"),
    (["--reference", "--backend", "onnxruntime"], "--reference runs the torch fp32 loop"),
    (["--reference", "--dtype", "bf16"], "--reference runs fp32"),
    (["--threads", "1"], "ok"),
    (["--reference"], "ok"),
    (["--dtype", "bf16", "--backend", "torch"], "ok"),
    (["--lam", "5"], "ok"),
    (["--bit-depth", "16", "--seed", "5"], "ok"),
]


@pytest.mark.parametrize("extra, expect", RESTORE_VALUES, ids=[" ".join(v[0]) for v in RESTORE_VALUES])
def test_restore_value(cli: Runner, world: World, tmp_path: Path, extra: list[str], expect: str) -> None:
    argv, outputs = COMMANDS["restore"](world, tmp_path)
    cli([*argv, *extra], expect=expect, outputs=outputs)


GENERATE_VALUES: list[tuple[list[str], str]] = [
    (["--size", "0"], "expected an integer >= 1"),
    (["--size", "-16"], "expected an integer >= 1"),
    (["--size", "100000"], "at most"),
    (["--num", "0"], "expected an integer >= 1"),
    (["--num", "1000000000"], "at most"),
    (["--steps", "1"], "expected an integer in [2, 1000]"),
    (["--eta", "2"], "expected a number in [0, 1]"),
    (["--method", "diffpir"], "invalid choice"),
    (["--method", "ddim", "--sigma-n", "0.1"], "unrecognized arguments: --sigma-n"),
    (["--size", "1"], "ok"),
    (["--size", "7"], "ok"),
    (["--method", "ddpm", "--eta", "0.5"], "eta"),
]


@pytest.mark.parametrize("extra, expect", GENERATE_VALUES, ids=[" ".join(v[0]) for v in GENERATE_VALUES])
def test_generate_value(cli: Runner, world: World, tmp_path: Path, extra: list[str], expect: str) -> None:
    argv, outputs = COMMANDS["generate"](world, tmp_path)
    cli([*argv, *extra], expect=expect, outputs=outputs)


DEGRADE_VALUES: list[tuple[list[str], str]] = [
    (["--task", "deblur", "--kernel", "gaussian"], "61x61 is larger than the 32x32 image"),
    (["--task", "deblur", "--kernel", "motion"], "61x61 is larger than the 32x32 image"),
    (["--task", "deblur", "--kernel", "gaussian", "--index", str(10**12)], "kernel index"),
    (["--task", "deblur", "--kernel", "blurry"], "no such file"),
    (["--task", "sr", "--scale", "5"], "invalid choice"),
    (["--task", "sr", "--scale", "3"], "not divisible by the scale 3; crop it to 30x30 first"),
    (["--task", "inpaint", "--mask", "box"], "does not fit in 32x32"),
    (["--task", "inpaint", "--mask", "random"], "ok"),
    (["--task", "denoise", "--sigma-n", "2"], "expected a number in [0, 1]"),
    (["--task", "denoise", "--bit-depth", "12"], "invalid choice"),  # degrade's own flag
    (["--task", "denoise", "--bit-depth", "16"], "ok"),
]


@pytest.mark.parametrize("extra, expect", DEGRADE_VALUES, ids=[" ".join(v[0]) for v in DEGRADE_VALUES])
def test_degrade_value(cli: Runner, world: World, tmp_path: Path, extra: list[str], expect: str) -> None:
    out = tmp_path / "y.png"
    cli(["degrade", "--input", str(world.clean32), "--output", str(out), *extra], expect=expect, outputs=[out])


def test_sr_degrade_of_a_1x1_image(cli: Runner, world: World, tmp_path: Path) -> None:
    """Once: "crop it to 0x0 first"."""
    from .makers import png_bytes, write

    import numpy as np

    tiny = write(tmp_path / "one.png", png_bytes(np.zeros((1, 1, 3), np.uint8)))
    cli(["degrade", "--task", "sr", "--scale", "4", "--input", str(tiny), "--output", str(tmp_path / "y.png")],
        expect="1x1 is smaller than the scale 4")  # fmt: skip


# ----------------------------------------------------------------------------- inputs a task does not use

STRAY: list[tuple[str, list[str], str]] = [
    ("restore", ["--task", "denoise", "--kernel", "{k}"], "--kernel: does not apply to --task denoise"),
    ("restore", ["--task", "denoise", "--mask", "{m}"], "--mask: does not apply to --task denoise"),
    ("restore", ["--task", "deblur", "--kernel", "{k}", "--mask", "{m}"], "--mask: does not apply to --task deblur"),
    ("restore", ["--task", "inpaint", "--mask", "{m}", "--kernel", "{k}"], "--kernel: does not apply to --task inpaint"),
    ("restore", ["--task", "deblur", "--kernel", "{k}", "--scale", "2"], "--scale: does not apply to --task deblur"),
    ("restore", ["--task", "denoise", "--kernel-index", "0"], "--kernel-index: does not apply to --task denoise"),
    ("restore", ["--task", "deblur", "--kernel", "{k}", "--kernel-index", "0"], "index 0 given, but only .mat files"),
    ("restore", ["--task", "denoise", "--kernel", "{d}/missing.npy"], "does not apply"),
    ("restore", ["--task", "sr", "--mask", "{m}"], "--mask: does not apply to --task sr"),
    ("degrade", ["--task", "denoise", "--kernel", "gaussian"], "--kernel: does not apply to --task denoise"),
    ("degrade", ["--task", "denoise", "--mask", "random"], "--mask: does not apply to --task denoise"),
    ("degrade", ["--task", "deblur", "--kernel", "{k}", "--mask", "{m}"], "--mask: does not apply to --task deblur"),
    ("degrade", ["--task", "inpaint", "--kernel", "{k}"], "--kernel: does not apply to --task inpaint"),
    ("degrade", ["--task", "sr", "--kernel", "{k}"], "any"),
    ("degrade", ["--task", "deblur", "--kernel", "{k}", "--scale", "2"], "--scale: does not apply to --task deblur"),
]


@pytest.mark.parametrize("command, extra, expect", STRAY, ids=[f"{c} {' '.join(e)}" for c, e, _ in STRAY])
def test_input_a_task_does_not_use(cli: Runner, world: World, tmp_path: Path, command: str, extra: list[str], expect: str) -> None:
    extra = [e.format(k=world.kernel, m=world.mask, d=tmp_path) for e in extra]
    out = tmp_path / "o.png"
    if command == "restore":
        argv = ["restore", "--input", str(world.clean32), "--output", str(out), "--quiet", *world.model(), *extra]
    else:
        argv = ["degrade", "--input", str(world.clean32), "--output", str(out), *extra]
    cli(argv, expect=expect, outputs=[out])


# ----------------------------------------------------------------------------- the environment: the ONNX cache


def _cache_file(d: Path, w: World) -> Path:
    return makers.write(d / "cache-file", b"not a folder")


def _corrupt_entry(d: Path, w: World) -> Path:
    (d / "cache" / "onnx").mkdir(parents=True)
    makers.write(d / "cache" / "onnx" / w.onnx.name, b"garbage")
    makers.write(d / "cache" / "onnx" / (w.onnx.name + ".json"), (w.onnx.parent / (w.onnx.name + ".json")).read_bytes())
    return d / "cache"


CACHES: dict[str, tuple[Callable[[Path, World], Path], str]] = {
    "a file": (_cache_file, "ONNX cache"),
    "under a file": (lambda d, w: _cache_file(d, w) / "sub", "ONNX cache"),
    "/dev/null": (lambda d, w: Path("/dev/null"), "ONNX cache"),
    "in /proc": (lambda d, w: Path("/proc/diffpir-cache"), "ONNX cache"),
    "a corrupt entry": (_corrupt_entry, "any"),
}


@pytest.mark.parametrize("kind", list(CACHES))
def test_onnx_cache(cli: Runner, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    make, expect = CACHES[kind]
    cache = make(tmp_path, world)
    monkeypatch.setenv("DIFFPIR_RT_CACHE", str(cache))
    argv, outputs = COMMANDS["restore"](world, tmp_path)
    if kind == "a corrupt entry":
        # The cache is the engine's own: a damaged entry is exported again (a notice, then success),
        # with ONNX Runtime's optimised graph of it kept beside it (engine.backends.onnxruntime_backend).
        entry = cache / "onnx" / world.onnx.name
        kept = cache / "onnx" / (world.onnx.name[: -len(".onnx")] + ".ort.onnx")
        cli(argv, expect="any", outputs=[*outputs, entry, kept, kept.with_name(kept.name + ".json")])
        assert entry.read_bytes() != b"garbage"
    else:
        cli(argv, expect=expect, outputs=outputs)
