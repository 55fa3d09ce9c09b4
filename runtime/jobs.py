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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping, Optional, Sequence

from diffpir_rt.engine import (
    AUTO,
    DEFAULT_METHOD,
    InputFile,
    Operator,
    TaskInputs,
    config_class,
    estimating_method,
    get_task,
    kernel_estimate,
    read_measurement,
)
from diffpir_rt.engine.operators import stack_operators
from diffpir_rt.errors import DiffPIRError, TooLargeError
from diffpir_rt.lazy import lazy_module

from .options import DEFAULT_SIGMA_N, RequestOptions

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

    from .restorer import Restorer

torch = lazy_module("torch")


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
        estimates: what was estimated from the measurement (`sigma_n auto`: "sigma_n_estimate"),
            for the run record.
        boundary: how the image's edges are modelled: "auto" (the task's best real-photo model
            the method can run) or a model's name (engine.BOUNDARIES, Task.resolve_boundary).
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
    estimates: dict[str, Any] = field(default_factory=dict)

    def configure(self, restorer: Restorer) -> Any:
        """The method's config for this request with its notes (engine.Configured)."""
        scale = get_task(self.task).record(self.operator).get("scale")
        return restorer.configure(self.task, self.method, scale=scale, **self.overrides)

    def config(self, restorer: Restorer) -> Any:
        return self.configure(restorer).config

    def resolved_boundary(self) -> Optional[str]:
        """"extend", "taper", "circular", or None for tasks without a boundary model."""
        return resolve_boundary(self.task, self.boundary, self.method)

    def boundary_note(self) -> Optional[str]:
        """One line when `auto` could give this method none of the task's real-photo boundary models (Task.boundary_note)."""
        return get_task(self.task).boundary_note(self.boundary, self.resolved_boundary(), self.method)


def resolve_boundary(task: str, boundary: str, method: str) -> Optional[str]:
    """The boundary model a request runs: the task's (Task.resolve_boundary), given the method's
    declared capabilities."""
    return get_task(task).resolve_boundary(boundary, config_class(method).capabilities, method)


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
    overrides = dict(overrides or {})
    # `--kernel auto`: the method that estimates the kernel from the image runs, on an operator made from y
    blind = is_auto(inputs.kernel)
    if blind:
        method = phase("unfit", lambda: estimating_method("kernel", task_object.name, method))
    method = method or DEFAULT_METHOD
    defaulted = overrides.get("sigma_n") is None and phase("unfit", lambda: config_class(method)).uses_sigma_n()
    if defaulted:
        overrides["sigma_n"] = DEFAULT_SIGMA_N
    phase("unfit", lambda: config_class(method).check_task(task_object.name))
    phase("unfit", lambda: task_object.check_inputs(**inputs.given()))
    phase("unfit", lambda: task_object.check_required(**inputs.given()))
    boundary = phase("unfit", lambda: resolve_boundary(task_object.name, options.boundary, method))  # before any file is read
    operator = None if blind else phase("unreadable", lambda: task_object.operator_from(inputs))
    photo = phase("unreadable", lambda: read_measurement(image, max_pixels))
    estimates: dict[str, Any] = {}
    if is_auto(overrides.get("sigma_n")):
        from .restorer import measured_sigma_n

        try:
            (estimates["sigma_n_estimate"],) = measured_sigma_n(photo.rgb, operator)
            overrides["sigma_n"] = estimates["sigma_n_estimate"]
        except DiffPIRError as e:
            if not defaulted:  # asked for: say why it cannot be done
                raise RequestInputError(str(e), "unfit") from None
            overrides.pop("sigma_n")  # the default: the model's fixed value, with a note
            estimates["sigma_n_fallback"] = f"sigma_n: no estimate ({e}); the model's default applies"
    if blind:
        sigma_n = overrides.get("sigma_n", get_task(task_object.name).default_sigma_n)
        operator = phase("unfit", lambda: config_class(method).estimate_operator(
            photo.rgb[None], sigma_n=sigma_n, boundary=boundary, overrides=overrides))  # fmt: skip
    # sizes: the kernel or mask against the image, and a file that is no kernel at all
    if inputs.kernel is not None and not blind:
        phase("unfit", lambda: task_object.check_fit(operator, photo.rgb.shape))
    phase("unfit", lambda: operator.data_step(photo.rgb[None]))
    if max_pixels is not None:
        out = operator.image_shape(photo.rgb[None].shape)
        if out[-1] * out[-2] > max_pixels:
            raise RequestInputError(f"image {image.name}: the restored image would be {out[-1]}x{out[-2]} = "
                                    f"{out[-1] * out[-2]:,} pixels; at most {max_pixels:,} are accepted", "too_large")  # fmt: skip
    sources = {"input": image.name, **{name: (AUTO if is_auto(f) else f.name) for name, f in (("kernel", inputs.kernel), ("mask", inputs.mask)) if f}}
    return RestoreRequest(task_object.name, photo.rgb, operator, method, overrides, options.seed, photo.bit_depth,
                          sources=sources, boundary=options.boundary, photo=photo, estimates=estimates)  # fmt: skip


def is_auto(value: Any) -> bool:
    """Whether a user's value is the word `auto` (estimate it from the measurement)."""
    return isinstance(value, str) and value == AUTO


def task_file(path: Any, flag: str) -> Any:
    """A task input file as a command line or a batch list names it: an InputFile, the word `auto`
    (the input estimated from the image, e.g. `--kernel auto`), or None."""
    if path is None:
        return None
    if is_auto(str(path)):
        return AUTO
    return InputFile.from_path(path, flag)


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
    # an operator estimated from its image keeps its own estimate (the kernel it ends with): it runs alone
    alone = id(request) if kernel_estimate(op) is not None else None
    return (request.task, request.method, request.config(restorer), tuple(request.y.shape), type(op).__name__,
            tuple(sorted(get_task(request.task).record(op).items())), boundary, kernel_size, alone)  # fmt: skip


def run_requests(
    restorer: Restorer, requests: Sequence[RestoreRequest], callback: Optional[Callable[[dict[str, Any]], None]] = None
) -> list[tuple[Tensor, dict[str, Any]]]:
    """Restore requests of one batch key together; returns (image (C, H, W) in [0, 1], run record) each.

    One `Restorer.restore` call: the same defaults, boundary policy and record as the Python API."""
    if not requests:
        return []
    keys = {batch_key(restorer, r) for r in requests}
    if len(keys) != 1:
        raise DiffPIRError("requests: only requests with the same task, method, hyperparameters and size share a batch")
    first = requests[0]
    configured = first.configure(restorer)
    operator = stack_operators([r.operator for r in requests])
    y = torch.stack([r.y for r in requests])
    images = restorer.restore(y, operator, configured.config, seed=[r.seed for r in requests], callback=callback,
                              boundary=first.boundary)  # fmt: skip
    shared = restorer.last_record or {}
    return [(images[i], run_record(shared, request, configured)) for i, request in enumerate(requests)]


def run_record(shared: dict[str, Any], request: RestoreRequest, configured: Any) -> dict[str, Any]:
    """A request's run record: the restoration's (Restorer.last_record) with this request's files,
    seed and bit depth, its notes and the boundary note."""
    notes = list(configured.notes)
    if "sigma_n_estimate" in request.estimates:
        notes.append(f"sigma_n auto: {request.estimates['sigma_n_estimate']:.4f} estimated from the measurement")
    if "sigma_n_fallback" in request.estimates:
        notes.append(request.estimates["sigma_n_fallback"])
    boundary_note = request.boundary_note()
    if boundary_note:
        notes.append(boundary_note)
    record = {key: value for key, value in shared.items() if key not in ("seed",)}
    return {
        "task": request.task,
        "method": request.method,
        **request.sources,
        **record,
        "defaults_source": configured.defaults_source,
        **get_task(request.task).record(request.operator),
        **{k: v for k, v in request.estimates.items() if k != "sigma_n_fallback"},
        "seed": request.seed,
        "bit_depth": request.bit_depth,
        "notes": notes,
        **({"unused": configured.ignored} if configured.ignored else {}),
    }
