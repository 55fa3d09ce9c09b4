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

Deadlines: a request carries what is left of its --request-timeout to the replica; one
whose caller left (a 504, a client that hung up) or whose time ran out is skipped if it
has not started, and a running group stops at its next step once every request in it is
past caring, so a timed-out request frees its place instead of running on unseen.

Configurations: both deployments are built from one settings dict, and its digest (the
`config` of /healthz, /v1/info and each record's `service`) travels with every answer.
During a rolling update (`serve deploy` of changed settings) old and new replicas run side
by side; the ingress only returns an answer its own configuration produced, and retries
(then answers 503) when the call reached a replica of the other one.

`build_app(args)` is the application builder: `diffpir serve` calls it with its settings,
and the Serve config from `diffpir serve --print-config` names it as `import_path`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Gauge, Histogram
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from diffpir_rt import __version__
from diffpir_rt.errors import DiffPIRError

from . import page
from .forms import RequestError, Upload, check_config, parse_restore_form
from .progress import ProgressBoard
from .settings import (
    DRAIN_KEY,
    DRAIN_NAMESPACE,
    IN_FLIGHT_PREFIX,
    METRIC_PREFIX,
    ServeSettings,
    hash_token,
    ingress_options,
    restorer_options,
)

logger = logging.getLogger("ray.serve")

RECORD_HEADER = "X-DiffPIR-Record"
REQUEST_ID_HEADER = "X-Request-Id"
#: A client's own deadline in seconds (at most --request-timeout is granted).
TIMEOUT_HEADER = "X-Request-Timeout"
LATENCY_BOUNDARIES_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000, 300000]
BATCH_BOUNDARIES = [1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64]
#: Serve batches that may wait at once in a replica's pending groups (see DiffPIRRestorer._batch).
MERGE_WINDOW = 16
#: Calls the ingress makes before it gives up on reaching a replica of its own configuration.
CONFIG_ATTEMPTS = 4
#: The ingress waits this much longer than a request's remaining time for the replica's own 504.
DEADLINE_GRACE_S = 2.0


class _Abandoned(Exception):
    """Raised in a restore's step callback: nobody waits for this group's results any more."""


def _node_id() -> str:
    """The Ray node this process runs on (short hex), for records and /healthz."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:12]
    except Exception:  # noqa: BLE001
        return ""


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


class _Entry:
    """A request in a restorer replica: waiting for its group, or running in it."""

    __slots__ = ("request", "arrived", "deadline", "abandoned", "future", "started", "timer")

    def __init__(self, request: Any, arrived: float, deadline: Optional[float]) -> None:
        self.request = request
        self.arrived = arrived  # perf_counter, for queued_s
        self.deadline = deadline  # monotonic; None = no limit
        self.abandoned = threading.Event()  # set from the event loop, read by the restore thread
        self.future: Optional[asyncio.Future] = None
        self.started = False  # taken into a running group
        self.timer: Optional[asyncio.TimerHandle] = None  # expire() at the deadline; cancelled once answered

    def expire(self) -> None:
        """At the deadline (a timer on the event loop): a request still waiting is answered now, not when its turn comes."""
        if not self.started:
            self.answer(_queued_out(self))

    def past_caring(self) -> bool:
        """Nobody waits for this result any more: the caller left, or its time is up."""
        return (self.abandoned.is_set() or (self.future is not None and self.future.done())
                or (self.deadline is not None and time.monotonic() > self.deadline))  # fmt: skip

    def answer(self, out: dict[str, Any]) -> None:
        """The result (on the event loop); the deadline's timer goes, so nothing holds the request after it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.future is not None and not self.future.done():
            self.future.set_result(out)


def _timed_out(settings: ServeSettings) -> dict[str, Any]:
    """The answer to a request stopped while running: it needs more time than it has, so a retry would not help."""
    return {"status": 504, "error": f"the restore did not finish within its deadline (--request-timeout {settings.request_timeout_s:g} s "
                                    "or the request's X-Request-Timeout); it was stopped to free its place"}  # fmt: skip


def _queued_out(entry: _Entry) -> dict[str, Any]:
    """The answer to a request whose deadline passed before it could start: the queue was long, a retry may find it short."""
    waited = time.perf_counter() - entry.arrived
    return {"status": 504, "retry": True, "error": f"the deadline passed after {waited:.1f} s in the replica's queue, "
                                                   "before the restore could start; retry later"}  # fmt: skip


@serve.deployment(name="DiffPIRRestorer")
class DiffPIRRestorer:
    """One prepared Restorer; batches what arrives together and runs it."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from diffpir_rt.runtime import Restorer

        self.settings = ServeSettings.from_dict(settings)
        s = self.settings
        self.config_id = s.digest()
        self.node = _node_id()
        device = str(s.model.get("device") or "auto")
        gpu = s.gpus_per_replica > 0 and (device == "auto" or device.startswith("cuda"))
        start = time.perf_counter()
        # Ray shows a GPU replica its own GPU(s) only, as cuda:0; otherwise exactly as `diffpir restore` makes it
        self.restorer = Restorer.from_options(s.runtime_options("cuda" if gpu else None))
        self.pad = s.pad_batches == "on" or (s.pad_batches == "auto" and self.restorer.device.type == "cuda")
        self.pad_sizes = sorted({min(2**i, s.max_batch_size) for i in range(8)} | {s.max_batch_size})
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffpir-restore")
        self._batch.set_max_batch_size(s.max_batch_size)
        self._batch.set_batch_wait_timeout_s(s.batch_wait_s)
        self.pending = 0
        self._pending: dict[Any, list[_Entry]] = {}  # batch key -> waiting requests
        self.progress = ProgressBoard()  # the web page's progress: each request's UNet calls done, its place in the queue
        self._runner: Optional[asyncio.Task] = None
        self.batch_sizes = Histogram(f"{METRIC_PREFIX}batch_size", description="requests per restore batch (one run_requests call)",
                                     boundaries=BATCH_BOUNDARIES)  # fmt: skip
        self.queued = Gauge(f"{METRIC_PREFIX}queued_requests", description="requests waiting or running in this replica")
        self.restore_ms = Histogram(f"{METRIC_PREFIX}restore_ms", description="run_requests wall time per batch (ms)",
                                    boundaries=LATENCY_BOUNDARIES_MS)  # fmt: skip
        path = self.restorer.path
        logger.info(f"restorer ready in {time.perf_counter() - start:.1f} s: {path.name} ({path.backend}, "
                    f"{path.precision}, {path.device}); batches up to {s.max_batch_size}, wait {s.batch_wait_ms:g} ms")  # fmt: skip

    async def restore(self, request: Any, budget_s: Optional[float] = None) -> dict[str, Any]:
        """One RestoreRequest -> {"status": 200, "image": (C, H, W) tensor, "record": dict} or an error.

        budget_s: what is left of the request's --request-timeout; past it the request is
        answered 504 without running (or its group stops, once nobody in it waits any more).
        Every answer names this replica's configuration (`config`).
        """
        answer = await self._restore(request, budget_s)
        answer["config"] = self.config_id
        return answer

    async def _restore(self, request: Any, budget_s: Optional[float]) -> dict[str, Any]:
        s = self.settings
        if self.pending >= s.max_queued:
            return {"status": 429, "error": f"this replica has {self.pending} requests queued (--max-queued {s.max_queued}); retry later"}
        self.pending += 1
        self.queued.set(self.pending)
        entry = _Entry(request, time.perf_counter(), None if budget_s is None else time.monotonic() + max(0.0, budget_s))
        try:
            from diffpir_rt.runtime import batch_key

            try:
                config = check_config(self.restorer, request, s.limits)
                key = batch_key(self.restorer, request)
            except RequestError as e:
                return {"status": e.status, "error": str(e)}
            except DiffPIRError as e:
                return {"status": 422, "error": str(e)}
            self.progress.add(entry, _request_id(), config.model_calls())
            return await self._batch((key, entry))
        except asyncio.CancelledError:
            entry.abandoned.set()  # the caller left (its timeout, a client that hung up): never run it for nobody
            raise
        finally:
            self.progress.remove(entry)
            self.pending -= 1
            self.queued.set(self.pending)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=MERGE_WINDOW)
    async def _batch(self, items: list[tuple[Any, _Entry]]) -> list[dict[str, Any]]:
        """What Serve batched (the requests that arrived within the wait) joins the pending groups.

        Serve forms its next batch while the previous one runs, from whatever arrives within the
        wait; under load that is a trickle of small batches waiting in line. So each batch's
        requests join one pending list per batch key, and one runner takes up to max_batch_size of
        a key at a time: a backlog runs as full batches, and keys take turns, so a request that
        cannot share a batch still runs promptly.
        """
        loop = asyncio.get_running_loop()
        futures = []
        for key, entry in items:
            entry.future = loop.create_future()
            if entry.deadline is not None:
                entry.timer = loop.call_later(max(0.0, entry.deadline - time.monotonic()), entry.expire)
            self._pending.setdefault(key, []).append(entry)
            futures.append(entry.future)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_pending())
        return list(await asyncio.gather(*futures))

    async def _run_pending(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.max_batch_size
        while self._pending:
            key = next(iter(self._pending))  # the key waiting longest
            entries = []
            for entry in self._pending.pop(key):
                if entry.past_caring():  # its caller left, or its time ran out before it could start
                    entry.answer(_queued_out(entry))
                else:
                    entries.append(entry)
            group, rest = entries[:limit], entries[limit:]
            if rest:
                self._pending[key] = rest  # to the back of the line: other keys take their turn
            if not group:
                continue
            for entry in group:
                entry.started = True
            started = time.perf_counter()
            try:
                outs = await loop.run_in_executor(self._executor, self._run_group, group)
            except Exception as e:  # noqa: BLE001 - never leave a caller waiting
                outs = [{"status": 500, "error": f"internal error ({type(e).__name__}: {_first_line(e)})"}] * len(group)
            for entry, out in zip(group, outs):
                if out["status"] == 200:
                    out["record"]["service"] = {"queued_s": round(started - entry.arrived, 4), "replica": _replica_id(),
                                                "node": self.node}  # fmt: skip
                entry.answer(out)

    def _run_group(self, group: list[_Entry]) -> list[dict[str, Any]]:
        """run_requests on one group (in the worker thread); a failing group is retried one by one.

        The step callback stops the group once every request in it is past caring (callers gone
        or deadlines passed): the replica's time goes to requests someone still waits for.
        """
        from diffpir_rt.runtime import run_requests

        requests = [entry.request for entry in group]
        n = len(requests)
        size = next((p for p in self.pad_sizes if p >= n), n) if self.pad else n
        batch = list(requests) + [requests[-1]] * (size - n)  # padding repeats the last request; its results are dropped

        def watch(step: dict[str, Any]) -> None:
            self.progress.step(group, step)
            if all(entry.past_caring() for entry in group):
                raise _Abandoned()

        self.progress.start(group)
        start = time.perf_counter()
        try:
            outs = run_requests(self.restorer, batch, callback=watch)[:n]
        except _Abandoned:
            logger.info(f"a batch of {n} stopped after {time.perf_counter() - start:.1f} s: every request in it timed out or was cancelled")
            return [_timed_out(self.settings)] * n
        except Exception as e:  # noqa: BLE001 - one request must not fail the others
            if n > 1:
                logger.warning(f"a batch of {n} failed ({type(e).__name__}: {_first_line(e)}); running its requests one by one")
                return [out for entry in group for out in self._run_group([entry])]
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
        return {"ok": True, "queued": self.pending, "runs": self.restorer.runs, "config": self.config_id, "node": self.node,
                "pid": os.getpid()}  # fmt: skip

    async def info(self) -> dict[str, Any]:
        from diffpir_rt.runtime import describe_service

        return {
            "version": __version__,
            "config": self.config_id,
            "runtime": self.restorer.describe(),
            **describe_service(self.restorer),
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
        self.config_id = self.settings.digest()
        self._info: Optional[dict[str, Any]] = None
        self._replicas: tuple[float, dict[str, int]] = (-1e9, {})  # (when counted, running replicas per deployment)
        self._counting: Optional[asyncio.Task] = None
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
            response = await self._route(request, route, request_id, detail, start)
        except RequestError as e:
            response = _error(e.status, str(e), {"Retry-After": "1"} if e.status in (429, 503) or getattr(e, "retry", False) else None)
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

    async def _route(self, request: Request, route: str, request_id: str, detail: dict[str, Any], start: float) -> Response:
        if route in ("/healthz", "/v1/restore", "/v1/restore/json") and self._draining:
            raise RequestError(503, "the server is shutting down (draining in-flight requests); retry on another server")
        if route == "/healthz":
            return await self._health()
        if page.handles(route):  # the web page at /, its files, and its progress stream and preview under /v1/ (token)
            return await page.answer(request, route, self.settings, self._authorise)
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
            return await self._restore(request, request_id, detail, route.endswith("/json"), start)
        raise RequestError(404, f"{route[:80]}: not found; the API is GET /healthz, GET /v1/info, POST /v1/restore")

    # -- endpoints

    async def _health(self) -> Response:
        try:
            state = await asyncio.wait_for(self.restorer.health.remote(), timeout=5.0)
        except Exception as e:  # noqa: BLE001
            return _error(503, f"no restorer replica answered ({type(e).__name__}); the model may still be loading")
        state.pop("ok", None)
        replica = {k: state.pop(k) for k in ("config", "node", "pid") if k in state}
        return JSONResponse({"status": "ok", **state, "config": self.config_id, "replica": replica,
                             "replicas": await self._replica_counts()})  # fmt: skip

    async def _replica_counts(self) -> dict[str, int]:
        """Running replicas per deployment of this application, as last counted (empty until the first count).

        Serve's controller is asked at most once a second, in the background: a health check never
        waits for it.
        """
        asked, counts = self._replicas
        if time.monotonic() - asked >= 1.0:
            self._replicas = (time.monotonic(), counts)
            self._counting = asyncio.create_task(self._count_replicas())  # (kept: a task nobody holds may vanish)
        return counts

    async def _count_replicas(self) -> None:
        def ask() -> dict[str, int]:
            from .settings import APP_NAME

            app = serve.status().applications.get(APP_NAME)
            if app is None:
                return {}
            return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in app.deployments.items()}

        try:
            counts = await asyncio.wait_for(asyncio.to_thread(ask), timeout=30.0)
        except Exception:  # noqa: BLE001 - the count is information, never a reason to fail a health check
            return
        self._replicas = (time.monotonic(), counts)

    async def _get_info(self) -> dict[str, Any]:
        if self._info is None:
            info = await asyncio.wait_for(self.restorer.info.remote(), timeout=30.0)
            info["limits"] = {k: v for k, v in self.settings.public().items()
                              if k in ("max_pixels", "max_body_bytes", "max_steps", "max_queued", "request_timeout_s",
                                       "read_timeout_s")}  # fmt: skip
            info["settings"] = self.settings.public()
            info["config"] = self.config_id
            self._info = info
        return self._info

    async def _restore(self, request: Request, request_id: str, detail: dict[str, Any], as_json: bool, start: float) -> Response:
        s = self.settings
        t0 = time.perf_counter()
        items = await self._read_form(request)
        t1 = time.perf_counter()
        parsed = await asyncio.to_thread(parse_restore_form, items, s.limits)
        req = parsed.request
        t2 = time.perf_counter()
        detail.update(task=req.task, size=f"{req.y.shape[-1]}x{req.y.shape[-2]}", seed=req.seed)
        result = await self._call_restorer(req, start + _time_allowed(request, s.request_timeout_s))
        if result["status"] != 200:
            # Retry-After where a later try can succeed (full queues, a replica restarting, a deadline passed in a queue)
            headers = {"Retry-After": "1"} if result["status"] in (429, 503) or result.get("retry") else None
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
        record["service"] = {**record.get("service", {}), "config": result["config"], "request_id": request_id, "read_s": round(t1 - t0, 4),
                             "check_s": round(t2 - t1, 4), "replica_s": round(t3 - t2, 4),
                             "encode_s": round(time.perf_counter() - t3, 4)}  # fmt: skip
        if as_json:
            return JSONResponse({"image": base64.b64encode(png).decode("ascii"), "content_type": "image/png", "record": record})
        header = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        return Response(png, media_type="image/png", headers={RECORD_HEADER: header})

    # -- pieces

    async def _call_restorer(self, req: Any, deadline: float) -> dict[str, Any]:
        """The restorer's answer, produced by this ingress's configuration, within the request's deadline.

        The replica gets the time left and answers 504 itself when it runs out (its place freed);
        the ingress waits a little longer than that, then answers 504 and cancels the call.
        """
        s = self.settings
        other = ""
        for _ in range(CONFIG_ATTEMPTS):
            left = deadline - time.perf_counter()
            if left <= 0:
                raise _RetryLater(504, "the deadline passed before the restore could start; retry later")
            try:
                result = await asyncio.wait_for(self.restorer.restore.remote(req, left), timeout=left + DEADLINE_GRACE_S)
            except asyncio.TimeoutError:  # the replica did not answer by its own deadline: busy elsewhere, or stuck
                raise _RetryLater(504, f"no answer from the restorer replica within the deadline ({left:.1f} s left); retry later") from None
            except Exception as e:  # noqa: BLE001 - replica death, back pressure: a clear status, never a hang
                raise _handle_error(e, s) from None
            if result.get("config") == self.config_id:
                return result
            other = str(result.get("config"))  # a rolling update: this call reached a replica of the other configuration
        raise RequestError(503, f"the service is being updated (configuration {self.config_id} here, {other} on the restorer "
                                "replicas reached); retry")  # fmt: skip

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
        chunks: list[bytes] = []

        async def read() -> None:
            total = 0
            async for chunk in request.stream():
                total += len(chunk)
                if total > s.max_body_bytes:
                    raise RequestError(413, f"body: more than {s.max_body_bytes:,} bytes; at most {s.max_body_bytes:,} are accepted")
                chunks.append(chunk)

        try:  # a client that never finishes its body must not hold a place for ever
            await asyncio.wait_for(read(), timeout=s.read_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(408, f"body: not received within {s.read_timeout_s:g} s (--read-timeout); "
                                    f"{sum(map(len, chunks)):,} bytes arrived") from None  # fmt: skip
        except ClientDisconnect:
            raise RequestError(400, f"body: the client closed the connection after {sum(map(len, chunks)):,} bytes") from None
        body = b"".join(chunks)
        chunks.clear()

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


def _time_allowed(request: Request, most: float) -> float:
    """Seconds this request may take: --request-timeout, or less where the client's X-Request-Timeout asks."""
    asked = request.headers.get(TIMEOUT_HEADER.lower())
    if asked is None:
        return most
    try:
        value = float(asked)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise RequestError(400, f"header {TIMEOUT_HEADER} {asked[:40]!r}: expected a number of seconds > 0")
    return min(most, value)


class _RetryLater(RequestError):
    """A RequestError whose answer carries Retry-After: a later try may succeed."""

    retry = True


def _handle_error(e: BaseException, settings: ServeSettings) -> RequestError:
    """What a failed handle call tells the client: 429 on back pressure, 503 when no replica can answer."""
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    if isinstance(e, getattr(serve_exceptions, "BackPressureError", ())):
        return RequestError(429, f"every restorer replica's queue is full (--max-queued {settings.max_queued}); retry later")
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
