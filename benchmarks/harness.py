"""What every benchmark shares: the environment record, timing, and robust statistics.

Timing: warm up first, time with CUDA events (or a
synchronised host clock on CPU), repeat, report the median and p90.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from diffpir_rt.lazy import lazy_module

torch = lazy_module("torch")

REPO = Path(__file__).resolve().parents[1]


def git_commit() -> Optional[str]:
    """HEAD of the repository this file lives in, with '+dirty' for uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, thread counts, date and commit: recorded with every result."""
    env: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        # Other processes' load (1/5/15-minute averages) when the numbers were taken: on a shared
        # machine a time means little without it.
        "load_average": load_average(),
    }
    try:
        import cupy

        env["cupy"] = cupy.__version__
    except Exception as exc:  # not installed, or CUDA libraries missing
        env["cupy"] = f"unavailable ({type(exc).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            device_name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            # Settings that change CUDA numbers; meaningless on a CPU run, so recorded only here.
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
        )
    return env


def load_average() -> Optional[list[float]]:
    """The system's 1, 5 and 15-minute load averages (what `uptime` prints), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Run fn once from an idle device; (elapsed ms, fn's result). CUDA events on GPU."""
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end), result
    t0 = time.perf_counter()
    result = fn()
    return (time.perf_counter() - t0) * 1e3, result


def stats(samples_ms: list[float]) -> dict[str, Any]:
    """Median, p90 (linear interpolation), min and mean of repeated timings."""
    a = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "min": float(a.min()),
        "mean": float(a.mean()),
        "n": int(a.size),
        "samples": [round(float(v), 4) for v in a],
    }


def write_json(path: Path, obj: Any) -> None:
    """Write atomically (temp file + replace), so a killed run leaves the last complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def append_history(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per run, so results accumulate across runs and machines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of a against b for [0, 1] images (inf when equal)."""
    mse = float((a.double() - b.double()).pow(2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def parse_script_args(parser: Any, argv: Optional[list[str]]) -> Any:
    """parser.parse_args(argv), with the command line it came from kept as args.argv (for the record)."""
    import sys

    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    return args


def run_script(argv: Optional[list[str]], parse_args: Callable[[Optional[list[str]]], Any], run: Callable[[Any], Any]) -> tuple[Optional[int], Any]:
    """A benchmark script's main: logging, arguments (--help or a usage error end here with their
    exit code), then run(args). Returns (exit code or None, what run returned)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="[I] %(name)s: %(message)s")
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0), None
    return None, run(args)


def script_main(parse_args: Callable[[Optional[list[str]]], Any], run: Callable[[Any], Any]) -> Callable[[Optional[list[str]]], int]:
    """The `main(argv) -> exit code` of a script whose run's result is written to files, not returned."""

    def main(argv: Optional[list[str]] = None) -> int:
        code, _ = run_script(argv, parse_args, run)
        return code or 0

    return main
