"""Deblurring: y = k * x + n, a blur kernel from the user (docs/algorithm.md §6.2)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError

from .base import Task

#: Named kernels of the official protocol, drawn per image index as the official scripts do.
KERNEL_NAMES = ("gaussian", "motion")


class DeblurTask(Task):
    name = "deblur"
    description = "deblurring: undo a known blur (a kernel file), real photos restored on an extended domain"
    operator_type = "Deblur"
    family = "fourier"
    inputs = ("kernel", "kernel_index")
    required = ("kernel",)
    per_image_input = "kernel"
    default_sigma_n = 0.05
    # A photo's blur does not wrap around: the masked extended domain for user images, the tapered
    # extension for methods that need closed forms (docs/algorithm.md §11); circular is the official
    # protocol's synthetic model.
    boundaries = ("extend", "taper", "circular")
    variants = KERNEL_NAMES
    baselines = ("wiener", "unsupervised_wiener", "measurement", "datastep")

    def _operator(self, kernel: Any, mask: Any, scale: Optional[int]) -> Any:
        from ..operators import Deblur

        return Deblur(kernel)

    def _variant_options(self, variant: str) -> dict[str, Any]:
        return {"kernel": variant}

    def _degrade(self, x: np.ndarray, options: dict[str, Any]) -> tuple[np.ndarray, Any, Any, Any]:
        """A named kernel (KERNEL_NAMES, drawn for image `kernel_index` as the official scripts seed
        it, `kernel_size` square; `motion_kernel_size` for the motion kernels when given) or an
        array; circular blur of the 8-bit image."""
        from .. import degrade

        kernel = options.get("kernel", KERNEL_NAMES[0])
        if isinstance(kernel, str):
            draws = {"gaussian": (degrade.gaussian_kernel, "kernel_size"), "motion": (degrade.motion_kernel, "motion_kernel_size")}
            if kernel not in draws:
                raise DiffPIRError(f"--kernel {kernel}: expected one of {', '.join(KERNEL_NAMES)} or a kernel file")
            draw, size_option = draws[kernel]
            kernel = draw(options.get("kernel_index", 0), options.get(size_option, options.get("kernel_size", 61)))
        kernel = np.asarray(kernel, dtype=np.float64)
        height, width = x.shape[:2]
        kh, kw = kernel.shape
        if kh > height or kw > width:
            raise DiffPIRError(f"kernel: {kw}x{kh} is larger than the {width}x{height} image")
        return degrade.blur_image(x, kernel), self.operator(kernel=kernel), kernel, None

    def synthetic_operator(self, height: int, width: int) -> Any:
        from .. import degrade

        return self.operator(kernel=degrade.gaussian_kernel(0, size=min(61, (min(height, width) - 2) | 1)))


TASK = DeblurTask()
