"""An HTTP restore request -> a runtime `RestoreRequest`, with the checks of `diffpir restore`.

The form's fields are generated from the same declarations as the restore command line's
flags: `task`, `method`, the tasks' inputs (`kernel`, `mask`, `scale`, `kernel_index`), the
request options (`seed`, `boundary`, `bit_depth`) and every method's hyperparameters
(`steps`, `sigma_n`, `lam`, `zeta`, `eta`, ...), each parsed by its declared `Param`. The
uploads go to the runtime's `build_request` as bytes, through the same readers that read
`diffpir restore`'s files, so a request and the command with the same inputs run the same
thing and fail with the same one-line messages. Nothing here imports Ray or the engine's
internals: the rules are tested without a server.

Status codes: 400 a malformed form (unknown, repeated or missing field, a value that does
not parse), 413 too large (body, pixels), 415 an upload that is not a readable file of its
kind, 422 inputs that parse but do not fit together (kernel larger than the image, mask of
another size, a hyperparameter the method does not have, more steps than the server allows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Union

from diffpir_rt.engine import (
    AUTO,
    FILE_INPUTS,
    INPUT_PARAMS,
    TASKS,
    InputFile,
    TaskInputs,
    estimable_inputs,
    method_params,
    restoration_names,
)
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import Param, ParamError

#: The measurement's upload field; the other file fields are the tasks' file inputs.
IMAGE_FIELD = "image"
#: HTTP status of each kind of request problem (runtime.RequestInputError.kind).
STATUS = {"unfit": 422, "unreadable": 415, "too_large": 413}


class RequestError(DiffPIRError):
    """A user error with the HTTP status that fits it; the message is the one-line answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server (`diffpir serve --max-*`)."""

    max_pixels: int = 4 * 1024 * 1024
    max_body_bytes: int = 32 * 1024 * 1024
    max_steps: int = 250


@dataclass(frozen=True)
class Upload:
    """One uploaded file: its client-side name (for messages and records) and its bytes."""

    filename: str
    data: bytes


@dataclass
class ParsedRequest:
    """A checked request: the runtime request, the output bit depth and the form's text values."""

    request: Any  # diffpir_rt.runtime.RestoreRequest
    bit_depth: int
    fields: dict[str, Any]


FormItems = Iterable[tuple[str, Union[str, Upload]]]


def file_fields() -> tuple[str, ...]:
    return (IMAGE_FIELD, *FILE_INPUTS)


def text_fields() -> dict[str, Param]:
    """Every text field of the form and its declaration: the same names as the restore flags."""
    from diffpir_rt.runtime import RequestOptions

    fields = {
        "task": Param("degradation to invert", str, choices=tuple(TASKS)),
        "method": Param("restoration method", str, choices=restoration_names()),
        **{name: spec for name, spec in INPUT_PARAMS.items() if name not in FILE_INPUTS},
        **RequestOptions.params(),
    }
    for name, spec in method_params(restoration_names()).items():
        fields.setdefault(name, spec)
    return fields


def parse_restore_form(items: FormItems, limits: Limits = Limits()) -> ParsedRequest:
    """Check a restore form and build its RestoreRequest (raises RequestError)."""
    from diffpir_rt.runtime import RequestInputError, RequestOptions, build_request

    declared = text_fields()
    text, files = _collect(items, declared)
    if IMAGE_FIELD not in files:
        raise RequestError(400, "field image: required (the measurement, a PNG/JPEG/TIFF/WebP file or a (C, H, W) .npy)")
    if "task" not in text:
        raise RequestError(400, f"field task: required (one of {', '.join(TASKS)})")
    values: dict[str, Any] = {}
    for name, raw in text.items():
        if name in estimable_inputs():  # the word `auto` for a file input (_collect let nothing else through)
            continue
        try:
            values[name] = declared[name].parse(raw)
        except ParamError as e:
            raise RequestError(400, f"field {name}: {e}") from None
    task, method = values["task"], values.get("method")  # None: build_request's default (the estimating method for kernel=auto)
    request_options = {k: values[k] for k in RequestOptions.params() if values.get(k) is not None}
    overrides = {k: v for k, v in values.items() if k in method_params(restoration_names())}
    try:
        uploads = {name: InputFile.from_bytes(upload.filename, upload.data, name) for name, upload in files.items()}
    except DiffPIRError as e:  # an empty upload
        raise RequestError(415, str(e)) from None
    inputs = TaskInputs(kernel=uploads.get("kernel", text.get("kernel")), kernel_index=values.get("kernel_index"),
                        mask=uploads.get("mask"), scale=values.get("scale"))  # fmt: skip
    try:
        request = build_request(task, uploads[IMAGE_FIELD], inputs, method, overrides, RequestOptions(**request_options),
                                max_pixels=limits.max_pixels)  # fmt: skip
    except RequestInputError as e:
        raise RequestError(STATUS[e.kind], _field_words(str(e))) from None
    except DiffPIRError as e:
        raise RequestError(422, _field_words(str(e))) from None
    return ParsedRequest(request, values.get("bit_depth") or request.bit_depth, values)


def check_config(restorer: Any, request: Any, limits: Limits) -> Any:
    """The request's resolved config, within the server's step limit (RequestError 422 otherwise)."""
    try:
        config = request.config(restorer)
    except DiffPIRError as e:
        raise RequestError(422, _field_words(str(e))) from None
    steps = getattr(config, type(config).budget, None)
    if steps is not None and steps > limits.max_steps:
        raise RequestError(422, f"field steps: {steps} steps; this server allows at most {limits.max_steps} (--max-steps)")
    return config


# ----------------------------------------------------------------------------- pieces


def _collect(items: FormItems, declared: dict[str, Param]) -> tuple[dict[str, str], dict[str, Upload]]:
    text: dict[str, str] = {}
    files: dict[str, Upload] = {}
    uploads = file_fields()
    for name, value in items:
        if name not in declared and name not in uploads:
            known = ", ".join((*uploads, *declared))
            raise RequestError(400, f"field {name[:40]!r}: unknown; expected one of {known}")
        if name in uploads:
            if not isinstance(value, Upload) and name in estimable_inputs() and value.strip().lower() == AUTO:
                text[name] = AUTO  # `kernel=auto`: estimated from the image (blind deblurring)
                continue
            if not isinstance(value, Upload):
                raise RequestError(400, f"field {name}: expected a file upload, got a text value")
            if name in files:
                raise RequestError(400, f"field {name}: given twice")
            files[name] = value
            continue
        if isinstance(value, Upload):
            raise RequestError(400, f"field {name}: expected a text value, got a file upload")
        if name in text:
            raise RequestError(400, f"field {name}: given twice")
        text[name] = value
    return text, files


def _field_words(message: str) -> str:
    """The CLI's flag names in a message -> the form's field names (--sigma-n -> field sigma_n)."""
    message = re.sub(r"--task\b", "task", message)
    return re.sub(r"--([a-z][a-z-]*)", lambda m: "field " + m.group(1).replace("-", "_"), message)
