"""`diffpir export onnx|trt` and `diffpir restore --backend onnxruntime` end to end on the tiny UNet."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffpir_rt.cli import main  # noqa: E402
from diffpir_rt.engine.imageio import read_image, write_image  # noqa: E402
from diffpir_rt.engine.artifacts import sha256_files  # noqa: E402

TEST_IMAGE = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"


@pytest.fixture(scope="module")
def cli_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`diffpir export onnx` on the tiny checkpoint; returns the .onnx and what it printed."""
    out = tmp_path_factory.mktemp("cli") / "unet.onnx"
    argv = ["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--arch", "tiny", "--output", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(argv) == 0
    return out, stdout.getvalue()


from ..conftest import cli_error as _error


def test_export_onnx_prints_parity_and_writes_sidecar(cli_onnx: tuple[Path, str], tiny_checkpoint: Path) -> None:
    out, printed = cli_onnx
    assert out.is_file()
    assert f"exported tiny (fp32, opset 17) -> {out}" in printed
    assert "parity vs torch fp32 UNetDenoiser" in printed and "tolerance 0.0001" in printed
    assert "B=1 16x16" in printed and "B=2 10x8" in printed and printed.count(" ok") == 2
    record = json.loads(Path(str(out) + ".json").read_text())
    assert record["checkpoint"]["sha256"] == sha256_files([tiny_checkpoint])
    assert record["export"]["dynamic_batch"] and record["export"]["dynamic_size"]


def test_restore_on_onnxruntime_equals_torch(cli_onnx: tuple[Path, str], tiny_checkpoint: Path, tmp_path: Path) -> None:
    onnx_path, _ = cli_onnx
    clean = write_image(tmp_path / "y.png", read_image(TEST_IMAGE)[:, 100:132, 100:132])
    common = ["restore", "--task", "denoise", "--input", str(clean), "--steps", "5", "--seed", "1", "--quiet", "--device", "cpu"]
    assert main([*common, "--output", str(tmp_path / "torch.npy"), "--checkpoint", str(tiny_checkpoint), "--arch", "tiny",
                 "--reference"]) == 0
    assert main([*common, "--output", str(tmp_path / "ort.npy"), "--backend", "onnxruntime", "--onnx", str(onnx_path),
                 "--threads", "1"]) == 0
    on_torch, on_ort = np.load(tmp_path / "torch.npy"), np.load(tmp_path / "ort.npy")
    assert on_ort.shape == (3, 32, 32)
    assert float(np.abs(on_ort - on_torch).max()) <= 1e-3
    record = json.loads((tmp_path / "ort.npy.json").read_text())["runtime"]
    assert record["backend"]["backend"] == "onnxruntime" and record["path"]["name"] == "onnxruntime"
    assert record["backend"]["provider"] == "CPUExecutionProvider" and record["backend"]["intra_op_threads"] == 1
    assert record["model"]["label"] == f"onnx:{onnx_path}" and record["model"]["arch"] == "tiny"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--backend", "tensorrt"], "--backend tensorrt: runs on cuda, not cpu"),
        (["--backend", "onnxruntime", "--onnx", "{onnx}", "--checkpoint", "{ckpt}"], "--checkpoint and --onnx: name one model source"),
        (["--backend", "onnxruntime", "--onnx", "{onnx}", "--dtype", "fp16"], "--dtype fp16: applies to torch weights"),
        (["--backend", "torch", "--onnx", "{onnx}"], "--backend torch: a onnx model runs on the onnxruntime backend"),
        (["--backend", "onnxruntime", "--onnx", "{dir}/missing.onnx"], "--onnx {dir}/missing.onnx: no such file"),
        (["--backend", "onnxruntime", "--onnx", "{dir}/bad.onnx"], "not a loadable ONNX model"),
        (["--backend", "tensorrt", "--engine", "{dir}/bad.onnx", "--device", "cpu"], "the tensorrt backend runs on cuda"),
    ],
)
def test_restore_backend_errors(extra: list[str], message: str, capsys: pytest.CaptureFixture, cli_onnx, tiny_checkpoint: Path, tmp_path: Path) -> None:
    clean = write_image(tmp_path / "y.png", read_image(TEST_IMAGE)[:, 100:132, 100:132])
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    names = {"onnx": str(cli_onnx[0]), "ckpt": str(tiny_checkpoint), "dir": str(tmp_path)}
    extra = [e.format(**names) for e in extra]
    argv = ["restore", "--task", "denoise", "--input", str(clean), "--output", str(tmp_path / "o.png"), "--quiet", *extra]
    assert message.format(**names) in _error(capsys, argv)


def test_export_errors(capsys: pytest.CaptureFixture, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffpir_rt.engine.prior as prior

    monkeypatch.setattr(prior, "bundled_card", lambda: None)
    out = str(tmp_path / "u.onnx")
    assert "no checkpoint: this installation ships no bundled prior" in _error(capsys, ["export", "onnx", "--arch", "tiny", "--output", out])
    assert "unsupported suffix '.pt'; expected one of .onnx" in _error(capsys, ["export", "onnx", "--arch", "tiny", "--random-weights", "--output", str(tmp_path / "u.pt")])
    assert "argument --arch: invalid choice: 'nope'" in _error(capsys, ["export", "onnx", "--arch", "nope", "--random-weights", "--output", out])
    assert "conflicts with --checkpoint" in _error(
        capsys, ["export", "onnx", "--checkpoint", str(tiny_checkpoint), "--random-weights", "--output", out]
    )
    assert "--onnx" in _error(capsys, ["export", "trt", "--onnx", str(tmp_path / "none.onnx"), "--output", str(tmp_path / "u.plan")])


def test_export_trt_without_tensorrt_says_how_to_get_it(capsys: pytest.CaptureFixture, cli_onnx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    err = _error(capsys, ["export", "trt", "--onnx", str(cli_onnx[0]), "--output", str(tmp_path / "u.plan"), "--dtype", "fp16",
                          "--batch", "1:1:2", "--height", "8:16:32", "--width", "8:16:32"])
    assert err == "diffpir export: error: TensorRT is not installed (pip install tensorrt; needs an NVIDIA GPU)\n"
    assert "--batch 1:2: expected N or MIN:OPT:MAX" in _error(
        capsys, ["export", "trt", "--onnx", str(cli_onnx[0]), "--output", str(tmp_path / "u.plan"), "--batch", "1:2"]
    )


def test_export_help_teaches(capsys: pytest.CaptureFixture) -> None:
    for stage in ("onnx", "trt"):
        assert main(["export", stage, "--help"]) == 0
        text = capsys.readouterr().out
        assert "examples:" in text and "--output" in text
