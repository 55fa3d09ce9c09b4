"""Planning the CUDA-graph runtime in pure Python: its steps, coefficients and static buffers.

A plan is everything a captured graph bakes in: the image and measurement shapes, the
data-step family (Fourier with its scale, or elementwise), the hyperparameters, and per
step the integer timesteps, the float64-derived coefficients and rho_t. It allocates
nothing, so it is built and tested on CPU; graph_runtime.py turns it into buffers and a
graph. Two restorations with equal plan keys share one graph: a new blur kernel, mask or
measurement only refills the static buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

import torch

from diffpir_rt.errors import DiffPIRError
from .operators import Inpaint, Operator, _FourierOperator
from .sampler import DiffPIRConfig
from .schedule import linear_schedule
from .step import StepCoefficients

FAMILIES = ("fourier", "elementwise")


@dataclass(frozen=True)
class PlannedStep:
    """One state-updating step t -> t_next: what the graph bakes in for it."""

    index: int
    t: int
    t_next: int
    coefficients: StepCoefficients
    rho: float


@dataclass(frozen=True)
class BufferSpec:
    """A static buffer: the graph reads (or, for `out`, writes) it at a fixed address."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class GraphPlan:
    """The static description of one captured restoration loop.

    Attributes:
        family: "fourier" (deblur sf = 1, SR sf = 2..4) or "elementwise" (inpaint, denoise).
        sf: the Fourier family's scale (1 for elementwise).
        y_shape: measurement shape (B, C, h, w).
        image_shape: restored image shape (B, C, H, W).
        config: the hyperparameters (they fix timesteps, coefficients and rho).
        steps: the state-updating steps, in loop order.
        buffers: the static buffers, in allocation order.
        pad_mode: how images are padded to the model's size multiple (the operator's).
    """

    family: str
    sf: int
    y_shape: tuple[int, ...]
    image_shape: tuple[int, ...]
    config: DiffPIRConfig
    steps: tuple[PlannedStep, ...]
    buffers: tuple[BufferSpec, ...]
    pad_mode: str

    def buffer(self, name: str) -> BufferSpec:
        for spec in self.buffers:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def nbytes(self) -> int:
        """Bytes of all static buffers (the noise buffer dominates: steps x image)."""
        return sum(spec.nbytes for spec in self.buffers)

    def key(self, backend: Hashable = None) -> tuple[Any, ...]:
        """Equal keys share a captured graph: shapes, task family, hyperparameters, backend."""
        layout = tuple((spec.name, spec.shape) for spec in self.buffers)
        return (self.family, self.sf, self.y_shape, self.image_shape, self.config, self.pad_mode, layout, backend)

    def summary(self) -> dict[str, Any]:
        """A JSON-able description (for logs and benchmark records)."""
        return {
            "family": self.family,
            "sf": self.sf,
            "y_shape": list(self.y_shape),
            "image_shape": list(self.image_shape),
            "config": self.config.to_dict(),
            "timesteps": [s.t for s in self.steps] + [self.steps[-1].t_next],
            "buffer_bytes": self.nbytes,
        }


def operator_family(operator: Operator) -> tuple[str, int]:
    """(family, sf) of a built-in operator: which data-step kernels the graph runs.

    Raises:
        DiffPIRError: an operator the graph runtime has no data step for.
    """
    if isinstance(operator, _FourierOperator):
        return "fourier", operator.sf
    if isinstance(operator, Inpaint):  # Denoise too: the mask prox with m = 1
        return "elementwise", 1
    raise DiffPIRError(
        f"operator: the graph runtime supports Deblur, SuperResolution, Inpaint and Denoise, "
        f"got {type(operator).__name__}"
    )


def _mask_channels(operator: Operator) -> int:
    """1 for a mask shared by the colour channels (and Denoise), C for a per-channel mask."""
    mask = getattr(operator, "mask", None)
    return int(mask.shape[1]) if isinstance(mask, torch.Tensor) and mask.ndim == 4 else 1


def _buffers(
    family: str, sf: int, y_shape: tuple[int, ...], image_shape: tuple[int, ...], n_steps: int, mask_channels: int
) -> tuple[BufferSpec, ...]:
    batch, channels, height, width = image_shape
    common = (
        BufferSpec("x_T", image_shape, torch.float32),
        BufferSpec("noise", (n_steps, *image_shape), torch.float32),
        BufferSpec("timesteps", (n_steps, batch), torch.int64),
        BufferSpec("out", image_shape, torch.float32),
    )
    if family == "fourier":
        # Per-sample copies even when one kernel serves the batch: loading broadcasts into them.
        data = (
            BufferSpec("otf", (batch, 1, height, width), torch.complex64),
            BufferSpec("otf_abs2_folded", (batch, 1, height // sf, width // sf), torch.float32),
            BufferSpec("y_spectrum", y_shape, torch.complex64),
        )
    else:
        data = (
            BufferSpec("mask", (batch, mask_channels, height, width), torch.float32),
            BufferSpec("y", y_shape, torch.float32),
        )
    return common + data


def plan_graph(operator: Operator, y_shape: tuple[int, ...] | torch.Size, config: DiffPIRConfig) -> GraphPlan:
    """Plan the loop that engine.sample runs for (operator, y of y_shape, config).

    Steps, coefficients and rho come from the same schedule tables and formulas as the
    sampler (`StepCoefficients.at`, `Schedule.rho`), so the graph computes its loop.

    Raises:
        DiffPIRError: y_shape not (B, C, h, w), an unsupported operator, a bad config.
    """
    if not isinstance(config, DiffPIRConfig):
        raise DiffPIRError(f"config: expected a DiffPIRConfig, got {type(config).__name__}")
    y_shape = tuple(int(s) for s in y_shape)
    if len(y_shape) != 4 or min(y_shape) < 1:
        raise DiffPIRError(f"y: expected shape (B, C, h, w), got {y_shape}")
    family, sf = operator_family(operator)
    image_shape = tuple(int(s) for s in operator.image_shape(torch.Size(y_shape)))
    schedule = linear_schedule()
    rho = schedule.rho(config.lam, config.sigma_n)
    timesteps = config.timesteps()
    steps = tuple(
        PlannedStep(i, t, t_next, StepCoefficients.at(schedule, t, t_next, config.zeta), float(rho[t]))
        for i, (t, t_next) in enumerate(zip(timesteps[:-1], timesteps[1:]))
    )
    return GraphPlan(
        family=family,
        sf=sf,
        y_shape=y_shape,
        image_shape=image_shape,
        config=config,
        steps=steps,
        buffers=_buffers(family, sf, y_shape, image_shape, len(steps), _mask_channels(operator)),
        pad_mode=operator.pad_mode,
    )
