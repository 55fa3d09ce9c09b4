"""ONNX export and the ONNX Runtime backend against the torch fp32 UNet (the independent reference)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpir_rt.engine import ModelSource

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffpir_rt.engine import DiffPIRError, UNetDenoiser  # noqa: E402
from diffpir_rt.engine.backends import Denoiser, make_denoiser_from  # noqa: E402
from diffpir_rt.engine.backends.onnxruntime_backend import (  # noqa: E402
    OnnxRuntimeDenoiser,
    choose_providers,
    physical_cores,
)
from diffpir_rt.engine.backends.torch_backend import TorchDenoiser  # noqa: E402
from diffpir_rt.engine.operators import Deblur  # noqa: E402
from diffpir_rt.engine.sampler import DiffPIRConfig, sample  # noqa: E402
from diffpir_rt.export import OnnxExportConfig, export_onnx  # noqa: E402
from diffpir_rt.export import onnx_export as onnx_export_module  # noqa: E402
from diffpir_rt.engine.artifacts import read_sidecar, sha256_files  # noqa: E402
from diffpir_rt.export.onnx_export import PARITY_TOLERANCE, precision_report  # noqa: E402

#: Stated tolerances of these tests (max abs error on eps; eps of this random UNet is O(1)).
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = PARITY_TOLERANCE[onnx_export_module.Precision.FP16]  # 2e-2, the export's own
RESTORE_TOLERANCE = 1e-3


def _eps(model, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_t, t)


# --- parity: ORT fp32 == torch fp32 -----------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("size", [(16, 16), (24, 8)])
def test_ort_fp32_equals_torch_fp32(onnx_dynamic: Path, torch_denoiser: UNetDenoiser, batch: int, size: tuple[int, int]) -> None:
    runtime = OnnxRuntimeDenoiser(onnx_dynamic)
    generator = torch.Generator().manual_seed(batch)
    x_t = torch.randn(batch, 3, *size, generator=generator)
    for t in ([999, 500, 3][:batch], [0, 250, 750][:batch]):
        t = torch.tensor(t)
        expected = _eps(torch_denoiser, x_t, t)
        got = runtime(x_t, t)
        assert got.shape == expected.shape and got.dtype == torch.float32
        assert float((got - expected).abs().max()) <= FP32_TOLERANCE


def test_shared_timestep_is_broadcast(onnx_dynamic: Path, torch_denoiser: UNetDenoiser) -> None:
    runtime = OnnxRuntimeDenoiser(onnx_dynamic)
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = _eps(torch_denoiser, x_t, torch.tensor([321, 321]))
    for t in (321, torch.tensor(321), torch.tensor([321]), torch.tensor([321, 321], dtype=torch.int32)):
        assert float((runtime(x_t, t) - expected).abs().max()) <= FP32_TOLERANCE


def test_batch_of_n_equals_n_single_runs(onnx_dynamic: Path) -> None:
    runtime = OnnxRuntimeDenoiser(onnx_dynamic)
    x_t = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500, 990])
    batched = runtime(x_t, t)
    singles = torch.cat([runtime(x_t[i : i + 1], t[i : i + 1]) for i in range(3)])
    assert float((batched - singles).abs().max()) <= 1e-5


def test_whole_restoration_on_ort_equals_torch(onnx_dynamic: Path, torch_denoiser: UNetDenoiser) -> None:
    """engine.sample, deblur 32x32 with 5 steps: only the backend differs."""
    rng = np.random.default_rng(0)
    r = np.arange(7) - 3
    kernel = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 4.0)
    operator = Deblur(kernel / kernel.sum())
    y = torch.from_numpy(rng.random((1, 3, 32, 32)).astype(np.float32))
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=5)
    on_torch = sample(TorchDenoiser(torch_denoiser), operator, y, config, seed=0)
    on_ort = sample(OnnxRuntimeDenoiser(onnx_dynamic), operator, y, config, seed=0)
    assert float((on_ort - on_torch).abs().max()) <= RESTORE_TOLERANCE


# --- fp16 -------------------------------------------------------------------------------------


def test_fp16_graph_keeps_norms_and_softmax_in_fp32(onnx_fp16: Path) -> None:
    report = precision_report(onnx.load(str(onnx_fp16), load_external_data=False))
    assert set(report) == {"InstanceNormalization", "Softmax"}
    assert report["InstanceNormalization"] == {"float32": 25}  # every GroupNorm32 of the tiny UNet
    assert report["Softmax"] == {"float32": 4}  # two attention blocks in, one in the middle, one out
    model = onnx.load(str(onnx_fp16))
    conv_weights = {i.name: i.data_type for i in model.graph.initializer if i.name.endswith(".weight") and len(i.dims) == 4}
    assert conv_weights and set(conv_weights.values()) == {onnx.TensorProto.FLOAT16}


def test_fp16_within_its_tolerance_of_torch_fp32(onnx_fp16: Path, torch_denoiser: UNetDenoiser) -> None:
    runtime = OnnxRuntimeDenoiser(onnx_fp16)
    assert runtime.precision == "fp16"
    x_t = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([900, 20])
    expected = _eps(torch_denoiser, x_t, t)
    got = runtime(x_t, t)
    assert got.dtype == torch.float32
    error = float((got - expected).abs().max())
    assert error <= FP16_TOLERANCE * max(1.0, float(expected.abs().max()))
    assert error > 1e-6  # it really computes in fp16
    record = read_sidecar(onnx_fp16)
    assert record["parity"]["tolerance"] == FP16_TOLERANCE and record["parity"]["passed"]


# --- the artifact: checker, metadata, sidecar, reproducibility ---------------------------------


def test_graph_passes_checker_and_declares_the_contract(onnx_dynamic: Path, tiny_checkpoint: Path) -> None:
    onnx.checker.check_model(str(onnx_dynamic), full_check=True)
    model = onnx.load(str(onnx_dynamic))
    assert [i.name for i in model.graph.input] == ["x_t", "t"]
    assert [o.name for o in model.graph.output] == ["eps"]
    assert model.opset_import[0].version == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {
        "diffpir_contract": "1",
        "arch": "tiny",
        "size_multiple": "2",
        "in_channels": "3",
        "precision": "fp32",
        "checkpoint_sha256": sha256_files([tiny_checkpoint]),
    }
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]


def test_sidecar_records_provenance_and_parity(onnx_dynamic: Path, tiny_checkpoint: Path) -> None:
    record = json.loads(Path(str(onnx_dynamic) + ".json").read_text())
    assert record["checkpoint"] == {"kind": "checkpoint", "path": str(tiny_checkpoint), "sha256": sha256_files([tiny_checkpoint])}
    assert record["onnx_sha256"] == sha256_files([onnx_dynamic])
    assert record["export"]["opset"] == 17 and record["export"]["precision"] == "fp32"
    assert record["tools"]["torch"] and record["tools"]["onnx"] and record["tools"]["onnxruntime"]
    parity = record["parity"]
    shapes = [(c["batch"], c["height"], c["width"]) for c in parity["cases"]]
    assert shapes == [(1, 16, 16), (2, 8, 10)]  # two batches, two sizes
    assert parity["passed"] and parity["tolerance"] == 1e-4
    assert all(c["max_abs_error"] <= 1e-4 for c in parity["cases"])


def test_export_is_reproducible(onnx_static: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    again = export_onnx(tiny_checkpoint, tmp_path / "unet.onnx", OnnxExportConfig(), arch="tiny")
    assert again.read_bytes() == onnx_static.read_bytes()


def test_external_data_layout_is_one_file_and_reproducible(tiny_checkpoint: Path, tmp_path: Path, torch_denoiser: UNetDenoiser) -> None:
    """The >2 GiB path (imagenet256_uncond), forced on the tiny UNet."""
    config = OnnxExportConfig(external_data=True)
    first = export_onnx(tiny_checkpoint, tmp_path / "a" / "unet.onnx", config, arch="tiny")
    second = export_onnx(tiny_checkpoint, tmp_path / "b" / "unet.onnx", config, arch="tiny")
    data = first.with_name("unet.onnx.data")
    assert data.is_file() and first.stat().st_size < 300_000 < data.stat().st_size
    assert first.read_bytes() == second.read_bytes()
    assert data.read_bytes() == second.with_name("unet.onnx.data").read_bytes()
    record = read_sidecar(first)
    assert record["external_data"] == "unet.onnx.data"
    assert record["onnx_sha256"] == sha256_files([first, data])
    onnx.checker.check_model(str(first), full_check=True)
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float((OnnxRuntimeDenoiser(first)(x_t, 7) - _eps(torch_denoiser, x_t, torch.tensor([7]))).abs().max()) <= FP32_TOLERANCE


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = export_onnx(None, tmp_path / "a.onnx", arch="tiny", random_weights=True, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    record = read_sidecar(a)
    assert record["checkpoint"]["kind"] == "random" and record["checkpoint"]["seed"] == 5
    from diffpir_rt.export.onnx_export import resolve_model

    assert resolve_model(None, "tiny", random_weights=True, seed=5)[1].sha256 == record["checkpoint"]["sha256"]
    assert resolve_model(None, "tiny", random_weights=True, seed=6)[1].sha256 != record["checkpoint"]["sha256"]


# --- the ORT backend's interface ----------------------------------------------------------------


def test_ort_backend_implements_the_denoiser_interface(onnx_dynamic: Path) -> None:
    runtime = make_denoiser_from(ModelSource("onnx", onnx_dynamic), threads=1)
    assert isinstance(runtime, Denoiser)
    assert runtime.name == "onnxruntime" and runtime.size_multiple == 2
    info = runtime.describe()
    assert info["provider"] == "CPUExecutionProvider" and info["intra_op_threads"] == 1
    assert info["arch"] == "tiny" and info["precision"] == "fp32"


def test_provider_choice_and_thread_default(tmp_path: Path) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda:0")
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(everything, cpu) == ["CPUExecutionProvider"]
    assert choose_providers(list(reversed(everything)), cuda) == everything
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], cuda) == everything[1:]
    with pytest.raises(DiffPIRError, match="no GPU provider.*onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], cuda)
    cpuinfo = tmp_path / "cpuinfo"
    blocks = [f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n" for i in range(8)]  # 4 cores x 2 threads
    cpuinfo.write_text("\n".join(blocks))
    assert physical_cores(cpuinfo) == min(4, len(__import__("os").sched_getaffinity(0)))


# --- errors: every user-facing message ----------------------------------------------------------


def test_static_export_refuses_other_shapes(onnx_static: Path) -> None:
    runtime = OnnxRuntimeDenoiser(onnx_static)
    runtime(torch.zeros(1, 3, 16, 16), 5)
    with pytest.raises(DiffPIRError, match=r"x_t: expected shape \(1, 3, 16, 16\), got \(1, 3, 32, 32\); .*re-export it with --dynamic-batch/--dynamic-size"):
        runtime(torch.zeros(1, 3, 32, 32), 5)
    with pytest.raises(DiffPIRError, match=r"x_t: expected shape \(1, 3, 16, 16\), got \(2, 3, 16, 16\)"):
        runtime(torch.zeros(2, 3, 16, 16), 5)


@pytest.mark.parametrize(
    ("x_shape", "t", "message"),
    [
        ((1, 4, 8, 8), 5, r"x_t: expected shape \(B, 3, H, W\), got \(1, 4, 8, 8\)"),
        ((3, 8, 8), 5, r"x_t: expected shape \(B, 3, H, W\), got \(3, 8, 8\)"),
        ((1, 3, 9, 8), 5, r"H and W must be positive multiples of 2, got \(9, 8\)"),
        ((2, 3, 8, 8), torch.tensor([1, 2, 3]), r"t: expected shape \(2,\) or a single timestep, got \(3,\)"),
        ((1, 3, 8, 8), torch.tensor([0.5]), r"t: expected an integer timestep tensor, got dtype torch.float32"),
        ((1, 3, 8, 8), 2.5, r"t: expected an integer timestep, got 2.5"),
    ],
)
def test_wrong_inputs_are_clear_errors(onnx_dynamic: Path, x_shape, t, message: str) -> None:
    runtime = OnnxRuntimeDenoiser(onnx_dynamic)
    with pytest.raises(DiffPIRError, match=message):
        runtime(torch.zeros(x_shape), t)


def test_corrupt_truncated_and_foreign_onnx_files(onnx_dynamic: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(DiffPIRError, match=r"onnx .*garbage.onnx: not a loadable ONNX model \("):
        OnnxRuntimeDenoiser(garbage)

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(onnx_dynamic.read_bytes()[: onnx_dynamic.stat().st_size // 2])
    with pytest.raises(DiffPIRError, match=r"truncated.onnx: not a loadable ONNX model"):
        OnnxRuntimeDenoiser(truncated)

    with pytest.raises(DiffPIRError, match=r"missing.onnx: no such file"):
        OnnxRuntimeDenoiser(tmp_path / "missing.onnx")

    # A valid ONNX model that is not a DiffPIR denoiser: no metadata, other I/O.
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    foreign = tmp_path / "foreign.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(foreign))
    with pytest.raises(DiffPIRError, match=r"no DiffPIR metadata \(diffpir_contract, arch, .* missing\); export it"):
        OnnxRuntimeDenoiser(foreign)
    for key, value in {"diffpir_contract": "1", "arch": "tiny", "size_multiple": "2", "in_channels": "3",
                       "precision": "fp32", "checkpoint_sha256": "0"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(foreign))
    with pytest.raises(DiffPIRError, match=r"I/O tensors \['input', 'output'\] do not match the DiffPIR denoiser contract"):
        OnnxRuntimeDenoiser(foreign)


def test_export_errors(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffpir_rt.engine.prior as prior

    monkeypatch.setattr(prior, "bundled_card", lambda: None)
    with pytest.raises(DiffPIRError, match=r"no checkpoint: this installation ships no bundled prior.*--random-weights"):
        export_onnx(None, tmp_path / "u.onnx", arch="tiny")
    with pytest.raises(DiffPIRError, match="--random-weights: conflicts with --checkpoint"):
        export_onnx(tiny_checkpoint, tmp_path / "u.onnx", arch="tiny", random_weights=True)
    with pytest.raises(DiffPIRError, match=r"--output .*u.txt: expected a .onnx path"):
        export_onnx(tiny_checkpoint, tmp_path / "u.txt", arch="tiny")
    with pytest.raises(DiffPIRError, match=r"opset: expected one of \[17, 18, 19, 20\], got 13"):
        OnnxExportConfig(opset=13)
    with pytest.raises(DiffPIRError, match=r"precision: expected one of \[.*\], got 'bf16'"):
        OnnxExportConfig(precision="bf16")
    with pytest.raises(DiffPIRError, match=r"--width/--height: 16x15 must be multiples of 2"):
        export_onnx(tiny_checkpoint, tmp_path / "u.onnx", OnnxExportConfig(height=15), arch="tiny")
    with pytest.raises(DiffPIRError, match=r"does not fit arch 'ffhq_10m'.*use --arch tiny"):
        export_onnx(tiny_checkpoint, tmp_path / "u.onnx")


def test_failed_parity_writes_nothing(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(onnx_export_module.PARITY_TOLERANCE, onnx_export_module.Precision.FP32, 0.0)
    with pytest.raises(DiffPIRError, match=r"ONNX Runtime disagrees with torch: max abs error .* > tolerance 0 .*nothing written"):
        export_onnx(tiny_checkpoint, tmp_path / "u.onnx", arch="tiny")
    assert list(tmp_path.iterdir()) == []
