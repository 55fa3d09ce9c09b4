"""TensorRT stage: the pure-Python parts (profiles, engine key, staleness) here; the build and
runtime need tensorrt and a GPU and skip without them, saying so."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from diffpir_rt.engine import ModelSource

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.artifacts import sha256_files, write_sidecar
from diffpir_rt.engine.backends.contract import BATCH, HEIGHT, WIDTH, ShapeRange, fix_axes, unet_contract
from diffpir_rt.engine.backends.tensorrt_backend import (
    TRT_MISSING,
    GpuInfo,
    check_plan,
    import_tensorrt,
    key_mismatches,
    shapes_outside_profile,
)
from diffpir_rt.export.tensorrt_build import EngineKey, default_timing_cache, parse_range, plan_profile, resolve_build_precision

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not HAS_TRT, reason=TRT_MISSING)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0")
GENERIC = unet_contract(3, 32)
DYNAMIC = GENERIC
STATIC = fix_axes(GENERIC, {BATCH: 1, HEIGHT: 256, WIDTH: 256})


# --- profile planning from the I/O contract ------------------------------------------------------


def test_parse_range() -> None:
    assert parse_range("4", "--batch") == ShapeRange(4, 4, 4)
    assert parse_range("1:2:8", "--batch") == ShapeRange(1, 2, 8)
    for bad in ("1:2", "a", "0", "1:2:3:4"):
        with pytest.raises(DiffPIRError, match=rf"--batch {bad}: expected N or MIN:OPT:MAX"):
            parse_range(bad, "--batch")
    with pytest.raises(DiffPIRError, match=r"--height 8:4:16: shape range: expected min <= opt <= max"):
        parse_range("8:4:16", "--height")


def test_dynamic_onnx_defaults_around_the_traced_size() -> None:
    ranges, profile = plan_profile(GENERIC, DYNAMIC, opt_size=(256, 256))
    assert ranges == {BATCH: ShapeRange(1, 1, 4), HEIGHT: ShapeRange(128, 256, 512), WIDTH: ShapeRange(128, 256, 512)}
    assert profile == {"x_t": ((1, 3, 128, 128), (1, 3, 256, 256), (4, 3, 512, 512)), "t": ((1,), (1,), (4,))}


def test_requested_ranges_are_used_and_checked() -> None:
    _, profile = plan_profile(GENERIC, DYNAMIC, batch=ShapeRange(1, 2, 8), height=ShapeRange(64, 128, 256), width=ShapeRange.fixed(96))
    assert profile["x_t"] == ((1, 3, 64, 96), (2, 3, 128, 96), (8, 3, 256, 96))
    assert profile["t"] == ((1,), (2,), (8,))
    with pytest.raises(DiffPIRError, match=r"--height: sizes \(64, 100, 256\) must be multiples of 32"):
        plan_profile(GENERIC, DYNAMIC, height=ShapeRange(64, 100, 256))


def test_static_onnx_pins_the_profile() -> None:
    ranges, profile = plan_profile(GENERIC, STATIC)
    assert profile == {"x_t": ((1, 3, 256, 256),) * 3, "t": ((1,),) * 3}
    assert plan_profile(GENERIC, STATIC, batch=ShapeRange.fixed(1))[1] == profile
    with pytest.raises(DiffPIRError, match=r"--batch 1:1:4: the ONNX has a fixed batch of 1; re-export it with --dynamic-batch"):
        plan_profile(GENERIC, STATIC, batch=ShapeRange(1, 1, 4))
    with pytest.raises(DiffPIRError, match=r"--width 512: the ONNX has a fixed width of 256; re-export it with --dynamic-size"):
        plan_profile(GENERIC, STATIC, width=ShapeRange.fixed(512))


def test_shapes_outside_profile() -> None:
    _, profile = plan_profile(GENERIC, DYNAMIC, opt_size=(256, 256))
    assert shapes_outside_profile(profile, {"x_t": (2, 3, 256, 384), "t": (2,)}) == []
    problems = shapes_outside_profile(profile, {"x_t": (8, 3, 1024, 256), "t": (8,)})
    assert problems == [
        "x_t (8, 3, 1024, 256) not within min (1, 3, 128, 128) .. max (4, 3, 512, 512)",
        "t (8,) not within min (1,) .. max (4,)",
    ]


# --- engine cache key and sidecar staleness ------------------------------------------------------


def _key(**changes) -> EngineKey:
    args = {"onnx_sha256": "a" * 64, "tensorrt_version": "10.3.0", "gpu": H100, "precision": "fp16",
            "profile": plan_profile(GENERIC, DYNAMIC, opt_size=(256, 256))[1]}
    args.update(changes)
    return EngineKey.make(**args)


def test_engine_key_changes_with_every_input() -> None:
    base = _key()
    assert base.digest() == _key().digest()
    assert json.loads(json.dumps(base.to_dict())) == base.to_dict()
    variants = [
        _key(onnx_sha256="b" * 64),
        _key(tensorrt_version="10.4.0"),
        _key(gpu=A100),
        _key(gpu=GpuInfo(H100.name, "9.1")),
        _key(precision="fp32"),
        _key(profile=plan_profile(GENERIC, DYNAMIC, batch=ShapeRange(1, 1, 8), opt_size=(256, 256))[1]),
    ]
    assert len({v.digest() for v in variants} | {base.digest()}) == len(variants) + 1
    assert key_mismatches(base.to_dict(), _key(gpu=A100).to_dict()) == [
        "gpu_name: plan 'NVIDIA H100 80GB HBM3', here 'NVIDIA A100-SXM4-80GB'",
        "compute_capability: plan '9.0', here '8.0'",
    ]


def _fake_plan(tmp_path: Path, key: EngineKey, data: bytes = b"serialized engine bytes") -> Path:
    plan = tmp_path / "unet.plan"
    plan.write_bytes(data)
    write_sidecar(plan, {"artifact": plan.name, "plan_sha256": sha256_files([plan]), "key": key.to_dict(),
                         "key_sha256": key.digest(), "onnx": "unet.onnx"})
    return plan


def test_check_plan_accepts_a_matching_plan(tmp_path: Path) -> None:
    plan = _fake_plan(tmp_path, _key())
    record = check_plan(plan, "10.3.0", H100, onnx_sha256="a" * 64)
    assert record["key_sha256"] == _key().digest()
    assert check_plan(plan, "10.3.0", H100)["key"]["precision"] == "fp16"


def test_check_plan_refuses_foreign_stale_or_changed_plans(tmp_path: Path) -> None:
    plan = _fake_plan(tmp_path, _key())
    with pytest.raises(DiffPIRError, match=r"was built elsewhere or is stale \(tensorrt_version: plan '10.3.0', here '10.5.1'\); rebuild it with `diffpir export trt --onnx unet.onnx"):
        check_plan(plan, "10.5.1", H100)
    with pytest.raises(DiffPIRError, match=r"gpu_name: plan 'NVIDIA H100 80GB HBM3', here 'NVIDIA A100-SXM4-80GB'; compute_capability"):
        check_plan(plan, "10.3.0", A100)
    with pytest.raises(DiffPIRError, match=r"onnx_sha256: the ONNX differs from the one the plan was built from"):
        check_plan(plan, "10.3.0", H100, onnx_sha256="c" * 64)
    plan.write_bytes(b"serialized engine bytes, then edited")
    with pytest.raises(DiffPIRError, match=r"the file changed since it was built \(SHA-256 differs from its sidecar\)"):
        check_plan(plan, "10.3.0", H100)
    Path(str(plan) + ".json").unlink()
    with pytest.raises(DiffPIRError, match=r"its sidecar unet.plan.json is missing"):
        check_plan(plan, "10.3.0", H100)
    with pytest.raises(DiffPIRError, match=r"engine .*nope.plan: file not found"):
        check_plan(tmp_path / "nope.plan", "10.3.0", H100)


def test_build_precision_and_timing_cache_name(tmp_path: Path) -> None:
    assert resolve_build_precision("fp16", fp16=False, has_fp16_flag=True) == ("fp16", True)
    assert resolve_build_precision("fp32", fp16=False, has_fp16_flag=True) == ("fp32", True)
    assert resolve_build_precision("fp32", fp16=True, has_fp16_flag=True) == ("fp16", False)
    with pytest.raises(DiffPIRError, match=r"--dtype fp16: this TensorRT builds strongly typed networks only; export the ONNX with"):
        resolve_build_precision("fp32", fp16=True, has_fp16_flag=False)
    assert default_timing_cache(tmp_path / "unet.plan", "10.3.0", H100) == tmp_path / "timing_trt10.3.0_sm90.cache"


# --- without TensorRT: one clear error -----------------------------------------------------------


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_missing_tensorrt_is_one_clear_error(no_tensorrt: None, tmp_path: Path) -> None:
    from diffpir_rt.engine.backends import make_denoiser_from

    with pytest.raises(DiffPIRError, match=r"^TensorRT is not installed \(pip install tensorrt; needs an NVIDIA GPU\)$"):
        import_tensorrt()
    plan = _fake_plan(tmp_path, _key())
    with pytest.raises(DiffPIRError, match=r"TensorRT is not installed"):
        make_denoiser_from(ModelSource("tensorrt", plan), device="cuda")


def test_build_engine_checks_the_onnx_then_needs_tensorrt(no_tensorrt: None, onnx_dynamic: Path, onnx_static: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from diffpir_rt.export import build_engine

    with pytest.raises(DiffPIRError, match=r"--batch 1:1:4: the ONNX has a fixed batch of 1"):
        build_engine(onnx_static, tmp_path / "u.plan", batch=ShapeRange(1, 1, 4))
    with pytest.raises(DiffPIRError, match=r"--output .*u.onnx2: expected a .plan"):
        build_engine(onnx_dynamic, tmp_path / "u.onnx2")
    garbage = tmp_path / "g.onnx"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(DiffPIRError, match=r"--onnx .*g.onnx: not a readable ONNX model"):
        build_engine(garbage, tmp_path / "u.plan")
    with pytest.raises(DiffPIRError, match=r"^TensorRT is not installed"):
        build_engine(onnx_dynamic, tmp_path / "u.plan", fp16=True)
    assert not (tmp_path / "u.plan").exists()


# --- with TensorRT and a GPU ---------------------------------------------------------------------


@needs_trt
@needs_gpu
@pytest.mark.gpu
def test_trt_engine_matches_torch_and_is_cached(onnx_dynamic: Path, torch_denoiser, tmp_path: Path) -> None:
    from diffpir_rt.engine.backends import make_denoiser_from
    from diffpir_rt.export import build_engine

    plan = build_engine(onnx_dynamic, tmp_path / "unet.plan", batch=ShapeRange(1, 2, 3),
                        height=ShapeRange(8, 16, 32), width=ShapeRange(8, 16, 32))
    stamp = plan.stat().st_mtime_ns
    assert build_engine(onnx_dynamic, plan, batch=ShapeRange(1, 2, 3), height=ShapeRange(8, 16, 32),
                        width=ShapeRange(8, 16, 32)).stat().st_mtime_ns == stamp  # cache hit
    runtime = make_denoiser_from(ModelSource("tensorrt", plan), device="cuda")
    x_t = torch.randn(3, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 500, 3])
    with torch.no_grad():
        expected = torch_denoiser(x_t, t)
    got = runtime(x_t.cuda(), t.cuda())
    assert float((got.cpu() - expected).abs().max()) <= 1e-3  # fp32 engine, TF32 off
    with pytest.raises(DiffPIRError, match="outside engine"):
        runtime(torch.zeros(4, 3, 16, 16, device="cuda"), 5)
