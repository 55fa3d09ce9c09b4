"""Super-resolution: y = (k * x) decimated by the scale, + n (docs/algorithm.md §6.3)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError

from ..operators import SR_SCALES
from .base import Task

DEFAULT_SCALE = 4


class SuperResolutionTask(Task):
    name = "sr"
    description = "super-resolution: a larger image from a small one (x2, x3, x4; bicubic kernel unless given)"
    operator_type = "SuperResolution"
    family = "fourier"
    inputs = ("scale", "kernel", "kernel_index")
    per_image_input = "kernel"
    default_sigma_n = 0.05
    # An SR measurement of a photo does not wrap around either: as for deblurring (docs/algorithm.md §11).
    boundaries = ("extend", "taper", "circular")
    variants = tuple(f"x{s}" for s in SR_SCALES)
    protocol_variants = ("x4",)  # the paper's SR table
    baselines = ("bicubic", "datastep")

    def _operator(self, kernel: Any, mask: Any, scale: Optional[int]) -> Any:
        from ..operators import SuperResolution

        return SuperResolution(DEFAULT_SCALE if scale is None else scale, kernel)

    def _variant_options(self, variant: str) -> dict[str, Any]:
        return {"scale": int(variant[1:])}

    def _degrade(self, x: np.ndarray, options: dict[str, Any]) -> tuple[np.ndarray, Any, Any, Any]:
        """MATLAB bicubic downsampling by `scale` (the official SR measurement)."""
        from .. import degrade

        scale = options.get("scale", DEFAULT_SCALE)
        height, width = x.shape[:2]
        if scale not in SR_SCALES:
            raise DiffPIRError(f"--scale {scale}: expected one of {SR_SCALES}")
        if height < scale or width < scale:
            raise DiffPIRError(f"image: {width}x{height} is smaller than the scale {scale}; expected at least {scale}x{scale}")
        if height % scale or width % scale:
            raise DiffPIRError(
                f"image: {width}x{height} is not divisible by the scale {scale}; crop it to "
                f"{width - width % scale}x{height - height % scale} first"
            )
        return degrade.bicubic_downsample(x, scale), self.operator(scale=scale), None, None

    def shave(self, operator: Any) -> int:
        return int(operator.sf)

    def record(self, operator: Any) -> dict[str, Any]:
        return {"scale": int(operator.sf)}

    def display(self, y: np.ndarray, operator: Any) -> np.ndarray:
        """Nearest upsampling to the output's size."""
        sf = int(operator.sf)
        return np.clip(y, 0.0, 1.0).repeat(sf, axis=0).repeat(sf, axis=1)

    def synthetic_operator(self, height: int, width: int) -> Any:
        return self.operator(scale=DEFAULT_SCALE)


TASK = SuperResolutionTask()
