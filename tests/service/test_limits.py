"""`diffpir serve` under overload, deadlines and hostile HTTP, on loopback with the tiny random UNet:
a full queue answers 429 with Retry-After, a request past its deadline answers 504 and frees its
place, the client's retry and back-off against both, the service's hostile-request suite (each
answered with its one-line JSON 4xx in bounded time, the replica still serving, its memory bounded),
and a short soak (the benchmark `diffpir_rt.benchmarks.soak` for half a minute).

One server (a subprocess) with tight limits serves the module and is stopped at its end.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from diffpir_rt.client import Client, ServiceError, encode_multipart
from diffpir_rt.engine.imageio import decode_image, read_image, write_image

from .conftest import TEST_IMAGE, Inputs, cli_restore, needs_ray, start_server, stop_server

pytestmark = needs_ray
ONE_LEVEL = 1 / 255 + 1e-6
TIMEOUT_S = 3.0  # --request-timeout
READ_TIMEOUT_S = 2.0  # --read-timeout
MAX_BODY = 1024 * 1024  # --max-body-bytes 1M


@pytest.fixture(scope="module")
def server(inputs: Inputs, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, warm_cache):
    log = tmp_path_factory.mktemp("limits-log") / "serve.log"
    server = start_server(inputs, service_env, log, [
        "--max-batch-size", "2", "--batch-wait-ms", "20", "--max-queued", "4", "--request-timeout", f"{TIMEOUT_S:g}",
        "--read-timeout", f"{READ_TIMEOUT_S:g}", "--max-body-bytes", "1M", "--max-steps", "1000", "--max-pixels", "4096",
        "--drain-timeout", "5",
    ])  # fmt: skip
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x64 photo: with thousands of steps, a restore that runs far past the deadline."""
    return write_image(tmp_path_factory.mktemp("large") / "large.png", read_image(TEST_IMAGE)[:, 0:64, 0:64])


def _restorer_health(url: str) -> dict:
    return Client(url, timeout=10.0).health()


def _wait_idle(url: str, timeout: float = 10.0) -> float:
    """Seconds until the restorer replica holds no request (AssertionError after `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if _restorer_health(url)["queued"] == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"the replica still holds requests after {timeout:g} s: {_restorer_health(url)}")


def _post_raw(url: str, fields: list, timeout: float = 60.0) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one POST /v1/restore without retries."""
    body, content_type = encode_multipart(fields)
    request = urllib.request.Request(url + "/v1/restore", data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, {}
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


# ----------------------------------------------------------------------------- overload: 429


def test_a_full_queue_answers_429_with_retry_after_and_the_client_retries(server, inputs: Inputs, tmp_path: Path) -> None:
    image = ("c.png", inputs.clean.read_bytes())
    n = 24

    def burst(send):
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(send, range(n)))

    statuses = burst(lambda s: _post_raw(server.url, [("task", "denoise"), ("image", image), ("steps", "30"), ("seed", str(s))]))
    refused = [(status, headers, answer) for status, headers, answer in statuses if status != 200]
    # 429: the replica's queue (or Serve's in front of it) is full; 504 with Retry-After: a request's deadline
    # passed while it waited (on a slow machine the queue behind a full one takes longer than --request-timeout)
    assert any(status == 429 for status, _, _ in refused) and {s for s, _, _ in refused} <= {429, 504}, [s for s, _, _ in statuses]
    for status, headers, answer in refused:
        assert headers.get("retry-after") == "1" and "\n" not in answer["error"], answer
        assert ("--max-queued 4" if status == 429 else "queue") in answer["error"], answer
    _wait_idle(server.url)

    # The same burst with the client's retry: every request answered, each waiting at least the
    # Retry-After second before each retry, and each answer its own seed's restore.
    retried: dict[int, list[tuple[int, float]]] = {}

    def send(seed: int):
        seen = retried.setdefault(seed, [])
        client = Client(server.url, timeout=120.0, retries=12, backoff=0.2, on_retry=lambda e, a: seen.append((e.status, time.monotonic())))
        start = time.monotonic()
        result = client.restore(image, "denoise", steps=30, seed=seed)
        return result, time.monotonic() - start

    results = burst(send)
    assert [r.record["seed"] for r, _ in results] == list(range(n))
    again = [seed for seed, seen in retried.items() if seen]
    assert again and {status for seen in retried.values() for status, _ in seen} <= {429, 504}
    for seed in again:
        result, seconds = results[seed]
        assert result.attempts == len(retried[seed]) + 1 and seconds >= 1.0 * len(retried[seed])  # Retry-After: 1 honoured
    for seed in (0, again[0]):
        reference = cli_restore(inputs, tmp_path / f"r{seed}.png",
                                ["--task", "denoise", "--input", str(inputs.clean), "--steps", "30", "--seed", str(seed)])  # fmt: skip
        assert float((decode_image(results[seed][0].image)[0] - read_image(reference)).abs().max()) <= ONE_LEVEL


# ----------------------------------------------------------------------------- deadlines: 504


def test_a_restore_past_its_deadline_answers_504_and_frees_its_place(server, inputs: Inputs, large: Path) -> None:
    seen: list[int] = []
    client = Client(server.url, timeout=60.0, retries=3, backoff=0.1, on_retry=lambda e, a: seen.append(e.status))
    start = time.monotonic()
    with pytest.raises(ServiceError) as late:
        client.restore(large, "denoise", steps=1000, seed=1)
    took = time.monotonic() - start
    # It ran out of time while running: a retry would do the same, so the client does not retry it.
    assert late.value.status == 504 and late.value.retry_after is None and not late.value.retryable and seen == []
    assert "stopped to free its place" in late.value.message and TIMEOUT_S <= took < TIMEOUT_S + 4.0, (took, late.value)
    # Its place is free at once: the replica stopped the restore at its next step.
    assert _wait_idle(server.url, timeout=3.0) < 2.0
    start = time.monotonic()
    assert Client(server.url, timeout=30.0).restore(inputs.clean, "denoise", steps=3).record["batch_size"] == 1
    assert time.monotonic() - start < TIMEOUT_S
    assert "stopped after" in server.log.read_text(errors="replace")


def test_a_deadline_passed_in_the_queue_answers_504_with_retry_after_and_the_client_retries(server, inputs: Inputs,
                                                                                              large: Path) -> None:  # fmt: skip
    def block() -> ServiceError:
        try:
            Client(server.url, timeout=60.0).restore(large, "denoise", steps=1000, seed=2)
        except ServiceError as e:
            return e
        raise AssertionError("the blocking restore finished within the deadline")

    def running_blocker():
        pool = ThreadPoolExecutor(1)
        future = pool.submit(block)
        deadline = time.monotonic() + 10
        while _restorer_health(server.url)["queued"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # its group runs: what comes next waits behind it
        return pool, future

    # Without retries: the client's own 1 s deadline passes while it waits behind the blocker.
    pool, future = running_blocker()
    start = time.monotonic()
    with pytest.raises(ServiceError) as queued:
        Client(server.url, timeout=30.0).restore(inputs.clean, "denoise", steps=3, deadline=1.0)
    took = time.monotonic() - start
    assert queued.value.status == 504 and queued.value.retry_after == 1.0 and queued.value.retryable, queued.value
    assert "queue" in queued.value.message and 1.0 <= took < 2.5, took
    assert future.result(timeout=30).status == 504
    pool.shutdown()
    _wait_idle(server.url)

    # With retries: 504s with Retry-After while the blocker runs, then the answer once it stopped.
    pool, future = running_blocker()
    seen: list[int] = []
    client = Client(server.url, timeout=30.0, retries=8, backoff=0.3, on_retry=lambda e, a: seen.append(e.status))
    result = client.restore(inputs.clean, "denoise", steps=3, seed=4, deadline=1.0)
    assert result.record["seed"] == 4 and result.attempts >= 2 and set(seen) == {504}, seen
    assert future.result(timeout=30).status == 504
    pool.shutdown()
    _wait_idle(server.url)


def test_a_bad_deadline_header_is_400(server, inputs: Inputs) -> None:
    with pytest.raises(ServiceError) as bad:
        Client(server.url, timeout=30.0).restore(inputs.clean, "denoise", steps=3, deadline=-1)
    assert bad.value.status == 400 and "X-Request-Timeout" in bad.value.message


# ----------------------------------------------------------------------------- hostile HTTP


def _raw(port: int, head: bytes, body: bytes = b"", drip: tuple[bytes, float, int] | None = None, stream_mb: int = 0,
         half_close: bool = False, timeout: float = 30.0) -> tuple[float, int, dict, bytes]:  # fmt: skip
    """One raw HTTP exchange: (seconds to the answer, status, headers, body); status 0: closed without an answer.

    drip: (piece, seconds between pieces, count) sent after `body`; stream_mb: that many MiB of zeros sent from
    another thread while the answer is read (a client that would send 100 MB); half_close: end the sending side.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    start = time.monotonic()
    stop = threading.Event()
    try:
        sock.sendall(head + body)

        def pour() -> None:
            block = b"\0" * (1 << 20)
            try:
                for _ in range(stream_mb):
                    if stop.is_set():
                        return
                    sock.sendall(block)
            except OSError:
                pass

        if stream_mb:
            threading.Thread(target=pour, daemon=True).start()
        if drip is not None:
            piece, pause, count = drip

            def trickle() -> None:
                try:
                    for _ in range(count):
                        if stop.wait(pause):
                            return
                        sock.sendall(piece)
                except OSError:
                    pass

            threading.Thread(target=trickle, daemon=True).start()
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while b"\r\n\r\n" not in data:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                chunk = b""
            if not chunk:
                return time.monotonic() - start, 0, {}, data
            data += chunk
        took = time.monotonic() - start
        head_text, _, rest = data.partition(b"\r\n\r\n")
        lines = head_text.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return took, int(lines[0].split()[1]), headers, rest
    finally:
        stop.set()
        sock.close()


def _head(content_type: str | None, length: int | None, extra: str = "") -> bytes:
    lines = ["POST /v1/restore HTTP/1.1", "Host: 127.0.0.1"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def _part(name: bytes, value: bytes, filename: bytes | None = None, boundary: bytes = b"zz") -> bytes:
    disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename is not None else b"")
    return b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + value + b"\r\n"


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side zero pixels: a few hundred kB that decode to side^2 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _npy_header(shape: tuple[int, ...]) -> bytes:
    from numpy.lib import format as npy_format

    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _form(*parts: bytes, end: bool = True) -> bytes:
    return b"".join(parts) + (b"--zz--\r\n" if end else b"")


MULTIPART = "multipart/form-data; boundary=zz"


def _hostile_cases(inputs: Inputs, bombs: dict[str, bytes]) -> list[tuple[str, dict, tuple[int, ...], str]]:
    """(name, _raw's arguments, statuses accepted, a fragment of the error)."""
    png = inputs.clean.read_bytes()
    task, image = _part(b"task", b"denoise"), _part(b"image", png, b"c.png")
    fields = _form(*(_part(f"f{i}".encode(), b"1") for i in range(5000)))
    cases = [
        ("no boundary", dict(head=_head("multipart/form-data", len(_form(task, image))), body=_form(task, image)), (400,), "boundary"),
        ("truncated multipart", dict(head=_head(MULTIPART, len(_form(task, image)[:-400])), body=_form(task, image)[:-400]), (400, 415), ""),
        ("body shorter than its length, sender gone", dict(head=_head(MULTIPART, 5000), body=task, half_close=True), (400,), "closed"),
        ("thousands of fields", dict(head=_head(MULTIPART, len(fields)), body=fields), (400,), "fields"),
        ("a 100 MB field, length declared", dict(head=_head(MULTIPART, 100 * 2**20 + 200), body=_part(b"image", b"", b"x.png")[:-2],
                                                 stream_mb=100), (413,), "bytes"),
        ("a 100 MB field, chunked", dict(head=_head(MULTIPART, None), body=b"", stream_mb=0,
                                         drip=(b"100000\r\n" + b"\0" * 0x100000 + b"\r\n", 0.0, 100)), (413,), "bytes"),
        ("duplicate text field", dict(head=_head(MULTIPART, len(_form(task, task, image))), body=_form(task, task, image)), (400,), "given twice"),
        ("duplicate file field", dict(head=_head(MULTIPART, len(_form(task, image, image))), body=_form(task, image, image)), (400,), "given twice"),
        ("JSON body", dict(head=_head("application/json", 19), body=b'{"task": "denoise"}'), (415,), "multipart/form-data"),
        ("form-urlencoded", dict(head=_head("application/x-www-form-urlencoded", 12), body=b"task=denoise"), (415,), "multipart"),
        ("multipart/mixed", dict(head=_head("multipart/mixed; boundary=zz", len(_form(task, image))), body=_form(task, image)), (415,), ""),
        ("no content type", dict(head=_head(None, 4), body=b"abcd"), (415,), "content type"),
        ("non-UTF-8 field name", dict(head=_head(MULTIPART, len(_form(task, image, _part(b"\xff\xfe", b"1")))),
                                      body=_form(task, image, _part(b"\xff\xfe", b"1"))), (400,), "unknown"),
        ("non-UTF-8 file name, not an image", dict(head=_head(MULTIPART, len(_form(task, _part(b"image", b"junk", b"\xff\xfe.png")))),
                                                   body=_form(task, _part(b"image", b"junk", b"\xff\xfe.png"))), (415,), ""),
        ("PNG bomb beyond any limit", dict(head=_head(MULTIPART, len(_form(task, _part(b"image", bombs["huge"], b"b.png")))),
                                           body=_form(task, _part(b"image", bombs["huge"], b"b.png"))), (413,), "pixels"),
        ("PNG bomb beyond --max-pixels", dict(head=_head(MULTIPART, len(_form(task, _part(b"image", bombs["big"], b"b.png")))),
                                              body=_form(task, _part(b"image", bombs["big"], b"b.png"))), (413,), "pixels"),
        ("npy declaring 3x100000x100000", dict(head=_head(MULTIPART, len(_form(task, _part(b"image", bombs["npy"], b"b.npy")))),
                                               body=_form(task, _part(b"image", bombs["npy"], b"b.npy"))), (413,), "declares"),
        ("kernel npy declaring 100000x100000",
         dict(head=_head(MULTIPART, len(_form(_part(b"task", b"deblur"), image, _part(b"kernel", bombs["kernel"], b"k.npy")))),
              body=_form(_part(b"task", b"deblur"), image, _part(b"kernel", bombs["kernel"], b"k.npy"))), (413,), "declares"),
        ("slow client: headers, then nothing", dict(head=_head(MULTIPART, 10_000), body=b""), (408,), "--read-timeout"),
        ("slow client: a byte every half second", dict(head=_head(MULTIPART, 10_000), body=task, drip=(b"x", 0.5, 60)), (408,),
         "--read-timeout"),
    ]  # fmt: skip
    return cases


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Files that are small on the wire and huge once decoded (or declare to be)."""
    return dict(huge=_png_bomb(20_000), big=_png_bomb(3_000), npy=_npy_header((3, 100_000, 100_000)) + b"\0" * 64,
                kernel=_npy_header((100_000, 100_000)) + b"\0" * 64)  # fmt: skip


def test_hostile_requests_are_answered_4xx_in_bounded_time_and_the_replica_keeps_serving(server, inputs: Inputs, bombs) -> None:
    from diffpir_rt.benchmarks.soak import rss_mb, server_processes

    ingress = server_processes(server.proc.pid)["ingress"][0]
    before = rss_mb(ingress)
    outcomes = []
    for name, args, statuses, fragment in _hostile_cases(inputs, bombs):
        took, status, headers, body = _raw(server.port, **args)
        outcomes.append((name, status, round(took, 2)))
        bound = READ_TIMEOUT_S + 6.0  # every answer: at most the body's time limit and a margin
        if status == 0:  # the sender went away: an answer may have nowhere to go; it must not take long either way
            assert "sender gone" in name and took < bound, (name, took)
            continue
        assert status in statuses and took < bound, (name, status, took, body[:200])
        answer = json.loads(body)
        assert fragment in answer["error"] and "\n" not in answer["error"] and "Traceback" not in answer["error"], (name, answer)
        assert headers["content-type"] == "application/json", (name, headers)
    after = rss_mb(ingress)
    print(f"\nhostile requests (name, status, seconds): {outcomes}; ingress RSS {before:.0f} -> {after:.0f} MiB")
    assert server_processes(server.proc.pid)["ingress"] == [ingress]  # the same process: it never crashed
    # Nothing of the 100 MB bodies or the decompressed bombs stays: at most a few bodies of --max-body-bytes.
    assert after - before < 8 * MAX_BODY / 2**20 + 64, (before, after, outcomes)
    result = Client(server.url, timeout=30.0).restore(inputs.clean, "denoise", steps=3, seed=9)
    assert result.record["seed"] == 9 and _restorer_health(server.url)["queued"] == 0


# ----------------------------------------------------------------------------- short soak


def test_short_soak(server, inputs: Inputs, tmp_path: Path) -> None:
    """The soak benchmark for half a minute: no errors, every answer right, memory flat, the replicas kept."""
    from diffpir_rt.benchmarks import soak

    images = [inputs.clean, inputs.other]
    requests = [soak.LoadRequest((p.name, p.read_bytes()), "denoise", {"steps": 3, "seed": s}) for p in images for s in (0, 1)]
    expected = []
    for i, p in enumerate(images):
        for s in (0, 1):
            out = cli_restore(inputs, tmp_path / f"ref{i}{s}.png", ["--task", "denoise", "--input", str(p), "--steps", "3", "--seed", str(s)])
            expected.append(read_image(out))

    def check(key: int, png: bytes) -> float:
        return float((decode_image(png)[0] - expected[key]).abs().max())

    result = soak.run_soak(server.url, server.proc.pid, requests, check, duration_s=24.0, warmup_s=6.0, sample_s=2.0, clients=2,
                           rate=6.0)  # fmt: skip
    assert result["errors"] == 0 and result["max_diff"] <= ONE_LEVEL, result["error_examples"]
    assert result["measured_answers"] >= 60, result["measured_answers"]
    assert result["verdict"]["replica_kept"] and result["verdict"]["memory_ok"], result["memory"]
    for part in ("p50", "p99"):  # measured, not judged: half a minute on a shared machine says little about drift
        assert result["latency"][part]["first_quarter_s"] > 0
    soak.plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- the log (last: it stops the server)


def test_the_piped_log_has_no_colour_codes_and_no_false_alarms(server) -> None:
    """Start and stop lines a log file can hold: no ANSI codes, none of Ray's alarming-but-harmless lines."""
    from diffpir_rt.service.server import NOISE

    assert stop_server(server) == 0
    log = server.log.read_text(errors="replace")
    assert "ready on" in log and "stopped in" in log and "POST /v1/restore 200" in log
    assert "\x1b[" not in log, [line for line in log.splitlines() if "\x1b[" in line][:3]
    for noise in (*NOISE, "graceful_shutdown failed", "Connecting to existing"):
        assert noise not in log, noise
