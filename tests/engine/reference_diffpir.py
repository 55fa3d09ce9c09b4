"""An independent float64 numpy transcription of the official DiffPIR loop (docs/algorithm.md §2-6).

Written from the spec, not from engine/: it uses the official (non-residual) closed
forms, the USRNet ``data_solution`` with ``splits``, and runs the discarded final
model call, so agreement with engine.sample checks the algorithm, not a copy of it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

EpsFn = Callable[[np.ndarray, int], np.ndarray]


def alphas_cumprod() -> np.ndarray:
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def p2o(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    otf = np.zeros(shape)
    otf[: kernel.shape[0], : kernel.shape[1]] = kernel
    otf = np.roll(otf, (-(kernel.shape[0] // 2), -(kernel.shape[1] // 2)), axis=(0, 1))
    return np.fft.fft2(otf)


def splits_mean(a: np.ndarray, sf: int) -> np.ndarray:
    """Official ``splits`` then mean over the sf*sf tiles (tile (i, j) = block rows i, cols j)."""
    h, w = a.shape[-2] // sf, a.shape[-1] // sf
    tiles = [a[..., i * h : (i + 1) * h, j * w : (j + 1) * w] for i in range(sf) for j in range(sf)]
    return np.mean(np.stack(tiles, axis=-1), axis=-1)


def fourier_solution(x01: np.ndarray, y01: np.ndarray, kernel: np.ndarray, sf: int, rho: float) -> np.ndarray:
    """USRNet/DiffPIR data_solution (docs/algorithm.md §6.3), sf = 1 for deblurring; arrays (C, H, W)."""
    H, W = x01.shape[-2:]
    FB = p2o(kernel, (H, W))
    FBC, F2B = np.conj(FB), np.abs(FB) ** 2
    STy = np.zeros_like(x01)
    STy[..., ::sf, ::sf] = y01
    FBFy = FBC * np.fft.fft2(STy)
    FR = FBFy + np.fft.fft2(rho * x01)
    FBR = splits_mean(FB * FR, sf)
    invW = splits_mean(F2B, sf)
    invWBR = FBR / (invW + rho)
    FCBinvWBR = FBC * np.tile(invWBR, (1, sf, sf))
    FX = (FR - FCBinvWBR) / rho
    return np.real(np.fft.ifft2(FX))


def reference_sample(
    eps_fn: EpsFn,
    task: str,
    y01: np.ndarray,
    x_T: np.ndarray,
    noise: Sequence[np.ndarray],
    ts: Sequence[int],
    lam: float,
    zeta: float,
    sigma_n: float,
    kernel: np.ndarray | None = None,
    sf: int = 1,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """One image (C, H, W). Returns the [0, 1] output of docs/algorithm.md §4."""
    a = np.asarray(alphas_cumprod())
    sigma_bar = np.sqrt(1 - a) / np.sqrt(a)
    rhos = lam * max(0.001, sigma_n) ** 2 / sigma_bar**2
    x = x_T.copy()
    for i, t in enumerate(ts):
        eps = eps_fn(x, t)
        x0 = np.clip(np.sqrt(1 / a[t]) * x - np.sqrt(1 / a[t] - 1) * eps, -1, 1)
        if i == len(ts) - 1:
            break  # the official code computes this last prediction and discards it
        rho = rhos[t]
        if task in ("deblur", "sr"):
            x0 = 2 * fourier_solution(x0 / 2 + 0.5, y01, kernel, sf, rho) - 1
        elif task == "inpaint":
            x0 = (mask * (2 * y01 - 1) + rho * x0) / (mask + rho)
        elif task == "denoise":
            x0 = ((2 * y01 - 1) + rho * x0) / (1 + rho)
        else:
            raise ValueError(task)
        t_prev = ts[i + 1]
        eps_hat = (x - np.sqrt(a[t]) * x0) / np.sqrt(1 - a[t])
        x = np.sqrt(a[t_prev]) * x0 + np.sqrt(1 - a[t_prev]) * (
            np.sqrt(1 - zeta) * eps_hat + np.sqrt(zeta) * noise[i]
        )
    return np.clip(x / 2 + 0.5, 0, 1)
