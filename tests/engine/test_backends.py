"""The torch backend and the backend factory: dtypes within stated tolerances, and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.engine import DiffPIRError, ModelSource, UNetDenoiser, build_unet
from diffpir_rt.engine.backends import BACKENDS, Denoiser, make_denoiser_from
from diffpir_rt.engine.backends.base import batch_timesteps
from diffpir_rt.engine.backends.torch_backend import TorchDenoiser

#: Reduced-precision tolerances vs the fp32 path, relative to max|eps| (docs/runtime.md, "Precision").
DTYPE_TOLERANCE = {"fp16": 1e-2, "bf16": 5e-2}


def tiny(seed: int = 0) -> UNetDenoiser:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNetDenoiser(build_unet("tiny").eval(), arch="tiny").eval()


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny().unet.state_dict().items()}, str(path))
    return path


def test_fp32_backend_is_the_denoiser(checkpoint: Path) -> None:
    backend = make_denoiser_from(ModelSource("checkpoint", checkpoint, "tiny"))
    assert isinstance(backend, Denoiser) and backend.name == "torch" and backend.size_multiple == 2
    x_t = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = tiny()(x_t, torch.tensor([10, 900]))
    assert torch.equal(backend(x_t, torch.tensor([10, 900])), expected)
    info = backend.describe()
    assert info == {**info, "backend": "torch", "precision": "fp32", "arch": "tiny", "weights": f"checkpoint:{checkpoint}"}


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_reduced_precision_within_tolerance(dtype: str) -> None:
    x_t = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reference = TorchDenoiser(tiny())(x_t, 500)
    got = TorchDenoiser(tiny(), dtype=dtype)(x_t, 500)
    assert got.dtype == torch.float32  # eps comes back in x_t's dtype
    error = float((got - reference).abs().max())
    assert 0 < error <= DTYPE_TOLERANCE[dtype] * max(1.0, float(reference.abs().max()))


def test_channels_last_matches_contiguous() -> None:
    x_t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = TorchDenoiser(tiny())(x_t, 42)
    nhwc = TorchDenoiser(tiny(), channels_last=True, attention="sdpa")
    assert nhwc.describe()["channels_last"]
    assert float((nhwc(x_t, 42) - plain).abs().max()) <= 1e-5


def test_batch_timesteps_forms() -> None:
    for t in (7, torch.tensor(7), torch.tensor([7]), torch.tensor([7, 7, 7], dtype=torch.int32)):
        out = batch_timesteps(t, 3, torch.device("cpu"))
        assert out.dtype == torch.int64 and out.tolist() == [7, 7, 7]


def test_factory_errors(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffpir_rt.engine.prior as prior

    with pytest.raises(DiffPIRError, match=r"dtype: expected one of \['fp32', 'fp16', 'bf16'\], got 'fp64'"):
        make_denoiser_from(ModelSource("checkpoint", checkpoint, "tiny"), dtype="fp64")
    with pytest.raises(DiffPIRError, match="--arch applies to torch weights"):
        ModelSource("bundled", arch="tiny")
    with pytest.raises(DiffPIRError, match="name one model source"):
        ModelSource.from_files({"checkpoint": checkpoint, "onnx": Path("u.onnx")})
    monkeypatch.setattr(prior, "bundled_card", lambda: None)
    with pytest.raises(DiffPIRError, match="no checkpoint: this installation ships no bundled prior"):
        make_denoiser_from(ModelSource())
    assert tuple(BACKENDS) == ("torch", "onnxruntime", "tensorrt")
