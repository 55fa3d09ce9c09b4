"""Shared fixtures of the guided-diffusion family's tests (DDPM, DDIM, DPS, DMPS, ILVR).

A linear stand-in for the UNet that both sides evaluate identically: torch for the engine,
numpy for the float64 references in reference_methods.py; dense A matrices built from the
engine's operators; the engine's single step run the way the loop runs it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from diffpir_rt.engine.methods.base import Step
from diffpir_rt.engine.methods.loop import call_model


class LinearModel:
    """eps = (1 + t/1000) (M x) + c per sample; v = tanh(P x + d) (the learned-variance half).

    M is near 0.9 I so that x0 predictions are partly inside [-1, 1] (both clamp branches).
    """

    def __init__(self, shape: Sequence[int], seed: int = 0, variance: bool = True) -> None:
        rng = np.random.default_rng(seed)
        self.shape = tuple(shape)
        n = int(np.prod(shape))
        self.M = 0.9 * np.eye(n) + 0.05 * rng.normal(size=(n, n))
        self.c = 0.1 * rng.normal(size=n)
        self.P = 0.3 * rng.normal(size=(n, n)) / np.sqrt(n)
        self.d = 0.3 * rng.normal(size=n)
        if variance:
            self.eps_and_variance = self._eps_and_variance

    # torch side (what the engine calls)
    def _scale(self, x: Tensor, t: Tensor) -> Tensor:
        return (1.0 + t.to(x.dtype) / 1000.0)[:, None]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        M = torch.as_tensor(self.M, dtype=x.dtype)
        c = torch.as_tensor(self.c, dtype=x.dtype)
        flat = x.flatten(1)
        return (self._scale(x, t) * (flat @ M.T) + c).reshape(x.shape)

    def _eps_and_variance(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        P = torch.as_tensor(self.P, dtype=x.dtype)
        d = torch.as_tensor(self.d, dtype=x.dtype)
        return self(x, t), torch.tanh(x.flatten(1) @ P.T + d).reshape(x.shape)

    # numpy side (what the references call), flat vectors of one sample
    def eps_fn(self, x: np.ndarray, t: int) -> np.ndarray:
        return (1.0 + t / 1000.0) * (self.M @ x) + self.c

    def var_fn(self, x: np.ndarray, t: int) -> np.ndarray:
        return np.tanh(self.P @ x + self.d)

    def vjp_fn(self, x: np.ndarray, t: int, u: np.ndarray) -> np.ndarray:
        return (1.0 + t / 1000.0) * (self.M.T @ u)


def dense_matrix(data, shape: Sequence[int]) -> np.ndarray:
    """A as an (m, n) float64 matrix: the engine's data.forward on the identity basis."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return data.forward(basis).reshape(n, -1).T.numpy().copy()


def flat(x: Tensor, b: int = 0) -> np.ndarray:
    return x[b].detach().double().flatten().numpy()


def one_step(method, model, data, x: Tensor, step: Step, z: Optional[Tensor]) -> Tensor:
    """One step exactly as engine.methods.loop.run_steps takes it."""
    t = torch.full((x.shape[0],), int(step.t), dtype=torch.int64)
    if method.needs_grad:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            out = call_model(model, x, t, method.needs_variance)
            return method.update(x, out, step, data, z).detach()
    with torch.no_grad():
        out = call_model(model, x, t, method.needs_variance)
        return method.update(x, out, step, data, z)


def step_at(method, i: int) -> Step:
    """The engine step at respaced index i (steps run from i = K-1 down to 0)."""
    steps = method.steps()
    return steps[len(steps) - 1 - i]


def gaussian_kernel(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


def noises(rng: np.random.Generator, count: int, shape: Sequence[int]) -> list[Tensor]:
    return [torch.from_numpy(rng.normal(size=tuple(shape))) for _ in range(count)]


def problem(task: str, rng: np.random.Generator, sigma_n: float = 0.05):
    """(operator, image shape (1, C, H, W), y float64 (1, C, h, w), dense A) for a small task."""
    from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution

    if task == "deblur":
        op, shape = Deblur(gaussian_kernel(3, 0.8)), (1, 2, 6, 6)
    elif task == "sr":
        op, shape = SuperResolution(2, gaussian_kernel(3, 0.7)), (1, 1, 8, 8)
    elif task == "inpaint":
        op, shape = Inpaint((rng.random((6, 6)) > 0.4).astype(np.float64)), (1, 2, 6, 6)
    elif task == "denoise":
        op, shape = Denoise(), (1, 2, 5, 5)
    else:
        raise ValueError(task)
    u = torch.from_numpy(rng.random(shape))
    clean = op.forward(u)
    y = clean + sigma_n * torch.from_numpy(rng.normal(size=tuple(clean.shape)))
    if task == "inpaint":
        y = op.forward(y)  # zeros where missing
    A = dense_matrix(op.data_step(y), shape[1:])
    return op, shape, y, A


def batch_problem(task: str, rng: np.random.Generator, sigma_n: float = 0.05):
    """(operator with per-sample kernels/masks for a batch of 2, y float32 (2, C, h, w))."""
    from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution

    if task == "deblur":
        op, shape = Deblur(np.stack([gaussian_kernel(3, 0.6), gaussian_kernel(3, 1.2)])), (2, 3, 8, 8)
    elif task == "sr":
        op, shape = SuperResolution(2, np.stack([gaussian_kernel(5, 0.8), gaussian_kernel(5, 1.3)])), (2, 3, 8, 8)
    elif task == "inpaint":
        op, shape = Inpaint((rng.random((2, 8, 8)) > 0.5).astype(np.float64)), (2, 3, 8, 8)
    elif task == "denoise":
        op, shape = Denoise(), (2, 3, 8, 8)
    else:
        raise ValueError(task)
    u = torch.rand(shape)
    clean = op.forward(u)
    y = (clean + sigma_n * torch.randn(clean.shape)).float()
    return op, shape, y
