"""The service on a two-node Ray cluster on this machine (`ray start` on loopback ports), deployed as an
operator deploys it (`diffpir serve --print-config`, then `serve deploy`), under faults:

1. replicas on both nodes, steady load from several clients, the worker node killed (every process,
   by pid): every request succeeds with the client's retry, the lost replica is replaced, every
   answer equals `diffpir restore`;
2. a rolling update to new weights under load: no request lost, each answer made by one
   configuration (the one its record names), equal to `diffpir restore` with that configuration's weights;
3. autoscaling (`--autoscale`): replicas grow under load and shrink after it, measured;
4. `diffpir batch` on the cluster with the worker node killed mid-job: the job finishes, every
   output complete, correct and written once, the summary's counts right.

One cluster serves the module (the tests run in this order); its teardown ends every process it
started and checks that none is left. What each fault test sent, answered, retried and lost is
printed (pytest -s) and kept in the test's folder as faults.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from diffpir_rt.benchmarks.soak import LoadRequest, SteadyLoad, load_counts
from diffpir_rt.client import Client, ServiceError
from diffpir_rt.engine.imageio import decode_image, read_image, read_image_and_depth, write_image

from .cluster import LocalCluster
from .conftest import TEST_IMAGE, Inputs, cli_restore, free_port, needs_ray

pytestmark = needs_ray
ONE_LEVEL = 1 / 255 + 1e-6
STEPS = 3


@pytest.fixture(scope="module")
def cluster(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, warm_cache):
    """A head (2 CPUs, the dashboard) and one worker node (1 CPU)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), service_env)
    try:
        cluster.start_head(num_cpus=2)
        cluster.add_worker(num_cpus=1)
        yield cluster
    finally:
        left = cluster.shutdown()
        assert not left, f"cluster processes left running: {left}"


@pytest.fixture(scope="module")
def port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """New weights for the rolling update: the tiny UNet with other random weights."""
    from safetensors.torch import save_file

    from diffpir_rt.engine import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet = build_unet("tiny")
    path = tmp_path_factory.mktemp("v2") / "tiny-v2.safetensors"
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return path


def _print_config(checkpoint: Path, port: int, folder: Path, name: str, *flags: str, edit=None) -> tuple[Path, str]:
    """`diffpir serve --print-config` written to a file (optionally edited as an operator would); (path, configuration digest)."""
    import yaml

    from diffpir_rt.service.settings import ServeSettings

    cmd = [sys.executable, "-m", "diffpir_rt", "serve", "--checkpoint", str(checkpoint), "--arch", "tiny", "--port", str(port),
           "--drain-timeout", "5", "--print-config", *flags]  # fmt: skip
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    config = yaml.safe_load(text)
    if edit is not None:
        edit(config)
        text = yaml.safe_dump(config, sort_keys=False)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path, ServeSettings.from_dict(config["applications"][0]["args"]).digest()


#: Two restorer replicas (one per node), one HTTP ingress (a proxy runs on every node either way).
V1_FLAGS = ("--replicas", "2", "--ingress-replicas", "1")
SIGMA_N = 0.3  # a noise level at which the prior shapes the answer: other weights, other images


def _requests(inputs: Inputs, count: int) -> list[LoadRequest]:
    images = [inputs.clean, inputs.other]
    return [LoadRequest((images[i % 2].name, images[i % 2].read_bytes()), "denoise", {"steps": STEPS, "seed": i, "sigma_n": SIGMA_N})
            for i in range(count)]  # fmt: skip


def _references(inputs: Inputs, checkpoint: Path, folder: Path, count: int) -> list[torch.Tensor]:
    """`diffpir restore` of each request of `_requests` with `checkpoint`."""
    from diffpir_rt.cli import main

    images = [inputs.clean, inputs.other]
    out = []
    for i in range(count):
        path = folder / f"{checkpoint.stem}-{i}.png"
        assert main(["restore", "--checkpoint", str(checkpoint), "--arch", "tiny", "--quiet", "--output", str(path), "--task", "denoise",
                     "--input", str(images[i % 2]), "--steps", str(STEPS), "--seed", str(i), "--sigma-n", str(SIGMA_N)]) == 0  # fmt: skip
        out.append(read_image(path))
    return out


def _report(folder: Path, name: str, counts: dict[str, Any], **more: Any) -> None:
    entry = {"test": name, **counts, **more}
    print(f"\n{name}: {json.dumps(entry)}")
    path = folder / "faults.json"
    previous = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps([*previous, entry], indent=1) + "\n")


def _wait_healthy(url: str, timeout: float = 120.0) -> dict:
    return Client(url, timeout=10.0).wait_ready(timeout=timeout)


def _wait_config(url: str, digest: str, timeout: float = 120.0) -> None:
    """Until /healthz answers from the configuration `digest` (a new deployment has taken over)."""
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        try:
            seen = Client(url, timeout=10.0).health()
            if seen.get("config") == digest and seen.get("replica", {}).get("config") == digest:
                return
        except ServiceError as e:
            seen = e
        time.sleep(0.5)
    raise AssertionError(f"{url}: configuration {digest} not serving after {timeout:g} s (last: {seen})")


# ----------------------------------------------------------------------------- 1. a node dies


def test_worker_node_killed_under_load(cluster: LocalCluster, inputs: Inputs, port: int, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("node-killed")
    config, digest = _print_config(inputs.checkpoint, port, folder, "v1", *V1_FLAGS)
    cluster.deploy(config)
    head, worker = cluster.nodes[0], cluster.nodes[1]
    on_both = cluster.wait_replicas("DiffPIRRestorer", lambda rs: len(rs) == 2 and {r["node_id"] for r in rs} == {head.node_id, worker.node_id})
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url)
    count = 6
    expected = _references(inputs, inputs.checkpoint, folder, count)
    load = SteadyLoad(url, _requests(inputs, count), clients=6, retries=10, backoff=0.3, timeout=120.0,
                      check=lambda key, png: float((decode_image(png)[0] - expected[key]).abs().max())).start()  # fmt: skip
    try:
        assert load.wait_for(24, timeout=120), "the load did not start"
        deadline = time.monotonic() + 60  # until both nodes' replicas have answered: the node killed carries load
        while {head.node_id[:12], worker.node_id[:12]} - {a.service.get("node") for a in load.answers()} and time.monotonic() < deadline:
            time.sleep(0.2)
        served_by = {a.service.get("node") for a in load.answers()}
        killed_at = time.monotonic()
        pids = cluster.kill(worker)
        # The lost replica is replaced (on the head: the worker is gone), while the load goes on.
        replaced = cluster.wait_replicas("DiffPIRRestorer", lambda rs: len(rs) == 2 and all(r["node_id"] == head.node_id for r in rs),
                                         timeout=180)  # fmt: skip
        replaced_s = time.monotonic() - killed_at
        done = len(load.answers())
        assert load.wait_for(done + 16, timeout=120), "no answers after the replacement"
    finally:
        answers = load.stop()
    counts = load_counts(answers)
    _report(folder, "worker node killed under load", counts, processes_killed=len(pids), replaced_after_s=round(replaced_s, 1))
    assert counts["lost"] == 0 and counts["correct"] == counts["sent"], counts
    # Before the kill, replicas on both nodes answered; after it, the replacement did.
    assert {head.node_id[:12], worker.node_id[:12]} <= served_by, served_by
    new = {r["replica_id"] for r in replaced} - {r["replica_id"] for r in on_both}
    assert new and {a.service.get("replica") for a in answers} & new
    assert {a.service.get("config") for a in answers} == {digest}


# ----------------------------------------------------------------------------- 2. a rolling update


def test_rolling_update_to_new_weights_under_load(cluster: LocalCluster, inputs: Inputs, port: int, second_checkpoint: Path,
                                                  tmp_path_factory) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("rolling")
    if all(n.killed for n in cluster.nodes if not n.head):
        cluster.add_worker(num_cpus=1)  # a node joins again
    old, old_digest = _print_config(inputs.checkpoint, port, folder, "v1", *V1_FLAGS)
    new, new_digest = _print_config(second_checkpoint, port, folder, "v2", *V1_FLAGS)
    assert old_digest != new_digest
    cluster.deploy(old)  # as the previous test left it (a no-op), or deployed now
    url = f"http://127.0.0.1:{port}"
    cluster.wait_replicas("DiffPIRRestorer", lambda rs: len(rs) == 2)
    _wait_healthy(url)
    count = 4
    expected = {old_digest: _references(inputs, inputs.checkpoint, folder, count),
                new_digest: _references(inputs, second_checkpoint, folder, count)}  # fmt: skip
    for a, b in zip(expected[old_digest], expected[new_digest]):  # the weights tell the answers apart
        assert float((a - b).abs().max()) > 10 / 255
    load = SteadyLoad(url, _requests(inputs, count), clients=3, retries=10, backoff=0.3, timeout=120.0, keep_records=True).start()
    try:
        assert load.wait_for(12, timeout=120)
        cluster.deploy(new)
        started = time.monotonic()
        deadline = started + 240
        while time.monotonic() < deadline:  # rolled over: Serve reports it running and every answer comes from v2
            recent = load.answers()[-6:]
            if cluster.app_status() == "RUNNING" and len(recent) == 6 and all(a.service.get("config") == new_digest for a in recent):
                break
            time.sleep(0.5)
        rolled_s = time.monotonic() - started
        assert load.wait_for(len(load.answers()) + 8, timeout=120)
    finally:
        answers = load.stop()
    counts = load_counts(answers)
    by_config = {d: sum(1 for a in answers if a.service.get("config") == d) for d in (old_digest, new_digest)}
    _report(folder, "rolling update under load", counts, answers_by_configuration=by_config, rolled_over_s=round(rolled_s, 1))
    assert counts["lost"] == 0, counts
    assert by_config[old_digest] > 0 and by_config[new_digest] > 0 and sum(by_config.values()) == len(answers), by_config
    # Never mixed: each answer is the restore with the weights its configuration names, and its record says so.
    paths = {old_digest: str(inputs.checkpoint), new_digest: str(second_checkpoint)}
    for a in answers:
        digest = a.service["config"]
        assert a.record["runtime"]["model"]["label"].endswith(paths[digest]), (digest, a.record["runtime"]["model"])
        assert float((decode_image(a.image)[0] - expected[digest][a.key]).abs().max()) <= ONE_LEVEL, (digest, a.key)
    load2 = SteadyLoad(url, _requests(inputs, count), clients=1, check=lambda key, png: float(
        (decode_image(png)[0] - expected[new_digest][key]).abs().max())).start()  # fmt: skip
    assert load2.wait_for(count, timeout=60)
    after = load2.stop()
    assert all(a.ok and a.service["config"] == new_digest for a in after), [(a.status, a.diff) for a in after]
    assert Client(url, timeout=10).health()["config"] == new_digest


# ----------------------------------------------------------------------------- 3. autoscaling


def test_autoscaling_grows_under_load_and_shrinks_after(cluster: LocalCluster, inputs: Inputs, port: int, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("autoscale")

    def quick(config: dict) -> None:  # an operator's edit: react in seconds, not minutes (the file's values win over the code's)
        restorer = next(d for d in config["applications"][0]["deployments"] if d["name"] == "DiffPIRRestorer")
        restorer["autoscaling_config"].update(upscale_delay_s=2.0, downscale_delay_s=6.0, metrics_interval_s=1.0, look_back_period_s=3.0)

    config, digest = _print_config(inputs.checkpoint, port, folder, "autoscale", "--autoscale", "1:3", "--target-queue", "1",
                                   "--ingress-replicas", "1", edit=quick)  # fmt: skip
    cluster.deploy(config)
    url = f"http://127.0.0.1:{port}"
    cluster.wait_replicas("DiffPIRRestorer", lambda rs: len(rs) == 1, timeout=240)
    _wait_config(url, digest)
    timeline: list[tuple[float, int]] = []  # (seconds since the load started, running restorer replicas)
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            timeline.append((round(time.monotonic() - t0, 1), len(cluster.replicas_running("DiffPIRRestorer"))))
            stop.wait(0.5)

    def first(after: float, check) -> float | None:
        return next((t for t, n in timeline if t >= after and check(n)), None)

    requests = [LoadRequest((inputs.clean.name, inputs.clean.read_bytes()), "denoise", {"steps": 30, "seed": i}) for i in range(8)]
    t0 = time.monotonic()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    load = SteadyLoad(url, requests, clients=8, retries=10, backoff=0.3, timeout=120.0).start()
    try:
        deadline = time.monotonic() + 120
        while first(0, lambda n: n >= 3) is None and time.monotonic() < deadline:  # grow to the most, or as far as it goes
            time.sleep(0.5)
        time.sleep(3.0)
    finally:
        ended = round(time.monotonic() - t0, 1)  # the clients stop sending (those in flight finish)
        answers = load.stop()
    deadline = time.monotonic() + 120
    while first(ended, lambda n: n == 1) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    stop.set()
    watcher.join(5)
    grew = {k: first(0, lambda n, k=k: n >= k) for k in (2, 3)}
    back = first(ended, lambda n: n == 1)
    counts = load_counts(answers)
    _report(folder, "autoscaling", counts, grew_to_2_after_s=grew[2], grew_to_3_after_s=grew[3], load_stopped_at_s=ended,
            back_to_1_at_s=back, timeline=timeline)  # fmt: skip
    assert counts["lost"] == 0, counts
    assert grew[2] is not None and back is not None, timeline


# ----------------------------------------------------------------------------- 4. a batch job


def test_batch_job_survives_the_worker_node_dying(cluster: LocalCluster, inputs: Inputs, service_env: dict[str, str],
                                                  tmp_path_factory) -> None:  # fmt: skip
    folder = tmp_path_factory.mktemp("batch")
    done = cluster.serve_cli("shutdown", "-y")
    assert done.returncode == 0, done.stderr
    worker = next((n for n in cluster.nodes if not n.head and not n.killed), None) or cluster.add_worker(num_cpus=1)
    source = folder / "in"
    source.mkdir()
    image = read_image(TEST_IMAGE)
    n = 16
    for i in range(n):
        top, left = (i * 37) % 200, (i * 53) % 200
        write_image(source / f"img{i:02d}.png", image[:, top : top + 32, left : left + 32])
    out = folder / "out"
    cmd = [sys.executable, "-m", "diffpir_rt", "batch", "--task", "denoise", "--input", str(source), "--output", str(out),
           "--checkpoint", str(inputs.checkpoint), "--arch", "tiny", "--steps", "40", "--seed", "7", "--address", cluster.address,
           "--workers", "2", "--batch-size", "2"]  # fmt: skip
    log = folder / "batch.log"
    with open(log, "wb") as handle:
        job = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=service_env)
    killed = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None:  # mid-job: some outputs written, an actor on the worker
            if len(list(out.glob("*.png.json"))) >= 4 and any("MapWorker" in c for c in worker.commands()):
                killed = cluster.kill(worker)
                break
            time.sleep(0.2)
        assert killed, f"the worker node held no batch actor while the job ran:\n{log.read_text(errors='replace')[-2000:]}"
        written_at_kill = len(list(out.glob("*.png.json")))
        code = job.wait(300)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
    text = log.read_text(errors="replace")
    resumed = None
    if code != 0:  # the job may stop instead of finishing: then the same command resumes it
        assert "run the same command again" in text, text[-3000:]
        resumed = subprocess.run(cmd, capture_output=True, text=True, env=service_env, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
        text = resumed.stdout
    summary = json.loads((out / "diffpir-batch-summary.json").read_text())
    _report(folder, "batch job, worker node killed", {"inputs": n, "restored": summary["restored"], "skipped": summary["skipped"],
            "failed": len(summary["failed"])}, written_at_kill=written_at_kill, processes_killed=len(killed),
            finished_without_rerun=resumed is None)  # fmt: skip
    assert summary["restored"] + summary["skipped"] == n and not summary["failed"], summary
    assert f"0 failed of {n}" in text and "\x1b[" not in text, text[-2000:]  # piped: no colour codes
    assert sorted(p.name for p in out.iterdir()) == sorted([f"img{i:02d}.png" for i in range(n)] + [f"img{i:02d}.png.json" for i in range(n)]
                                                          + ["diffpir-batch-summary.json"])  # fmt: skip
    for i in range(n):  # complete and correct: each output is `diffpir restore` of its input
        got, depth = read_image_and_depth(out / f"img{i:02d}.png")
        record = json.loads((out / f"img{i:02d}.png.json").read_text())
        assert depth == 8 and record["seed"] == 7 and record["input"].endswith(f"img{i:02d}.png")
        if i % 5 == 0:
            reference = cli_restore(inputs, folder / "ref" / f"{i}.png", ["--task", "denoise", "--input", str(source / f"img{i:02d}.png"),
                                                                          "--steps", "40", "--seed", "7"])  # fmt: skip
            assert float((got - read_image(reference)).abs().max()) <= ONE_LEVEL, i
