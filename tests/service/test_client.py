"""The client and the command-line pieces that need no Ray: the standard-library client against a
stand-in HTTP server (retries, errors, the record header), `--print-config`, and `diffpir serve`
without Ray installed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from diffpir_rt.client import Client, ServiceError, encode_multipart

from .canned_http import CannedHandler


class _Fake(CannedHandler):
    """Answers POST /v1/restore with 503 `fail` times, then 200 with a fixed body and record."""

    fail = 0
    calls: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls.append({"auth": self.headers.get("Authorization"), "type": self.headers["Content-Type"], "body": body})
        if type(self).fail > 0:
            type(self).fail -= 1
            self._send(503, b'{"error": "replica restarting"}', {"Retry-After": "0"})
        else:
            self._send(200, b"PNGDATA", {"X-DiffPIR-Record": json.dumps({"seed": 3, "batch_size": 2}), "Content-Type": "image/png",
                                         "X-Request-Id": "abc"})  # fmt: skip

    def do_GET(self) -> None:  # noqa: N802
        self._send(401, b'{"error": "missing bearer token (Authorization: Bearer <token>)"}', {})


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Fake.calls = []
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_restore_retries_503_and_reads_the_record(fake) -> None:
    _, url = fake
    _Fake.fail = 2
    seen = []
    client = Client(url, token="t" * 20, retries=3, backoff=0.01, on_retry=lambda e, n: seen.append((e.status, n)))
    result = client.restore(("y.png", b"\x89PNG..."), "deblur", kernel=("k.npy", b"\x93NUMPY"), seed=3, params={"eta": 0.5})
    assert result.image == b"PNGDATA" and result.record == {"seed": 3, "batch_size": 2}
    assert result.attempts == 3 and seen == [(503, 1), (503, 2)] and result.request_id == "abc"
    call = _Fake.calls[-1]
    assert call["auth"] == "Bearer " + "t" * 20 and call["type"].startswith("multipart/form-data; boundary=")
    for part in (b'name="task"\r\n\r\ndeblur', b'name="seed"\r\n\r\n3', b'name="eta"\r\n\r\n0.5', b'filename="k.npy"'):
        assert part in call["body"]


def test_errors_carry_status_and_message(fake) -> None:
    _, url = fake
    _Fake.fail = 5
    with pytest.raises(ServiceError) as e:
        Client(url, retries=1, backoff=0.01).restore(b"x", "denoise")
    assert e.value.status == 503 and e.value.message == "replica restarting" and len(_Fake.calls) == 2
    with pytest.raises(ServiceError) as e:
        Client(url).info()
    assert e.value.status == 401 and not e.value.retryable and "missing bearer token" in str(e.value)
    with pytest.raises(ServiceError) as e:
        Client("http://127.0.0.1:1", timeout=2).health()
    assert e.value.status == 0 and e.value.retryable and "cannot reach the server" in str(e.value)
    _Fake.fail = 1
    with pytest.raises(ServiceError):  # the client sends any field as named; the server checks them (400 for unknown ones)
        Client(url, retries=0).restore(b"x", "denoise", stepz=3)
    assert b'name="stepz"\r\n\r\n3' in _Fake.calls[-1]["body"]


def test_multipart_round_trips_through_starlette() -> None:
    pytest.importorskip("multipart", reason="python-multipart comes with the serve extra")
    starlette = pytest.importorskip("starlette.requests")
    import asyncio

    body, content_type = encode_multipart([("task", "sr"), ("image", ("a b\".png", b"\x00\r\n--x\r\n\xff"))])

    async def parse():
        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "headers": [(b"content-type", content_type.encode())]}
        form = await starlette.Request(scope, receive).form()
        return form["task"], form["image"].filename, await form["image"].read()

    assert asyncio.run(parse()) == ("sr", "a b_.png", b"\x00\r\n--x\r\n\xff")


def test_the_client_imports_no_torch() -> None:
    code = "import sys, diffpir_rt.client; print(sorted(m for m in ('torch', 'numpy', 'diffpir_rt.engine') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_print_config(tmp_path: Path, capsys) -> None:
    from diffpir_rt.cli import main

    token = tmp_path / "token"
    token.write_text("s3cret-token-0123456789\n")
    assert main(["serve", "--print-config", "--replicas", "3", "--gpus-per-replica", "1", "--host", "0.0.0.0",
                 "--token-file", str(token), "--max-batch-size", "16"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "s3cret" not in text
    try:
        import yaml

        config = yaml.safe_load(text)
    except ImportError:
        config = json.loads(text)
    app = config["applications"][0]
    assert app["import_path"] == "diffpir_rt.service.app:build_app" and config["http_options"]["host"] == "0.0.0.0"
    restorer = next(d for d in app["deployments"] if d["name"] == "DiffPIRRestorer")
    assert restorer["num_replicas"] == 3 and restorer["ray_actor_options"]["num_gpus"] == 1
    assert app["args"]["max_batch_size"] == 16 and len(app["args"]["token_sha256"]) == 64
    assert main(["serve", "--print-config", "--autoscale", "1:4"]) == 0
    text = capsys.readouterr().out
    assert "autoscaling_config" in text and "max_replicas: 4" in text or '"max_replicas": 4' in text


def test_serve_without_ray_names_the_extra(monkeypatch, capsys) -> None:
    from diffpir_rt.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = main(["serve", "--port", "18999"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install "diffpir-rt[serve]"' in err and err.count("\n") == 1


def test_short_token_is_refused(tmp_path: Path, capsys) -> None:
    from ..conftest import cli_error as error

    token = tmp_path / "token"
    token.write_text("short\n")
    err = error(capsys, ["serve", "--print-config", "--token-file", str(token)])
    assert "use at least 16" in err
