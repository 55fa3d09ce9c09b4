"""A Python client for a `diffpir serve` server: the standard library only.

    from diffpir_rt.client import Client

    client = Client("http://127.0.0.1:8000", token=None, retries=3)
    result = client.restore("blurry.png", task="deblur", kernel="kernel.npy", seed=0)
    open("restored.png", "wb").write(result.image)      # PNG bytes (16-bit in -> 16-bit out)
    print(result.record["batch_size"], result.record["runtime"]["path"]["name"])

It imports nothing of the project but `diffpir_rt.errors` (no torch, no numpy), so a
machine that only calls a server needs nothing heavy. Errors are `ServiceError` (a
`DiffPIRError`) carrying the HTTP status and the server's one-line message. With
`retries`, a 503 (a replica restarting), a 429 (queues full) and a refused or reset
connection are retried with exponential backoff; restores are deterministic given their
seed, so a retry returns the same image.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from diffpir_rt.errors import DiffPIRError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "DIFFPIR_SERVER"
TOKEN_ENV = "DIFFPIR_SERVE_TOKEN"
RECORD_HEADER = "X-DiffPIR-Record"
RETRY_STATUSES = (429, 503)
#: The restore form's text fields (the file fields are image, kernel, mask).
TEXT_FIELDS = ("task", "method", "scale", "steps", "lam", "zeta", "sigma_n", "skip", "t_start", "seed", "kernel_index", "bit_depth")

FileLike = Union[str, os.PathLike, bytes, tuple]


class ServiceError(DiffPIRError):
    """The server answered an error (status >= 400), or could not be reached (status 0)."""

    def __init__(self, status: int, message: str, request_id: str = "", retry_after: Optional[float] = None,
                 retryable: Optional[bool] = None) -> None:  # fmt: skip
        super().__init__(message if status == 0 else f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.request_id = request_id
        self.retry_after = retry_after
        #: worth retrying: a 429/503, or a connection refused or dropped (not a timeout)
        self.retryable = status in RETRY_STATUSES if retryable is None else retryable


@dataclass
class RestoreResult:
    """A restored image (the file's bytes), its content type and the run record."""

    image: bytes
    record: dict[str, Any]
    content_type: str = "image/png"
    request_id: str = ""
    attempts: int = 1
    headers: dict[str, str] = field(default_factory=dict)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        out = Path(path)
        out.write_bytes(self.image)
        return out


def encode_multipart(fields: Iterable[tuple[str, Any]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type from (name, value) pairs.

    A value is text (str, int, float), or a file: (filename, bytes).
    """
    boundary = f"diffpir-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in fields:
        if not name or any(c in name for c in '"\r\n'):
            raise DiffPIRError(f"field {name!r}: not a valid form field name")
        if isinstance(value, tuple):
            filename, data = value
            safe = str(filename).replace('"', "_").replace("\r", "_").replace("\n", "_")
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{safe}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n")  # fmt: skip
            parts += [head.encode("utf-8"), bytes(data), b"\r\n"]
        else:
            text = str(value)
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{text}\r\n'.encode("utf-8"))
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _file(value: FileLike, what: str) -> tuple[str, bytes]:
    """(filename, bytes) of a path, of bytes, or of a (filename, bytes) pair."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise DiffPIRError(f"{what}: expected (filename, bytes)")
        return str(value[0]), bytes(value[1])
    if isinstance(value, (bytes, bytearray, memoryview)):
        return what, bytes(value)
    path = Path(value)
    try:
        return path.name, path.read_bytes()
    except OSError as e:
        raise DiffPIRError(f"{what} {path}: cannot be read ({e.strerror or e})") from None


class Client:
    """Calls one server.

    Args:
        url: the server (default $DIFFPIR_SERVER, else http://127.0.0.1:8000).
        token: the bearer token (default $DIFFPIR_SERVE_TOKEN, else none).
        timeout: seconds to wait for one answer.
        retries: how many times to retry a 429/503 or a failed connection (0 = never).
        backoff: first retry delay in seconds, doubled each time (with jitter, capped at 10 s;
            a Retry-After header is honoured).
        on_retry: called with (the ServiceError, the attempt that failed) before each retry.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 600.0,
        retries: int = 0,
        backoff: float = 0.5,
        on_retry: Optional[Callable[[ServiceError, int], None]] = None,
    ) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise DiffPIRError(f"url {self.url!r}: expected http://HOST:PORT or https://...")
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.on_retry = on_retry

    # ----------------------------------------------------------------- endpoints

    def health(self) -> dict[str, Any]:
        """GET /healthz: {"status": "ok", ...} once a model replica answers (ServiceError 503 otherwise)."""
        return json.loads(self._call("GET", "/healthz")[1])

    def info(self) -> dict[str, Any]:
        """GET /v1/info: model, runtime path, device, methods, limits, version."""
        return json.loads(self._call("GET", "/v1/info")[1])

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.5) -> dict[str, Any]:
        """Poll /healthz until it answers 200 (ServiceError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        last: Optional[Exception] = None
        while time.monotonic() < deadline:
            try:
                return Client(self.url, self.token, timeout=min(10.0, self.timeout)).health()
            except ServiceError as e:
                last = e
            time.sleep(interval)
        raise ServiceError(0, f"{self.url}: not ready after {timeout:g} s ({last})")

    def restore(
        self,
        image: FileLike,
        task: str,
        *,
        kernel: Optional[FileLike] = None,
        mask: Optional[FileLike] = None,
        params: Optional[Mapping[str, Any]] = None,
        as_json: bool = False,
        **fields: Any,
    ) -> RestoreResult:
        """POST /v1/restore: the restored image (PNG bytes) and its run record.

        image, kernel, mask: a path, bytes, or (filename, bytes). fields: scale, method,
        steps, lam, zeta, sigma_n, seed, skip, t_start, kernel_index, bit_depth (None = the
        server's default). params: any other parameter of the method's config (--param).
        """
        unknown = sorted(set(fields) - set(TEXT_FIELDS))
        if unknown:
            raise DiffPIRError(f"restore: unknown field {unknown[0]!r}; expected some of {', '.join(TEXT_FIELDS)}")
        form: list[tuple[str, Any]] = [("task", task), ("image", _file(image, "image"))]
        if kernel is not None:
            form.append(("kernel", _file(kernel, "kernel")))
        if mask is not None:
            form.append(("mask", _file(mask, "mask")))
        form += [(name, value) for name, value in fields.items() if value is not None]
        form += [("param", f"{name}={value}") for name, value in (params or {}).items()]
        body, content_type = encode_multipart(form)
        path = "/v1/restore/json" if as_json else "/v1/restore"
        headers, data, attempts = self._call("POST", path, body, content_type)
        request_id = headers.get("x-request-id", "")
        if as_json:
            answer = json.loads(data)
            return RestoreResult(base64.b64decode(answer["image"]), answer["record"], answer.get("content_type", "image/png"),
                                 request_id, attempts, headers)  # fmt: skip
        record = json.loads(headers.get(RECORD_HEADER.lower(), "{}"))
        return RestoreResult(data, record, headers.get("content-type", "image/png"), request_id, attempts, headers)

    # ----------------------------------------------------------------- transport

    def _call(
        self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None
    ) -> tuple[dict[str, str], bytes, int]:
        attempt = 0
        while True:
            attempt += 1
            try:
                headers, data = self._once(method, path, body, content_type)
                return headers, data, attempt
            except ServiceError as e:
                if attempt > self.retries or not e.retryable:
                    raise
                if self.on_retry is not None:
                    self.on_retry(e, attempt)
                delay = min(10.0, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                time.sleep(max(delay, e.retry_after or 0.0))

    def _once(self, method: str, path: str, body: Optional[bytes], content_type: Optional[str]) -> tuple[dict[str, str], bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = data.decode("utf-8", "replace").strip()[:300] or e.reason
            retry_after = e.headers.get("retry-after")
            raise ServiceError(e.code, str(message), e.headers.get("x-request-id", ""),
                               float(retry_after) if retry_after and retry_after.isdigit() else None) from None  # fmt: skip
        except TimeoutError:
            raise ServiceError(0, f"{self.url}{path}: no answer within {self.timeout:g} s", retryable=False) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            timed_out = isinstance(reason, TimeoutError)
            raise ServiceError(0, f"{self.url}{path}: cannot reach the server ({reason})", retryable=not timed_out) from None
