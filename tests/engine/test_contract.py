"""The I/O contract: one declaration read by the exporter, the builder and the runtimes."""

from __future__ import annotations

import pytest

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.backends.contract import (
    BATCH,
    HEIGHT,
    WIDTH,
    Precision,
    ShapeRange,
    contract_from_dict,
    contract_from_dims,
    fix_axes,
    unet_contract,
)


def test_unet_contract_names_dtypes_axes() -> None:
    contract = unet_contract(in_channels=3, size_multiple=32)
    assert contract.input_names == ["x_t", "t"] and contract.output_names == ["eps"]
    assert not set(contract.input_names) & set(contract.output_names)
    assert [s.dtype for s in contract.inputs] == ["float32", "int64"] and contract.outputs[0].dtype == "float32"
    assert contract.dynamic_axes({BATCH, HEIGHT, WIDTH}) == {
        "x_t": {0: "batch", 2: "height", 3: "width"},
        "t": {0: "batch"},
        "eps": {0: "batch", 2: "height", 3: "width"},
    }
    assert contract.dynamic_axes({BATCH}) == {"x_t": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}}
    assert contract.dynamic_axes(set()) == {}


def test_shapes_and_profile_from_sizes() -> None:
    contract = unet_contract(3, 32)
    assert contract.sizes_of((2, 3, 64, 96)) == {BATCH: 2, HEIGHT: 64, WIDTH: 96}
    assert contract.shapes({BATCH: 2, HEIGHT: 64, WIDTH: 96}) == {"x_t": (2, 3, 64, 96), "t": (2,), "eps": (2, 3, 64, 96)}
    profile = contract.profile({BATCH: ShapeRange(1, 2, 4), HEIGHT: ShapeRange(64, 256, 512), WIDTH: ShapeRange.fixed(256)})
    assert profile == {
        "x_t": ((1, 3, 64, 256), (2, 3, 256, 256), (4, 3, 512, 256)),
        "t": ((1,), (2,), (4,)),
    }
    with pytest.raises(DiffPIRError, match=r"profile: no range for dynamic axes \['width'\]"):
        contract.profile({BATCH: ShapeRange.fixed(1), HEIGHT: ShapeRange.fixed(64)})


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 64), r"x_t: expected shape \(batch, 3, height, width\), got \(1, 3, 64\)"),
        ((1, 1, 64, 64), r"x_t: expected shape \(batch, 3, height, width\), got \(1, 1, 64, 64\)"),
        ((1, 3, 48, 64), r"H and W must be positive multiples of 32, got \(48, 64\)"),
    ],
)
def test_sizes_of_rejects(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(DiffPIRError, match=message):
        unet_contract(3, 32).sizes_of(shape)


def test_specialise_to_declared_dims_and_round_trip() -> None:
    generic = unet_contract(3, 2)
    dims = {"x_t": (1, 3, "h", None), "t": (1,), "eps": (1, 3, "h", "w")}
    specialised = contract_from_dims(generic, dims, "onnx u.onnx")
    assert specialised == fix_axes(generic, {BATCH: 1})
    assert specialised.sizes_of((1, 3, 8, 4)) == {HEIGHT: 8, WIDTH: 4}
    with pytest.raises(DiffPIRError, match=r"x_t: expected shape \(1, 3, height, width\), got \(2, 3, 8, 4\)"):
        specialised.sizes_of((2, 3, 8, 4))
    assert contract_from_dict(specialised.to_dict()) == specialised
    with pytest.raises(DiffPIRError, match=r"I/O contract version '0'"):
        contract_from_dict({**specialised.to_dict(), "version": "0"})


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ({"x_t": (1, 3, 8, 8), "t": (1,)}, r"I/O tensors \['t', 'x_t'\] do not match the DiffPIR denoiser contract"),
        ({"x_t": (1, 3, 8), "t": (1,), "eps": (1, 3, 8, 8)}, r"x_t has rank 3; expected x_t float32"),
        ({"x_t": (1, 4, 8, 8), "t": (1,), "eps": (1, 4, 8, 8)}, r"x_t has axes \(1, 4, 8, 8\); expected"),
        ({"x_t": (1, 3, 8, 8), "t": (2,), "eps": (1, 3, 8, 8)}, r"axis batch is fixed to both 1 and 2"),
    ],
)
def test_specialise_rejects_foreign_graphs(dims: dict, message: str) -> None:
    with pytest.raises(DiffPIRError, match=message):
        contract_from_dims(unet_contract(3, 2), dims, "onnx u.onnx")


def test_precision_and_ranges() -> None:
    assert Precision.parse("fp16") is Precision.FP16
    assert Precision.parse("int8") is Precision.INT8
    with pytest.raises(DiffPIRError, match=r"precision: expected one of \['fp32', 'fp16', 'int8'\], got 'bf16'"):
        Precision.parse("bf16")
    with pytest.raises(DiffPIRError, match=r"expected min <= opt <= max, got 4/2/8"):
        ShapeRange(4, 2, 8)
    with pytest.raises(DiffPIRError, match=r"expected positive ints"):
        ShapeRange(0, 1, 2)
