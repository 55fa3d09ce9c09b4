"""Per-request progress for the web page: UNet calls done of the total, ETA, place in the queue.

A restorer replica and the HTTP ingress are different processes (possibly on different nodes),
so progress goes through Ray's internal key-value store (the GCS), which both already use for
the drain flag: no extra actor or process. The replica's `ProgressBoard` holds one small record
per request it holds (waiting or running), keyed by the request's id (the client's
`X-Request-Id`, which Serve carries from the ingress to the replica), and a publisher thread
writes what changed at most every `interval` seconds and deletes the record as soon as the
request ends. So the store holds at most one record per request in flight (bounded by
`--max-queued` per replica), and nothing is written from the event loop or per UNet call.

The ingress answers `GET /v1/progress/<request id>` with a stream of JSON lines, one per change
(`progress_stream`), until the request's record is gone: the page opens it before it posts the
restore and closes it when the answer comes. One log line per restore, not one per poll.

A record: {"state": "queued", "ahead": n} while waiting (n requests of this replica arrived
before it and are not done), then {"state": "running", "done": k, "total": T, "elapsed_s": s,
"eta_s": e, "batch": b}; `done` counts the steps that called the UNet.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional

#: Keys of the records in Ray's internal key-value store (namespace settings.DRAIN_NAMESPACE).
PROGRESS_PREFIX = b"diffpir-serve:progress:"
#: A request id as the page makes it, or as Serve makes it (hex, dashes); anything else has no record.
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
#: Seconds between two writes of the same record (the page redraws about as often).
PUBLISH_INTERVAL_S = 0.25


@dataclass
class _Ticket:
    """One request on the board."""

    request_id: str
    total: int  # UNet calls of its loop
    arrived: float  # monotonic
    started: Optional[float] = None
    done: int = 0
    batch: int = 1
    version: int = 0  # bumped on every change; the publisher writes when it differs from what it wrote
    written: int = -1


@dataclass
class ProgressBoard:
    """A restorer replica's requests and their progress, published for the ingress.

    `add` / `remove` are called on the replica's event loop, `start` / `step` from the restore
    thread; a lock guards the tickets. `put(request_id, record)` and `delete(request_id)` write
    the store (Ray's internal KV by default; tests pass a dict's).
    """

    put: Optional[Callable[[str, dict[str, Any]], None]] = None
    delete: Optional[Callable[[str], None]] = None
    interval: float = PUBLISH_INTERVAL_S
    _tickets: dict[int, _Ticket] = field(default_factory=dict)
    _gone: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def __post_init__(self) -> None:
        if self.put is None or self.delete is None:
            self.put, self.delete = kv_store()

    # -- the replica's side

    def add(self, entry: Any, request_id: str, total: int) -> None:
        """A request joined this replica's queue (`entry`: the replica's object for it)."""
        if not REQUEST_ID.fullmatch(request_id or ""):
            return
        with self._lock:
            self._tickets[id(entry)] = _Ticket(request_id, max(0, int(total)), time.monotonic())
            self._bump_waiting()
        self._kick()

    def start(self, entries: list[Any]) -> None:
        """These requests begin to run, as one batch."""
        now = time.monotonic()
        with self._lock:
            for entry in entries:
                ticket = self._tickets.get(id(entry))
                if ticket is not None:
                    ticket.started, ticket.done, ticket.batch = now, 0, len(entries)
                    ticket.version += 1
            self._bump_waiting()
        self._kick()

    def step(self, entries: list[Any], info: dict[str, Any]) -> None:
        """One step of their loop ran (the restore's callback); it counts when it called the UNet (t is set)."""
        if info.get("t") is None:
            return
        with self._lock:
            for entry in entries:
                ticket = self._tickets.get(id(entry))
                if ticket is not None:
                    ticket.done = min(ticket.total, ticket.done + 1) if ticket.total else ticket.done + 1
                    ticket.version += 1

    def remove(self, entry: Any) -> None:
        """The request was answered (or failed, or was cancelled): its record goes."""
        with self._lock:
            ticket = self._tickets.pop(id(entry), None)
            if ticket is None:
                return
            self._gone.append(ticket.request_id)
            self._bump_waiting()
        self._kick()

    def records(self) -> dict[str, dict[str, Any]]:
        """Every request's record now (what the publisher writes)."""
        with self._lock:
            return {t.request_id: self._record(t, time.monotonic()) for t in self._tickets.values()}

    def __len__(self) -> int:
        return len(self._tickets)

    # -- pieces

    def _bump_waiting(self) -> None:
        """Places in the queue move when a request arrives, starts or leaves: every waiting record changes."""
        for ticket in self._tickets.values():
            if ticket.started is None:
                ticket.version += 1

    def _record(self, ticket: _Ticket, now: float) -> dict[str, Any]:
        if ticket.started is None:
            ahead = sum(1 for t in self._tickets.values() if t is not ticket and (t.started is not None or t.arrived < ticket.arrived))
            return {"state": "queued", "ahead": ahead, "waited_s": round(now - ticket.arrived, 2), "total": ticket.total}
        elapsed = now - ticket.started
        eta = elapsed * (ticket.total - ticket.done) / ticket.done if ticket.done and ticket.total else None
        return {"state": "running", "done": ticket.done, "total": ticket.total, "elapsed_s": round(elapsed, 2),
                "eta_s": None if eta is None else round(eta, 1), "batch": ticket.batch}  # fmt: skip

    def _kick(self) -> None:
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._publish_loop, name="diffpir-progress", daemon=True)
            self._thread.start()

    def publish(self) -> None:
        """Write every changed record and delete the records of requests that ended (the publisher's one pass)."""
        with self._lock:
            gone, self._gone = self._gone, []
            now = time.monotonic()
            changed = []
            for ticket in self._tickets.values():
                if ticket.version != ticket.written:
                    ticket.written = ticket.version
                    changed.append((ticket.request_id, self._record(ticket, now)))
        for request_id in gone:
            _quietly(self.delete, request_id)
        for request_id, record in changed:
            _quietly(self.put, request_id, record)

    def _publish_loop(self) -> None:
        while True:
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            self.publish()
            with self._lock:
                busy = bool(self._tickets)
            if busy:
                time.sleep(self.interval)  # at most one write per record per interval
                self._wake.set()  # and look again: running records change with every step


def _quietly(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - progress is information: a store that hiccups must never fail a restore
        pass


def _key(request_id: str) -> bytes:
    return PROGRESS_PREFIX + request_id.encode("ascii")


def kv_store() -> tuple[Callable[[str, dict[str, Any]], None], Callable[[str], None]]:
    """put/delete on Ray's internal key-value store (the GCS), or no-ops where Ray is not connected."""
    from .settings import DRAIN_NAMESPACE

    def put(request_id: str, record: dict[str, Any]) -> None:
        from ray.experimental.internal_kv import _internal_kv_initialized, _internal_kv_put

        if _internal_kv_initialized():
            _internal_kv_put(_key(request_id), json.dumps(record).encode(), overwrite=True, namespace=DRAIN_NAMESPACE)

    def delete(request_id: str) -> None:
        from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_initialized

        if _internal_kv_initialized():
            _internal_kv_del(_key(request_id), namespace=DRAIN_NAMESPACE)

    return put, delete


def kv_read(request_id: str) -> Optional[dict[str, Any]]:
    """The request's record from Ray's internal key-value store, or None (unknown, not yet there, or ended)."""
    from ray.experimental.internal_kv import _internal_kv_get

    from .settings import DRAIN_NAMESPACE

    raw = _internal_kv_get(_key(request_id), namespace=DRAIN_NAMESPACE)
    return None if raw is None else json.loads(raw)


async def progress_stream(request_id: str, read: Callable[[str], Optional[dict[str, Any]]], limit_s: float,
                          poll_s: float = PUBLISH_INTERVAL_S) -> AsyncIterator[bytes]:  # fmt: skip
    """JSON lines for one request: each change of its record, then {"state": "ended"} once it is gone.

    Before the replica has it (the ingress is still reading or checking the body) the stream says
    {"state": "waiting"} once and waits; it ends when the record has come and gone, or after
    `limit_s` (the request's deadline and its body's read time: the restore is over by then).
    The client closing the stream ends it too (Serve cancels the generator).
    """
    last: Any = None
    seen = False
    deadline = time.monotonic() + limit_s
    yield (json.dumps({"state": "waiting"}) + "\n").encode()
    while time.monotonic() < deadline:
        try:
            record = await asyncio.to_thread(read, request_id)
        except Exception:  # noqa: BLE001 - the store going away (shutdown): the stream just ends
            break
        if record is None and seen:
            break
        if record is not None:
            seen = True
            if record != last:
                last = record
                yield (json.dumps(record) + "\n").encode()
        await asyncio.sleep(poll_s)
    yield (json.dumps({"state": "ended"}) + "\n").encode()
