"""What the measurement does not say: its noise level and its blur kernel, estimated from it.

`noise` estimates σ_n from a measurement alone (docs/blind.md §1); `kernel` holds the kernel
update of blind deblurring (the M-step fitted to an image estimate and the measurement,
docs/blind.md §2) and the pieces the blind method and the large-image path share.
"""

from .kernel import (
    KernelFit,
    best_window,
    fit_kernel,
    gaussian_kernel,
    initial_kernel,
    kernel_error,
    project_kernel,
)
from .noise import ESTIMATORS, estimate_sigma_n, noise_pca_tail, noise_pca_weak_texture, noise_wavelet_mad
from .sparse import CoarseToFine, estimate_kernel, estimate_kernel_on_window

__all__ = [
    "ESTIMATORS", "CoarseToFine", "KernelFit", "best_window", "estimate_kernel", "estimate_kernel_on_window", "estimate_sigma_n", "fit_kernel", "gaussian_kernel",
    "initial_kernel", "kernel_error", "noise_pca_tail", "noise_pca_weak_texture", "noise_wavelet_mad",
    "project_kernel",
]  # fmt: skip
