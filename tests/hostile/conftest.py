"""The hostile suite's world: a tiny random UNet, clean inputs, a warm ONNX cache.

Every case runs in its own folder (pytest's tmp_path) next to the shared world; both are
snapshotted before and after, so a case that touches an input, leaves a file behind or
writes where it must not is caught whatever its exit code.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from .harness import Outcome, check_contract, run_cli


@dataclass
class World:
    root: Path
    checkpoint: Path  # tiny random UNet (safetensors)
    onnx: Path  # its cached ONNX export (with sidecar)
    clean32: Path  # 32x32 RGB PNG
    clean16: Path  # 16x16 RGB PNG
    kernel: Path  # 5x5 unit-sum kernel (.npy)
    mask: Path  # 32x32 mask PNG, 255 = observed
    cache: Path  # DIFFPIR_RT_CACHE, with the ONNX export of `checkpoint`

    def model(self, backend: str | None = None) -> list[str]:
        """Flags of the tiny model (ONNX path, cached: fp32, since auto picks bf16 on the torch path
        where the CPU has native bf16) with 3 steps."""
        flags = ["--checkpoint", str(self.checkpoint), "--arch", "tiny", "--steps", "3"]
        flags += [] if backend else ["--dtype", "fp32"]
        return flags + (["--backend", backend] if backend else [])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from safetensors.torch import save_file

    from diffpir_rt.engine import build_unet
    from diffpir_rt.engine.imageio import write_image

    root = tmp_path_factory.mktemp("world")
    cache = tmp_path_factory.mktemp("cache")
    previous = os.environ.get("DIFFPIR_RT_CACHE")
    os.environ["DIFFPIR_RT_CACHE"] = str(cache)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in build_unet("tiny").state_dict().items()}
    checkpoint = root / "tiny.safetensors"
    save_file(state, str(checkpoint))
    rng = np.random.default_rng(0)
    clean32 = write_image(root / "clean32.png", torch.from_numpy(rng.random((3, 32, 32), dtype=np.float32)))
    clean16 = write_image(root / "clean16.png", torch.from_numpy(rng.random((3, 16, 16), dtype=np.float32)))
    kernel = root / "k5.npy"
    k = np.outer(np.hanning(7)[1:-1], np.hanning(7)[1:-1]).astype(np.float32)
    np.save(kernel, k / k.sum(dtype=np.float64))
    mask = write_image(root / "mask32.png", torch.from_numpy((rng.random((1, 32, 32)) > 0.5).astype(np.float32)))
    # Warm the ONNX cache once (the CPU path exports the graph the first time a model is used).
    warm = run_cli(["restore", "--task", "denoise", "--input", str(clean16), "--output", str(cache / "warm.png"),
                    "--quiet", "--checkpoint", str(checkpoint), "--arch", "tiny", "--steps", "3", "--dtype", "fp32"], [])  # fmt: skip
    assert warm.code == 0, warm.err + (warm.escaped or "")
    # The export itself, not ONNX Runtime's optimised graph kept beside it (<key>.ort.onnx).
    onnx = next(p for p in sorted((cache / "onnx").glob("*.onnx")) if not p.name.endswith(".ort.onnx"))
    hashes = {p: _sha(p) for p in root.iterdir()}
    yield World(root, checkpoint, onnx, clean32, clean16, kernel, mask, cache)
    assert {p: _sha(p) for p in hashes} == hashes, "a world input was modified"
    if previous is None:
        os.environ.pop("DIFFPIR_RT_CACHE", None)
    else:
        os.environ["DIFFPIR_RT_CACHE"] = previous


@pytest.fixture(autouse=True)
def _world_cache(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case uses the world's warm ONNX cache (tests/conftest.py gives each test another)."""
    monkeypatch.setenv("DIFFPIR_RT_CACHE", str(world.cache))


class Runner:
    """Runs one case's command line in its folder and checks the contract."""

    def __init__(self, world: World, folder: Path) -> None:
        self.world = world
        self.folder = folder

    def __call__(
        self, argv: Sequence[str], expect: str | None = None, outputs: Sequence[Path] = (), limit: float | None = None
    ) -> Outcome:
        roots = [self.folder, self.world.root]
        outcome = run_cli(argv, roots, **({"limit": limit} if limit else {}))
        check_contract(outcome, argv, expect=expect, outputs=outputs, roots=roots)
        return outcome


@pytest.fixture
def cli(world: World, tmp_path: Path) -> Runner:
    return Runner(world, tmp_path)
