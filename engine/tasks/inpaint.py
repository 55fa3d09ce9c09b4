"""Inpainting: y = m ⊙ x + n, a pixel mask from the user (docs/algorithm.md §6.1)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError

from .base import Task

#: Named masks of the official protocol.
MASK_NAMES = ("box", "random")


class InpaintTask(Task):
    name = "inpaint"
    description = "inpainting: fill the pixels a mask marks missing (mask file: nonzero = observed)"
    operator_type = "Inpaint"
    family = "mask"
    inputs = ("mask",)
    required = ("mask",)
    per_image_input = "mask"
    default_sigma_n = 0.0
    variants = MASK_NAMES
    baselines = ("biharmonic", "measurement", "datastep")

    def _operator(self, kernel: Any, mask: Any, scale: Optional[int]) -> Any:
        from ..operators import Inpaint

        return Inpaint(mask)

    def _variant_options(self, variant: str) -> dict[str, Any]:
        return {"mask": variant}

    def _degrade(self, x: np.ndarray, options: dict[str, Any]) -> tuple[np.ndarray, Any, Any, Any]:
        """A named mask ('box': a box x box hole at least box_margin from the border, 'random':
        random_p of the pixels missing; both seeded by mask_seed) or an (H, W) array."""
        from .. import degrade

        height, width = x.shape[:2]
        mask = options.get("mask", "random")
        seed = options.get("mask_seed", 0)
        if isinstance(mask, str):
            if mask not in MASK_NAMES:
                raise DiffPIRError(f"--mask {mask}: expected one of {', '.join(MASK_NAMES)} or a mask image")
            if mask == "box":
                mask = degrade.box_mask(height, width, seed=seed, box=options.get("box", 128), margin=options.get("box_margin", 16))
            else:
                mask = degrade.random_mask(height, width, seed=seed, p=options.get("random_p", 0.5))
        mask = np.asarray(mask, dtype=np.float64)
        if mask.shape != (height, width):
            raise DiffPIRError(f"mask: size {mask.shape[1]}x{mask.shape[0]} does not match the {width}x{height} image")
        return x * mask[..., None], self.operator(mask=mask), None, mask

    def synthetic_operator(self, height: int, width: int) -> Any:
        from .. import degrade

        return self.operator(mask=degrade.random_mask(height, width, seed=0))


TASK = InpaintTask()
