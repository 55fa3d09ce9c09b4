"""Malicious pickles never run: a checkpoint (.pt/.pth/.ckpt/.bin, zip or legacy), an .npy
of Python objects, LPIPS/FID weights and training checkpoints, through every loader and
every command that reads them. Each payload creates a marker file when unpickled; the
sanity tests first prove that an unsafe load of the very same bytes does create it.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from diffpir_rt.errors import DiffPIRError

from . import makers
from .conftest import Runner, World
from .harness import run

PAYLOADS: dict[str, tuple[str, Callable[[Path], bytes]]] = {
    "torch zip": ("evil.pt", lambda m: makers.torch_pickle(m)),
    "torch zip, wrapped": ("evil.pth", lambda m: makers.torch_pickle(m, nested=True)),
    "raw pickle protocol 2": ("evil.ckpt", lambda m: makers.payload_bytes(m, 2)),
    "raw pickle protocol 5": ("evil.bin", lambda m: makers.payload_bytes(m, 5)),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_the_payloads_are_live(tmp_path: Path, kind: str) -> None:
    """Loaded unsafely, each payload does run: so its marker staying absent below means something."""
    name, make = PAYLOADS[kind]
    marker = tmp_path / "MARKER"
    data = make(marker)
    if kind.startswith("torch"):
        torch.load(io.BytesIO(data), weights_only=False)
    else:
        pickle.loads(data)
    assert marker.exists()


def test_the_npy_payload_is_live(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    np.load(io.BytesIO(makers.npy_object_pickle(marker)), allow_pickle=True)
    assert marker.exists()


def _loaders() -> dict[str, Callable[[Path], Any]]:
    from diffpir_rt.engine import ModelSource, load_state_dict_file, load_unet
    from diffpir_rt.training.train import read_checkpoint

    def lpips(p: Path) -> Any:
        from diffpir_rt.benchmarks.metrics import _load_state_dict  # the LPIPS/FID weights loader

        return _load_state_dict(p, "--lpips-weights")

    return {
        "load_state_dict_file": load_state_dict_file,
        "load_unet": lambda p: load_unet(p, "tiny"),
        "ModelSource.load_torch": lambda p: ModelSource("checkpoint", p, "tiny").load_torch(),
        "training read_checkpoint": read_checkpoint,
        "LPIPS / FID weights": lpips,
    }


LOADERS = ["load_state_dict_file", "load_unet", "ModelSource.load_torch", "training read_checkpoint", "LPIPS / FID weights"]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_checkpoint_loaders_never_unpickle_code(tmp_path: Path, loader: str, kind: str) -> None:
    name, make = PAYLOADS[kind]
    marker = tmp_path / "MARKER"
    path = makers.write(tmp_path / name, make(marker))
    box: dict[str, Any] = {}

    def call() -> int:
        try:
            _loaders()[loader](path)
        except DiffPIRError as e:
            box["error"] = str(e)
        return 0

    outcome = run(call, [tmp_path])
    assert outcome.escaped is None, outcome.escaped
    assert not marker.exists(), f"{loader} ran the pickle in {name}"
    assert "error" in box, f"{loader} accepted {name}"
    assert "\n" not in box["error"]


@pytest.mark.parametrize("kind", list(PAYLOADS))
@pytest.mark.parametrize("command", ["restore", "generate", "export"])
def test_commands_never_unpickle_code(cli: Runner, world: World, tmp_path: Path, command: str, kind: str) -> None:
    name, make = PAYLOADS[kind]
    marker = tmp_path / "MARKER"
    path = str(makers.write(tmp_path / name, make(marker)))
    argv = {
        "restore": ["restore", "--task", "denoise", "--input", str(world.clean16), "--output", str(tmp_path / "o.png"),
                    "--checkpoint", path, "--arch", "tiny", "--quiet"],
        "generate": ["generate", "--checkpoint", path, "--arch", "tiny", "--num", "1", "--size", "16",
                     "--output", str(tmp_path / "g.png"), "--quiet"],
        "export": ["export", "onnx", "--checkpoint", path, "--arch", "tiny", "--output", str(tmp_path / "u.onnx")],
    }[command]  # fmt: skip
    cli(argv, expect="loaded")  # "... which are never loaded" / "... it was not loaded"
    assert not marker.exists()


@pytest.mark.parametrize(
    "role",
    ["restore --input", "restore --kernel", "degrade --kernel", "read_npy", "load_kernel"],
)
def test_npy_object_arrays_never_unpickle(cli: Runner, world: World, tmp_path: Path, role: str) -> None:
    marker = tmp_path / "MARKER"
    path = makers.write(tmp_path / "evil.npy", makers.npy_object_pickle(marker))
    if role in ("read_npy", "load_kernel"):
        from diffpir_rt.engine.degrade import load_kernel
        from diffpir_rt.engine.paths import read_npy

        fn = (lambda: read_npy(path, "input")) if role == "read_npy" else (lambda: load_kernel(path))
        with pytest.raises(DiffPIRError, match="Python objects"):
            fn()
    else:
        out = tmp_path / "o.npy"
        argv = {
            "restore --input": ["restore", "--task", "denoise", "--input", str(path)],
            "restore --kernel": ["restore", "--task", "deblur", "--input", str(world.clean32), "--kernel", str(path)],
            "degrade --kernel": ["degrade", "--task", "deblur", "--input", str(world.clean32), "--kernel", str(path)],
        }[role]
        extra = ["--quiet", *world.model()] if role.startswith("restore") else []
        cli([*argv, "--output", str(out), *extra], expect="Python objects")
    assert not marker.exists()
