"""Restore requests: what the CLI, the service and batch jobs hand the runtime, and the
run record each result carries.

A request is one measurement with its task, method, hyperparameter overrides, seed and
operator. Requests that agree on everything but their pixels, kernels, masks and seeds
share a batch (`batch_key`); each sample draws its noise from its own seed, so a result
does not depend on the batch it ran in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Sequence

import torch
from torch import Tensor

from diffpir_rt.engine import Operator, apply_boundary, build_method, resolve_boundary
from diffpir_rt.engine.operators import stack_operators
from diffpir_rt.errors import DiffPIRError

from .restorer import Restorer


@dataclass
class RestoreRequest:
    """One restoration to run.

    Attributes:
        task: deblur, sr, inpaint or denoise.
        y: the measurement, (C, h, w) in [0, 1].
        operator: the task's operator for this measurement.
        method: the method's name; overrides: hyperparameters (None entries = the default).
        seed: this sample's seed.
        bit_depth: the input's bit depth (8 or 16), which the output keeps.
        sources: names of what it was made from (input, kernel, mask files), for the record.
        photo: the input's file layout (engine.imageio.Photo: grey, alpha), or None; `output`
            puts a restored image back into it.
        boundary: how deblurring treats the image's edges: "auto" (a user's photo: "extend" for
            deblurring with diffpir/dps/dpir, else "circular"), "circular" (the official
            protocol's model) or "extend" (engine.ExtendedDeblur; docs/algorithm.md §11).
    """

    task: str
    y: Tensor
    operator: Operator
    method: str = "diffpir"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    bit_depth: int = 8
    sources: dict[str, Any] = field(default_factory=dict)
    boundary: str = "auto"
    photo: Any = None

    def config(self, restorer: Restorer) -> Any:
        return restorer.config(self.task, self.method, **self.overrides)

    def resolved_boundary(self) -> Any:
        """"extend", "circular", or None for tasks without a blur (engine.resolve_boundary)."""
        return resolve_boundary(self.task, self.boundary, self.method)


def output_image(request: RestoreRequest, image: Tensor) -> Tensor:
    """The restored (3, H, W) image in the input file's layout: grey again and/or with its alpha."""
    return image if request.photo is None else request.photo.output(image)


def model_calls(config: Any) -> int:
    """UNet calls of a config's loop."""
    return sum(1 for step in build_method(config).steps() if step.t is not None)


def batch_key(restorer: Restorer, request: RestoreRequest) -> Hashable:
    """Requests with equal keys can run as one batch: same task, method, config, sizes, operator kind."""
    op = request.operator
    # An extended domain depends on the kernel's size: equal kernel sizes keep a sample's result batch-free.
    boundary = request.resolved_boundary()
    kernel_size = tuple(op.kernel.shape[-2:]) if boundary == "extend" else None
    return (request.task, request.method, request.config(restorer), tuple(request.y.shape), type(op).__name__,
            getattr(op, "sf", None), boundary, kernel_size)  # fmt: skip


def run_requests(
    restorer: Restorer, requests: Sequence[RestoreRequest], callback: Optional[Callable[[dict[str, Any]], None]] = None
) -> list[tuple[Tensor, dict[str, Any]]]:
    """Restore requests of one batch key together; returns (image (C, H, W) in [0, 1], run record) each."""
    if not requests:
        return []
    keys = {batch_key(restorer, r) for r in requests}
    if len(keys) != 1:
        raise DiffPIRError("requests: only requests with the same task, method, hyperparameters and size share a batch")
    config = requests[0].config(restorer)
    operator = stack_operators([r.operator for r in requests])
    # The boundary model wraps the batch's operator: the one place it is applied (docs/algorithm.md §11).
    operator = apply_boundary(operator, requests[0].resolved_boundary(), int(getattr(restorer.denoiser, "size_multiple", 1)))
    y = torch.stack([r.y for r in requests])
    seeds = [r.seed for r in requests]
    start = time.perf_counter()
    images = restorer.restore(y, operator, config, seed=seeds, callback=callback)
    seconds = time.perf_counter() - start
    return [(images[i], run_record(restorer, request, config, seconds, len(requests))) for i, request in enumerate(requests)]


def run_record(restorer: Restorer, request: RestoreRequest, config: Any, seconds: float, batch_size: int = 1) -> dict[str, Any]:
    """What ran, with what, how long: the JSON beside every output (and the service's answer)."""
    from_card = request.method == "diffpir"
    return {
        "task": request.task,
        "method": request.method,
        **request.sources,
        "config": config.to_dict(),
        "defaults_source": restorer.task_defaults(request.task).source if from_card else f"{request.method}: official defaults",
        "scale": getattr(request.operator, "sf", None) if request.task == "sr" else None,
        "boundary": request.resolved_boundary(),
        "seed": request.seed,
        "bit_depth": request.bit_depth,
        "model_calls": model_calls(config),
        "batch_size": batch_size,
        "runtime": restorer.describe(),
        "seconds": round(seconds, 3),
    }
