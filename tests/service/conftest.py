"""Shared pieces of the service tests: the tiny random UNet, 32x32 inputs, and a `diffpir serve`
subprocess on a free loopback port. Ray is optional: the tests that need it skip without it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.engine import build_unet
from diffpir_rt.engine.imageio import read_image, write_image

TEST_IMAGE = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"
TOKEN = "test-token-0123456789abcdef"


def have_ray() -> bool:
    """Ray with Serve installed (found, not imported: the tests talk to subprocesses)."""
    import importlib.util

    spec = importlib.util.find_spec("ray")
    return spec is not None and any((Path(p) / "serve").is_dir() for p in spec.submodule_search_locations or ())


needs_ray = pytest.mark.skipif(not have_ray(), reason='Ray is not installed (pip install "diffpir-rt[serve]")')


@dataclass
class Inputs:
    folder: Path
    checkpoint: Path
    clean: Path  # 32x32, 8-bit
    clean16: Path  # 32x32, 16-bit
    other: Path  # another 32x32 crop
    small: Path  # 16x16
    kernel: Path  # 7x7 Gaussian, .npy
    big_kernel: Path  # 61x61, larger than the images
    mask: Path  # 32x32 random mask
    mask16: Path  # 16x16 mask (wrong size)
    token_file: Path
    cache: Path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    d = tmp_path_factory.mktemp("service")
    torch.manual_seed(0)
    checkpoint = d / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_unet("tiny").state_dict().items()}, str(checkpoint))
    image = read_image(TEST_IMAGE)
    clean = write_image(d / "clean.png", image[:, 100:132, 100:132])
    clean16 = write_image(d / "clean16.png", image[:, 60:92, 150:182], bit_depth=16)
    other = write_image(d / "other.png", image[:, 10:42, 200:232])
    small = write_image(d / "small.png", image[:, 0:16, 0:16])
    yy, xx = np.mgrid[-3:4, -3:4]
    k = np.exp(-(xx**2 + yy**2) / 4.0)
    np.save(d / "kernel.npy", (k / k.sum()).astype(np.float32))
    np.save(d / "big.npy", np.ones((61, 61), np.float32) / 61**2)
    rng = np.random.default_rng(0)
    mask = write_image(d / "mask.png", torch.from_numpy((rng.random((32, 32)) > 0.5).astype(np.float32))[None])
    mask16 = write_image(d / "mask16.png", torch.ones(1, 16, 16))
    token_file = d / "token.txt"
    token_file.write_text(TOKEN + "\n")
    # The cache tests/conftest.py gives every test (its autouse fixture), shared with the subprocesses.
    cache = tmp_path_factory.getbasetemp() / "diffpir-cache"
    return Inputs(d, checkpoint, clean, clean16, other, small, d / "kernel.npy", d / "big.npy", mask, mask16, token_file,
                  cache)  # fmt: skip


@pytest.fixture(scope="session")
def service_env(inputs: Inputs) -> dict[str, str]:
    """The environment of every process the tests start: the ONNX cache of the in-process runs
    (tests/conftest.py's private one: the tiny model is exported once), Ray's metrics exported
    every second, no usage reporting, never an outside Ray cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(DIFFPIR_RT_CACHE=str(inputs.cache), RAY_metrics_report_interval_ms="1000", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")  # fmt: skip
    return env


@pytest.fixture(scope="session")
def warm_cache(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One in-process restore, so the ONNX export exists before a server or a batch job needs it."""
    old = os.environ.get("DIFFPIR_RT_CACHE")
    os.environ["DIFFPIR_RT_CACHE"] = str(inputs.cache)  # (session fixtures run before the per-test one sets it)
    try:
        cli_restore(inputs, tmp_path_factory.mktemp("warm") / "w.png", ["--task", "denoise", "--input", str(inputs.clean), "--steps", "3"])
    finally:
        if old is None:
            os.environ.pop("DIFFPIR_RT_CACHE", None)
        else:
            os.environ["DIFFPIR_RT_CACHE"] = old


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cli_restore(inputs: Inputs, out: Path, args: list[str]) -> Path:
    """`diffpir restore` in this process with the tiny model; returns the output path."""
    from diffpir_rt.cli import main

    # fp32 on both sides: bf16 results depend on the thread count, which differs between the two.
    code = main(["restore", "--checkpoint", str(inputs.checkpoint), "--arch", "tiny", "--quiet",
                 "--dtype", "fp32", "--output", str(out), *args])  # fmt: skip
    assert code == 0
    return out


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    port: int
    metrics_port: int
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def start_server(inputs: Inputs, env: dict[str, str], log: Path, extra: list[str], timeout: float = 180.0) -> ServerProcess:
    """`diffpir serve` with the tiny model on a free loopback port, once /healthz answers 200."""
    from diffpir_rt.client import Client, ServiceError

    port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "diffpir_rt", "serve", "--checkpoint", str(inputs.checkpoint), "--arch", "tiny",
           "--port", str(port), "--metrics-port", str(metrics_port), "--num-cpus", "2", "--dtype", "fp32", *extra]  # fmt: skip
    handle = open(log, "wb")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    handle.close()
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", port, metrics_port, log)
    client = Client(server.url, timeout=5.0)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"diffpir serve exited with {proc.returncode}:\n{server.tail()}")
        try:
            client.health()
            return server
        except ServiceError:
            pass
        if time.monotonic() > deadline:
            stop_server(server)
            raise AssertionError(f"diffpir serve not healthy after {timeout:g} s:\n{server.tail()}")
        time.sleep(0.5)


def process_tree(pid: int) -> list[int]:
    from diffpir_rt.service.server import descendants

    return descendants(pid)


def alive(pid: int) -> bool:
    from diffpir_rt.service.server import _alive

    return _alive(pid)


def stop_server(server: ServerProcess, timeout: float = 60.0) -> int:
    """SIGTERM and wait; SIGKILL the whole tree if it does not stop (a test failure, not a cleanup)."""
    if server.proc.poll() is None:
        tree = process_tree(server.proc.pid)
        server.proc.send_signal(signal.SIGTERM)
        try:
            return server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in [server.proc.pid, *tree]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            server.proc.wait(10)
            raise AssertionError(f"diffpir serve did not stop within {timeout:g} s:\n{server.tail()}")
    return server.proc.returncode
