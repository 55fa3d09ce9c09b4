"""`diffpir restore` / `diffpir degrade` end to end with a tiny random UNet, and every bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.engine import prior
from diffpir_rt.cli import main
from diffpir_rt.engine.imageio import read_image, write_image

TEST_IMAGE = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    """A 32x32 crop of a set3c test image."""
    x = read_image(TEST_IMAGE)[:, 100:132, 100:132]
    return write_image(tmp_path / "clean.png", x)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _restore(args: list[str], ckpt: Path) -> int:
    return main(["restore", "--checkpoint", str(ckpt), "--arch", "tiny", "--steps", "4", "--quiet", *args])


@pytest.mark.parametrize(
    "task, degrade_args, restore_args",
    [
        ("deblur", ["--kernel", "gaussian", "--index", "1"], []),
        ("sr", ["--scale", "2"], ["--scale", "2"]),
        ("inpaint", ["--mask", "random"], []),
        ("denoise", ["--sigma-n", "0.1"], ["--sigma-n", "0.1"]),
    ],
)
def test_degrade_then_restore(task, degrade_args, restore_args, clean: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    y = tmp_path / "y.npy"
    extra = []
    if task == "deblur":
        degrade_args = [*degrade_args, "--save-kernel", str(tmp_path / "k.npy")]
        extra = ["--kernel", str(tmp_path / "k.npy")]
    if task == "inpaint":
        degrade_args = [*degrade_args, "--save-mask", str(tmp_path / "m.png")]
        extra = ["--mask", str(tmp_path / "m.png")]
    # A 61x61 Gaussian kernel is refused on an image less than twice its size: use a 128x128 one for deblurring.
    if task == "deblur":
        write_image(clean, read_image(TEST_IMAGE)[:, 64:192, 64:192])
    before = _sha(clean)
    assert main(["degrade", "--task", task, "--input", str(clean), "--output", str(y), *degrade_args]) == 0
    out = tmp_path / "x.png"
    assert _restore(["--task", task, "--input", str(y), "--output", str(out), *restore_args, *extra], tiny_checkpoint) == 0
    restored = read_image(out)
    assert restored.shape == read_image(clean).shape
    record = json.loads((tmp_path / "x.png.json").read_text())
    assert record["task"] == task and record["config"]["steps"] == 4
    assert _sha(clean) == before  # the input is never touched


def test_restore_is_reproducible_and_16_bit(clean: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        assert _restore(["--task", "denoise", "--input", str(clean), "--output", str(out), "--bit-depth", "16", "--seed", "3"], tiny_checkpoint) == 0
        outs.append(out)
    assert outs[0].read_bytes() == outs[1].read_bytes()
    import png  # pypng reads the PNG header's bit depth

    assert png.Reader(filename=str(outs[0])).read()[3]["bitdepth"] == 16
    assert read_image(outs[0]).shape == (3, 32, 32)


def test_help_teaches(capsys: pytest.CaptureFixture) -> None:
    assert main(["restore", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--sigma-n" in text and "--kernel" in text
    # The defaults a user gets are on the page, and so is every valid --arch.
    assert "with the bundled prior" in text and "compact_fast" in text and "default: auto)" in text
    # Every method's parameters are flags, and `--help --method NAME` shows that method's defaults per task.
    assert "--eta" in text and "--t-start" in text
    assert main(["restore", "--help", "--method", "ddnm"]) == 0
    text = capsys.readouterr().out
    assert "method ddnm:" in text and "steps 100" in text and "UNet calls" in text


def test_version_and_verbose_after_the_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("diffpir-rt ")
    assert main(["restore", "-v", "--help"]) == 0


def test_argument_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, ["restore", "--task", "deblur", "--input", "a.png", "--output", "b.png", "--lam", "-1"])
    assert "argument --lam: expected a number > 0, got -1" in err
    assert "usage:" not in err


from ..conftest import cli_error as _error


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, c, k: ["--task", "denoise", "--input", str(d / "missing.png")], "no such file"),
        (lambda d, c, k: ["--task", "deblur", "--input", str(c)], "needs --kernel"),
        (lambda d, c, k: ["--task", "inpaint", "--input", str(c)], "needs --mask"),
        (lambda d, c, k: ["--task", "deblur", "--input", str(c), "--kernel", str(k)], "larger than half the 32x32 image's side"),
        (lambda d, c, k: ["--task", "denoise", "--input", str(c), "--output", str(c)], "refusing to overwrite an input"),
        (lambda d, c, k: ["--task", "denoise", "--input", str(c), "--output", str(d / "o.bmp")], "unsupported suffix"),
        (lambda d, c, k: ["--task", "denoise", "--input", str(d / "garbage.png")], "garbage.png"),
        (lambda d, c, k: ["--task", "denoise", "--input", str(d / "nan.npy")], "NaN or Inf"),
        (lambda d, c, k: ["--task", "inpaint", "--input", str(c), "--mask", str(d / "mask16.png")], "does not match the 32x32 image"),
        (lambda d, c, k: ["--task", "denoise", "--input", str(c), "--arch", "nope"], "argument --arch: expected one of compact_fast, ffhq_10m, imagenet256_uncond, tiny, got nope"),
    ],
)
def test_bad_restore_inputs(make_args, message: str, clean: Path, tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    kernel = tmp_path / "big.npy"
    np.save(kernel, np.ones((61, 61), np.float32) / 61**2)
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    np.save(tmp_path / "nan.npy", np.full((3, 32, 32), np.nan, np.float32))
    write_image(tmp_path / "mask16.png", torch.ones(1, 16, 16))
    args = make_args(tmp_path, clean, kernel)
    if "--output" not in args:
        args += ["--output", str(tmp_path / "out.png")]
    if "--arch" not in args:
        args = ["--arch", "tiny", *args]
    before = _sha(clean)
    err = _error(capsys, ["restore", "--checkpoint", str(tiny_checkpoint), "--steps", "3", "--quiet", *args])
    assert message in err
    assert not (tmp_path / "out.png").exists()
    assert _sha(clean) == before


def test_foreign_checkpoint(clean: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "foreign.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(bad))
    err = _error(capsys, ["restore", "--task", "denoise", "--input", str(clean), "--output", str(tmp_path / "o.png"), "--checkpoint", str(bad), "--arch", "tiny"])
    assert "missing keys" in err and "unexpected keys" in err and len(err) < 400


def test_no_checkpoint_without_bundled_prior(clean: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(prior, "CARD_PATH", tmp_path / "absent.json")
    err = _error(capsys, ["restore", "--task", "denoise", "--input", str(clean), "--output", str(tmp_path / "o.png")])
    assert "no checkpoint" in err and "--checkpoint" in err


def test_sr_degrade_needs_divisible_input(tmp_path: Path, capsys) -> None:
    odd = write_image(tmp_path / "odd.png", torch.rand(3, 30, 30))
    err = _error(capsys, ["degrade", "--task", "sr", "--scale", "4", "--input", str(odd), "--output", str(tmp_path / "y.png")])
    assert "not divisible by the scale 4" in err


def test_unknown_task_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "diffpir_rt", "restore", "--task", "colorize", "--input", "a.png", "--output", "b.png"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "invalid choice: 'colorize'" in proc.stderr and "Traceback" not in proc.stderr


def test_default_path_matches_the_reference_to_rounding(clean: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    """The fp32 fast CPU path (ONNX Runtime when installed, else channels-last + SDPA torch) is
    tested against the fp32 eager reference: 1e-4 on the float output (bf16, the default where
    the CPU has it, has its own tolerance test: tests/runtime/test_bf16.py)."""
    outs, records = [], []
    for name, extra in (("ref.npy", ["--reference"]), ("fast.npy", ["--dtype", "fp32"])):
        out = tmp_path / name
        assert _restore(["--task", "denoise", "--input", str(clean), "--output", str(out), *extra], tiny_checkpoint) == 0
        outs.append(np.load(out))
        records.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert np.abs(outs[0] - outs[1]).max() <= 1e-4
    assert records[0]["runtime"]["path"]["name"] == "reference"
    assert records[1]["runtime"]["path"]["name"] in ("onnxruntime", "torch-fast")
    assert records[1]["runtime"]["path"]["reason"]


def test_fp16_is_refused_on_cpu(clean: Path, tmp_path: Path, capsys) -> None:
    err = _error(capsys, ["restore", "--task", "denoise", "--input", str(clean), "--output", str(tmp_path / "o.png"),
                          "--dtype", "fp16", "--device", "cpu"])
    assert "--dtype bf16 or fp32" in err


def test_generate_writes_a_reproducible_grid(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """DDIM with eta 0 from a seeded x_T: the same grid, to the bit, on the same machine and backend."""
    outs = []
    for name in ("a.png", "b.png"):
        out = tmp_path / name
        argv = ["generate", "--method", "ddim", "--steps", "4", "--num", "4", "--size", "16", "--seed", "3",
                "--checkpoint", str(tiny_checkpoint), "--arch", "tiny", "--output", str(out), "--quiet"]  # fmt: skip
        assert main(argv) == 0
        outs.append(out.read_bytes())
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["method"] == "ddim" and record["config"]["eta"] == 0.0
    assert outs[0] == outs[1]
    grid = read_image(tmp_path / "a.png")
    assert grid.shape == (3, 2 * 16 + 2, 2 * 16 + 2)  # 2x2 tiles with a 2-px gap


def test_restore_takes_a_folder_and_several_files(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    """Several inputs, or a folder of them, go to a folder --output (one Restorer, no Ray); each image
    gets its own run record, and a --suffix names the outputs."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, (top, left) in enumerate([(0, 0), (64, 96), (128, 32)]):
        write_image(folder / f"p{i}.png", read_image(TEST_IMAGE)[:, top : top + 32, left : left + 32])
    out = tmp_path / "out"
    assert _restore(["--task", "denoise", "--sigma-n", "0.1", "--input", str(folder), "--output", str(out), "--suffix", "_x"],
                    tiny_checkpoint) == 0  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted([f"p{i}_x.png" for i in range(3)] + [f"p{i}_x.png.json" for i in range(3)])
    records = [json.loads((out / f"p{i}_x.png.json").read_text()) for i in range(3)]
    assert [Path(r["input"]).name for r in records] == ["p0.png", "p1.png", "p2.png"]
    # the same image restored alone equals its restoration in the folder run
    alone = tmp_path / "alone.png"
    assert _restore(["--task", "denoise", "--sigma-n", "0.1", "--input", str(folder / "p1.png"), "--output", str(alone)],
                    tiny_checkpoint) == 0  # fmt: skip
    assert alone.read_bytes() == (out / "p1_x.png").read_bytes()
    several = tmp_path / "several"
    assert _restore(["--task", "denoise", "--input", str(folder / "p0.png"), str(folder / "p2.png"), "--output", str(several)],
                    tiny_checkpoint) == 0  # fmt: skip
    assert sorted(p.name for p in several.glob("*.png")) == ["p0.png", "p2.png"]
    err = _error(capsys, ["restore", "--checkpoint", str(tiny_checkpoint), "--arch", "tiny", "--task", "denoise", "--input",
                          str(folder / "p0.png"), "--output", str(tmp_path / "o.png"), "--suffix", "_x"])  # fmt: skip
    assert "--suffix: applies to a folder --output" in err
