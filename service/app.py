"""The Ray Serve application: an HTTP ingress in front of restorer replicas.

- `DiffPIRIngress` (no model, no CPU reserved): routes, bearer token, body and pixel
  limits, multipart parsing, the request -> `RestoreRequest` checks of `diffpir restore`
  (service/forms.py), PNG encoding, JSON errors, one log line and the metrics per request.
  A bad request is answered here and never reaches a model replica.
- `DiffPIRRestorer` (one `Restorer` each, the GPU or CPU slots): a queue limit (429
  beyond), dynamic batching with `@serve.batch`, then the batch split into groups of
  equal `batch_key` (same task, method, config, image size, operator kind), each group one
  `run_requests` call in a worker thread, so the event loop keeps collecting the next
  batch. A group that fails is retried one request at a time, so one bad request cannot
  fail the others. On CUDA a group is padded to the next captured batch size.

`build_app(args)` is the application builder: `diffpir serve` calls it with its settings,
and the Serve config from `diffpir serve --print-config` names it as `import_path`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from diffpir_rt import __version__
from diffpir_rt.errors import DiffPIRError

from .forms import RequestError, Upload, check_config, memoise_task_defaults, parse_restore_form
from .settings import (
    DRAIN_KEY,
    DRAIN_NAMESPACE,
    IN_FLIGHT_PREFIX,
    METRIC_PREFIX,
    ServeSettings,
    hash_token,
    ingress_options,
    model_namespace,
    restorer_options,
)

logger = logging.getLogger("ray.serve")

RECORD_HEADER = "X-DiffPIR-Record"
REQUEST_ID_HEADER = "X-Request-Id"
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000]
BATCH_BOUNDARIES = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64]
#: Serve batches that may wait at once in a replica's pending groups (see DiffPIRRestorer._batch).
MERGE_WINDOW = 16


def _error(status: int, message: str, headers: Optional[dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _request_id() -> str:
    """Serve's id of the request being handled (the proxy's, or the client's X-Request-Id); Serve answers it as X-Request-Id."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or uuid.uuid4().hex
    except Exception:  # noqa: BLE001 - a private API: an id of our own will do
        return uuid.uuid4().hex


# ----------------------------------------------------------------------------- the model


@serve.deployment(name="DiffPIRRestorer")
class DiffPIRRestorer:
    """One prepared Restorer; batches what arrives together and runs it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from diffpir_rt.runtime import make_restorer

        self.settings = ServeSettings.from_dict(settings)
        s = self.settings
        model = dict(s.model)
        device = str(model.get("device") or "auto")
        if s.gpus_per_replica > 0 and (device == "auto" or device.startswith("cuda")):
            model["device"] = "cuda"  # Ray shows this replica its own GPU(s) only, as cuda:0
        start = time.perf_counter()
        self.restorer = make_restorer(model_namespace(model))  # exactly as `diffpir restore` makes it
        memoise_task_defaults(self.restorer)
        self.pad = s.pad_batches == "on" or (s.pad_batches == "auto" and self.restorer.device.type == "cuda")
        self.pad_sizes = sorted({min(2**i, s.max_batch_size) for i in range(8)} | {s.max_batch_size})
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffpir-restore")
        self._batch.set_max_batch_size(s.max_batch_size)
        self._batch.set_batch_wait_timeout_s(s.batch_wait_s)
        self.pending = 0
        self._pending: dict[Any, list[tuple[Any, float, asyncio.Future]]] = {}  # batch key -> waiting requests
        self._runner: Optional[asyncio.Task] = None
        self.batch_sizes = Histogram(f"{METRIC_PREFIX}batch_size", description="requests per restore batch (one run_requests call)",
                                     boundaries=BATCH_BOUNDARIES)  # fmt: skip
        self.queued = Gauge(f"{METRIC_PREFIX}queued_requests", description="requests waiting or running in this replica")
        self.restore_ms = Histogram(f"{METRIC_PREFIX}restore_ms", description="run_requests wall time per batch (ms)",
                                    boundaries=LATENCY_BOUNDARIES_MS)  # fmt: skip
        path = self.restorer.path
        logger.info(f"restorer ready in {time.perf_counter() - start:.1f} s: {path.name} ({path.backend}, "
                    f"{path.precision}, {path.device}); batches up to {s.max_batch_size}, wait {s.batch_wait_ms:g} ms")  # fmt: skip

    async def restore(self, request: Any) -> dict[str, Any]:
        """One RestoreRequest -> {"status": 200, "image": (C, H, W) tensor, "record": dict} or an error."""
        s = self.settings
        if self.pending >= s.max_queued:
            return {"status": 429, "error": f"this replica has {self.pending} requests queued (--max-queued {s.max_queued}); retry later"}
        self.pending += 1
        self.queued.set(self.pending)
        try:
            from diffpir_rt.runtime import batch_key

            try:
                check_config(self.restorer, request, s.limits)
                key = batch_key(self.restorer, request)
            except RequestError as e:
                return {"status": e.status, "error": str(e)}
            except DiffPIRError as e:
                return {"status": 422, "error": str(e)}
            return await self._batch((key, request, time.perf_counter()))
        finally:
            self.pending -= 1
            self.queued.set(self.pending)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=MERGE_WINDOW)
    async def _batch(self, items: list[tuple[Any, Any, float]]) -> list[dict[str, Any]]:
        """What Serve batched (the requests that arrived within the wait) joins the pending groups.

        Serve forms its next batch while the previous one runs, from whatever arrives within the
        wait; under load that is a trickle of small batches waiting in line. So each batch's
        requests join one pending list per batch key, and one runner takes up to max_batch_size of
        a key at a time: a backlog runs as full batches, and keys take turns, so a request that
        cannot share a batch still runs promptly.
        """
        loop = asyncio.get_running_loop()
        futures = []
        for key, request, arrived in items:
            future = loop.create_future()
            self._pending.setdefault(key, []).append((request, arrived, future))
            futures.append(future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_pending())
        return list(await asyncio.gather(*futures))

    async def _run_pending(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.max_batch_size
        while self._pending:
            key = next(iter(self._pending))  # the key waiting longest
            entries = [e for e in self._pending.pop(key) if not e[2].done()]  # (cancelled: the client left)
            group, rest = entries[:limit], entries[limit:]
            if rest:
                self._pending[key] = rest  # to the back of the line: other keys take their turn
            if not group:
                continue
            started = time.perf_counter()
            try:
                outs = await loop.run_in_executor(self._executor, self._run_group, [request for request, _, _ in group])
            except Exception as e:  # noqa: BLE001 - never leave a caller waiting
                outs = [{"status": 500, "error": f"internal error ({type(e).__name__}: {_first_line(e)})"}] * len(group)
            for (_, arrived, future), out in zip(group, outs):
                if out["status"] == 200:
                    out["record"]["service"] = {"queued_s": round(started - arrived, 4), "replica": _replica_id()}
                if not future.done():
                    future.set_result(out)

    def _run_group(self, requests: list[Any]) -> list[dict[str, Any]]:
        """run_requests on one group (in the worker thread); a failing group is retried one by one."""
        from diffpir_rt.runtime import run_requests

        n = len(requests)
        size = next((p for p in self.pad_sizes if p >= n), n) if self.pad else n
        batch = list(requests) + [requests[-1]] * (size - n)  # padding repeats the last request; its results are dropped
        start = time.perf_counter()
        try:
            outs = run_requests(self.restorer, batch)[:n]
        except Exception as e:  # noqa: BLE001 - one request must not fail the others
            if n > 1:
                logger.warning(f"a batch of {n} failed ({type(e).__name__}: {_first_line(e)}); running its requests one by one")
                return [out for r in requests for out in self._run_group([r])]
            if isinstance(e, DiffPIRError):
                return [{"status": 422, "error": str(e)}]
            logger.exception("restore failed")
            return [{"status": 500, "error": f"internal error ({type(e).__name__}: {_first_line(e)}); see the server log"}]
        self.batch_sizes.observe(n)
        self.restore_ms.observe(1000 * (time.perf_counter() - start))
        results = []
        for image, record in outs:
            record["batch_size"] = n
            if size != n:
                record["padded_batch_size"] = size
            results.append({"status": 200, "image": image.detach().to("cpu"), "record": record})
        return results

    async def health(self) -> dict[str, Any]:
        return {"ok": True, "queued": self.pending, "runs": self.restorer.runs}

    async def info(self) -> dict[str, Any]:
        from diffpir_rt.engine import METHODS, TASKS

        return {
            "version": __version__,
            "runtime": self.restorer.describe(),
            "tasks": list(TASKS),
            "methods": list(METHODS),
            "task_defaults": {t: self.restorer.task_defaults(t).to_dict() for t in TASKS},
            "batching": {"max_batch_size": self.settings.max_batch_size, "wait_ms": self.settings.batch_wait_ms,
                         "pad_to": self.pad_sizes if self.pad else None},  # fmt: skip
        }


# ----------------------------------------------------------------------------- HTTP


@serve.deployment(name="DiffPIRIngress")
class DiffPIRIngress:
    """HTTP in and out: routes, auth, limits, parsing; the restore runs on a DiffPIRRestorer."""

    def __init__(self, restorer: DeploymentHandle, settings: dict[str, Any]) -> None:
        import torch

        # Per-request work here is small (decode, checks, one FFT): one intra-op thread each; more
        # threads only spin against the restorer's on a busy machine (10x slower FFTs measured on 2 cores).
        torch.set_num_threads(1)
        self.restorer = restorer
        self.settings = ServeSettings.from_dict(settings)
        self._info: Optional[dict[str, Any]] = None
        self._draining = False
        self.in_flight = 0
        threading.Thread(target=self._watch_drain, name="diffpir-drain-watch", daemon=True).start()
        self.requests = Counter(f"{METRIC_PREFIX}requests_total", description="HTTP requests by route and status",
                                tag_keys=("route", "status"))  # fmt: skip
        self.errors = Counter(f"{METRIC_PREFIX}errors_total", description="HTTP requests answered with an error",
                              tag_keys=("route", "status"))  # fmt: skip
        self.latency = Histogram(f"{METRIC_PREFIX}request_latency_ms", description="HTTP request latency (ms)",
                                 boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("route",))  # fmt: skip

    async def __call__(self, request: Request) -> Response:
        start = time.perf_counter()
        request_id = _request_id()
        route = request.url.path.rstrip("/") or "/"
        detail: dict[str, Any] = {}
        self.in_flight += 1
        try:
            response = await self._route(request, route, request_id, detail)
        except RequestError as e:
            response = _error(e.status, str(e), {"Retry-After": "1"} if e.status in (429, 503) else None)
            detail["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - a bug answers 500 and is logged; the replica keeps serving
            logger.exception(f"request {request_id} failed")
            response = _error(500, f"internal error ({type(e).__name__}); see the server log")
        finally:
            self.in_flight -= 1
        ms = 1000 * (time.perf_counter() - start)
        known = route if route in ("/healthz", "/v1/info", "/v1/restore", "/v1/restore/json") else "other"
        status = str(response.status_code)
        self.requests.inc(tags={"route": known, "status": status})
        self.latency.observe(ms, tags={"route": known})
        if response.status_code >= 400:
            self.errors.inc(tags={"route": known, "status": status})
        if known != "/healthz" or response.status_code != 200:
            text = " ".join(f"{k}={v}" for k, v in detail.items())
            logger.info(f"{request.method} {route[:80]} {response.status_code} {ms:.1f} ms id={request_id} {text}".rstrip())
        return response

    async def _route(self, request: Request, route: str, request_id: str, detail: dict[str, Any]) -> Response:
        if route in ("/healthz", "/v1/restore", "/v1/restore/json") and self._draining:
            raise RequestError(503, "the server is shutting down (draining in-flight requests); retry on another server")
        if route == "/healthz":
            return await self._health()
        if not route.startswith("/v1/"):
            raise RequestError(404, f"{route[:80]}: not found; the API is GET /healthz, GET /v1/info, POST /v1/restore")
        self._authorise(request)
        if route == "/v1/info":
            if request.method != "GET":
                raise RequestError(405, f"{request.method} {route}: use GET")
            return JSONResponse(await self._get_info())
        if route in ("/v1/restore", "/v1/restore/json"):
            if request.method != "POST":
                raise RequestError(405, f"{request.method} {route}: use POST with a multipart/form-data body")
            return await self._restore(request, request_id, detail, as_json=route.endswith("/json"))
        raise RequestError(404, f"{route[:80]}: not found; the API is GET /healthz, GET /v1/info, POST /v1/restore")

    # -- endpoints

    async def _health(self) -> Response:
        try:
            state = await asyncio.wait_for(self.restorer.health.remote(), timeout=5.0)
        except Exception as e:  # noqa: BLE001
            return _error(503, f"no restorer replica answered ({type(e).__name__}); the model may still be loading")
        return JSONResponse({"status": "ok", **state})

    async def _get_info(self) -> dict[str, Any]:
        if self._info is None:
            info = await asyncio.wait_for(self.restorer.info.remote(), timeout=30.0)
            info["limits"] = {k: v for k, v in self.settings.public().items()
                              if k in ("max_pixels", "max_body_bytes", "max_steps", "max_queued", "request_timeout_s")}  # fmt: skip
            info["settings"] = self.settings.public()
            self._info = info
        return self._info

    async def _restore(self, request: Request, request_id: str, detail: dict[str, Any], as_json: bool) -> Response:
        s = self.settings
        t0 = time.perf_counter()
        items = await self._read_form(request)
        t1 = time.perf_counter()
        parsed = await asyncio.to_thread(parse_restore_form, items, s.limits)
        req = parsed.request
        t2 = time.perf_counter()
        detail.update(task=req.task, size=f"{req.y.shape[-1]}x{req.y.shape[-2]}", seed=req.seed)
        try:
            result = await asyncio.wait_for(self.restorer.restore.remote(req), timeout=s.request_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the restore took longer than {s.request_timeout_s:g} s (--request-timeout)") from None
        except Exception as e:  # noqa: BLE001 - replica death, back pressure: a clear status, never a hang
            raise _handle_error(e) from None
        if result["status"] != 200:
            headers = {"Retry-After": "1"} if result["status"] in (429, 503) else None
            detail["error"] = result["error"]
            return _error(result["status"], result["error"], headers)
        t3 = time.perf_counter()
        record = result["record"]
        record["bit_depth"] = parsed.bit_depth
        detail.update(batch=record["batch_size"], restore_s=record["seconds"])
        from diffpir_rt.engine import imageio

        from diffpir_rt.runtime import output_image

        image = output_image(parsed.request, result["image"])  # grey again and/or with its alpha, as uploaded
        png = await asyncio.to_thread(imageio.encode_image, image, "png", parsed.bit_depth)
        # Where the time went in the ingress: reading the body, checking the request, the replica's
        # answer (its wait for a batch and the restore included), encoding the PNG.
        record["service"] = {**record.get("service", {}), "request_id": request_id, "read_s": round(t1 - t0, 4),
                             "check_s": round(t2 - t1, 4), "replica_s": round(t3 - t2, 4),
                             "encode_s": round(time.perf_counter() - t3, 4)}  # fmt: skip
        if as_json:
            return JSONResponse({"image": base64.b64encode(png).decode("ascii"), "content_type": "image/png", "record": record})
        header = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        return Response(png, media_type="image/png", headers={RECORD_HEADER: header})

    # -- pieces

    def _watch_drain(self) -> None:
        """A thread: every 0.25 s, whether `diffpir serve` has begun to drain (a flag in Ray's key-value
        store); once it has, this replica's in-flight count goes there, so the driver knows when all is done."""
        try:
            from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_put
        except ImportError:  # without the flag, Serve's own drain still finishes in-flight work
            return
        key = IN_FLIGHT_PREFIX + (_replica_id() or uuid.uuid4().hex).encode()
        while True:
            time.sleep(0.25)
            try:
                if not self._draining:
                    self._draining = _internal_kv_get(DRAIN_KEY, namespace=DRAIN_NAMESPACE) is not None
                if self._draining:
                    _internal_kv_put(key, str(self.in_flight).encode(), overwrite=True, namespace=DRAIN_NAMESPACE)
            except Exception:  # noqa: BLE001 - the GCS going away at shutdown
                pass

    def _authorise(self, request: Request) -> None:
        expected = self.settings.token_sha256
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(hash_token(token.strip()), expected):
            raise RequestError(401, "wrong bearer token")

    async def _read_form(self, request: Request) -> list[tuple[str, Any]]:
        s = self.settings
        content_type = request.headers.get("content-type", "")
        if not content_type.lower().startswith("multipart/form-data"):
            raise RequestError(415, f"content type {content_type[:60]!r}: expected multipart/form-data (fields image, task, ...)")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > s.max_body_bytes:
            raise RequestError(413, f"body: {int(length):,} bytes; at most {s.max_body_bytes:,} are accepted (--max-body-bytes)")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > s.max_body_bytes:
                raise RequestError(413, f"body: more than {s.max_body_bytes:,} bytes; at most {s.max_body_bytes:,} are accepted")
            chunks.append(chunk)
        body = b"".join(chunks)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive).form(max_files=3, max_fields=32, max_part_size=s.max_body_bytes)
        except Exception as e:  # noqa: BLE001 - starlette raises several kinds on a malformed body
            message = getattr(e, "detail", None) or getattr(e, "message", None) or str(e) or type(e).__name__
            raise RequestError(400, f"body: not a valid multipart/form-data form ({message})") from None
        items: list[tuple[str, Any]] = []
        try:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    items.append((name, value))
                else:
                    items.append((name, Upload(value.filename or name, await value.read())))
        finally:
            await form.close()
        return items


def _handle_error(e: BaseException) -> RequestError:
    """What a failed handle call tells the client: 429 on back pressure, 503 when no replica can answer."""
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    if isinstance(e, getattr(serve_exceptions, "BackPressureError", ())):
        return RequestError(429, "every restorer replica's queue is full; retry later")
    if isinstance(e, (ray_exceptions.RayActorError, getattr(serve_exceptions, "DeploymentUnavailableError", ()))):
        return RequestError(503, "the restorer replica stopped while running this request (Ray restarts it); retry")
    logger.error(f"restore call failed: {type(e).__name__}: {_first_line(e)}")
    return RequestError(503, f"the restore could not run ({type(e).__name__}); retry")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001
        return ""


def build_app(args: Optional[dict[str, Any]] = None) -> serve.Application:
    """The application from serve settings (a ServeSettings dict): Serve's app builder entry point."""
    settings = ServeSettings.from_dict(args)
    data = settings.to_dict()
    restorer = DiffPIRRestorer.options(**restorer_options(settings)).bind(data)
    return DiffPIRIngress.options(**ingress_options(settings)).bind(restorer, data)
