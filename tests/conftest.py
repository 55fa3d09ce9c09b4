"""Shared fixtures: a seeded numpy rng, the compute device, and the bundled test data path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def data_dir() -> Path:
    return DATA


def cli_error(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run `diffpir argv`; assert the user-error contract (exit 2, one stderr line, no traceback)."""
    from diffpir_rt.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1
    return err
