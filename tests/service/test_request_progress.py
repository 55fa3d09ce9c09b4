"""What a waiting client shows and how it retries, against a stand-in server (no Ray): progress while
an answer is awaited (elapsed time and the server's queue; one updated line on a terminal, a line every
few seconds when piped), `diffpir request` printing it, and which statuses are retried."""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import ThreadingHTTPServer

import pytest

from diffpir_rt.client import Client, ServiceError, WaitState, wait_printer

from .canned_http import CannedHandler


class _Slow(CannedHandler):
    """POST answers after `delay` seconds (or with `status` and `body` right away); /healthz reports 3 queued."""

    delay = 0.0
    status = 200
    body = b""
    headers_out: dict = {}
    posts = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts += 1
        if type(self).status != 200:
            self._send(type(self).status, type(self).body, type(self).headers_out)
            return
        time.sleep(type(self).delay)
        self._send(200, b"PNG", {"X-DiffPIR-Record": json.dumps({"seed": 1, "batch_size": 1}), "Content-Type": "image/png"})

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, json.dumps({"status": "ok", "queued": 3, "replicas": {"DiffPIRRestorer": 2}}).encode(), {})


@pytest.fixture
def slow():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Slow.delay, _Slow.status, _Slow.body, _Slow.headers_out, _Slow.posts = 0.0, 200, b"", {}, 0
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_wait_reports_elapsed_time_and_the_servers_queue(slow) -> None:
    _Slow.delay = 2.6
    states: list[WaitState] = []
    result = Client(slow, on_wait=states.append).restore(b"x", "denoise")
    assert result.record["seed"] == 1
    waiting, last = states[:-1], states[-1]
    assert len(waiting) >= 2 and last.done and not any(s.done for s in waiting)
    assert [s.elapsed_s for s in waiting] == sorted(s.elapsed_s for s in waiting) and waiting[-1].elapsed_s >= 2.0
    assert all(s.queued == 3 and s.replicas == 2 and s.attempt == 1 for s in waiting)
    # a quick answer: no progress at all
    states.clear()
    _Slow.delay = 0.0
    Client(slow, on_wait=states.append).restore(b"x", "denoise")
    assert states == []


def test_wait_printer_lines_when_piped_and_one_updated_line_on_a_terminal() -> None:
    piped = io.StringIO()
    show = wait_printer(piped, every_s=10.0)
    for t in range(1, 26):
        show(WaitState(float(t), 1, queued=5))
    show(WaitState(26.0, 1, done=True))
    lines = piped.getvalue().splitlines()
    assert lines == [f"diffpir request: waiting {t} s, 5 request(s) in the replica's queue" for t in (10, 20)]
    terminal = _Terminal()
    show = wait_printer(terminal)
    show(WaitState(1.0, 2, queued=None, replicas=3))
    show(WaitState(2.0, 2, done=True))
    text = terminal.getvalue()
    assert text.startswith("\rdiffpir request: waiting 1 s, attempt 2, 3 restorer replica(s)") and text.endswith("\r\x1b[K")
    assert "\n" not in text


def test_diffpir_request_shows_progress_while_it_waits(slow, tmp_path, capsys, monkeypatch) -> None:
    import diffpir_rt.client as client_module
    from diffpir_rt.cli import main

    real = client_module.wait_printer
    monkeypatch.setattr(client_module, "wait_printer", lambda stream: real(stream, every_s=1.0))  # a line a second, not ten
    _Slow.delay = 2.6
    image = tmp_path / "y.png"
    image.write_bytes(b"not read by the client")
    args = ["request", "--url", slow, "--task", "denoise", "--input", str(image), "--output", str(tmp_path / "r.png")]
    assert main(args) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("diffpir request: waiting")]
    assert len(lines) >= 2 and "3 request(s) in the replica's queue, 2 restorer replica(s)" in lines[0], err
    assert "\x1b[" not in err and "\r" not in err  # piped: plain lines
    assert main([*args, "--quiet", "--output", str(tmp_path / "q.png")]) == 0
    assert "waiting" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "status, body, headers, retried",
    [
        (429, b'{"error": "queue full"}', {"Retry-After": "0"}, True),
        (502, b"bad gateway", {}, True),
        (503, b'{"error": "restarting"}', {"Retry-After": "0"}, True),
        (504, b'{"error": "the deadline passed in the queue"}', {"Retry-After": "0"}, True),  # waited too long: a retry may not
        (504, b'{"error": "stopped to free its place"}', {}, False),  # ran too long: a retry would too
        (500, b"ray.exceptions.ActorDiedError: the actor died", {}, True),  # not the service's JSON: Serve's proxy lost the replica
        (500, b'{"error": "internal error (ValueError); see the server log"}', {}, False),  # the service's own: a bug
        (400, b'{"error": "field task: required"}', {}, False),
    ],
)
def test_which_answers_are_retried(slow, status, body, headers, retried) -> None:
    _Slow.status, _Slow.body, _Slow.headers_out = status, body, headers
    with pytest.raises(ServiceError) as e:
        Client(slow, retries=2, backoff=0.01).restore(b"x", "denoise")
    assert e.value.status == status and e.value.retryable == retried
    assert _Slow.posts == (3 if retried else 1)
