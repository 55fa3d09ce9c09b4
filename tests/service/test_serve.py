"""`diffpir serve` end to end on loopback with the tiny random UNet: health, info, token, a restore
equal to `diffpir restore`, dynamic batching, every bad input answered 4xx with the replica still
serving, metrics, one log line per request, and a clean, draining shutdown with no process left.

One server (a subprocess) serves the whole module; the shutdown test runs last and stops it.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from diffpir_rt.client import Client, ServiceError, encode_multipart
from diffpir_rt.engine.imageio import decode_image, read_image, read_image_and_depth

from .conftest import TOKEN, Inputs, alive, cli_restore, needs_ray, process_tree, start_server, stop_server

pytestmark = needs_ray
STEPS = "4"
ONE_LEVEL = 1 / 255 + 1e-6


@pytest.fixture(scope="module")
def server(inputs: Inputs, service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, warm_cache):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    server = start_server(inputs, service_env, log, [
        "--token-file", str(inputs.token_file), "--max-batch-size", "8", "--batch-wait-ms", "200", "--max-steps", "60",
        "--max-pixels", "4096", "--max-body-bytes", "64K", "--drain-timeout", "30",
    ])  # fmt: skip
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, token=TOKEN, timeout=120.0)


def _post(server, fields: list, token: str = TOKEN, body: bytes | None = None, content_type: str | None = None,
          path: str = "/v1/restore", method: str = "POST") -> tuple[int, dict]:  # fmt: skip
    if body is None and fields is not None:
        body, content_type = encode_multipart(fields)
    request = urllib.request.Request(server.url + path, data=body, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {"headers": dict(response.headers)}
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _compare(png: bytes, reference: Path) -> float:
    got, _ = decode_image(png)
    return float((got - read_image(reference)).abs().max())


# ----------------------------------------------------------------------------- health, info, token


def test_health_is_open_and_info_needs_the_token(server, client: Client, inputs: Inputs) -> None:
    assert Client(server.url).health()["status"] == "ok"  # no token needed for health checks
    with pytest.raises(ServiceError) as missing:
        Client(server.url).info()
    assert missing.value.status == 401 and "missing bearer token" in missing.value.message
    with pytest.raises(ServiceError) as wrong:
        Client(server.url, token="not-the-token-0000000").info()
    assert wrong.value.status == 401 and "wrong bearer token" in wrong.value.message
    info = client.info()
    assert info["runtime"]["model"]["arch"] == "tiny" and info["runtime"]["path"]["name"] in ("onnxruntime", "torch-fast")
    assert info["limits"]["max_steps"] == 60 and info["limits"]["max_pixels"] == 4096
    assert "diffpir" in info["methods"] and list(info["tasks"]) == ["deblur", "sr", "inpaint", "denoise"]
    # the page and clients read the declarations: each method's parameters and its defaults per task
    assert info["methods"]["ddnm"]["defaults"]["deblur"]["model_calls"] > 0 and "eta" in info["methods"]["ddnm"]["params"]
    assert info["settings"]["auth"] is True and "token_sha256" not in info["settings"]
    # A restore without the token is refused too.
    status, answer = _post(server, [("task", "denoise"), ("image", ("c.png", inputs.clean.read_bytes()))], token="")
    assert status == 401 and "bearer" in answer["error"]


# ----------------------------------------------------------------------------- restores equal the CLI


@pytest.mark.parametrize(
    "name, form, cli",
    [
        ("denoise", lambda i: dict(task="denoise", sigma_n="0.1", seed="3"), lambda i: ["--task", "denoise", "--sigma-n", "0.1", "--seed", "3"]),
        ("deblur", lambda i: dict(task="deblur", seed="5", kernel=i.kernel), lambda i: ["--task", "deblur", "--seed", "5", "--kernel", str(i.kernel)]),
        ("inpaint", lambda i: dict(task="inpaint", mask=i.mask, lam="2"), lambda i: ["--task", "inpaint", "--mask", str(i.mask), "--lam", "2"]),
        ("sr", lambda i: dict(task="sr", scale="2", image=i.small), lambda i: ["--task", "sr", "--scale", "2", "--input", str(i.small)]),
    ],
)
def test_restore_equals_diffpir_restore(name, form, cli, inputs: Inputs, client: Client, tmp_path: Path) -> None:
    fields = form(inputs)
    image = fields.pop("image", inputs.clean)
    kernel, mask = fields.pop("kernel", None), fields.pop("mask", None)
    result = client.restore(image, fields.pop("task"), kernel=kernel, mask=mask, steps=STEPS, **fields)
    args = cli(inputs)
    if "--input" not in args:
        args += ["--input", str(image)]
    reference = cli_restore(inputs, tmp_path / "ref.png", [*args, "--steps", STEPS])
    assert result.content_type == "image/png"
    assert _compare(result.image, reference) <= ONE_LEVEL
    cli_record = json.loads((tmp_path / "ref.png.json").read_text())
    for key in ("task", "method", "config", "seed", "model_calls", "bit_depth", "scale"):
        assert result.record.get(key) == cli_record.get(key), key
    assert result.record["runtime"]["path"] == cli_record["runtime"]["path"]
    assert result.record["input"] == Path(image).name


def test_16_bit_in_16_bit_out_and_the_json_variant(inputs: Inputs, client: Client, tmp_path: Path) -> None:
    result = client.restore(inputs.clean16, "denoise", steps=STEPS, seed=1)
    reference = cli_restore(inputs, tmp_path / "ref.png", ["--task", "denoise", "--input", str(inputs.clean16), "--steps", STEPS, "--seed", "1"])
    got, depth = decode_image(result.image)
    want, want_depth = read_image_and_depth(reference)
    assert depth == want_depth == 16 and result.record["bit_depth"] == 16
    assert float((got - want).abs().max()) <= 1 / 65535 * 2
    as_json = client.restore(inputs.clean16, "denoise", steps=STEPS, seed=1, as_json=True)
    assert as_json.image == result.image and as_json.record["seed"] == 1
    eight = client.restore(inputs.clean16, "denoise", steps=STEPS, seed=1, bit_depth=8)
    assert decode_image(eight.image)[1] == 8


def test_diffpir_request_command(server, inputs: Inputs, tmp_path: Path, capsys) -> None:
    from diffpir_rt.cli import main

    out = tmp_path / "r.png"
    args = ["request", "--url", server.url, "--task", "denoise", "--input", str(inputs.clean), "--output", str(out),
            "--steps", STEPS, "--seed", "3", "--sigma-n", "0.1"]  # fmt: skip
    assert main([*args, "--token-file", str(inputs.token_file)]) == 0
    reference = cli_restore(inputs, tmp_path / "ref.png", ["--task", "denoise", "--input", str(inputs.clean), "--steps", STEPS,
                                                            "--seed", "3", "--sigma-n", "0.1"])  # fmt: skip
    assert _compare(out.read_bytes(), reference) <= ONE_LEVEL
    assert json.loads((tmp_path / "r.png.json").read_text())["seed"] == 3
    capsys.readouterr()
    code = main([*args[:-8], "--output", str(tmp_path / "x.png"), "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 401" in err and err.count("\n") == 1 and not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- batching


def test_concurrent_requests_are_batched_and_each_keeps_its_seed(inputs: Inputs, client: Client, tmp_path: Path) -> None:
    seeds = list(range(12))
    with ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(lambda s: client.restore(inputs.clean, "denoise", steps=STEPS, seed=s), seeds))
    sizes = [r.record["batch_size"] for r in results]
    assert max(sizes) > 1, sizes
    assert [r.record["seed"] for r in results] == seeds
    for seed in (0, 5, 11):  # a batched result is the single restore with its own seed
        reference = cli_restore(inputs, tmp_path / f"ref{seed}.png",
                                ["--task", "denoise", "--input", str(inputs.clean), "--steps", STEPS, "--seed", str(seed)])  # fmt: skip
        assert _compare(results[seed].image, reference) <= ONE_LEVEL
    assert len({r.image for r in results}) == len(seeds)


def test_requests_that_cannot_share_a_batch_still_run(inputs: Inputs, client: Client) -> None:
    jobs = [dict(image=inputs.clean, task="denoise", seed=s) for s in range(3)]
    jobs += [dict(image=inputs.other, task="deblur", kernel=inputs.kernel, seed=s) for s in range(3)]
    jobs += [dict(image=inputs.small, task="denoise", seed=0), dict(image=inputs.clean, task="denoise", seed=0, steps="6")]
    start = time.monotonic()
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: client.restore(j.pop("image"), j.pop("task"), **{"steps": STEPS, **j}), [dict(j) for j in jobs]))
    assert time.monotonic() - start < 60
    tasks = [r.record["task"] for r in results]
    assert tasks == ["denoise"] * 3 + ["deblur"] * 3 + ["denoise"] * 2
    assert all(r.record["batch_size"] <= 3 for r in results)  # groups never mix keys
    assert results[-1].record["config"]["steps"] == 6


# ----------------------------------------------------------------------------- bad inputs


def _npy(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _pickled_npy() -> bytes:
    return _npy(np.array([{"a": 1}], dtype=object))


BAD = [
    # (id, fields (callable of inputs), expected status, message fragment)
    ("no image", lambda i: [("task", "denoise")], 400, "field image: required"),
    ("no task", lambda i: [("image", i.img)], 400, "field task: required"),
    ("unknown task", lambda i: [("task", "colorize"), ("image", i.img)], 400, "expected one of"),
    ("unknown field", lambda i: [("task", "denoise"), ("image", i.img), ("stepz", "3")], 400, "unknown"),
    ("bad number", lambda i: [("task", "denoise"), ("image", i.img), ("steps", "many")], 400, "field steps: expected"),
    ("text for a file", lambda i: [("task", "denoise"), ("image", "clean.png")], 400, "expected a file upload"),
    ("repeated field", lambda i: [("task", "denoise"), ("task", "sr"), ("image", i.img)], 400, "given twice"),
    ("too many steps", lambda i: [("task", "denoise"), ("image", i.img), ("steps", "200")], 422, "at most 60"),
    ("corrupt image", lambda i: [("task", "denoise"), ("image", ("bad.png", b"\x89PNG\r\n\x1a\n garbage"))], 415, "bad.png"),
    ("empty image", lambda i: [("task", "denoise"), ("image", ("e.png", b""))], 415, "empty"),
    ("NaN measurement", lambda i: [("task", "denoise"), ("image", ("nan.npy", _npy(np.full((3, 8, 8), np.nan, np.float32))))], 415, "NaN or Inf"),
    ("pickled kernel", lambda i: [("task", "deblur"), ("image", i.img), ("kernel", ("k.npy", _pickled_npy()))], 415, "Python objects"),
    ("too many pixels", lambda i: [("task", "sr"), ("scale", "4"), ("image", i.img)], 413, "pixels"),
    ("kernel larger than the image", lambda i: [("task", "deblur"), ("image", i.img), ("kernel", ("big.npy", i.big))], 422, "larger than half the 32x32 image"),
    ("deblur without kernel", lambda i: [("task", "deblur"), ("image", i.img)], 422, "needs field kernel"),
    ("kernel for denoise", lambda i: [("task", "denoise"), ("image", i.img), ("kernel", ("k.npy", i.k))], 422, "does not apply"),
    ("mask of another size", lambda i: [("task", "inpaint"), ("image", i.img), ("mask", ("m.png", i.m16))], 422, "does not match"),
    ("unknown parameter", lambda i: [("task", "denoise"), ("image", i.img), ("gamma", "1")], 400, "unknown"),
    ("parameter of another method", lambda i: [("task", "denoise"), ("image", i.img), ("eta", "0.5")], 422, "has no parameter"),
]


class _Bytes:
    def __init__(self, inputs: Inputs) -> None:
        self.img = ("clean.png", inputs.clean.read_bytes())
        self.big = inputs.big_kernel.read_bytes()
        self.k = inputs.kernel.read_bytes()
        self.m16 = inputs.mask16.read_bytes()


@pytest.mark.parametrize("case, fields, status, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_are_answered_4xx(case, fields, status, fragment, server, inputs: Inputs) -> None:
    got, answer = _post(server, fields(_Bytes(inputs)))
    assert (got, fragment in answer.get("error", "")) == (status, True), answer
    assert "\n" not in answer["error"] and "Traceback" not in answer["error"]


def test_bad_requests_of_other_kinds(server, inputs: Inputs) -> None:
    cases = [
        (_post(server, None, body=b'{"task": "denoise"}', content_type="application/json"), 415, "multipart/form-data"),
        (_post(server, None, body=b"x" * 100_000, content_type="multipart/form-data; boundary=zz"), 413, "bytes"),
        (_post(server, None, body=b"--zz\r\nnot a part", content_type="multipart/form-data; boundary=zz"), 400, "multipart"),
        (_post(server, None, method="GET"), 405, "use POST"),
        (_post(server, None, method="GET", path="/v2/restore"), 404, "not found"),
    ]
    for (got, answer), status, fragment in cases:
        assert got == status and fragment in answer["error"], answer


def test_the_replica_still_serves_after_bad_requests(inputs: Inputs, client: Client, server) -> None:
    good = client.restore(inputs.clean, "denoise", steps=STEPS, seed=3)
    assert good.record["seed"] == 3
    health = Client(server.url).health()
    assert health["status"] == "ok" and health["queued"] == 0


# ----------------------------------------------------------------------------- metrics and logs


def test_metrics_and_one_log_line_per_request(server, client: Client, inputs: Inputs) -> None:
    client.restore(inputs.clean, "denoise", steps=STEPS)
    _post(server, [("task", "denoise"), ("image", ("bad.png", b"not an image"))])
    wanted = ("ray_diffpir_requests_total", "ray_diffpir_request_latency_ms_bucket", "ray_diffpir_batch_size_bucket",
              "ray_diffpir_errors_total")  # fmt: skip
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        except OSError:
            text = ""
        if all(name in text for name in wanted) and 'status="415"' in text:
            break
        time.sleep(1)
    assert all(name in text for name in wanted), [name for name in wanted if name not in text]
    assert 'status="415"' in text and 'route="/v1/restore"' in text
    log = server.log.read_text(errors="replace")
    assert "POST /v1/restore 200" in log and "POST /v1/restore 415" in log and "task=denoise" in log


# ----------------------------------------------------------------------------- shutdown (last)


def test_sigterm_drains_in_flight_requests_and_leaves_no_process(server, inputs: Inputs, client: Client) -> None:
    tree = process_tree(server.proc.pid)
    assert len(tree) >= 3  # GCS, raylet, workers: what must not outlive the server
    n = 6
    pool = ThreadPoolExecutor(n)
    futures = [pool.submit(client.restore, inputs.clean, "denoise", steps="60", seed=s) for s in range(n)]
    probe = Client(server.url, timeout=10.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and probe.health()["queued"] < n:
        time.sleep(0.05)
    assert probe.health()["queued"] == n
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(1.5)
    with pytest.raises(ServiceError) as late:  # new work during the drain: a clear 503 (or, once stopped, no answer)
        client.restore(inputs.clean, "denoise", steps=STEPS)
    assert late.value.status in (503, 0), late.value
    results = [f.result(timeout=120) for f in futures]  # drained: every in-flight request answered
    pool.shutdown()
    assert [r.record["seed"] for r in results] == list(range(n))
    assert server.proc.wait(90) == 0
    time.sleep(1.0)
    left = [pid for pid in tree if alive(pid)]
    assert not left, f"processes left after shutdown: {left}"
    log = server.log.read_text(errors="replace")
    assert "draining" in log and "stopped in" in log
    with pytest.raises(ServiceError) as refused:
        Client(server.url, timeout=5.0).health()
    assert refused.value.status == 0
