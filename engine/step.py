"""The DiffPIR per-step math of docs/algorithm.md §3-4, written once in torch.

The CuPy kernels in kernels/ compute exactly these formulas and are tested against
these functions; the sampler and the CUDA-graph runtime both call them. All
coefficients come from the float64 schedule tables and enter as Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from .imageio import from_model, to_model
from .schedule import Schedule

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

#: A data step bound to its measurement and rho: x0 in [0, 1] -> x in [0, 1] (docs/algorithm.md §6).
Prox = Callable[["Tensor"], "Tensor"]


@dataclass(frozen=True)
class StepCoefficients:
    """Scalars of one reverse step t -> t_next (a = alpha_bar), from float64 tables.

    Notation (name -> symbol of docs/algorithm.md): sqrt_recip_a -> sqrt(1/a_t),
    sqrt_recipm1_a -> sqrt(1/a_t - 1), sqrt_a -> sqrt(a_t), sqrt_1m_a -> sqrt(1 - a_t),
    sqrt_a_next -> sqrt(a_t'), sqrt_1m_a_next -> sqrt(1 - a_t'), zeta -> zeta.
    """

    sqrt_recip_a: float
    sqrt_recipm1_a: float
    sqrt_a: float
    sqrt_1m_a: float
    sqrt_a_next: float
    sqrt_1m_a_next: float
    zeta: float

    @classmethod
    def at(cls, schedule: Schedule, t: int, t_next: int, zeta: float) -> "StepCoefficients":
        a, a_next = float(schedule.alpha_bar[t]), float(schedule.alpha_bar[t_next])
        return cls(
            sqrt_recip_a=math.sqrt(1.0 / a),
            sqrt_recipm1_a=math.sqrt(1.0 / a - 1.0),
            sqrt_a=math.sqrt(a),
            sqrt_1m_a=math.sqrt(1.0 - a),
            sqrt_a_next=math.sqrt(a_next),
            sqrt_1m_a_next=math.sqrt(1.0 - a_next),
            zeta=float(zeta),
        )


def predict_x0(x_t: Tensor, eps: Tensor, c: StepCoefficients) -> Tensor:
    """x0 = sqrt(1/a_t) x_t - sqrt(1/a_t - 1) eps, clamped to [-1, 1]. [CODE≠PAPER] docs/algorithm.md §3."""
    return (c.sqrt_recip_a * x_t - c.sqrt_recipm1_a * eps).clamp(-1.0, 1.0)


def renoise(x_t: Tensor, x0: Tensor, z: Tensor, c: StepCoefficients) -> Tensor:
    """Effective noise and zeta mixing, docs/algorithm.md §4 step 2b-c (eta = 0):

    eps_hat = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)
    x_t' = sqrt(a_t') x0 + sqrt(1 - a_t') (sqrt(1 - zeta) eps_hat + sqrt(zeta) z)
    """
    eps_hat = (x_t - c.sqrt_a * x0) / c.sqrt_1m_a
    mixed = math.sqrt(1.0 - c.zeta) * eps_hat + math.sqrt(c.zeta) * z
    return c.sqrt_a_next * x0 + c.sqrt_1m_a_next * mixed


def diffpir_update(x_t: Tensor, eps: Tensor, z: Tensor, c: StepCoefficients, prox: Optional[Prox] = None) -> Tensor:
    """One reverse step after the model call, docs/algorithm.md §4 steps 1-2c: the sampler's loop body.

    x0 = predict_x0(x_t, eps); x0 = to_model(prox(from_model(x0))); renoise(x_t, x0, z).
    The reference of the fused kernel kernels/diffpir_step.cu, and what the CUDA-graph
    runtime's torch path runs; `prox` None skips the data step (x0 unchanged).
    """
    x0 = predict_x0(x_t, eps, c)
    if prox is not None:
        x0 = to_model(prox(from_model(x0)))
    return renoise(x_t, x0, z, c)
