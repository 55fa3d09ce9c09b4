"""Denoising: y = x + n (not in the official DiffPIR code; the mask data step with m = 1)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .base import Task


class DenoiseTask(Task):
    name = "denoise"
    description = "denoising: remove additive Gaussian noise of a known (or estimated) level"
    operator_type = "Denoise"
    family = "mask"
    default_sigma_n = 0.05
    baselines = ("nlmeans", "tv", "measurement", "datastep")
    needs_noise = True

    def _operator(self, kernel: Any, mask: Any, scale: Optional[int]) -> Any:
        from ..operators import Denoise

        return Denoise()

    def _degrade(self, x: np.ndarray, options: dict[str, Any]) -> tuple[np.ndarray, Any, Any, Any]:
        return x.copy(), self.operator(), None, None

    def synthetic_operator(self, height: int, width: int) -> Any:
        return self.operator()


TASK = DenoiseTask()
