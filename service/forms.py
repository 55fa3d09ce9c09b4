"""An HTTP restore request -> a runtime `RestoreRequest`, with the checks of `diffpir restore`.

The service's form fields are the restore command line's flags (`task`, `kernel`, `mask`,
`scale`, `method`, `steps`, `lam`, `zeta`, `sigma_n`, `seed`, ...), parsed by the same
argparse types and turned into an operator and a measurement by the same engine code, so
a request and `diffpir restore` with the same inputs run the same thing and fail with the
same one-line messages. Nothing here imports Ray: the rules are tested without a server.

Status codes: 400 a malformed form (unknown, repeated or missing field, a value that does
not parse), 413 too large (body, pixels), 415 an upload that is not a readable file of its
kind, 422 inputs that parse but do not fit together (kernel larger than the image, mask of
another size, a hyperparameter the method does not have, more steps than the server allows).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

from diffpir_rt.engine import METHODS, argtypes
from diffpir_rt.engine import BOUNDARIES, TASKS, check_inputs
from diffpir_rt.errors import DiffPIRError

#: Form fields: name -> (kind, parser). Files are uploads; the rest are text.
FILE_FIELDS = ("image", "kernel", "mask")
SKIPS = ("quad", "uniform")


def _choice(options: tuple, kind: type = str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value not in options:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, options))}, got {text!r}")
        return value

    return parse


TEXT_FIELDS: dict[str, Callable[[str], Any]] = {
    "task": _choice(TASKS),
    "method": _choice(tuple(METHODS)),
    "scale": _choice((2, 3, 4), int),
    "steps": argtypes.num_steps,
    "lam": argtypes.positive_float,
    "zeta": argtypes.unit_float,
    "sigma_n": argtypes.unit_float,
    "skip": _choice(SKIPS),
    "t_start": argtypes.timestep,
    "seed": argtypes.seed,
    "kernel_index": argtypes.non_negative_int,
    "bit_depth": _choice((8, 16), int),
    "boundary": _choice(BOUNDARIES),
    "param": str,  # NAME=VALUE, repeatable, as --param
}
REPEATABLE = ("param",)
#: Hyperparameter fields, handed to Restorer.config as overrides (None = the model's default).
OVERRIDES = ("lam", "zeta", "sigma_n", "steps", "skip", "t_start")


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

    request: Any  # diffpir_rt.runtime.jobs.RestoreRequest
    bit_depth: int
    fields: dict[str, Any]


FormItems = Iterable[tuple[str, Union[str, Upload]]]


def parse_restore_form(items: FormItems, limits: Limits = Limits()) -> ParsedRequest:
    """Check a restore form and build its RestoreRequest (raises RequestError)."""
    text, files = _collect(items)
    if "image" not in files:
        raise RequestError(400, "field image: required (the measurement, a PNG/JPEG/TIFF file or a (C, H, W) .npy)")
    if "task" not in text:
        raise RequestError(400, f"field task: required (one of {', '.join(TASKS)})")
    values: dict[str, Any] = {}
    for name, raw in text.items():
        if name in REPEATABLE:
            continue
        try:
            values[name] = TEXT_FIELDS[name](raw.strip())
        except argparse.ArgumentTypeError as e:
            raise RequestError(400, f"field {name}: {e}") from None
    task = values["task"]
    method = values.get("method", "diffpir")
    try:
        check_inputs(task, kernel=files.get("kernel"), mask=files.get("mask"), scale=values.get("scale"))
    except DiffPIRError as e:  # "--kernel: does not apply to --task denoise ..." in the form's words
        raise RequestError(422, _field_words(str(e))) from None
    if "kernel_index" in values and "kernel" not in files:
        raise RequestError(422, "field kernel_index: applies to a kernel file")

    from diffpir_rt.runtime import parse_params

    try:
        params = parse_params(text.get("param", []))
    except DiffPIRError as e:
        raise RequestError(400, _field_words(str(e))) from None
    overrides = {name: values.get(name) for name in OVERRIDES}
    overrides.update(params)

    image = files["image"]
    photo = read_measurement_bytes(image, limits.max_pixels)
    y, depth = photo.rgb, photo.bit_depth
    operator = _operator(task, files, values, limits)
    out_shape = operator.image_shape(y[None].shape)
    if out_shape[-1] * out_shape[-2] > limits.max_pixels:
        raise RequestError(
            413, f"image {image.filename}: the restored image would be {out_shape[-1]}x{out_shape[-2]} "
            f"= {out_shape[-1] * out_shape[-2]:,} pixels; at most {limits.max_pixels:,} are accepted"
        )  # fmt: skip
    try:
        operator.data_step(y[None])  # size checks (kernel vs image, mask vs image), as diffpir restore
    except DiffPIRError as e:
        raise RequestError(422, str(e)) from None

    from diffpir_rt.runtime import RestoreRequest

    sources = {"input": image.filename, "kernel": files["kernel"].filename if "kernel" in files else None,
               "mask": files["mask"].filename if "mask" in files else None}  # fmt: skip
    request = RestoreRequest(task, y, operator, method, overrides, values.get("seed", 0), depth, sources=sources,
                             boundary=values.get("boundary", "auto"), photo=photo)  # fmt: skip
    request.resolved_boundary()  # an explicit boundary a task or method cannot take: refused here, as by the CLI
    return ParsedRequest(request, values.get("bit_depth", depth), values)


def check_config(restorer: Any, request: Any, limits: Limits) -> Any:
    """The request's resolved config, within the server's step limit (RequestError 422 otherwise)."""
    try:
        config = request.config(restorer)
    except DiffPIRError as e:
        raise RequestError(422, _field_words(str(e))) from None
    steps = getattr(config, "steps", None)
    if steps is not None and steps > limits.max_steps:
        raise RequestError(422, f"field steps: {steps} steps; this server allows at most {limits.max_steps} (--max-steps)")
    return config


def memoise_task_defaults(restorer: Any) -> None:
    """Resolve each task's defaults once per replica, not once per request.

    Restorer.config (through batch_key and the run record) asks the model source for the task's
    defaults, and a checkpoint source decides whether its card applies by hashing the weights
    file: hundreds of MB per request for a real checkpoint. The answer cannot change while the
    replica runs.
    """
    import functools

    restorer.task_defaults = functools.lru_cache(maxsize=None)(restorer.task_defaults)



# ----------------------------------------------------------------------------- pieces


def _collect(items: FormItems) -> tuple[dict[str, Any], dict[str, Upload]]:
    text: dict[str, Any] = {}
    files: dict[str, Upload] = {}
    for name, value in items:
        if name not in TEXT_FIELDS and name not in FILE_FIELDS:
            known = ", ".join((*FILE_FIELDS, *TEXT_FIELDS))
            raise RequestError(400, f"field {name[:40]!r}: unknown; expected one of {known}")
        if name in FILE_FIELDS:
            if not isinstance(value, Upload):
                raise RequestError(400, f"field {name}: expected a file upload, got a text value")
            if name in files:
                raise RequestError(400, f"field {name}: given twice")
            files[name] = value
            continue
        if isinstance(value, Upload):
            raise RequestError(400, f"field {name}: expected a text value, got a file upload")
        if name in REPEATABLE:
            text.setdefault(name, []).append(value)
        elif name in text:
            raise RequestError(400, f"field {name}: given twice")
        else:
            text[name] = value
    return text, files


def _field_words(message: str) -> str:
    """The CLI's flag names in a message -> the form's field names (--sigma-n -> field sigma_n)."""
    message = re.sub(r"--task\b", "task", message)
    return re.sub(r"--([a-z][a-z-]*)", lambda m: "field " + m.group(1).replace("-", "_"), message)


def read_measurement_bytes(image: Upload, max_pixels: Optional[int] = None) -> Any:
    """The measurement of an upload as an engine.imageio.Photo: an image, or a (C, H, W) .npy."""
    from diffpir_rt.engine import imageio

    if image.data[:6] == b"\x93NUMPY":
        from diffpir_rt.runtime import read_measurement

        with _as_file(image, "input", ".npy") as path:
            photo = read_measurement(path)
        y = photo.rgb
        if max_pixels is not None and y.shape[-1] * y.shape[-2] > max_pixels:
            raise RequestError(413, f"image {image.filename}: {y.shape[-1]}x{y.shape[-2]} is more than {max_pixels:,} pixels")
        return photo
    try:
        return imageio.decode_photo(image.data, f"image {image.filename}", max_pixels=max_pixels)
    except DiffPIRError as e:
        raise RequestError(413 if "are accepted" in str(e) else 415, str(e)) from None


def _operator(task: str, files: dict[str, Upload], values: dict[str, Any], limits: Limits) -> Any:
    from diffpir_rt.engine import build_operator

    kernel = mask = None
    if "kernel" in files:
        from diffpir_rt.engine import degrade

        upload = files["kernel"]
        with _as_file(upload, "kernel", _kernel_suffix(upload)) as path:
            kernel = degrade.load_kernel(path, values.get("kernel_index"))
    if "mask" in files:
        from diffpir_rt.engine import imageio

        try:
            mask = imageio.decode_mask(files["mask"].data, f"mask {files['mask'].filename}", max_pixels=limits.max_pixels)[0].numpy()
        except DiffPIRError as e:
            raise RequestError(413 if "are accepted" in str(e) else 415, str(e)) from None
    try:
        return build_operator(task, kernel=kernel, mask=mask, scale=values.get("scale"))
    except DiffPIRError as e:
        raise RequestError(422, _field_words(str(e))) from None


def _kernel_suffix(upload: Upload) -> str:
    """The kernel file's type: its name's suffix, else its magic bytes (load_kernel reads by suffix)."""
    suffix = Path(upload.filename).suffix.lower()
    if suffix in (".npy", ".png", ".mat"):
        return suffix
    head = upload.data[:128]
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith(b"\x89PNG"):
        return ".png"
    if head.startswith(b"MATLAB") or b"\x89HDF" in upload.data[:1024]:
        return ".mat"
    return suffix or ".npy"


def safe_name(filename: str, suffix: str) -> str:
    """A file name for an upload: its base name, printable, with the suffix its reader expects."""
    base = os.path.basename(filename.replace("\\", "/")) or "upload"
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:80].lstrip(".") or "upload"
    return base if base.lower().endswith(suffix) else base + suffix


@contextlib.contextmanager
def _as_file(upload: Upload, what: str, suffix: str) -> Iterator[Path]:
    """The upload as a file in a fresh private folder (for readers that take paths), removed after.

    A DiffPIRError from the reader is re-raised as a 415 that names the upload, not the folder.
    """
    folder = Path(tempfile.mkdtemp(prefix="diffpir-upload-"))
    path = folder / safe_name(upload.filename, suffix)
    try:
        path.write_bytes(upload.data)
        try:
            yield path
        except RequestError:
            raise
        except DiffPIRError as e:
            message = str(e).replace(str(path), upload.filename).replace(str(folder), "")
            status = 413 if "at most" in message and "values" in message else 415
            raise RequestError(status, message) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
