"""A Ray cluster of several nodes on this machine, for the service's fault tests.

Each node is one `ray start --block` process on loopback ports chosen free, with its own CPUs
and a small object store. Every process of a node (raylet, agents, log monitor, the workers
that hold its actors) is a descendant of that process, so a node can be killed by its pids
(as a machine dies: SIGKILL, no goodbye), and the cluster can be stopped leaving nothing
behind, without `ray stop` (which would stop every Ray instance on the machine). The head
node runs the dashboard, which `serve deploy` talks to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from diffpir_rt.service.server import _alive, descendants

#: The GCS notices a dead node within a few seconds (the default waits up to half a minute).
HEAD_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "5000", "RAY_health_check_failure_threshold": "5"}


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (held together while chosen, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path
    head: bool
    killed: bool = False
    node_id: str = ""  # Ray's id, once the node has registered

    def pids(self) -> list[int]:
        """This node's live processes: `ray start` and everything under it."""
        return [pid for pid in (self.proc.pid, *descendants(self.proc.pid)) if _alive(pid)]

    def commands(self) -> list[str]:
        return [_cmdline(pid) for pid in self.pids()]


@dataclass
class LocalCluster:
    """Start a head, add workers, kill nodes, deploy with the Serve CLI; `shutdown()` ends every process."""

    folder: Path
    env: dict[str, str]
    object_store_mb: int = 100
    nodes: list[Node] = field(default_factory=list)
    seen: dict[int, str] = field(default_factory=dict)  # every pid of the cluster seen, with its command line

    def __post_init__(self) -> None:
        # Ray's temp dir holds Unix sockets, whose paths are short: /tmp/drXXXXXX, not pytest's deep folders.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="dr", dir="/tmp"))
        self.gcs_port, self.dashboard_port = 0, 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- nodes

    def start_head(self, num_cpus: int, timeout: float = 180.0) -> Node:
        gcs, dashboard, agent, agent_grpc, runtime_env, client, metrics = free_ports(7)
        self.gcs_port, self.dashboard_port = gcs, dashboard
        args = ["--head", "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
                "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)]  # fmt: skip
        node = self._start("head", args, num_cpus, {**self.env, **HEAD_ENV}, head=True)
        self._wait(lambda: self._get("/api/version") is not None and len(self.alive_nodes()) == 1, timeout, node, "the head")
        node.node_id = self.alive_nodes()[0]["node_id"]
        return node

    def add_worker(self, num_cpus: int, timeout: float = 180.0) -> Node:
        agent, agent_grpc, runtime_env, metrics = free_ports(4)
        before = {n["node_id"] for n in self.alive_nodes()}
        args = ["--address", self.address, "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port",
                str(agent_grpc), "--runtime-env-agent-port", str(runtime_env), "--metrics-export-port", str(metrics)]  # fmt: skip
        node = self._start(f"worker{len(self.nodes)}", args, num_cpus, self.env, head=False)
        self._wait(lambda: len({n["node_id"] for n in self.alive_nodes()} - before) == 1, timeout, node, "the worker")
        node.node_id = next(iter({n["node_id"] for n in self.alive_nodes()} - before))
        return node

    def _start(self, name: str, args: list[str], num_cpus: int, env: dict[str, str], head: bool) -> Node:
        log = self.folder / f"ray-{name}.log"
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address", "127.0.0.1",
               "--num-cpus", str(num_cpus), "--object-store-memory", str(self.object_store_mb * 2**20),
               "--temp-dir", str(self.temp_dir), "--disable-usage-stats", "--log-style", "record", "--log-color", "false",
               *args]  # fmt: skip
        with open(log, "wb") as handle:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        node = Node(name, proc, log, head)
        self.nodes.append(node)
        return node

    def _wait(self, ready, timeout: float, node: Node, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.remember()
            if node.proc.poll() is not None:
                raise AssertionError(f"{what} exited with {node.proc.returncode}:\n{node.log.read_text(errors='replace')[-3000:]}")
            try:
                if ready():
                    return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"{what} not up after {timeout:g} s:\n{node.log.read_text(errors='replace')[-3000:]}")

    def kill(self, node: Node) -> list[int]:
        """SIGKILL every process of `node` at once, as when its machine dies; returns their pids."""
        self.remember()
        pids = node.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        node.proc.wait(30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        node.killed = True
        return pids

    def remember(self) -> None:
        """Note every live pid of the cluster (for the check that none is left at the end)."""
        for node in self.nodes:
            for pid in node.pids():
                self.seen.setdefault(pid, _cmdline(pid))

    def shutdown(self, grace_s: float = 5.0) -> list[str]:
        """SIGTERM every node's processes (workers first), SIGKILL what remains; returns the command lines
        of cluster processes still alive afterwards (none, when all went well)."""
        self.remember()
        for node in sorted(self.nodes, key=lambda n: n.head):
            pids = node.pids()
            if node.proc.poll() is None:
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
                except OSError:
                    pass
            deadline = time.monotonic() + grace_s
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.2)
            for pid in [*pids, *node.pids()]:
                if _alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        time.sleep(0.5)
        left = [f"{pid}: {line[:120]}" for pid, line in self.seen.items() if _alive(pid) and _cmdline(pid) == line]
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left

    # -- the dashboard's REST API and the Serve CLI

    def _get(self, path: str, timeout: float = 10.0) -> Optional[Any]:
        try:
            with urllib.request.urlopen(self.dashboard + path, timeout=timeout) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def alive_nodes(self) -> list[dict[str, Any]]:
        data = self._get("/api/v0/nodes?limit=100")
        if not data:
            return []
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def serve_cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "ray.serve.scripts", *args, "--address", self.dashboard]
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=timeout)

    def deploy(self, config: Path) -> None:
        done = self.serve_cli("deploy", str(config))
        assert done.returncode == 0, done.stdout + done.stderr

    def replicas(self, deployment: str, app: str = "diffpir") -> list[dict[str, Any]]:
        """The deployment's replicas (state, node_id, pid, ...) as Serve's controller reports them."""
        data = self._get("/api/serve/applications/") or {}
        application = (data.get("applications") or {}).get(app) or {}
        return list(((application.get("deployments") or {}).get(deployment) or {}).get("replicas") or [])

    def replicas_running(self, deployment: str, app: str = "diffpir") -> list[dict[str, Any]]:
        return [r for r in self.replicas(deployment, app) if r.get("state") == "RUNNING"]

    def app_status(self, app: str = "diffpir") -> str:
        data = self._get("/api/serve/applications/") or {}
        return str(((data.get("applications") or {}).get(app) or {}).get("status", "NONE"))

    def wait_replicas(self, deployment: str, check, timeout: float = 180.0) -> list[dict[str, Any]]:
        """Poll until `check(running replicas)` holds; returns them (AssertionError with the last state after `timeout`)."""
        deadline = time.monotonic() + timeout
        replicas: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self.remember()
            replicas = self.replicas(deployment)
            running = [r for r in replicas if r.get("state") == "RUNNING"]
            if check(running):
                return running
            time.sleep(0.5)
        raise AssertionError(f"{deployment}: not as expected after {timeout:g} s: "
                             f"{[(r.get('state'), r.get('node_id', '')[:12]) for r in replicas]}")  # fmt: skip
