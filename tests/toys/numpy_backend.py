"""A backend in one file: a numpy "UNet" read from an .npz model file.

The model is eps = scale * x_t per channel (a linear denoiser: enough to run the whole loop).
Registered by one line, `register_backend(BACKEND)`, its model file gets a `--npz` flag on every
command that restores, `ModelSource("npz", path)` resolves, and the runtime runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from diffpir_rt.engine import Backend


class NumpyDenoiser:
    name = "numpy"
    size_multiple = 1

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.scale = np.asarray(data["scale"], dtype=np.float32).reshape(1, -1, 1, 1)
        self.path = path

    def __call__(self, x_t: torch.Tensor, t: Any) -> torch.Tensor:
        eps = self.scale * x_t.detach().cpu().numpy()
        return torch.from_numpy(eps.astype(np.float32)).to(x_t.device, x_t.dtype)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": "cpu", "precision": "fp32", "model": str(self.path)}


def load(source: Any, device: Any = "cpu", precision: str = "fp32", threads: Optional[int] = None, **_: Any) -> NumpyDenoiser:
    return NumpyDenoiser(source.path)


BACKEND = Backend(
    name="numpy",
    description="a numpy linear denoiser (a test backend)",
    file_kind="npz",
    file_flag="--npz",
    file_help="a numpy model file (.npz with a per-channel 'scale')",
    runs_kinds=("npz",),
    devices=("cpu",),
    precisions=("fp32",),
    tolerance="exact: it is its own reference",
    load=load,
    path_name="numpy",
)
