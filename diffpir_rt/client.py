"""A Python client for a `diffpir serve` server: the standard library only.

    from diffpir_rt.client import Client

    client = Client("http://127.0.0.1:8000", token=None, retries=3)
    result = client.restore("blurry.png", task="deblur", kernel="kernel.npy", seed=0)
    open("restored.png", "wb").write(result.image)      # PNG bytes (16-bit in -> 16-bit out)
    print(result.record["batch_size"], result.record["runtime"]["path"]["name"])

It imports nothing of the project but `diffpir_rt.errors` (no torch, no numpy), so a
machine that only calls a server needs nothing heavy. Errors are `ServiceError` (a
`DiffPIRError`) carrying the HTTP status and the server's one-line message. With
`retries`, what a later try can fix is retried with exponential backoff (a `Retry-After`
honoured): 429 (queues full), 502/503 (a replica or node restarting, an update rolling),
a 504 with Retry-After (the deadline passed while the request waited in a queue; one
without it ran out of time while running, which a retry would repeat), a 500 that the
service did not write (Serve's proxy losing a replica mid-request: the service's own
errors are JSON), and a refused or dropped connection. Restores are deterministic given their seed, so a retry
returns the same image. `on_wait` reports progress while an answer is awaited.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TextIO, Union

from diffpir_rt.errors import DiffPIRError

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "DIFFPIR_SERVER"
TOKEN_ENV = "DIFFPIR_SERVE_TOKEN"
RECORD_HEADER = "X-DiffPIR-Record"
TIMEOUT_HEADER = "X-Request-Timeout"
#: Always worth a retry; a 504 is when it carries Retry-After (its deadline passed in a queue, not while running).
RETRY_STATUSES = (429, 502, 503)

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
        #: worth retrying (see the module's docstring)
        self.retryable = status in RETRY_STATUSES if retryable is None else retryable


@dataclass
class WaitState:
    """What `on_wait` is told while a request waits: seconds so far, the attempt, the server's queue."""

    elapsed_s: float
    attempt: int
    queued: Optional[int] = None  # requests waiting or running in the restorer replica /healthz reached
    replicas: Optional[int] = None  # running restorer replicas
    done: bool = False  # the last call: the answer (or the error) is in


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
        retries: how many times to retry what a later try can fix (see the module's docstring; 0 = never).
        backoff: first retry delay in seconds, doubled each time (with jitter, capped at 10 s;
            a Retry-After header is honoured).
        on_retry: called with (the ServiceError, the attempt that failed) before each retry.
        on_wait: called about once a second (from another thread) with a WaitState while a
            restore is awaited; `wait_printer()` writes them as progress lines.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 600.0,
        retries: int = 0,
        backoff: float = 0.5,
        on_retry: Optional[Callable[[ServiceError, int], None]] = None,
        on_wait: Optional[Callable[[WaitState], None]] = None,
    ) -> None:
        self.url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise DiffPIRError(f"url {self.url!r}: expected http://HOST:PORT or https://...")
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.on_retry = on_retry
        self.on_wait = on_wait
        self._attempt = 0

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
        deadline: Optional[float] = None,
        **fields: Any,
    ) -> RestoreResult:
        """POST /v1/restore: the restored image (PNG bytes) and its run record.

        image, kernel, mask: a path, bytes, or (filename, bytes); kernel may also be the text "auto" (blind
            deblurring: the server estimates the kernel, returned in the record as kernel_estimate). fields: the form's text fields,
        named as `diffpir restore`'s flags (method, scale, steps, sigma_n, seed, lam, zeta, eta, ...;
        None = the server's default; GET /v1/info lists them). params: more fields, merged in.
        The server checks every field and answers an unknown one with 400. deadline: seconds the
        server may spend on each attempt (it grants at most its --request-timeout); past it, 504.
        """
        fields = {**fields, **dict(params or {})}
        form: list[tuple[str, Any]] = [("task", task), ("image", _file(image, "image"))]
        if isinstance(kernel, str) and kernel == "auto":
            form.append(("kernel", kernel))  # a text field: estimated from the image
        elif kernel is not None:
            form.append(("kernel", _file(kernel, "kernel")))
        if mask is not None:
            form.append(("mask", _file(mask, "mask")))
        form += [(name, str(value).lower() if isinstance(value, bool) else value) for name, value in fields.items() if value is not None]
        body, content_type = encode_multipart(form)
        path = "/v1/restore/json" if as_json else "/v1/restore"
        extra = {TIMEOUT_HEADER: f"{deadline:g}"} if deadline is not None else None
        with _Ticker(self) if self.on_wait is not None else _nothing():
            headers, data, attempts = self._call("POST", path, body, content_type, extra)
        request_id = headers.get("x-request-id", "")
        if as_json:
            answer = json.loads(data)
            return RestoreResult(base64.b64decode(answer["image"]), answer["record"], answer.get("content_type", "image/png"),
                                 request_id, attempts, headers)  # fmt: skip
        record = json.loads(headers.get(RECORD_HEADER.lower(), "{}"))
        return RestoreResult(data, record, headers.get("content-type", "image/png"), request_id, attempts, headers)

    # ----------------------------------------------------------------- transport

    def _call(
        self, method: str, path: str, body: Optional[bytes] = None, content_type: Optional[str] = None,
        extra: Optional[Mapping[str, str]] = None,
    ) -> tuple[dict[str, str], bytes, int]:
        attempt = 0
        while True:
            attempt += 1
            self._attempt = attempt
            try:
                headers, data = self._once(method, path, body, content_type, extra)
                return headers, data, attempt
            except ServiceError as e:
                if attempt > self.retries or not e.retryable:
                    raise
                if self.on_retry is not None:
                    self.on_retry(e, attempt)
                delay = min(10.0, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
                time.sleep(max(delay, e.retry_after or 0.0))

    def _once(self, method: str, path: str, body: Optional[bytes], content_type: Optional[str],
              extra: Optional[Mapping[str, str]] = None) -> tuple[dict[str, str], bytes]:  # fmt: skip
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        for name, value in (extra or {}).items():
            request.add_header(name, value)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as e:
            try:
                data = e.read()
            except (OSError, http.client.HTTPException):
                data = b""
            try:
                message, ours = json.loads(data)["error"], True
            except (ValueError, KeyError, TypeError):
                message, ours = data.decode("utf-8", "replace").strip()[:300] or e.reason, False
            retry_after = e.headers.get("retry-after")
            # A 500 the service did not write (its errors are JSON) came from what is in between:
            # Serve's proxy losing the replica that held the request. The restore never ran to the end.
            retryable = e.code in RETRY_STATUSES or (e.code == 500 and not ours) or (e.code == 504 and retry_after is not None)
            raise ServiceError(e.code, str(message), e.headers.get("x-request-id", ""),
                               float(retry_after) if retry_after and retry_after.isdigit() else None,
                               retryable=retryable) from None  # fmt: skip
        except TimeoutError:
            raise ServiceError(0, f"{self.url}{path}: no answer within {self.timeout:g} s", retryable=False) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or f"{type(e).__name__}: {e}"
            timed_out = isinstance(reason, TimeoutError)
            raise ServiceError(0, f"{self.url}{path}: cannot reach the server ({reason})", retryable=not timed_out) from None


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class _Ticker:
    """While a restore is awaited: `on_wait` about once a second, the server's queue from /healthz every 5 s."""

    def __init__(self, client: Client, interval: float = 1.0, poll: float = 5.0) -> None:
        self.client, self.interval, self.poll = client, interval, poll
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="diffpir-request-wait", daemon=True)
        self.start = time.monotonic()
        self.told = False

    def __enter__(self) -> "_Ticker":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=2 * self.interval + 10.0)
        if self.told:
            try:
                self.client.on_wait(WaitState(round(time.monotonic() - self.start, 1), self.client._attempt, done=True))  # type: ignore[misc]
            except Exception:  # noqa: BLE001
                pass

    def _run(self) -> None:
        probe = Client(self.client.url, self.client.token, timeout=min(5.0, self.client.timeout))
        queued: Optional[int] = None
        replicas: Optional[int] = None
        polled = -self.poll
        while not self.stop.wait(self.interval):
            now = time.monotonic()
            if now - polled >= self.poll:
                polled = now
                try:
                    health = probe.health()
                    queued = health.get("queued")
                    replicas = (health.get("replicas") or {}).get("DiffPIRRestorer")
                except (ServiceError, ValueError, AttributeError):
                    queued = replicas = None
            if self.stop.is_set():
                return
            try:
                self.told = True
                self.client.on_wait(WaitState(round(now - self.start, 1), self.client._attempt, queued, replicas))  # type: ignore[misc]
            except Exception:  # noqa: BLE001 - a progress printer must never break the request
                pass


def wait_printer(stream: Optional[TextIO] = None, every_s: float = 10.0, what: str = "diffpir request") -> Callable[[WaitState], None]:
    """An `on_wait` that writes progress: one updated line on a terminal, a line every `every_s` seconds otherwise."""
    out = stream or sys.stderr
    tty = bool(getattr(out, "isatty", lambda: False)())
    last = [0.0]

    def show(state: WaitState) -> None:
        if state.done:
            if tty:
                out.write("\r\x1b[K")  # the waiting line goes; the command's own result line follows
                out.flush()
            return
        parts = [f"waiting {state.elapsed_s:.0f} s"]
        if state.attempt > 1:
            parts.append(f"attempt {state.attempt}")
        if state.queued is not None:
            parts.append(f"{state.queued} request(s) in the replica's queue")
        if state.replicas is not None:
            parts.append(f"{state.replicas} restorer replica(s)")
        text = f"{what}: {', '.join(parts)}"
        if tty:
            out.write("\r" + text + "\x1b[K")
            out.flush()
        elif state.elapsed_s - last[0] >= every_s:
            last[0] = state.elapsed_s
            print(text, file=out, flush=True)

    return show
