"""The bundled default prior: weights and model card shipped in engine/weights/.

The model card (JSON) names the arch, the weights' SHA-256 and the per-task
hyperparameters tuned for this prior; `diffpir restore` uses it when no
--checkpoint is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from diffpir_rt.errors import DiffPIRError

from .artifacts import sha256_file

if TYPE_CHECKING:
    import torch

    from .denoiser import UNetDenoiser

WEIGHTS_DIR = Path(__file__).parent / "weights"
CARD_PATH = WEIGHTS_DIR / "bundled_prior.json"


def bundled_card() -> dict[str, Any] | None:
    """The bundled prior's model card, or None if this build ships no prior."""
    if not CARD_PATH.is_file():
        return None
    card = json.loads(CARD_PATH.read_text())
    if not (WEIGHTS_DIR / card["weights"]).is_file():
        return None
    return card


def bundled_weights_path() -> Path:
    card = bundled_card()
    if card is None:
        raise DiffPIRError(
            "no checkpoint: this installation ships no bundled prior yet; pass --checkpoint PATH "
            "(a guided-diffusion UNet .pt/.safetensors, e.g. ffhq_10m.pt) and --arch"
        )
    return WEIGHTS_DIR / card["weights"]


def load_bundled_prior(
    device: str | torch.device = "cpu", dtype: Optional[torch.dtype] = None, verify: bool = True
) -> UNetDenoiser:
    """Load the shipped weights (float32 unless `dtype`), checking their SHA-256 against the model card."""
    import torch  # here, not at the top: reading the model card must not cost torch's import

    from .denoiser import load_unet
    path = bundled_weights_path()
    card = bundled_card()
    assert card is not None  # bundled_weights_path raised otherwise
    if verify and sha256_file(path) != card["sha256"]:
        raise DiffPIRError(f"bundled prior {path}: SHA-256 does not match its model card (corrupt install?)")
    return load_unet(path, card["arch"], device=device, dtype=torch.float32 if dtype is None else dtype)
