"""Soak test of `diffpir serve`: a steady load for a long time; memory and latency over time.

    nice -n 10 python -m diffpir_rt.benchmarks.soak --minutes 25 --clients 4 --rate 1.5

One bounded run on loopback. It starts `diffpir serve` (the bundled prior unless
--checkpoint) on a free port, then:

1. A steady load: --clients clients, each sending one request every clients/rate seconds
   (never more than one outstanding each), deblurring 64x64 crops with their own kernels
   and seeds; every answer is checked against the direct restore of its request (<= 1/255).
2. Every --sample-s seconds, the resident memory (RSS) of each of the server's processes
   (the restorer replica, the HTTP ingress, Serve's proxy and controller, the raylet, the
   GCS) and the machine's load average.
3. The verdict, after --warmup-s: the restorer replica's memory at the end against the
   start (median of the first and last tenth of the samples) grows <= 10 %; the p50 and
   p99 latency of the last quarter of the answers are at most 20 % above the first
   quarter's (a soak looks for what degrades: lower is no drift, and is reported as it is);
   zero errors (the client does not retry, so every error counts).

Results: soak.json (every sample and answer), soak.md and soak.png (latency, memory and the
machine's load over time) in --out-dir (default benchmarks/results/service). `SteadyLoad`
and `sample_processes` are also what the service's tests use for their short soak and
their fault tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from diffpir_rt.client import Client, ServiceError

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "service"
MEMORY_LIMIT = 0.10  # replica memory growth allowed over the run
DRIFT_LIMIT = 0.20  # p50 / p99 latency growth allowed, last quarter against the first (faster is no drift)
#: The server's processes, by what their command lines hold (Ray names its actors' processes).
ROLES = (("restorer", "DiffPIRRestorer"), ("ingress", "DiffPIRIngress"), ("proxy", "ProxyActor"),
         ("controller", "ServeController"), ("raylet", "raylet"), ("gcs", "gcs_server"))  # fmt: skip


# ----------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class LoadRequest:
    """One restore a load sends: the form's files and fields (as `Client.restore` takes them)."""

    image: tuple[str, bytes]
    task: str
    fields: dict[str, Any] = field(default_factory=dict)
    kernel: Optional[tuple[str, bytes]] = None
    mask: Optional[tuple[str, bytes]] = None


@dataclass
class Answer:
    """What one request of a load got."""

    client: int
    key: int  # which LoadRequest
    sent: float  # seconds after the load started
    seconds: float  # latency as the client saw it, retries included
    status: int  # 200, or the final error's status (0: no connection)
    attempts: int = 1
    retried: list[int] = field(default_factory=list)  # the statuses that were retried
    error: str = ""
    diff: Optional[float] = None  # largest difference from the expected image (when checked)
    service: dict[str, Any] = field(default_factory=dict)  # the record's "service" part
    record: dict[str, Any] = field(default_factory=dict, repr=False)  # the whole record (kept when keep_records)
    image: bytes = field(default=b"", repr=False)  # the answer's image (kept when keep_records)

    @property
    def ok(self) -> bool:
        return self.status == 200 and (self.diff is None or self.diff <= 1 / 255 + 1e-6)


class SteadyLoad:
    """`clients` threads, each sending the requests in turn, one every `period_s` (or back to back with 0).

    `check(key, png_bytes) -> largest difference` compares an answer with what it must be.
    Thread-safe reads of the answers so far while it runs (`answers()`); `stop()` ends it.
    """

    def __init__(self, url: str, requests: Sequence[LoadRequest], clients: int = 4, period_s: float = 0.0,
                 retries: int = 0, backoff: float = 0.5, timeout: float = 300.0, token: Optional[str] = None,
                 check: Optional[Callable[[int, bytes], float]] = None, keep_records: bool = False) -> None:  # fmt: skip
        self.url, self.requests, self.clients, self.period_s = url, list(requests), clients, period_s
        self.retries, self.backoff, self.timeout, self.token = retries, backoff, timeout, token
        self.check, self.keep_records = check, keep_records
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = 0.0

    def start(self) -> "SteadyLoad":
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, args=(c,), name=f"load-{c}", daemon=True) for c in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 300.0) -> list[Answer]:
        """Stop sending; wait (up to `timeout`) for the requests in flight; all answers, in order sent."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.answers()

    def answers(self) -> list[Answer]:
        with self._lock:
            return sorted(self._answers, key=lambda a: a.sent)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Until `count` answers are in (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._answers) >= count:
                    return True
            time.sleep(0.05)
        return False

    def _client(self, c: int) -> None:
        n = 0
        while not self._stop.is_set():
            key = (c + n * self.clients) % len(self.requests)
            due = self.started + n * self.period_s + c * self.period_s / max(1, self.clients)
            if self.period_s and self._stop.wait(max(0.0, due - time.monotonic())):
                return
            self._send(c, key)
            n += 1

    def _send(self, c: int, key: int) -> None:
        r = self.requests[key]
        retried: list[int] = []
        client = Client(self.url, token=self.token, timeout=self.timeout, retries=self.retries, backoff=self.backoff,
                        on_retry=lambda e, attempt: retried.append(e.status))  # fmt: skip
        sent = time.monotonic()
        try:
            result = client.restore(r.image, r.task, kernel=r.kernel, mask=r.mask, **r.fields)
            answer = Answer(c, key, sent - self.started, time.monotonic() - sent, 200, result.attempts, retried,
                            service=dict(result.record.get("service", {})),
                            record=result.record if self.keep_records else {}, image=result.image if self.keep_records else b"")  # fmt: skip
            if self.check is not None:
                answer.diff = self.check(key, result.image)
        except ServiceError as e:
            answer = Answer(c, key, sent - self.started, time.monotonic() - sent, e.status, len(retried) + 1, retried,
                            error=e.message[:300])  # fmt: skip
        with self._lock:
            self._answers.append(answer)


def load_counts(answers: Sequence[Answer]) -> dict[str, Any]:
    """Sent, answered, retried and lost: the figures every fault test reports."""
    statuses: dict[str, int] = {}
    for a in answers:
        for s in a.retried:
            statuses[str(s)] = statuses.get(str(s), 0) + 1
    return {
        "sent": len(answers),
        "answered": sum(1 for a in answers if a.status == 200),
        "correct": sum(1 for a in answers if a.ok),
        "retried": sum(1 for a in answers if a.retried),
        "retries": sum(len(a.retried) for a in answers),
        "retried_statuses": statuses,
        "lost": sum(1 for a in answers if a.status != 200),
        "errors": sorted({f"{a.status}: {a.error[:120]}" for a in answers if a.status != 200}),
    }


# ----------------------------------------------------------------------------- processes


def _descendants(pid: int) -> list[int]:
    from .loadtest import descendants

    return descendants(pid)


def cmdline(pid: int) -> str:
    from .loadtest import cmdline as line

    return line(pid)


def rss_mb(pid: int) -> Optional[float]:
    """Resident memory of a process in MiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def server_processes(root: int) -> dict[str, list[int]]:
    """The server's processes by role (ROLES), `driver` being `root` itself."""
    found: dict[str, list[int]] = {"driver": [root]}
    for pid in _descendants(root):
        line = cmdline(pid)
        for role, marker in ROLES:
            if marker in line:
                found.setdefault(role, []).append(pid)
                break
    return found


def sample_processes(root: int) -> dict[str, Any]:
    """One sample: RSS (MiB) per role (summed over that role's processes), their pids, the load average."""
    roles = server_processes(root)
    rss = {role: round(sum(m for m in (rss_mb(p) for p in pids) if m is not None), 1) for role, pids in roles.items()}
    return {"rss_mb": rss, "pids": roles, "load": round(os.getloadavg()[0], 2)}


# ----------------------------------------------------------------------------- the soak


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def run_soak(url: str, root_pid: int, requests: Sequence[LoadRequest], check: Optional[Callable[[int, bytes], float]],
             duration_s: float, warmup_s: float, sample_s: float = 10.0, clients: int = 4, rate: float = 1.0,
             say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:  # fmt: skip
    """The steady load for `duration_s` (after `warmup_s`), sampled every `sample_s`; returns the result and verdict."""
    period = clients / rate if rate > 0 else 0.0
    load = SteadyLoad(url, requests, clients=clients, period_s=period, retries=0, check=check).start()
    samples: list[dict[str, Any]] = []
    end = load.started + warmup_s + duration_s
    try:
        while True:
            now = time.monotonic()
            sample = sample_processes(root_pid)
            sample["t"] = round(now - load.started, 2)
            sample["answers"] = len(load.answers())
            samples.append(sample)
            if now >= end:
                break
            if int(sample["t"]) % 60 < sample_s:
                say(f"soak: {sample['t']:.0f} s, {sample['answers']} answers, restorer {sample['rss_mb'].get('restorer', 0):.0f} MiB, "
                    f"load {sample['load']}")  # fmt: skip
            time.sleep(max(0.0, min(sample_s, end - time.monotonic())))
    finally:
        answers = load.stop()
    return summarise(answers, samples, warmup_s, {"duration_s": duration_s, "warmup_s": warmup_s, "sample_s": sample_s,
                                                   "clients": clients, "rate_per_s": rate})  # fmt: skip


def summarise(answers: Sequence[Answer], samples: Sequence[dict[str, Any]], warmup_s: float, config: dict[str, Any]) -> dict[str, Any]:
    """The verdict: memory growth, latency drift, errors; and the per-minute series for the plot."""
    measured = [a for a in answers if a.sent >= warmup_s]
    ok = [a for a in measured if a.ok]
    quarter = max(1, len(ok) // 4)
    first, last = ok[:quarter], ok[-quarter:]
    latency = {}
    for name, q in (("p50", 50), ("p99", 99)):
        a, b = percentile([x.seconds for x in first], q), percentile([x.seconds for x in last], q)
        latency[name] = {"first_quarter_s": round(a, 4), "last_quarter_s": round(b, 4), "drift": round(b / a - 1, 4) if a > 0 else None}
    later = [s for s in samples if s["t"] >= warmup_s]
    tenth = max(1, len(later) // 10)
    memory = {}
    for role in sorted({r for s in later for r in s["rss_mb"]}):
        start = statistics.median(s["rss_mb"].get(role, 0.0) for s in later[:tenth]) if later else 0.0
        stop = statistics.median(s["rss_mb"].get(role, 0.0) for s in later[-tenth:]) if later else 0.0
        memory[role] = {"start_mb": round(start, 1), "end_mb": round(stop, 1), "growth": round(stop / start - 1, 4) if start else None,
                        "max_mb": round(max(s["rss_mb"].get(role, 0.0) for s in later), 1) if later else 0.0}  # fmt: skip
    restarts = {role: sorted({tuple(s["pids"].get(role, [])) for s in later}) for role in ("restorer", "ingress")}
    minutes = []
    horizon = max((a.sent for a in answers), default=0.0)
    for m in range(int(horizon // 60) + 1):
        window = [a.seconds for a in answers if m * 60 <= a.sent < (m + 1) * 60 and a.ok]
        if window:
            minutes.append({"minute": m, "answers": len(window), "p50_s": round(percentile(window, 50), 4),
                            "p99_s": round(percentile(window, 99), 4)})  # fmt: skip
    errors = [a for a in measured if not a.ok] + [a for a in answers if a.sent < warmup_s and not a.ok]
    result = {
        "config": config,
        "answers": len(answers), "measured_answers": len(measured), "errors": len(errors),
        "error_examples": sorted({f"{a.status}: {a.error[:160]}" for a in errors})[:5],
        "max_diff": max((a.diff for a in answers if a.diff is not None), default=None),
        "latency": latency, "memory": memory, "pids": restarts,
        "minutes": minutes, "samples": list(samples),
        "load_average": {"min": min((s["load"] for s in samples), default=None), "max": max((s["load"] for s in samples), default=None),
                         "median": statistics.median(s["load"] for s in samples) if samples else None},
        "answer_log": [[round(a.sent, 2), round(a.seconds, 4), a.status] for a in answers],  # (sent at, latency, status)
    }  # fmt: skip
    result["verdict"] = judge(result)
    return result


def judge(result: dict[str, Any]) -> dict[str, bool]:
    """The pass criteria, from a result's figures (so a saved result can be judged again)."""
    growth = result["memory"].get("restorer", {}).get("growth")
    verdict = {
        "memory_ok": growth is not None and growth <= MEMORY_LIMIT,
        "latency_ok": all(v["drift"] is not None and v["drift"] <= DRIFT_LIMIT for v in result["latency"].values()),
        "errors_ok": result["errors"] == 0,
        "replica_kept": all(len(v) == 1 for v in result["pids"].values()),
    }
    verdict["pass"] = all(verdict.values())
    return verdict


# ----------------------------------------------------------------------------- report


def plot(result: dict[str, Any], path: Path) -> Path:
    """Latency per minute, memory per sample and the machine's load over time, one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    minutes = result["minutes"]
    x = [m["minute"] + 0.5 for m in minutes]
    axes[0].plot(x, [m["p50_s"] for m in minutes], "o-", label="p50")
    axes[0].plot(x, [m["p99_s"] for m in minutes], "s-", label="p99")
    axes[0].set_ylabel("latency per minute (s)")
    axes[0].legend()
    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    for role in ("restorer", "ingress", "proxy", "controller"):
        if any(role in s["rss_mb"] for s in samples):
            axes[1].plot(t, [s["rss_mb"].get(role, float("nan")) for s in samples], label=role)
    axes[1].set_ylabel("resident memory (MiB)")
    axes[1].legend()
    axes[2].plot(t, [s["load"] for s in samples], color="grey")
    axes[2].set_ylabel("load average (1 min)")
    axes[2].set_xlabel("minutes")
    warmup = result["config"]["warmup_s"] / 60
    for ax in axes:
        ax.axvline(warmup, color="k", lw=0.5, ls="--")
        ax.grid(alpha=0.3)
    fig.suptitle("diffpir serve soak: latency, memory and machine load over time")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    c, v = result["config"], result["verdict"]
    lat, mem = result["latency"], result["memory"]
    rows = [f"| {role} | {m['start_mb']:.0f} | {m['end_mb']:.0f} | {100 * m['growth']:+.1f} % | {m['max_mb']:.0f} |"
            for role, m in mem.items() if m["growth"] is not None]  # fmt: skip
    la = result["load_average"]
    return "\n".join([
        "# `diffpir serve` soak",
        "",
        f"{meta['date']}, {meta['machine']}; {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        f"Model: {meta['model']}; deblurring {meta['size']}x{meta['size']}, {meta['steps']} steps, {meta['distinct']} distinct requests "
        f"in turn; {c['clients']} clients, {c['rate_per_s']:g} requests/s in all (each client one at a time); one restorer replica; "
        f"{c['duration_s'] / 60:.0f} min measured after {c['warmup_s']:.0f} s of warm-up; memory sampled every {c['sample_s']:g} s.",
        f"The machine was shared (2 cores, other jobs running, the server under `nice -n 10`): load average {la['min']}-{la['max']} "
        f"(median {la['median']}) during the run; latency follows that load.",
        *([meta["note"]] if meta.get("note") else []),
        "",
        f"**Verdict: {'pass' if v['pass'] else 'FAIL'}** (memory {'ok' if v['memory_ok'] else 'over'}, latency "
        f"{'ok' if v['latency_ok'] else 'drifted'}, errors {'none' if v['errors_ok'] else result['errors']}, "
        f"replicas {'kept' if v['replica_kept'] else 'restarted'}).",
        "",
        f"Answers: {result['answers']} ({result['measured_answers']} after the warm-up), errors: {result['errors']}, "
        f"largest difference from the direct restore: {result['max_diff']}.",
        "",
        "| latency | first quarter (s) | last quarter (s) | drift |",
        "|---|---|---|---|",
        *[f"| {name} | {x['first_quarter_s']:.3f} | {x['last_quarter_s']:.3f} | {100 * x['drift']:+.1f} % |" for name, x in lat.items()
          if x["drift"] is not None],
        "",
        "| process | RSS start (MiB) | RSS end (MiB) | growth | max (MiB) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Limits: memory growth <= {100 * MEMORY_LIMIT:.0f} % (the restorer replica), latency of the last quarter at most "
        f"{100 * DRIFT_LIMIT:.0f} % above the first's, zero errors. ![latency, memory and load over time](soak.png)",
    ]) + "\n"  # fmt: skip


# ----------------------------------------------------------------------------- main


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line (a usage error or --help exits here)."""
    p = argparse.ArgumentParser(prog="python -m diffpir_rt.benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="measured minutes after the warm-up (default: %(default)s)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="seconds of load before measuring (default: %(default)s)")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between memory samples (default: %(default)s)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: %(default)s)")
    p.add_argument("--rate", type=float, default=1.0, help="requests per second, all clients together (default: %(default)s)")
    p.add_argument("--size", type=int, default=64, help="image side (default: %(default)s)")
    p.add_argument("--steps", type=int, default=10, help="restoration steps (default: %(default)s)")
    p.add_argument("--distinct", type=int, default=8, help="distinct requests, sent in turn (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="server max batch size (default: %(default)s)")
    p.add_argument("--checkpoint", default=None, help="model (default: the bundled prior)")
    p.add_argument("--arch", default=None)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the server's Ray (default: %(default)s)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    p.add_argument("--note", default="", help="a line about the run's circumstances, kept in the results")
    p.add_argument("--report", type=Path, default=None, metavar="SOAK_JSON",
                   help="judge a saved soak.json again and write its markdown and plot beside it; run nothing")
    return p.parse_args(argv)


def _report_again(path: Path) -> int:
    """--report: judge a saved soak.json again (the limits may have changed) and rewrite its markdown and plot."""
    result = json.loads(path.read_text())
    result["verdict"] = judge(result)
    path.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, path.with_name("soak.png"))
    path.with_name("soak.md").write_text(markdown(result, result["meta"]))
    return 0 if result["verdict"]["pass"] else 1


def _sigterm_as_interrupt() -> None:
    """Treat SIGTERM like Ctrl-C, so the server is stopped on the way out."""

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)


def _prepare_load(args: argparse.Namespace) -> tuple[Any, list[LoadRequest], Callable[[int, bytes], float]]:
    """The runtime, the distinct requests, and the check of an answer against the direct restore of its request."""
    from diffpir_rt.engine import imageio
    from diffpir_rt.runtime import run_requests

    from . import loadtest

    items = loadtest.make_items(args.distinct, args.size)
    restorer = loadtest.load_restorer(args.checkpoint, args.arch)
    expected = []
    for request in loadtest.runtime_requests(items, args.steps):
        image = run_requests(restorer, [request])[0][0]
        expected.append(imageio.decode_image(imageio.encode_image(image.cpu(), "png", 8))[0])
    requests = [LoadRequest(("y.png", item.png), "deblur", {"seed": item.seed, "steps": args.steps}, kernel=("k.npy", item.kernel))
                for item in items]  # fmt: skip

    def check(key: int, png: bytes) -> float:
        return float((imageio.decode_image(png)[0] - expected[key]).abs().max())

    return restorer, requests, check


def _run_meta(args: argparse.Namespace, restorer: Any) -> dict[str, Any]:
    """The circumstances of the run (versions, machine, settings, note), kept with the results."""
    import torch

    from . import loadtest
    from .harness import environment

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "versions": loadtest.library_versions(), "size": args.size, "steps": args.steps,
            "distinct": args.distinct, "model": args.checkpoint or "bundled prior (compact_fast)",
            "machine": loadtest.machine_line(),
            "runtime_path": restorer.path.name, "environment": environment(torch.device("cpu")), "note": args.note}  # fmt: skip


def _write_results(out_dir: Path, result: dict[str, Any], meta: dict[str, Any]) -> None:
    """soak.json, soak.png and soak.md in the output folder; the markdown is printed too."""
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out_dir / "soak.png")
    text = markdown(result, meta)
    (out_dir / "soak.md").write_text(text)
    print(text)


def main(argv: Optional[list[str]] = None) -> int:
    from . import loadtest

    args = _parse_args(argv)
    if args.report is not None:
        return _report_again(args.report)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    bound = 60 * args.minutes + args.warmup_s + 600  # whatever happens, the server is stopped and this process ends
    state: dict[str, Any] = {"proc": None}
    loadtest.start_watchdog(bound, "soak", state)
    _sigterm_as_interrupt()

    restorer, requests, check = _prepare_load(args)
    meta = _run_meta(args, restorer)
    log = args.out_dir / "soak-server.log"
    print(f"soak: starting diffpir serve (log {log})", flush=True)
    proc, url = loadtest.start_server(loadtest.server_model_flags(args.checkpoint, args.arch), args.batch, 10.0, log, args.num_cpus)
    state["proc"] = proc
    try:
        result = run_soak(url, proc.pid, requests, check, 60 * args.minutes, args.warmup_s, args.sample_s, args.clients, args.rate,
                          say=lambda line: print(line, flush=True))  # fmt: skip
    finally:
        meta["shutdown"] = loadtest.stop_server(proc)
        state["proc"] = None
    result["meta"] = meta
    _write_results(args.out_dir, result, meta)
    return 0 if result["verdict"]["pass"] and not meta["shutdown"]["processes_left"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
