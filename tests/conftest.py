"""Shared fixtures: a seeded numpy rng, the compute device, the bundled test data path, and
`no_tf32` for GPU comparisons at fp32 tolerances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"

# The tests' tensors are small: one intra-op thread is faster than two fighting over a shared
# CI machine's cores. (Subprocesses the tests start keep torch's default.)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime's ONNX export cache in a per-session temporary folder, never the user's home."""
    monkeypatch.setenv("DIFFPIR_RT_CACHE", str(tmp_path_factory.getbasetemp() / "diffpir-cache"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def no_tf32():
    """TF32 off for cuBLAS matmuls and cuDNN convolutions during the test, then the previous
    settings back. cuDNN convolutions run in TF32 by default (~1e-3 relative rounding), which
    comparisons at 1e-4 / 1e-5 against torch's fp32 path cannot absorb. Harmless on CPU."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `tiny` UNet preset with seeded random weights as a .safetensors checkpoint (use --arch tiny)."""
    from safetensors.torch import save_file

    from diffpir_rt.engine import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet("tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return path


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run `diffpir argv`; assert the user-error contract (exit 2, one stderr line, no traceback)."""
    from diffpir_rt.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1
    return err
