"""The int8 export (ONNX Runtime static QDQ quantisation): its graph, its calibration over the
whole timestep range, and its tolerance against the fp32 graph on the tiny UNet.

Measured on 2026-12-08 (onnxruntime 1.32.0, x86 with VNNI/AMX-INT8): relative RMS error of eps,
int8 vs fp32, on seeded tiny UNets (two weight seeds, the quick and the default calibration)
0.053-0.064 at every t in {999, 500, 100, 0}; on the bundled prior 0.038 (held-out inputs of
the export's own parity check). The bound held here is the export's own criterion,
INT8_PARITY_TOLERANCE = 0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from diffpir_rt.engine import DiffPIRError, UNetDenoiser, write_image  # noqa: E402
from diffpir_rt.engine.backends.onnxruntime_backend import OnnxRuntimeDenoiser  # noqa: E402
from diffpir_rt.export import Int8Config, OnnxExportConfig, export_int8, export_onnx, quantize_onnx  # noqa: E402
from diffpir_rt.export import quantize as quantize_module  # noqa: E402
from diffpir_rt.export.tensorrt_build import resolve_build_precision  # noqa: E402

#: Quick calibration for the tests: fewer drawn images and timesteps than the default.
QUICK = Int8Config(timesteps=8, samples=2, draw_steps=4)


@pytest.fixture(scope="module")
def onnx_int8(onnx_dynamic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_onnx(onnx_dynamic, tmp_path_factory.mktemp("int8") / "unet_int8.onnx", QUICK)


def relative_rms(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).norm() / expected.double().norm())


@pytest.mark.parametrize("t", [999, 500, 100, 0])
def test_int8_is_within_its_tolerance_of_fp32(onnx_int8: Path, onnx_dynamic: Path, t: int) -> None:
    fp32, int8 = OnnxRuntimeDenoiser(onnx_dynamic), OnnxRuntimeDenoiser(onnx_int8)
    generator = torch.Generator().manual_seed(100 + t)
    x_t = torch.randn(2, 3, 16, 32, generator=generator)  # another size and batch than calibrated
    expected, got = fp32(x_t, t), int8(x_t, t)
    error = relative_rms(got, expected)
    assert 0 < error <= quantize_module.INT8_PARITY_TOLERANCE  # > 0: int8 really ran


def test_the_graph_is_qdq_with_per_channel_int8_weights_and_fp32_ends(onnx_int8: Path) -> None:
    model = onnx.load(str(onnx_int8))
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: i for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if n.input[0] in producers and producers[n.input[0]].op_type == "DequantizeLinear"]
    assert quantized and len(quantized) == len(convs) - 2  # all but the convolution reading x_t and the one writing eps
    for conv in quantized:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        weights, scales = initializers[weight_dq.input[0]], initializers[weight_dq.input[1]]
        assert weights.data_type == onnx.TensorProto.INT8
        assert len(scales.dims) == 1 and scales.dims[0] == weights.dims[0]  # one scale per output channel
    x_name = graph.input[0].name
    first = next(n for n in convs if n.input[0] == x_name)
    assert first not in quantized  # x_t enters in fp32 (module docstring of export/quantize.py)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["precision"] == "int8" and OnnxRuntimeDenoiser(onnx_int8).precision == "int8"


def test_calibration_covers_the_whole_timestep_range(onnx_int8: Path) -> None:
    assert Int8Config().calibration_timesteps() == [999, 932, 866, 799, 733, 666, 599, 533, 466, 400, 333, 266, 200, 133, 67, 0]
    record = json.loads(Path(str(onnx_int8) + ".json").read_text())
    calibration = record["quantization"]["calibration"]
    assert calibration["timesteps"][0] == 999 and calibration["timesteps"][-1] == 0 and len(calibration["timesteps"]) == 8
    assert calibration["inputs"] == 8 * 2 and "drawn by the fp32 graph" in calibration["x0"]
    parity = record["parity"]
    assert parity["passed"] and parity["relative_rms_error"] <= quantize_module.INT8_PARITY_TOLERANCE
    assert set(parity["relative_rms_error_per_timestep"]) == {str(t) for t in quantize_module.PARITY_TIMESTEPS}


def test_noised_inputs_follow_the_forward_process() -> None:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, written out from the linear schedule."""
    betas = np.linspace(1e-4, 0.02, 1000)
    alpha_bar = np.cumprod(1 - betas)
    x0 = torch.full((1, 3, 8, 8), 0.75, dtype=torch.float64)
    ((x_t, t),) = quantize_module.noised_inputs(x0, [500], seed=7)
    eps = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = np.sqrt(alpha_bar[500]) * 0.5 + np.sqrt(1 - alpha_bar[500]) * eps.numpy()  # 0.75 in [0,1] is 0.5 in [-1,1]
    assert t.tolist() == [500] and np.allclose(x_t[0], expected, atol=1e-6)


def test_calibration_images_from_files_and_folders(tmp_path: Path) -> None:
    for i, side in enumerate((20, 40)):
        write_image(tmp_path / f"im{i}.png", torch.rand(3, side, side + 8, generator=torch.Generator().manual_seed(i)))
    crops = quantize_module.calibration_images([tmp_path], 32, 5)
    assert crops.shape == (2, 3, 32, 32) and 0 <= float(crops.min()) and float(crops.max()) <= 1
    with pytest.raises(DiffPIRError, match="no such file or folder"):
        quantize_module.calibration_images([tmp_path / "missing"], 32, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffPIRError, match="expected images"):
        quantize_module.calibration_images([tmp_path / "empty"], 32, 1)


def test_a_graph_outside_the_tolerance_writes_nothing(onnx_dynamic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize_module, "INT8_PARITY_TOLERANCE", 0.0)
    out = tmp_path / "bad.onnx"
    with pytest.raises(DiffPIRError, match=r"relative RMS of eps\) from the fp32 graph, above the tolerance 0; nothing written"):
        quantize_onnx(onnx_dynamic, out, QUICK)
    assert list(tmp_path.iterdir()) == []


def test_int8_is_made_from_fp32_only(onnx_fp16: Path, onnx_int8: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffPIRError, match="is a fp16 graph; int8 is quantised from an fp32 export"):
        quantize_onnx(onnx_fp16, tmp_path / "x.onnx", QUICK)
    with pytest.raises(DiffPIRError, match="is a int8 graph"):
        quantize_onnx(onnx_int8, tmp_path / "y.onnx", QUICK)
    with pytest.raises(DiffPIRError, match="precision int8: an int8 graph is quantised from an fp32 export"):
        export_onnx(None, tmp_path / "z.onnx", OnnxExportConfig(precision="int8"), random_weights=True, arch="tiny")
    with pytest.raises(DiffPIRError, match="an int8 graph is quantised for ONNX Runtime"):
        resolve_build_precision("int8", fp16=False, has_fp16_flag=True)
    with pytest.raises(DiffPIRError, match="calibration method 'kl'"):
        Int8Config(method="kl")
    with pytest.raises(DiffPIRError, match="timesteps: expected an integer >= 2"):
        Int8Config(timesteps=1)


def test_export_int8_from_a_checkpoint(tiny_checkpoint: Path, torch_denoiser: UNetDenoiser, tmp_path: Path) -> None:
    out = export_int8(tiny_checkpoint, tmp_path / "unet.onnx", int8=QUICK, arch="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unet.onnx", "unet.onnx.json"]  # the fp32 stage is gone
    record = json.loads((tmp_path / "unet.onnx.json").read_text())
    assert record["quantized_from"]["sidecar"]["parity"]["passed"]  # the fp32 stage proved itself against torch
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch_denoiser(x_t, torch.tensor([300]))
    assert relative_rms(OnnxRuntimeDenoiser(out)(x_t, 300), expected) <= quantize_module.INT8_PARITY_TOLERANCE


def test_cli_exports_int8_and_prints_its_parity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from diffpir_rt.cli import main

    out = tmp_path / "unet_int8.onnx"
    assert main(["export", "onnx", "--random-weights", "--arch", "tiny", "--output", str(out), "--dtype", "int8"]) == 0
    printed = capsys.readouterr().out
    assert f"exported tiny (int8, from an fp32 export parity-checked against torch) -> {out}" in printed
    assert "at 16 timesteps from 999 to 0" in printed and "relative RMS error of eps" in printed and printed.rstrip().endswith("...)")
    assert OnnxRuntimeDenoiser(out).precision == "int8"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dtype", "bf16"], "argument --dtype: invalid choice"),
        (["--calibration", "{dir}"], "--calibration/--calibration-method: apply to --dtype int8 only"),
        (["--dtype", "int8", "--calibration", "{dir}/missing.png"], "--calibration {dir}/missing.png: no such file"),
        (["--dtype", "int8", "--calibration", "{dir}"], "--calibration {dir}: no images"),
        (["--dtype", "int8", "--external-data", "always"], "--external-data always: an int8 graph keeps its weights inline"),
    ],
)
def test_cli_int8_errors(extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ..conftest import cli_error

    argv = ["export", "onnx", "--random-weights", "--arch", "tiny", "--output", str(tmp_path / "u.onnx")]
    err = cli_error(capsys, argv + [a.replace("{dir}", str(tmp_path)) for a in extra])
    assert message.replace("{dir}", str(tmp_path)) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
