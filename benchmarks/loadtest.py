"""Load test of `diffpir serve`: N concurrent clients x M requests against the runtime itself.

    python -m diffpir_rt.benchmarks.loadtest --clients 16 --requests 4 --batch 8 --size 64 --steps 10 --fault

One bounded run on loopback (it starts `diffpir serve` as a subprocess on a free port and
stops it, whatever happens, within --max-seconds):

1. The requests: deblurring of N*M distinct 64x64 crops, each with its own Gaussian kernel
   (so batches hold per-sample kernels) and its own seed.
2. The runtime directly, in this process: the same requests through `run_requests` in
   batches of --max-batch-size (the server's batch size) -> images/s. This also gives every
   request's expected image. It runs before and after the load phase (the machine may be
   shared; both are reported, their mean is the reference).
3. The service: N client threads, each sending its M requests one after another through
   `diffpir_rt.client` -> throughput, p50/p95/p99 latency, batch sizes; every response is
   checked against its request's expected image (<= 1/255): zero lost, zero mismatched.
4. --fault: the same load with the client's retry, and the restorer replica's process
   killed (SIGKILL) mid-load; Ray Serve restarts it. Every request must end in its image
   or a clear 503 that the retry absorbs; nothing lost, nothing mismatched.

Results: JSON and a markdown table in --out-dir (default benchmarks/results/service).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from diffpir_rt.client import Client, ServiceError

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "service"
TEST_IMAGE = HERE.parent / "tests" / "data" / "images" / "butterfly.png"


@dataclass
class Item:
    index: int
    png: bytes
    kernel: bytes  # .npy
    seed: int
    expected: Any = None  # (3, H, W) float tensor, the direct restore quantised to 8 bits


@dataclass
class Outcome:
    index: int
    ok: bool
    seconds: float
    status: int = 200
    batch_size: int = 0
    mismatch: Optional[float] = None
    attempts: int = 1
    retried_statuses: list[int] = field(default_factory=list)
    error: str = ""
    restore_s: float = 0.0  # the record's run_requests time
    queued_s: float = 0.0  # the record's wait for its batch in the replica
    service: dict[str, Any] = field(default_factory=dict)  # the record's service timings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


# ----------------------------------------------------------------------------- requests


def make_items(count: int, size: int) -> list[Item]:
    from diffpir_rt.engine import imageio, read_image

    image = read_image(TEST_IMAGE)
    height, width = image.shape[-2:]
    items = []
    for i in range(count):
        top = (i * 37) % (height - size)
        left = (i * 53) % (width - size)
        crop = image[:, top : top + size, left : left + size]
        sigma = 0.8 + 0.2 * (i % 6)
        r = np.arange(15) - 7
        k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
        buffer = io.BytesIO()
        np.save(buffer, (k / k.sum()).astype(np.float32))
        items.append(Item(i, imageio.encode_image(crop, "png", 8), buffer.getvalue(), seed=1000 + i))
    return items


def runtime_requests(items: list[Item], steps: int) -> list[Any]:
    """The RestoreRequests the server builds from the same bytes (the runtime's one reader for paths and uploads)."""
    from diffpir_rt.engine import InputFile, TaskInputs
    from diffpir_rt.runtime import RequestOptions, build_request

    return [build_request("deblur", InputFile.from_bytes(f"y{item.index}.png", item.png, "image"),
                          TaskInputs(kernel=InputFile.from_bytes(f"k{item.index}.npy", item.kernel, "kernel")),
                          overrides={"steps": steps}, options=RequestOptions(seed=item.seed))
            for item in items]  # fmt: skip


def run_direct(restorer: Any, requests: list[Any], batch: int) -> dict[str, Any]:
    """The runtime's own throughput at `batch`: run_requests over the requests, batch by batch."""
    from diffpir_rt.runtime import run_requests

    run_requests(restorer, requests[:batch])  # warm-up at this batch size
    times, images = [], []
    start = time.perf_counter()
    for i in range(0, len(requests), batch):
        t = time.perf_counter()
        images += [image for image, _ in run_requests(restorer, requests[i : i + batch])]
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    return {"images": images, "wall_s": wall, "images_per_s": len(requests) / wall, "batch_s": times}


# ----------------------------------------------------------------------------- the server


def start_server(model_flags: list[str], batch: int, wait_ms: float, log: Path, num_cpus: Optional[int],
                 timeout: float = 300.0) -> tuple[subprocess.Popen, str]:  # fmt: skip
    """`diffpir serve` on a free loopback port, once /healthz answers 200."""
    port = free_port()
    cmd = [sys.executable, "-m", "diffpir_rt", "serve", *model_flags, "--port", str(port), "--max-batch-size", str(batch),
           "--batch-wait-ms", str(wait_ms), "--max-queued", str(max(64, 4 * batch)), "--drain-timeout", "20"]  # fmt: skip
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    handle = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    url = f"http://127.0.0.1:{port}"
    client = Client(url, timeout=10.0)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"diffpir serve exited with {proc.returncode}; see {log}")
        try:
            client.health()
            return proc, url
        except ServiceError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"diffpir serve not healthy after {timeout:g} s; see {log}")
        time.sleep(0.5)


def descendants(pid: int) -> list[int]:
    """Processes under `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_server(proc: subprocess.Popen, timeout: float = 90.0) -> dict[str, Any]:
    """SIGTERM, wait; the whole tree is SIGKILLed if it does not stop. Returns what was left."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *tree]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait(10)
    time.sleep(1.0)
    return {"exit_code": proc.returncode, "processes_left": [pid for pid in tree if alive(pid)]}


# ----------------------------------------------------------------------------- load


def run_load(url: str, items: list[Item], clients: int, steps: int, retries: int = 0, during=None) -> tuple[list[Outcome], float]:
    """`clients` threads, each sending its share of the items one after another."""
    from diffpir_rt.engine import imageio

    shares = [items[c::clients] for c in range(clients)]
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    answers: dict[int, bytes] = {}

    def worker(share: list[Item]) -> None:
        for item in share:
            seen: list[int] = []
            client = Client(url, timeout=600.0, retries=retries, backoff=0.5, on_retry=lambda e, attempt: seen.append(e.status))
            start = time.perf_counter()
            try:
                result = client.restore(("y.png", item.png), "deblur", kernel=("k.npy", item.kernel), seed=item.seed,
                                        steps=steps)  # fmt: skip
                outcome = Outcome(item.index, True, time.perf_counter() - start, 200, result.record.get("batch_size", 0),
                                  attempts=result.attempts, retried_statuses=seen, restore_s=result.record.get("seconds", 0.0),
                                  queued_s=result.record.get("service", {}).get("queued_s", 0.0),
                                  service=result.record.get("service", {}))  # fmt: skip
                answers[item.index] = result.image
            except ServiceError as e:
                outcome = Outcome(item.index, False, time.perf_counter() - start, e.status, attempts=len(seen) + 1,
                                  retried_statuses=seen, error=e.message[:200])  # fmt: skip
            with lock:
                outcomes.append(outcome)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(worker, share) for share in shares]
        if during is not None:
            during(outcomes, lock)
        for f in futures:
            f.result()
    wall = time.perf_counter() - start
    # Every answer against the direct restore of its request's seed (after the clock: checking is not serving).
    by_index = {item.index: item for item in items}
    for outcome in outcomes:
        if outcome.index in answers:
            got, _ = imageio.decode_image(answers[outcome.index])
            outcome.mismatch = float((got - by_index[outcome.index].expected).abs().max())
            outcome.ok = outcome.mismatch <= 1 / 255 + 1e-6
    return sorted(outcomes, key=lambda o: o.index), wall


def summarise(outcomes: list[Outcome], wall: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.ok]
    latencies = [o.seconds * 1000 for o in ok]
    batches = [o.batch_size for o in ok]
    return {
        "requests": len(outcomes), "ok": len(ok),
        "mismatched": sum(1 for o in outcomes if o.status == 200 and not o.ok),
        "failed": [{"index": o.index, "status": o.status, "error": o.error} for o in outcomes if o.status != 200],
        "wall_s": round(wall, 3), "images_per_s": round(len(ok) / wall, 3) if wall else 0.0,
        "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "mean_batch": round(statistics.mean(batches), 2) if batches else 0.0,
        # What the service adds to a request beyond waiting for and running its batch: HTTP, parsing,
        # decoding, checks, the hop to the replica, PNG encoding (client latency - queued - restore).
        "overhead_p50_ms": round(percentile([1000 * (o.seconds - o.restore_s - o.queued_s) for o in ok], 50), 1),
        "overhead_p95_ms": round(percentile([1000 * (o.seconds - o.restore_s - o.queued_s) for o in ok], 95), 1),
        # ... and where it goes: the ingress's phases, the hop to the replica and back, the rest (proxy, HTTP).
        "overhead_parts_p50_ms": {
            part: round(percentile([1000 * value(o) for o in ok], 50), 1)
            for part, value in (
                ("read_body", lambda o: o.service.get("read_s", 0.0)),
                ("check_request", lambda o: o.service.get("check_s", 0.0)),
                ("to_replica_and_back", lambda o: o.service.get("replica_s", 0.0) - o.restore_s - o.queued_s),
                ("encode_png", lambda o: o.service.get("encode_s", 0.0)),
                ("proxy_http_client", lambda o: o.seconds - sum(o.service.get(k, 0.0) for k in ("read_s", "check_s", "replica_s", "encode_s"))),
            )
        },
        "batch_sizes": {str(b): batches.count(b) for b in sorted(set(batches))},
        "max_diff": max((o.mismatch for o in outcomes if o.mismatch is not None), default=None),
    }  # fmt: skip


def kill_replica_midway(url: str, server_pid: int, total: int, report: dict[str, Any]):
    """During the fault load: once a third of the requests are answered and a batch is in the
    replica, SIGKILL the restorer replica's process."""
    probe = Client(url, timeout=5.0)

    def during(outcomes: list[Outcome], lock: threading.Lock) -> None:
        deadline = time.monotonic() + 300
        done = 0
        while time.monotonic() < deadline:
            with lock:
                done = len(outcomes)
            if done >= total // 3:
                try:
                    if probe.health().get("queued", 0) > 0:
                        break
                except ServiceError:
                    pass
            time.sleep(0.02)
        victims = [pid for pid in descendants(server_pid) if "DiffPIRRestorer" in cmdline(pid)]
        report["killed_pids"] = victims
        report["killed_after_requests"] = done
        report["killed_at"] = time.time()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass

    return during


# ----------------------------------------------------------------------------- main


def markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    rt, sv = result["runtime"], result["service"]
    lines = [
        "# `diffpir serve` load test",
        "",
        f"{result['date']}, {result['machine']}; load average {result['load_before']} before, {result['load_after']} after "
        "(a shared machine: other jobs ran alongside, so the arms are interleaved and their medians compared).",
        f"Model: {c['model']}, runtime path {rt['path']}; task deblur, {c['size']}x{c['size']} images, {c['steps']} steps, "
        f"each request its own 15x15 Gaussian kernel and seed; {c['clients']} clients x {c['requests']} requests per round; "
        f"server: one restorer replica, batches up to {c['batch']} (wait {c['wait_ms']:g} ms); runtime: run_requests in "
        f"batches of {c['batch']}.",
        "",
        "| arm | requests | ok | images/s | p50 ms | p95 ms | p99 ms | mean batch | overhead p50/p95 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, arm in enumerate(rt["rounds"], 1):
        lines.append(f"| runtime directly, round {i} | {arm['requests']} | {arm['requests']} | {arm['images_per_s']:.2f} | "
                     f"{arm['p50_ms']:.0f} | {arm['p95_ms']:.0f} | {arm['p99_ms']:.0f} | {c['batch']} | - |")  # fmt: skip
    for i, arm in enumerate(sv["rounds"], 1):
        lines.append(f"| service, {c['clients']} HTTP clients, round {i} | {arm['requests']} | {arm['ok']} | "
                     f"{arm['images_per_s']:.2f} | {arm['p50_ms']:.0f} | {arm['p95_ms']:.0f} | {arm['p99_ms']:.0f} | "
                     f"{arm['mean_batch']} | {arm['overhead_p50_ms']:.0f} / {arm['overhead_p95_ms']:.0f} |")  # fmt: skip
    if "fault" in result:
        f = result["fault"]
        lines.append(f"| service, replica killed mid-load, client retry | {f['requests']} | {f['ok']} | {f['images_per_s']:.2f} | "
                     f"{f['p50_ms']:.0f} | {f['p95_ms']:.0f} | {f['p99_ms']:.0f} | {f['mean_batch']} | "
                     f"{f['overhead_p50_ms']:.0f} / {f['overhead_p95_ms']:.0f} |")  # fmt: skip
    lines += [
        "",
        f"Throughput, median of rounds: service {sv['images_per_s']:.2f} images/s, runtime {rt['images_per_s']:.2f} images/s: "
        f"**{result['ratio']:.2f}x** (goal >= 0.9x), an overhead of {result['overhead_pct']:.1f}% of throughput. "
        f"Per request the service adds {sv['overhead_p50_ms']:.0f} ms at the median ({sv['overhead_p95_ms']:.0f} ms p95) "
        "to waiting for and running its batch (client latency - the record's queued_s and seconds); the latencies above are "
        f"mostly queueing: {c['clients']} clients keep about {c['clients'] // c['batch']} batches in line.",
        f"Lost responses: {sv['lost']}; mismatched: {sv['mismatched']} (every response compared with the direct restore of its "
        f"seed; largest difference {sv['max_diff']:.4g}, limit 1/255).",
    ]
    if "fault" in result:
        f = result["fault"]
        lines += [
            "",
            f"Fault test: the restorer replica (pid {', '.join(map(str, f['killed_pids'])) or '?'}) was killed with SIGKILL "
            f"after {f['killed_after_requests']} answers, with a batch running; Ray Serve started a new one. "
            f"{f['saw_503']} request(s) were answered 503 at least once (other error statuses: {f['other_statuses'] or 'none'}), "
            f"{f['retried']} succeeded on a retry (client retries with backoff), {f['requests'] - f['ok'] - f['mismatched']} lost, "
            f"{f['mismatched']} mismatched.",
        ]
    sd = result["shutdown"]
    lines += ["", f"Shutdown: SIGTERM -> exit code {sd['exit_code']}, processes of the server left: {len(sd['processes_left'])}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- run helpers (also soak's)


def server_model_flags(checkpoint: Optional[str], arch: Optional[str]) -> list[str]:
    """`diffpir serve` flags naming the model, so the server restores with the weights the direct run uses."""
    return (["--checkpoint", checkpoint] if checkpoint else []) + (["--arch", arch] if arch else [])


def machine_line() -> str:
    """CPU, CPU count and Python version in one line, recorded with the results."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def library_versions() -> dict[str, str]:
    """Versions of torch and of onnxruntime and ray where installed: they change the numbers."""
    import torch

    versions = {"torch": torch.__version__}
    for name in ("onnxruntime", "ray"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def load_restorer(checkpoint: Optional[str], arch: Optional[str]) -> Any:
    """The runtime in this process, with the model the server loads (the bundled prior unless a checkpoint)."""
    from diffpir_rt.engine import ModelSource
    from diffpir_rt.runtime import Restorer

    return Restorer(ModelSource.from_files({"checkpoint": Path(checkpoint) if checkpoint else None}, arch))


def start_watchdog(seconds: float, name: str, state: dict[str, Any]) -> None:
    """Bound the run: after `seconds`, whatever happens, stop the server in state["proc"] and end this process."""

    def bound() -> None:
        time.sleep(seconds)
        print(f"{name}: over {seconds:g} s; stopping", file=sys.stderr, flush=True)
        if state["proc"] is not None:
            stop_server(state["proc"], timeout=30)
        os._exit(3)

    threading.Thread(target=bound, daemon=True).start()


# ----------------------------------------------------------------------------- main


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line (a usage error or --help exits here)."""
    p = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    p.add_argument("--requests", type=int, default=4, help="requests per client and round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="service rounds, interleaved with rounds+1 runtime rounds (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="image side (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="restoration steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="server max batch size, and the runtime's batch (default: %(default)s)")
    p.add_argument("--wait-ms", type=float, default=50.0, help="server batch wait (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="model (default: the bundled prior)")
    p.add_argument("--arch", default=None)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the server's Ray (default: all)")
    p.add_argument("--fault", action="store_true", help="also the fault test: kill the replica mid-load")
    p.add_argument("--max-seconds", type=float, default=1500.0, help="hard bound on the whole run (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def _result_header(args: argparse.Namespace) -> dict[str, Any]:
    """Date, machine, its load before the run and the run's settings: the results' first fields."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "load_before": round(os.getloadavg()[0], 2),
        "machine": machine_line(),
        "config": {"clients": args.clients, "requests": args.requests, "rounds": args.rounds, "size": args.size,
                   "steps": args.steps, "batch": args.batch, "wait_ms": args.wait_ms,
                   "model": args.checkpoint or "bundled prior (compact_fast)"},
    }  # fmt: skip


def _direct_round(restorer: Any, requests: list[Any], batch: int) -> dict[str, Any]:
    """One round of the runtime directly: throughput and per-batch latency, with the images."""
    run = run_direct(restorer, requests, batch)
    ms = [t * 1000 for t in run["batch_s"]]
    return {"requests": len(requests), "images_per_s": round(run["images_per_s"], 3), "wall_s": round(run["wall_s"], 3),
            "p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "images": run["images"]}  # fmt: skip


def _run_rounds(url: str, restorer: Any, items: list[Item], requests: list[Any], args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Runtime and service rounds in turn (the machine may be shared); the first runtime round gives the expected images."""
    from diffpir_rt.engine import imageio

    runtime_rounds, service_rounds = [], []
    print("loadtest: the runtime directly, round 1", flush=True)
    runtime_rounds.append(_direct_round(restorer, requests, args.batch))
    for item, image in zip(items, runtime_rounds[0]["images"]):
        item.expected = imageio.decode_image(imageio.encode_image(image.cpu(), "png", 8))[0]
    run_load(url, items[: args.batch], args.clients, args.steps)  # the server's ONNX session and batch shapes warm
    for r in range(args.rounds):
        print(f"loadtest: the service, round {r + 1}", flush=True)
        service_rounds.append(summarise(*run_load(url, items, args.clients, args.steps)))
        print(f"loadtest: the runtime directly, round {r + 2}", flush=True)
        runtime_rounds.append(_direct_round(restorer, requests, args.batch))
    for arm in runtime_rounds:
        arm.pop("images")
    return runtime_rounds, service_rounds


def _service_summary(service_rounds: list[dict[str, Any]], service_rate: float) -> dict[str, Any]:
    """The service rounds together: median rate and overheads, total requests, losses and mismatches."""
    everything = {key: [a[key] for a in service_rounds] for key in ("overhead_p50_ms", "overhead_p95_ms")}
    return {
        "rounds": service_rounds, "images_per_s": round(service_rate, 3),
        "requests": sum(a["requests"] for a in service_rounds), "ok": sum(a["ok"] for a in service_rounds),
        "mismatched": sum(a["mismatched"] for a in service_rounds),
        "lost": sum(a["requests"] - a["ok"] - a["mismatched"] for a in service_rounds),
        "max_diff": max((a["max_diff"] for a in service_rounds if a["max_diff"] is not None), default=None),
        "overhead_p50_ms": round(statistics.median(everything["overhead_p50_ms"]), 1),
        "overhead_p95_ms": round(statistics.median(everything["overhead_p95_ms"]), 1),
    }  # fmt: skip


def _compare(result: dict[str, Any], restorer: Any, runtime_rounds: list[dict[str, Any]], service_rounds: list[dict[str, Any]]) -> None:
    """Record the service against the runtime (median rates, their ratio) and print the ratio."""
    runtime_rate = statistics.median(a["images_per_s"] for a in runtime_rounds)
    service_rate = statistics.median(a["images_per_s"] for a in service_rounds)
    service = _service_summary(service_rounds, service_rate)
    result["runtime"] = {"path": restorer.path.name, "rounds": runtime_rounds, "images_per_s": round(runtime_rate, 3)}
    result["service"] = service
    result["ratio"] = round(service_rate / runtime_rate, 3)
    result["overhead_pct"] = round(100 * (1 - service_rate / runtime_rate), 1)
    print(f"loadtest: service {service_rate:.2f} images/s vs runtime {runtime_rate:.2f} ({result['ratio']:.2f}x)", flush=True)


def _fault_test(url: str, server_pid: int, items: list[Item], args: argparse.Namespace) -> dict[str, Any]:
    """The load again with client retries while the restorer replica is killed: what was lost, retried, answered 503."""
    print("loadtest: fault test (the replica is killed mid-load)", flush=True)
    report: dict[str, Any] = {}
    during = kill_replica_midway(url, server_pid, len(items), report)
    outcomes, wall = run_load(url, items, args.clients, args.steps, retries=8, during=during)
    fault = summarise(outcomes, wall)
    statuses = [s for o in outcomes for s in o.retried_statuses] + [o.status for o in outcomes if o.status != 200]
    fault.update(report)
    fault["saw_503"] = sum(1 for o in outcomes if 503 in o.retried_statuses or o.status == 503)
    fault["retried"] = sum(1 for o in outcomes if o.ok and o.attempts > 1)
    fault["other_statuses"] = sorted({s for s in statuses if s != 503})
    fault["statuses_seen"] = {str(s): statuses.count(s) for s in sorted(set(statuses))}
    fault["replica_back"] = Client(url, timeout=10).health().get("status") == "ok"
    return fault


def _write_results(out_dir: Path, result: dict[str, Any]) -> None:
    """loadtest.json and loadtest.md in the output folder; the markdown is printed too."""
    (out_dir / "loadtest.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out_dir / "loadtest.md").write_text(text)
    print(text)


def _exit_code(result: dict[str, Any]) -> int:
    """0 when nothing was lost or mismatched (fault test included) and the server left no process behind."""
    fault_lost = result.get("fault", {}).get("requests", 0) - result.get("fault", {}).get("ok", 0)
    bad = result["service"]["lost"] + result["service"]["mismatched"] + fault_lost
    return 0 if bad == 0 and not result["shutdown"]["processes_left"] else 1


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_flags = server_model_flags(args.checkpoint, args.arch)
    result = _result_header(args)

    # The bound: whatever happens, the server is stopped and this process ends.
    state: dict[str, Any] = {"proc": None}
    start_watchdog(args.max_seconds, "loadtest", state)

    items = make_items(args.clients * args.requests, args.size)
    requests = runtime_requests(items, args.steps)
    log = args.out_dir / "loadtest-server.log"
    print(f"loadtest: starting diffpir serve (log {log})", flush=True)
    proc, url = start_server(model_flags, args.batch, args.wait_ms, log, args.num_cpus)
    state["proc"] = proc
    try:
        restorer = load_restorer(args.checkpoint, args.arch)
        result["versions"] = library_versions()
        runtime_rounds, service_rounds = _run_rounds(url, restorer, items, requests, args)
        _compare(result, restorer, runtime_rounds, service_rounds)
        if args.fault:
            result["fault"] = _fault_test(url, proc.pid, items, args)
    finally:
        result["shutdown"] = stop_server(proc)
        state["proc"] = None
    result["load_after"] = round(os.getloadavg()[0], 2)
    _write_results(args.out_dir, result)
    return _exit_code(result)


if __name__ == "__main__":
    raise SystemExit(main())
