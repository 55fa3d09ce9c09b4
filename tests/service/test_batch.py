"""`diffpir batch` with Ray Data on a folder of good and bad files: every good one restored as
`diffpir restore` restores it, every bad one listed with its reason, and a rerun skips what is done."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffpir_rt.engine.imageio import read_image, read_image_and_depth

from .conftest import Inputs, cli_restore, needs_ray

pytestmark = needs_ray


def _batch(inputs: Inputs, env: dict[str, str], folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "diffpir_rt", "batch", "--task", "denoise", "--input", str(folder), "--output", str(out),
           "--checkpoint", str(inputs.checkpoint), "--arch", "tiny", "--steps", "4", "--seed", "7", "--num-cpus", "2",
           "--quiet", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_batch_restores_good_files_lists_bad_ones_and_resumes(inputs: Inputs, service_env: dict[str, str], tmp_path: Path,
                                                             warm_cache) -> None:  # fmt: skip
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = {"a.png": inputs.clean, "b.png": inputs.other, "sub/c.png": inputs.clean16, "d.png": inputs.small}
    for name, source in good.items():
        (folder / name).write_bytes(source.read_bytes())
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.png").write_bytes(b"")
    np.save(folder / "nan.npy", np.full((3, 32, 32), np.nan, np.float32))
    (folder / "notes.txt").write_text("not an image: ignored\n")
    out = tmp_path / "out"

    first = _batch(inputs, service_env, folder, out)
    assert first.returncode == 1, first.stderr[-3000:]  # finished, with failures
    text = first.stdout
    assert "4 restored, 0 skipped (done before), 3 failed of 7" in text, text
    for bad, reason in (("corrupt.png", "corrupt.png"), ("empty.png", "empty"), ("nan.npy", "NaN or Inf")):
        line = next(line for line in text.splitlines() if line.strip().startswith("failed:") and bad in line)
        assert reason in line.split(bad, 1)[1], line
    for name, source in good.items():
        restored = out / Path(name).with_suffix(".png")
        reference = cli_restore(inputs, tmp_path / "ref" / name, ["--task", "denoise", "--input", str(source), "--steps", "4",
                                                                  "--seed", "7"])  # fmt: skip
        got, depth = read_image_and_depth(restored)
        want, want_depth = read_image_and_depth(reference)
        assert depth == want_depth and float((got - want).abs().max()) <= 1 / 255 + 1e-6, name
        record = json.loads(restored.with_name(restored.name + ".json").read_text())
        assert record["seed"] == 7 and record["config"]["steps"] == 4 and record["input"].endswith(name)
    assert read_image_and_depth(out / "sub" / "c.png")[1] == 16
    summary = json.loads((out / "diffpir-batch-summary.json").read_text())
    assert summary["restored"] == 4 and len(summary["failed"]) == 3 and summary["images_per_s"] > 0

    # The rerun: finished outputs are skipped; the bad files are tried again (and fail again);
    # a removed output is restored again.
    (out / "b.png").unlink()
    stamp = (out / "a.png").stat().st_mtime_ns
    second = _batch(inputs, service_env, folder, out)
    assert "1 restored, 3 skipped (done before), 3 failed of 7" in second.stdout, second.stdout + second.stderr[-2000:]
    assert (out / "a.png").stat().st_mtime_ns == stamp and (out / "b.png").is_file()
    assert float((read_image(out / "b.png") - read_image(tmp_path / "ref" / "b.png")).abs().max()) <= 1 / 255 + 1e-6


def _batch_here(inputs: Inputs, folder: Path, out: Path, capsys) -> tuple[int, str, str]:
    """`diffpir batch` in this process: for the cases that end before Ray starts."""
    from diffpir_rt.cli import main

    code = main(["batch", "--task", "denoise", "--input", str(folder), "--output", str(out), "--checkpoint",
                 str(inputs.checkpoint), "--arch", "tiny", "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_batch_with_nothing_left_to_do_does_not_start_ray(inputs: Inputs, tmp_path: Path, capsys, monkeypatch) -> None:
    import diffpir_rt.service.server as server

    monkeypatch.setattr(server, "import_ray", lambda what="": pytest.fail("Ray was started with nothing to do"))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(inputs.clean.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"done")
    (out / "a.png.json").write_text("{}")
    code, stdout, _ = _batch_here(inputs, folder, out, capsys)
    assert code == 0 and "0 restored, 1 skipped (done before), 0 failed of 1" in stdout


def test_batch_input_errors_are_one_line(inputs: Inputs, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, out, message in ((tmp_path / "missing", tmp_path / "o", "no such folder or list file"),
                                 (empty, tmp_path / "o", "no input files"),
                                 (empty, empty, "is the input folder")):  # fmt: skip
        code, _, err = _batch_here(inputs, folder, out, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
