"""Restore requests: what the CLI, the Python API, the service and batch jobs hand the runtime,
and the run record each result carries.

A request is one measurement with its task, method, hyperparameter overrides, seed and
operator. `build_request` makes one from a user's files, given as paths (the CLI, batch jobs)
or as uploaded bytes (the service): the same readers, the same checks, the same messages.
Requests that agree on everything but their pixels, kernels, masks and seeds share a batch
(`batch_key`); each sample draws its noise from its own seed, so a result does not depend on
the batch it ran in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import torch
from torch import Tensor

from diffpir_rt.engine import DEFAULT_METHOD, InputFile, Operator, TaskInputs, config_class, get_task, read_measurement
from diffpir_rt.engine.operators import stack_operators
from diffpir_rt.errors import DiffPIRError, TooLargeError

from .options import RequestOptions
from .restorer import Restorer


@dataclass
class RestoreRequest:
    """One restoration to run.

    Attributes:
        task: a task name (engine.TASKS).
        y: the measurement, (C, h, w) in [0, 1].
        operator: the task's operator for this measurement.
        method: the method's name; overrides: hyperparameters (None entries = the default).
        seed: this sample's seed.
        bit_depth: the input's bit depth (8 or 16), which the output keeps.
        sources: names of what it was made from (input, kernel, mask files), for the record.
        photo: the input's file layout (engine.imageio.Photo: grey, alpha), or None; `output`
            puts a restored image back into it.
        boundary: how the image's edges are modelled: "auto" (the task's real-photo model where
            the method can run it, else circular), "circular" or "extend" (Task.resolve_boundary).
    """

    task: str
    y: Tensor
    operator: Operator
    method: str = DEFAULT_METHOD
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    bit_depth: int = 8
    sources: dict[str, Any] = field(default_factory=dict)
    boundary: str = "auto"
    photo: Any = None

    def configure(self, restorer: Restorer) -> Any:
        """The method's config for this request with its notes (engine.Configured)."""
        scale = get_task(self.task).record(self.operator).get("scale")
        return restorer.configure(self.task, self.method, scale=scale, **self.overrides)

    def config(self, restorer: Restorer) -> Any:
        return self.configure(restorer).config

    def resolved_boundary(self) -> Optional[str]:
        """"extend", "circular", or None for tasks without a boundary model."""
        return resolve_boundary(self.task, self.boundary, self.method)

    def boundary_note(self) -> Optional[str]:
        """One line when `auto` could not give this method the task's real-photo boundary model."""
        task = get_task(self.task)
        if self.boundary != "auto" or not task.boundaries or self.resolved_boundary() == task.boundaries[0]:
            return None
        return (f"method {self.method} cannot run on the {task.boundaries[0]} boundary model of --task {self.task}: "
                f"the image's edges are restored as {self.resolved_boundary()} (expect artefacts at the borders)")  # fmt: skip


def resolve_boundary(task: str, boundary: str, method: str) -> Optional[str]:
    """The boundary model a request runs: the task's (Task.resolve_boundary), given whether the
    method can run on the extended domain (its declared capability)."""
    capable = config_class(method).capabilities.extended_boundary
    return get_task(task).resolve_boundary(boundary, capable, method)


class RequestInputError(DiffPIRError):
    """A request that cannot run, with what kind of problem it is (a service answers each with its
    HTTP status): "unfit" (inputs that do not fit the task, the method or each other), "unreadable"
    (a file that is not what it claims), "too_large" (beyond a size limit)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_request(task: str, method: Optional[str] = None, boundary: str = "auto", **inputs: Any) -> None:
    """The request's cheap checks, before any file is read: the method restores the task, the task
    takes these inputs (and has the required ones), the boundary model can run."""
    task_object = get_task(task)
    method = method or DEFAULT_METHOD
    config_class(method).check_task(task_object.name)
    task_object.check_inputs(**inputs)
    task_object.check_required(**inputs)
    resolve_boundary(task_object.name, boundary, method)


def build_request(
    task: str,
    image: InputFile,
    inputs: TaskInputs = TaskInputs(),
    method: Optional[str] = None,
    overrides: Optional[Mapping[str, Any]] = None,
    options: RequestOptions = RequestOptions(),
    max_pixels: Optional[int] = None,
) -> RestoreRequest:
    """A checked request from a user's files (paths or uploads alike) and values.

    Every cheap check runs here, before any model is loaded: the task's inputs, the boundary
    the method can run, the files (decoded with the engine's one reader), the sizes (kernel vs
    image, mask vs image), the hyperparameters' names. The values' ranges are checked when the
    config is built (`RestoreRequest.configure`).
    """
    def phase(kind: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except TooLargeError as e:
            raise RequestInputError(str(e), "too_large") from None
        except DiffPIRError as e:
            raise RequestInputError(str(e), kind) from None

    task_object = phase("unfit", lambda: get_task(task))
    method = method or DEFAULT_METHOD
    phase("unfit", lambda: config_class(method).check_task(task_object.name))
    phase("unfit", lambda: task_object.check_inputs(**inputs.given()))
    phase("unfit", lambda: task_object.check_required(**inputs.given()))
    phase("unfit", lambda: resolve_boundary(task_object.name, options.boundary, method))  # before any file is read
    operator = phase("unreadable", lambda: task_object.operator_from(inputs))
    photo = phase("unreadable", lambda: read_measurement(image, max_pixels))
    # sizes: the kernel or mask against the image, and a file that is no kernel at all
    if inputs.kernel is not None:
        phase("unfit", lambda: task_object.check_fit(operator, photo.rgb.shape))
    phase("unfit", lambda: operator.data_step(photo.rgb[None]))
    if max_pixels is not None:
        out = operator.image_shape(photo.rgb[None].shape)
        if out[-1] * out[-2] > max_pixels:
            raise RequestInputError(f"image {image.name}: the restored image would be {out[-1]}x{out[-2]} = "
                                    f"{out[-1] * out[-2]:,} pixels; at most {max_pixels:,} are accepted", "too_large")  # fmt: skip
    sources = {"input": image.name, **{name: f.name for name, f in (("kernel", inputs.kernel), ("mask", inputs.mask)) if f}}
    return RestoreRequest(task_object.name, photo.rgb, operator, method, dict(overrides or {}), options.seed, photo.bit_depth,
                          sources=sources, boundary=options.boundary, photo=photo)  # fmt: skip


def per_image_input(task: str) -> Optional[str]:
    """The file a batch list pairs with each image for `task` ("kernel", "mask"), or None."""
    return get_task(task).per_image_input


def output_image(request: RestoreRequest, image: Tensor) -> Tensor:
    """The restored (3, H, W) image in the input file's layout: grey again and/or with its alpha."""
    return image if request.photo is None else request.photo.output(image)


def model_calls(config: Any) -> int:
    """UNet calls of a config's loop."""
    return config.model_calls()


def batch_key(restorer: Restorer, request: RestoreRequest) -> Hashable:
    """Requests with equal keys can run as one batch: same task, method, config, sizes, operator kind."""
    op = request.operator
    # An extended domain depends on the kernel's size: equal kernel sizes keep a sample's result batch-free.
    boundary = request.resolved_boundary()
    kernel_size = tuple(op.kernel.shape[-2:]) if boundary == "extend" else None
    return (request.task, request.method, request.config(restorer), tuple(request.y.shape), type(op).__name__,
            tuple(sorted(get_task(request.task).record(op).items())), boundary, kernel_size)  # fmt: skip


def run_requests(
    restorer: Restorer, requests: Sequence[RestoreRequest], callback: Optional[Callable[[dict[str, Any]], None]] = None
) -> list[tuple[Tensor, dict[str, Any]]]:
    """Restore requests of one batch key together; returns (image (C, H, W) in [0, 1], run record) each."""
    if not requests:
        return []
    keys = {batch_key(restorer, r) for r in requests}
    if len(keys) != 1:
        raise DiffPIRError("requests: only requests with the same task, method, hyperparameters and size share a batch")
    first = requests[0]
    configured = first.configure(restorer)
    operator = stack_operators([r.operator for r in requests])
    # The boundary model wraps the batch's operator: the one place it is applied (docs/algorithm.md §11).
    boundary = first.resolved_boundary()
    operator = get_task(first.task).apply_boundary(operator, boundary, int(getattr(restorer.denoiser, "size_multiple", 1)))
    y = torch.stack([r.y for r in requests])
    seeds = [r.seed for r in requests]
    start = time.perf_counter()
    images = restorer.restore(y, operator, configured.config, seed=seeds, callback=callback)
    seconds = time.perf_counter() - start
    return [(images[i], run_record(restorer, request, configured, seconds, len(requests))) for i, request in enumerate(requests)]


def run_record(restorer: Restorer, request: RestoreRequest, configured: Any, seconds: float, batch_size: int = 1) -> dict[str, Any]:
    """What ran, with what, how long: the JSON beside every output (and the service's answer)."""
    config = configured.config
    notes = list(configured.notes)
    boundary_note = request.boundary_note()
    if boundary_note:
        notes.append(boundary_note)
    return {
        "task": request.task,
        "method": request.method,
        **request.sources,
        "config": config.to_dict(),
        "defaults_source": configured.defaults_source,
        **get_task(request.task).record(request.operator),
        "boundary": request.resolved_boundary(),
        "seed": request.seed,
        "bit_depth": request.bit_depth,
        "model_calls": config.model_calls(),
        "batch_size": batch_size,
        "notes": notes,
        **({"unused": configured.ignored} if configured.ignored else {}),
        "runtime": restorer.describe(),
        "seconds": round(seconds, 3),
    }
