"""`diffpir serve`: start Ray (or join a cluster), run the application, stop cleanly.

Lifecycle:
1. Cheap checks first (model flags, token, port free), before Ray starts.
2. A local Ray instance of its own (`address="local"`: never a stray $RAY_ADDRESS), or
   `--address` of an existing cluster; Serve's HTTP proxy on --host:--port (127.0.0.1 by
   default); the application from `app.build_app(settings)`.
3. SIGINT/SIGTERM: stop taking new work and drain (each replica finishes its in-flight
   requests, up to --drain-timeout), shut Serve down, shut Ray down (the local instance:
   GCS, raylet, every worker), then end whatever process this one started that is still
   there. A second signal, or the drain's deadline passing, ends the drain at once. On a
   cluster only this application is deleted (and Serve, if nothing else runs on it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Iterator, Optional, TextIO

from diffpir_rt.errors import DiffPIRError

from .settings import APP_NAME, DRAIN_KEY, DRAIN_NAMESPACE, IN_FLIGHT_PREFIX, ServeSettings

logger = logging.getLogger(__name__)

RAY_MISSING = 'diffpir serve needs Ray Serve: pip install "diffpir-rt[serve]"'


def import_ray(what: str = "diffpir serve") -> Any:
    """ray, or a one-line DiffPIRError naming the extra to install."""
    import importlib

    try:
        ray = importlib.import_module("ray")
        importlib.import_module("ray.serve")
    except ImportError as e:
        raise DiffPIRError(f'{what} needs Ray ({e.name} is not installed): pip install "diffpir-rt[serve]"') from None
    return ray


#: Colour and cursor codes, which a log file or a pipe should not get.
ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
#: Lines of Ray and Serve that alarm without meaning anything for `diffpir serve` / `diffpir batch`.
NOISE = (
    # serve.run after our own serve.start: it is our Serve instance, started a moment before
    "Connecting to existing Serve app",
    # serve.shutdown: the controller ends itself, so the call that asked it to cannot finish
    "ServeController.graceful_shutdown failed",
)


class _PlainLines(io.TextIOBase):
    """A text stream in front of stdout/stderr: drops NOISE lines and, off a terminal, ANSI codes."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.strip = not _isatty(stream)
        self._pending = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                self._emit(line + "\n")
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._emit(self._pending)
                self._pending = ""
        self.stream.flush()

    def _emit(self, text: str) -> None:
        if any(noise in text for noise in NOISE):
            return
        self.stream.write(ANSI_CODES.sub("", text) if self.strip else text)

    def isatty(self) -> bool:
        return _isatty(self.stream)

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in str(record.msg) for noise in NOISE)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """While Ray runs in this process: its lines without colour codes when piped, and without NOISE.

    Ray prints its workers' lines (replica logs, raylet messages) to sys.stdout/sys.stderr
    with ANSI colours; Serve logs through the "ray.serve" logger.
    """
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PlainLines(sys.stdout), _PlainLines(sys.stderr)
    drop = _DropNoise()
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addFilter(drop)
    try:
        yield
    finally:
        for wrapper in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                wrapper.flush()
        sys.stdout, sys.stderr = streams
        serve_logger.removeFilter(drop)


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise DiffPIRError(f"--port {port}: cannot listen on {host} ({e.strerror}); is another server running?") from None


def descendants(pid: int) -> list[int]:
    """Every live process under `pid` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("utf-8", "replace")
            parent = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def end_processes(pids: list[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace_s`, to processes this one started; returns those signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while signalled and time.monotonic() < deadline and any(_alive(p) for p in signalled):
        time.sleep(0.1)
    for pid in signalled:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return signalled


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


class Server:
    """One `diffpir serve` run: start, wait for a signal, drain and stop."""

    def __init__(self, settings: ServeSettings, address: Optional[str] = None, num_cpus: Optional[int] = None,
                 metrics_port: Optional[int] = None, say=print) -> None:  # fmt: skip
        self.settings = settings
        self.address = address
        self.num_cpus = num_cpus
        self.metrics_port = metrics_port
        self.say = say
        self.stop = threading.Event()
        self.signals = 0
        self.local = address is None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signals += 1
        if self.signals == 1:
            self.say(f"diffpir serve: {signal.Signals(signum).name}: draining (up to {self.settings.drain_timeout_s:g} s; "
                     "signal again to stop at once)")  # fmt: skip
            self.stop.set()
        else:
            self.say("diffpir serve: stopping now")
            self._force_stop()

    def run(self) -> int:
        with quiet_console():
            return self._run()

    def _run(self) -> int:
        s = self.settings
        ray = import_ray()
        from ray import serve

        if self.local:
            check_port_free(s.host, s.port)
        init: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "namespace": "diffpir"}
        if self.local:
            init.update(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1)
            if self.metrics_port:
                init["_metrics_export_port"] = self.metrics_port
        else:
            init["address"] = self.address
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.before = set(descendants(os.getpid()))
        try:
            ray.init(**init)
            for sig in previous:  # after ray.init, which installs its own SIGTERM handler
                signal.signal(sig, self._on_signal)
            _drain_flag(False)
            # Serve's own access log is off: the ingress logs one line per request, with what it was.
            logging_config = {"enable_access_log": False, "log_level": "INFO"}
            serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s + 30},
                        logging_config=logging_config)  # fmt: skip
            from .app import build_app

            if not self.stop.is_set():
                try:
                    serve.run(build_app(s.to_dict()), name=APP_NAME, route_prefix="/", blocking=False, logging_config=logging_config)
                except RuntimeError as e:
                    raise DiffPIRError(f"the application did not start: {_cause(e, _deployment_messages(serve))}") from None
            if not self.stop.is_set():
                self._ready_line()
            while not self.stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _ready_line(self) -> None:
        s = self.settings
        where = f"http://{'[' + s.host + ']' if ':' in s.host else s.host}:{s.port}"
        replicas = f"{s.autoscale_min}-{s.autoscale_max} (autoscaling)" if s.autoscale_max is not None else str(s.replicas)
        extras = ["token required" if s.token_sha256 else "no token"]
        if self.local and self.metrics_port:
            extras.append(f"metrics on http://127.0.0.1:{self.metrics_port}/metrics")
        self.say(f"diffpir serve: ready on {where} ({replicas} restorer replica(s), batches up to {s.max_batch_size}; "
                 f"{', '.join(extras)}). SIGINT/SIGTERM stops it.", )  # fmt: skip

    def _shutdown(self) -> None:
        """Drain and stop, within --drain-timeout plus a margin; then end what is left of ours."""
        ray = sys.modules.get("ray")
        budget = self.settings.drain_timeout_s + 20.0
        done = threading.Event()
        watchdog = threading.Thread(target=self._watchdog, args=(budget, done), daemon=True)
        watchdog.start()
        started = time.monotonic()
        try:
            if ray is not None and ray.is_initialized():
                from ray import serve

                try:
                    self._drain(started)
                    # Deleting the application drains what is left: each replica finishes its in-flight requests
                    # (graceful_shutdown_timeout_s = --drain-timeout) while the proxies still deliver the answers.
                    serve.delete(APP_NAME)
                    if self.local or not serve.status().applications:
                        serve.shutdown()
                except Exception as e:  # noqa: BLE001 - stopping must go on
                    self.say(f"diffpir serve: Serve shutdown: {type(e).__name__}: {e}")
                ray.shutdown()
        finally:
            done.set()
        left = end_processes(self._ours())
        tail = f"; ended {len(left)} leftover process(es)" if left else ""
        self.say(f"diffpir serve: stopped in {time.monotonic() - started:.1f} s{tail}")

    def _drain(self, started: float) -> None:
        """New work is answered 503 while the requests in flight finish (up to --drain-timeout)."""
        if not _drain_flag(True):
            return
        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        deadline = started + self.settings.drain_timeout_s
        counts: dict[bytes, int] = {}
        while time.monotonic() < deadline and self.signals < 2:
            try:
                keys = _internal_kv_list(IN_FLIGHT_PREFIX, namespace=DRAIN_NAMESPACE)
                counts = {k: int(_internal_kv_get(k, namespace=DRAIN_NAMESPACE) or 0) for k in keys}
            except Exception:  # noqa: BLE001
                return
            if len(counts) >= self.settings.ingress_replicas and not any(counts.values()):
                return
            time.sleep(0.2)
        if any(counts.values()):
            self.say(f"diffpir serve: {sum(counts.values())} request(s) still in flight after the drain timeout")

    def _watchdog(self, budget: float, done: threading.Event) -> None:
        if not done.wait(budget):
            self.say(f"diffpir serve: the drain took longer than {budget:g} s; stopping now")
            self._force_stop()

    def _ours(self) -> list[int]:
        """Processes under this one that were not there before Ray started."""
        return [pid for pid in descendants(os.getpid()) if pid not in getattr(self, "before", set())]

    def _force_stop(self) -> None:
        end_processes(self._ours(), grace_s=1.0)
        os._exit(1)


def _drain_flag(on: bool) -> bool:
    """Set (or clear, with the replicas' in-flight reports) the drain flag; False if it cannot be."""
    try:
        from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

        if on:
            _internal_kv_put(DRAIN_KEY, b"1", overwrite=True, namespace=DRAIN_NAMESPACE)
        else:
            _internal_kv_del(DRAIN_KEY, namespace=DRAIN_NAMESPACE)
            _internal_kv_del(IN_FLIGHT_PREFIX, del_by_prefix=True, namespace=DRAIN_NAMESPACE)
        return True
    except Exception as e:  # noqa: BLE001 - a private API: without it, Serve's own drain still finishes in-flight work
        logger.warning(f"drain flag: {type(e).__name__}: {e}")
        return False


def _deployment_messages(serve: Any) -> str:
    """What Serve says about the application's deployments (a failed replica's traceback is there)."""
    try:
        app = serve.status().applications.get(APP_NAME)
        return "\n".join(d.message for d in app.deployments.values() if d.message) if app else ""
    except Exception:  # noqa: BLE001
        return ""


def _cause(e: BaseException, details: str = "") -> str:
    """The most telling line of a Serve deployment failure (a DiffPIRError's message if there is one)."""
    lines = [line.strip() for line in f"{e}\n{details}".splitlines() if line.strip()]
    for line in reversed(lines):
        if "DiffPIRError:" in line:
            return line.split("DiffPIRError:", 1)[1].strip()
    return lines[0] if lines else type(e).__name__
