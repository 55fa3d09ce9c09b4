"""DDPM noise schedule, DiffPIR step sequences and rho_t (docs/algorithm.md §2).

All tables are built once in float64 (1 - alpha_bar cancels near t = 0 in
float32) and indexed by the integer timestep t; nothing re-derives them per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from diffpir_rt.errors import DiffPIRError

NUM_TRAIN_TIMESTEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02
SKIP_TYPES = ("quad", "uniform")
#: rho_t uses max(SIGMA_FLOOR, sigma_n) so noiseless tasks keep a finite weight (docs/algorithm.md §2.4).
SIGMA_FLOOR = 0.001


@dataclass(frozen=True)
class Schedule:
    """The linear DDPM schedule as float64 tables indexed by t = 0..T-1.

    Attributes:
        betas: beta_t.
        alpha_bar: prod_{j<=t} (1 - beta_j); alpha_bar[0] = 0.9999, not 1.
        sigma_bar: sqrt(1 - alpha_bar) / sqrt(alpha_bar), the noise level of
            x_t / sqrt(alpha_bar_t) in model [-1, 1] units.
    """

    betas: np.ndarray
    alpha_bar: np.ndarray
    sigma_bar: np.ndarray

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def nearest_timestep(self, sigma_model: float) -> int:
        """argmin_t |sigma_bar_t - sigma_model| (sigma in model [-1, 1] units)."""
        return int(np.argmin(np.abs(self.sigma_bar - sigma_model)))

    def rho(self, lam: float, sigma_n: float) -> np.ndarray:
        """rho_t = lam * max(0.001, sigma_n)^2 / sigma_bar_t^2 for all t (docs/algorithm.md §2.4).

        sigma_n is in [0, 1] image units while sigma_bar is in model units: the
        official code mixes them and its lambda absorbs the factor 4.
        """
        sigma = max(SIGMA_FLOOR, float(sigma_n))
        return lam * sigma**2 / self.sigma_bar**2


@lru_cache(maxsize=None)
def linear_schedule(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END
) -> Schedule:
    """The guided-diffusion "linear" schedule in float64 (docs/algorithm.md §2.1)."""
    betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
    alpha_bar = np.cumprod(1.0 - betas)
    sigma_bar = np.sqrt(1.0 - alpha_bar) / np.sqrt(alpha_bar)
    for table in (betas, alpha_bar, sigma_bar):
        table.setflags(write=False)
    return Schedule(betas=betas, alpha_bar=alpha_bar, sigma_bar=sigma_bar)


def timesteps(steps: int, skip: str = "quad", num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> list[int]:
    """The official model-call timesteps, high noise first, ending at t = 0 (docs/algorithm.md §2.2).

    'quad': t_i = 999 - floor(1000 sqrt(i/(N-1))), last entry 0; N calls.
    'uniform': 999, then (N-1)k, ..., k, 0 with k = 1000 // N; N + 1 calls when k > 1.
    """
    if skip not in SKIP_TYPES:
        raise DiffPIRError(f"skip: expected one of {SKIP_TYPES}, got {skip!r}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 2:
        raise DiffPIRError(f"steps: expected an integer >= 2, got {steps!r}")
    if steps > num_timesteps:
        raise DiffPIRError(f"steps: expected at most {num_timesteps}, got {steps}")
    if skip == "quad":
        # Reproduces the official float64 numpy expression bit for bit.
        seq = [int(s) for s in np.sqrt(np.linspace(0, num_timesteps**2, steps))]
        seq[-1] -= 1
    else:
        skip_size = num_timesteps // steps
        seq = [i * skip_size for i in range(steps)]
        if skip_size > 1:
            seq.append(num_timesteps - 1)
    return [num_timesteps - 1 - s for s in seq]
