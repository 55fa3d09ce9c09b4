"""Shared fixtures of the spectral / plug-and-play methods' tests (DDRM, DDNM, RePaint, DPIR).

Small problems of every operator family with their dense A matrices (built from the engine's
forward on the identity basis, single-sample operators), a linear stand-in for the UNet that
torch and the numpy references evaluate identically, and one loop step taken the way
engine.methods.loop.run_steps takes it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from diffpir_rt.engine.methods.base import Step
from diffpir_rt.engine.methods.loop import call_model
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution

from .gd_family import LinearModel as _GDLinearModel
from .gd_family import dense_matrix as _gd_dense_matrix

C, H = 2, 8  # channels, image side: n = 128
SHAPE = (C, H, H)


class LinearModel(_GDLinearModel):
    """gd_family's linear stand-in model, on this family's default shape, eps only by default."""

    def __init__(self, shape: Sequence[int] = SHAPE, seed: int = 0, variance: bool = False) -> None:
        super().__init__(shape, seed, variance)


def gaussian_kernel(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


def random_kernel(rng: np.random.Generator, size: int) -> np.ndarray:
    k = rng.random((size, size)) + 0.05
    return k / k.sum()


def dense_matrix(op, shape: Sequence[int] = SHAPE) -> np.ndarray:
    """A (m, n) in float64: a single-sample operator's forward on the identity basis."""
    return _gd_dense_matrix(op, shape)


def problems(rng: np.random.Generator) -> dict[str, tuple[object, list[object]]]:
    """name -> (batch-of-2 operator, its per-sample single operators), per-sample kernels/masks.

    "deblur" has a Gaussian kernel with spectral values below RCOND (a null space for the
    methods); "deblur_random" random positive kernels; "sr2" blur + decimation by 2.
    """
    kernels = [gaussian_kernel(5, 1.2), random_kernel(rng, 5)]
    sr_kernels = [random_kernel(rng, 3), gaussian_kernel(3, 0.6)]
    masks = [(rng.random((H, H)) > 0.5).astype(np.float64) for _ in range(2)]
    return {
        "deblur": (Deblur(np.stack(kernels)), [Deblur(k) for k in kernels]),
        "sr2": (SuperResolution(2, np.stack(sr_kernels)), [SuperResolution(2, k) for k in sr_kernels]),
        "inpaint": (Inpaint(np.stack(masks)), [Inpaint(m) for m in masks]),
        "denoise": (Denoise(), [Denoise(), Denoise()]),
    }


def measurement(op, rng: np.random.Generator, sigma_n: float, batch: int = 2) -> Tensor:
    """y = A u + sigma_n n for a random [0, 1] image u, float64."""
    u = torch.from_numpy(rng.random((batch, *SHAPE)))
    y = op.forward(u)
    return y + sigma_n * torch.from_numpy(rng.normal(size=tuple(y.shape)))


def flat(x: Tensor, b: int) -> np.ndarray:
    return x[b].detach().double().flatten().numpy()


def one_step(method, model, data, x: Tensor, step: Step, z: Optional[Tensor]) -> Tensor:
    """One step exactly as run_steps takes it (model call at step.t unless it is None)."""
    with torch.no_grad():
        out = None
        if step.t is not None:
            t = torch.full((x.shape[0],), int(step.t), dtype=torch.int64)
            out = call_model(model, x, t, method.needs_variance)
        return method.update(x, out, step, data, z)


def random_state(rng: np.random.Generator, t: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A batch of 2 plausible x_t: sqrt(abar_t) x0 + sqrt(1 - abar_t) n, x0 uniform in [-1, 1]."""
    ab = 1.0 if t < 0 else float(np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[t])
    x = np.sqrt(ab) * rng.uniform(-1, 1, size=(2, *SHAPE)) + np.sqrt(1 - ab) * rng.normal(size=(2, *SHAPE))
    return torch.from_numpy(x).to(dtype)


def noises(rng: np.random.Generator, count: int, shape: Sequence[int]) -> list[Tensor]:
    return [torch.from_numpy(rng.normal(size=tuple(shape))) for _ in range(count)]


def seeded_draw(shape: Sequence[int], seed: int) -> Tensor:
    """The first float64 tensor NoiseStream draws for one integer seed (x_T's noise)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64)
