"""Tiny-UNet artifacts shared by the export tests: a random checkpoint and its ONNX exports.

Exports take seconds each, so they are made once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.engine import UNetDenoiser, build_unet, load_unet
from diffpir_rt.export import OnnxExportConfig, export_onnx


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.clone().contiguous() for k, v in build_unet("tiny").state_dict().items()}


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_checkpoint(artifacts: Path) -> Path:
    """A random tiny UNet saved as safetensors (the checkpoint path of export and restore)."""
    path = artifacts / "tiny.safetensors"
    save_file(tiny_state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def torch_denoiser(tiny_checkpoint: Path) -> UNetDenoiser:
    """The fp32 torch reference for everything exported from tiny_checkpoint."""
    return load_unet(tiny_checkpoint, "tiny")


@pytest.fixture(scope="session")
def onnx_dynamic(tiny_checkpoint: Path, artifacts: Path) -> Path:
    """fp32, dynamic batch and size."""
    config = OnnxExportConfig(dynamic_batch=True, dynamic_size=True)
    return export_onnx(tiny_checkpoint, artifacts / "dynamic" / "unet.onnx", config, arch="tiny")


@pytest.fixture(scope="session")
def onnx_fp16(tiny_checkpoint: Path, artifacts: Path) -> Path:
    config = OnnxExportConfig(precision="fp16", dynamic_batch=True, dynamic_size=True)
    return export_onnx(tiny_checkpoint, artifacts / "fp16" / "unet.onnx", config, arch="tiny")


@pytest.fixture(scope="session")
def onnx_static(tiny_checkpoint: Path, artifacts: Path) -> Path:
    """fp32, fixed batch 1 and 16x16 (the arch's image_size)."""
    return export_onnx(tiny_checkpoint, artifacts / "static" / "unet.onnx", OnnxExportConfig(), arch="tiny")
