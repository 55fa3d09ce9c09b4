"""Latency and throughput of whole DiffPIR restorations, every backend in one run on one device.

Backends (all restore the same seeded problem, so outputs are comparable):
  reference               Restorer(reference=True): the fp32 eager loop, plain UNet: the BASELINE
  default                 Restorer(): the product's path for the device (what `diffpir restore`
                          runs): the CUDA-graph runtime on CUDA, ONNX Runtime or fast torch on CPU
  torch-fast-fp32 / -bf16 Restorer(backend="torch"): channels-last + SDPA UNet, eager loop (CPU)
  eager-fp16 / -bf16      engine.sample with the reduced-precision UNet (channels_last, SDPA)
  compile-fp16-cudagraph  engine.sample with torch.compile(mode="reduce-overhead") fp16 UNet:
                          the torch.compile + CUDA-graph recipe
  graph-fp32-torch        our CUDA-graph runtime, fp32 UNet, engine (torch) step math
  eager-onnxruntime-fp32  engine.sample with the same fp32 weights exported to ONNX, run by ONNX Runtime
  eager-onnxruntime-int8  the same with that export quantised to int8 (export.quantize_onnx: what
                          `cached_onnx(precision="int8")` makes, the opt-in int8 CPU arm)
  graph-fp16-torch        our CUDA-graph runtime, fp16 UNet, engine (torch) step math
  graph-fp16-cupy         our CUDA-graph runtime, fp16 UNet, fused CuPy kernels
  graph-fp16-cupy-compile the same with a torch.compile'd UNet (mode "default": fused norms
                          and activations, no cudagraphs of its own) inside our graph
  graph-fp16-cupy-autotune  the same with mode "max-autotune-no-cudagraphs" (slow to compile)

Per configuration (backend, task, size, batch, steps): warm-up runs (capture and compile
happen there), >= 5 timed restorations (CUDA events; host clock on CPU), median and p90
per image, images/s, peak memory, a separate profiling pass splitting UNet time from the
rest, speedups against the baseline and the compile recipe *measured in the same run*,
achieved FLOP/s (the UNet's FLOPs counted once per size with torch.utils.flop_counter; over the
whole restoration and over the UNet's own time) as a fraction of a peak, and PSNR against the
baseline's output. The peak is this machine's own, measured in the same run at the arms' thread
count (benchmarks/peak.py: dense GEMM and convolution per precision; on by default on a CPU),
or a stated one (--peak-tflops; the default on CUDA). Arms are timed interleaved by default
(--order): after every arm's warm-up, each round runs every arm once in rotating order, so load
from other processes falls on all arms alike. --scaling-threads re-runs the centre configuration
of the sweep arms at other thread counts (thread scaling of the default path).

  diffpir bench --device cuda --random-weights --arch ffhq_10m       # the GPU targets' sweep
  diffpir bench --device cpu --sizes 256 --batches 1 --steps 20        # the bundled prior on CPU
  diffpir bench --device cpu --sizes 256 --batches 1 --steps 20 --tasks deblur --repeats 5 --threads 1 \
      --scaling-threads 2 --backends reference default torch-fast-bf16 eager-onnxruntime-int8

Sweeps: "star" (default) runs the centre configuration (the first value of every list)
with all backends, then varies one axis at a time with --sweep-backends; "grid" runs
every combination. Backends that torch.compile run after every other configuration
(their first call compiles for minutes), so a time budget cuts them, not the sweep arms.
Results go to OUT_DIR (default: the current folder)/latency.{json,md,png}, JSON rewritten after every configuration
(partial results survive a kill), and one line per run is appended to --history.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from diffpir_rt.engine import (
    MAX_PIXELS,
    DiffPIRConfig,
    OutputPlan,
    GraphRuntime,
    GraphSampler,
    ModelSource,
    onnxruntime_problem,
    Operator,
    arch_names,
    DEFAULT_METHOD,
    configure,
    get_task,
    build_unet,
    capture_cuda_graph,
    check_input_file,
    check_capturable,
    pad_model,
    prepare_unet,
    resolve_device,
    sample,
)
from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.runtime import Restorer

from . import harness, report

logger = logging.getLogger("benchmarks.latency")

BASELINE = "reference"
COMPILE_RECIPE = "compile-fp16-cudagraph"
#: H100/H200 dense bf16/fp16 tensor-core rate reachable in practice (an 8192^3 bf16 matmul
#: reaches ~790 TFLOP/s; the datasheet says ~990). Override with --peak-tflops.
DEFAULT_PEAK_TFLOPS = 790.0
TASKS = ("deblur", "sr", "inpaint", "denoise")
SEED = 20261127


@dataclass(frozen=True)
class BackendSpec:
    """How a backend runs: loop kind, UNet dtype, step-math impl, torch.compile mode."""

    kind: str  # "restorer" (a Restorer), "eager" (engine.sample) or "graph" (GraphSampler)
    dtype: str  # "fp32" | "fp16" | "bf16" | "auto" (restorer)
    impl: str = "torch"
    compile_mode: Optional[str] = None
    runtime: str = "torch"  # what runs the UNet: "torch" or "onnxruntime" (exported from the same weights)
    restorer: tuple[tuple[str, Any], ...] = ()  # Restorer keyword arguments


BACKENDS: dict[str, BackendSpec] = {
    "reference": BackendSpec("restorer", "fp32", restorer=(("reference", True),)),
    "default": BackendSpec("restorer", "auto"),
    "torch-fast-fp32": BackendSpec("restorer", "fp32", restorer=(("backend", "torch"), ("precision", "fp32"))),
    "torch-fast-bf16": BackendSpec("restorer", "bf16", restorer=(("backend", "torch"), ("precision", "bf16"))),
    "eager-fp16": BackendSpec("eager", "fp16"),
    "eager-bf16": BackendSpec("eager", "bf16"),
    "compile-fp16-cudagraph": BackendSpec("eager", "fp16", compile_mode="reduce-overhead"),
    "graph-fp32-torch": BackendSpec("graph", "fp32", "torch"),
    "graph-fp16-torch": BackendSpec("graph", "fp16", "torch"),
    "graph-fp16-cupy": BackendSpec("graph", "fp16", "cupy"),
    "graph-fp16-cupy-compile": BackendSpec("graph", "fp16", "cupy", "default"),
    "graph-fp16-cupy-autotune": BackendSpec("graph", "fp16", "cupy", "max-autotune-no-cudagraphs"),
    "eager-onnxruntime-fp32": BackendSpec("eager", "fp32", runtime="onnxruntime"),
    "eager-onnxruntime-int8": BackendSpec("eager", "int8", runtime="onnxruntime"),
}
DEFAULT_BACKENDS = {
    # Compiled backends last: their first call compiles for a minute or more, and a time budget
    # should cut them, not the rest.
    # The compile recipe first among those: the ">= 1.5x torch.compile" target needs it.
    "cuda": ["reference", "default", "graph-fp16-torch", "eager-fp16", "eager-bf16",
             COMPILE_RECIPE, "graph-fp16-cupy-compile"],
    "cpu": ["reference", "default", "torch-fast-fp32", "torch-fast-bf16", "eager-onnxruntime-int8"],
}
DEFAULT_SWEEP_BACKENDS = {
    "cuda": ["reference", "default", "graph-fp16-torch"],
    "cpu": ["reference", "default"],
}


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (the backend is chosen separately). size: a square side
    (256) or "WIDTHxHEIGHT" ("2048x1536")."""

    task: str
    size: Union[int, str]
    batch: int
    steps: int
    threads: Optional[int] = None  # CPU threads of every arm (torch intra-op, ONNX Runtime's session)


def parse_size(text: str) -> Union[int, str]:
    """argparse type of --sizes: a square side ("512") or WIDTHxHEIGHT ("2048x1536")."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected a side or WIDTHxHEIGHT, got {text!r}")
    sides = [cliargs.positive_int(p.strip()) for p in parts]
    if len(sides) == 1 or sides[0] == sides[1]:
        return sides[0]
    return f"{sides[0]}x{sides[1]}"


parse_size.__name__ = "size"


def size_hw(size: Union[int, str]) -> tuple[int, int]:
    """(height, width) of a Config size."""
    if isinstance(size, int):
        return size, size
    width, height = (int(p) for p in str(size).split("x"))
    return height, width


class PeakMemory:
    """Peak memory of what runs between start() and stop(), in MiB.

    CUDA: torch.cuda.max_memory_allocated (torch's tensors on the device). CPU: the process's
    peak resident set size (VmHWM, reset through /proc/self/clear_refs), so it counts
    everything the restoration touches (torch tensors, ONNX Runtime's arena, the weights),
    not only torch tensors; `delta` is that peak minus the resident size at start().
    Where the peak cannot be reset (no procfs), None.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_mb: Optional[float] = None
        self.peak_mb: Optional[float] = None

    @staticmethod
    def _status_mb(key: str) -> Optional[float]:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB
        except (OSError, ValueError, IndexError):
            return None
        return None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start_mb = self._status_mb("VmRSS")
        except OSError:
            self.start_mb = None

    def stop(self) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.start_mb is not None:
            self.peak_mb = self._status_mb("VmHWM")

    @property
    def delta_mb(self) -> Optional[float]:
        if self.device.type == "cuda" or self.start_mb is None or self.peak_mb is None:
            return None
        return max(0.0, self.peak_mb - self.start_mb)


# --------------------------------------------------------------------------- problems


@dataclass
class Problem:
    operator: Operator
    y: torch.Tensor
    config: DiffPIRConfig


def make_problem(cfg: Config, device: torch.device, source: ModelSource) -> Problem:
    """A seeded synthetic restoration: smooth random images, the task's operator and the model's defaults."""
    g = torch.Generator().manual_seed(SEED)
    height, width = size_hw(cfg.size)
    coarse = torch.rand(cfg.batch, 3, max(2, height // 16), max(2, width // 16), generator=g)
    clean = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    operator = get_task(cfg.task).synthetic_operator(height, width)
    configured = configure(DEFAULT_METHOD, cfg.task, sigma_n=source.default_sigma_n(cfg.task),
                           tuned=source.tuned_defaults(DEFAULT_METHOD, cfg.task), overrides={"steps": cfg.steps})  # fmt: skip
    config = configured.config
    y = operator.forward(clean.double()).float()
    y = y + config.sigma_n * torch.randn(y.shape, generator=g)
    return Problem(operator, y.to(device), config)


# --------------------------------------------------------------------------- backends


class TimedModel:
    """Wraps an eps-model and times every call (CUDA events, or the host clock on CPU)."""

    def __init__(self, model: Callable, device: torch.device) -> None:
        self.model, self.device = model, device
        self.size_multiple = getattr(model, "size_multiple", 1)
        self.marks: list[Any] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.model(x, t)
            end.record()
            self.marks.append((start, end))
            return out
        t0 = time.perf_counter()
        out = self.model(x, t)
        self.marks.append((time.perf_counter() - t0) * 1e3)
        return out

    def total_ms(self) -> float:
        harness.synchronize(self.device)
        return float(sum(m if isinstance(m, float) else m[0].elapsed_time(m[1]) for m in self.marks))


class Backend:
    """A named way to restore a Problem, with a profiling pass (UNet ms, total ms)."""

    def __init__(self, name: str, spec: BackendSpec, model: Any, device: torch.device) -> None:
        self.name, self.spec, self.device = name, spec, device
        self._graphs: Optional[GraphSampler] = None
        self.restorer: Optional[Restorer] = model if isinstance(model, Restorer) else None
        # A Restorer's model as its loop calls it (tiled when its tiling says so), for the profile.
        self.model = model.tiling.wrap(model.denoiser) if self.restorer is not None else model
        if spec.kind == "graph":
            check_capturable(model)  # a cudagraph-making torch.compile mode fails inside our capture
            self._graphs = GraphSampler(model, device, impl=spec.impl)

    def restore(self, p: Problem) -> torch.Tensor:
        if self.restorer is not None:
            return self.restorer.restore(p.y, p.operator, p.config, seed=SEED, boundary="circular")
        if self._graphs is not None:
            return self._graphs.sample(p.operator, p.y, p.config, seed=SEED)
        return sample(self.model, p.operator, p.y, p.config, seed=SEED)

    def profile(self, p: Problem, repeats: int = 3) -> tuple[float, float]:
        """(UNet ms, total ms) per restoration, from a separate pass."""
        if self.restorer is not None and self.restorer.path.name == "cuda-graph":
            total = float(np.median([harness.time_ms(lambda: self.restore(p), self.device)[0] for _ in range(repeats)]))
            graphs = self.restorer._graph_sampler()
            return unet_only_ms(graphs.runtime_for(p.operator, p.y, p.config), self.model, repeats), total
        if self._graphs is None:
            timed = TimedModel(self.model, self.device)
            total, _ = harness.time_ms(lambda: sample(timed, p.operator, p.y, p.config, seed=SEED), self.device)
            return timed.total_ms(), total
        runtime = self._graphs.runtime_for(p.operator, p.y, p.config)
        total = float(np.median([harness.time_ms(lambda: self.restore(p), self.device)[0] for _ in range(repeats)]))
        return unet_only_ms(runtime, self.model, repeats), total

    def release(self) -> None:
        """Drop cached runtimes (static buffers, graph pools) between configurations."""
        if self._graphs is not None:
            self._graphs.runtimes.clear()
        if self.restorer is not None and self.restorer._graphs is not None:
            self.restorer._graphs.runtimes.clear()


def unet_only_ms(runtime: GraphRuntime, model: Callable, repeats: int = 3) -> float:
    """The loop's model calls alone, on the runtime's buffers; as a CUDA graph when it captures."""
    x, timesteps = runtime.buffers["x_T"], runtime.buffers["timesteps"]
    padded = pad_model(model, runtime.pad_mode)  # as the runtime calls it
    model_steps = [step for step in runtime.steps if step.t is not None]

    @torch.no_grad()
    def calls() -> None:
        for step in model_steps:
            padded(x, timesteps[step.index])

    device = runtime.device
    if not runtime.capture:
        calls()
        return float(np.median([harness.time_ms(calls, device)[0] for _ in range(repeats)]))
    graph = capture_cuda_graph(calls, device)
    graph.replay()
    ms = float(np.median([harness.time_ms(graph.replay, device)[0] for _ in range(repeats)]))
    del graph
    return ms


class Models:
    """The model source's fp32 denoiser and its prepared variants and Restorers, built once."""

    def __init__(self, source: ModelSource, device: torch.device, threads: Optional[int],
                 tiling: Optional[dict[str, Any]] = None) -> None:
        self.source = source
        self.fp32 = source.load_torch(device=device)
        self.device = device
        self.threads = threads
        self.tiling = tiling or {}  # Restorer(tile=, overlap=) of the restorer arms
        self._cache: dict[Any, Any] = {}

    def get(self, spec: BackendSpec, threads: Optional[int] = None) -> Any:
        """The model or Restorer of an arm; Restorers and ONNX Runtime sessions per thread count."""
        from diffpir_rt.engine import DTYPES

        threads = threads or self.threads
        if spec.kind == "restorer":
            key = (spec.restorer, threads)
            if key not in self._cache:
                self._cache[key] = Restorer(self.source, device=self.device, threads=threads,
                                            **self.tiling, **dict(spec.restorer))  # fmt: skip
            return self._cache[key]
        if spec.runtime == "onnxruntime":
            return self._onnxruntime(spec.dtype, threads)
        if spec.dtype == "fp32" and spec.kind == "eager" and spec.compile_mode is None:
            return self.fp32  # the baseline: the engine's model as loaded, nothing changed
        key = (spec.dtype, spec.compile_mode)
        if key not in self._cache:
            self._cache[key] = prepare_unet(self.fp32, DTYPES[spec.dtype], compile_mode=spec.compile_mode)
        return self._cache[key]


    def _onnxruntime(self, precision: str = "fp32", threads: Optional[int] = None) -> Callable:
        """The same fp32 weights exported to ONNX (dynamic batch and size), run by ONNX Runtime at
        `threads` intra-op threads; int8: that export quantised (export.quantize_onnx's defaults)."""
        key = ("onnxruntime", precision, threads)
        if key in self._cache:
            return self._cache[key]
        from diffpir_rt.engine import make_denoiser_from

        if ("onnx-file", precision) not in self._cache:
            self._cache[("onnx-file", precision)] = self._onnx_file(precision)
        self._cache[key] = make_denoiser_from(ModelSource("onnx", self._cache[("onnx-file", precision)]),
                                              device=self.device, threads=threads)  # fmt: skip
        return self._cache[key]

    def _onnx_file(self, precision: str) -> Path:
        """The exported graph of the fp32 weights (int8: quantised from the fp32 one)."""
        if precision == "int8":
            from diffpir_rt.export import quantize_onnx

            fp32 = self._cache.get(("onnx-file", "fp32")) or self._onnx_file("fp32")
            self._cache[("onnx-file", "fp32")] = fp32
            return quantize_onnx(fp32, fp32.with_name("unet_int8.onnx"))
        import tempfile

        from safetensors.torch import save_file

        from diffpir_rt.export import OnnxExportConfig, export_onnx

        folder = Path(tempfile.mkdtemp(prefix="diffpir-bench-onnx-"))
        weights = folder / "unet.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in self.fp32.unet.state_dict().items()}, str(weights))
        size = self.fp32.size_multiple * 2
        return export_onnx(weights, folder / "unet.onnx",
                           OnnxExportConfig(dynamic_batch=True, dynamic_size=True, height=size, width=size),
                           arch=self.fp32.arch)  # fmt: skip


# --------------------------------------------------------------------------- measuring


def flops_per_call(arch: str, size: Union[int, str]) -> float:
    """FLOPs of one UNet call on one whole image of a Config size, counted on the meta device
    (a tiled run does these and its tiles' overlap on top).

    ffhq_10m at 256 gives 387.9 GFLOP, the issue's 388.
    """
    height, width = size_hw(size)
    with torch.device("meta"):
        model = build_unet(arch)
        x, t = torch.empty(1, 3, height, width), torch.zeros(1, dtype=torch.int64)
    with FlopCounterMode(display=False) as counter:
        model(x, t)
    return float(counter.get_total_flops())


def arm_precision(backend: Backend) -> str:
    """The precision an arm's UNet computes in: its FLOP/s are held against that precision's peak."""
    if backend.restorer is not None:
        return backend.restorer.path.precision
    return backend.spec.dtype


@dataclass
class ArmTiming:
    """One arm's timed restorations of a configuration, and the peak memory over them."""

    samples: list[float]
    output: Optional[torch.Tensor] = None
    peak_mb: Optional[float] = None
    peak_delta_mb: Optional[float] = None

    def run(self, backend: Backend, problem: Problem) -> None:
        memory = PeakMemory(backend.device)
        memory.start()
        ms, self.output = harness.time_ms(lambda: backend.restore(problem), backend.device)
        memory.stop()
        self.samples.append(ms)
        if memory.peak_mb is not None:
            self.peak_mb = max(self.peak_mb or 0.0, memory.peak_mb)
        if memory.delta_mb is not None:
            self.peak_delta_mb = max(self.peak_delta_mb or 0.0, memory.delta_mb)


def measure(backend: Backend, cfg: Config, problem: Problem, args: argparse.Namespace, flops: float,
            peaks: Optional[dict[int, Any]] = None) -> dict[str, Any]:  # fmt: skip
    """Warm up, time `repeats` restorations back to back, profile; one result record."""
    for _ in range(args.warmup):
        backend.restore(problem)
    timing = ArmTiming([])
    for _ in range(args.repeats):
        timing.run(backend, problem)
    return record_of(backend, cfg, problem, args, flops, timing, peaks)


def measure_interleaved(
    backends: dict[str, Backend],
    cfg: Config,
    problem: Problem,
    args: argparse.Namespace,
    flops: float,
    peaks: Optional[dict[int, Any]],
    failed: Callable[[str, BaseException], None],
) -> dict[str, dict[str, Any]]:
    """Every arm warmed up, then `repeats` rounds that run each arm once, in rotating order (so
    load that comes and goes falls on every arm alike); then each arm's profile. An arm that
    fails is reported through `failed` and leaves the rounds; the others go on."""
    live = list(backends)
    for name in list(live):
        try:
            for _ in range(args.warmup):
                backends[name].restore(problem)
        except Exception as exc:  # noqa: BLE001 - recorded per arm by `failed`
            failed(name, exc)
            live.remove(name)
    timings = {name: ArmTiming([]) for name in live}
    for round_ in range(args.repeats):
        shift = round_ % max(1, len(live))
        for name in live[shift:] + live[:shift]:
            try:
                timings[name].run(backends[name], problem)
            except Exception as exc:  # noqa: BLE001
                failed(name, exc)
                live.remove(name)
                timings.pop(name)
    records = {}
    for name in live:
        try:
            records[name] = record_of(backends[name], cfg, problem, args, flops, timings[name], peaks)
        except Exception as exc:  # noqa: BLE001
            failed(name, exc)
    return records


def record_of(backend: Backend, cfg: Config, problem: Problem, args: argparse.Namespace, flops: float,
              timing: ArmTiming, peaks: Optional[dict[int, Any]] = None) -> dict[str, Any]:  # fmt: skip
    """The result record of one arm's timed runs: latency statistics, the profile (a separate
    pass), memory, and FLOP/s against the stated or measured peak of the arm's precision."""
    from . import peak as peak_bench

    device = backend.device
    total = harness.stats(timing.samples)
    unet_ms, profiled_ms = backend.profile(problem)
    calls = problem.config.num_model_calls
    per_image = {k: total[k] / cfg.batch for k in ("median", "p90", "min", "mean")}
    height, width = size_hw(cfg.size)
    megapixels = height * width / 1e6
    work = calls * flops * cfg.batch  # FLOPs of the UNet calls of one timed run
    achieved_gflops = work / (total["median"] / 1e3) / 1e9
    unet_gflops = work / (unet_ms / 1e3) / 1e9 if unet_ms > 0 else None
    precision = arm_precision(backend)
    measured = (peaks or {}).get(cfg.threads) or {}
    peak_gflops = measured.get("peak", {}).get(precision, {}).get("gflops")
    record = {
        "backend": backend.name,
        **asdict(cfg),
        "precision": precision,
        "model_calls": calls,
        "latency_ms": total,
        "per_image_ms": per_image,
        "images_per_s": cfg.batch / (total["median"] / 1e3),
        "unet_ms": unet_ms,
        "profiled_total_ms": profiled_ms,
        "other_ms": max(0.0, profiled_ms - unet_ms),
        # Two passes, so noise can put unet_ms above the total on a busy CPU: clamp the share.
        "unet_share": min(1.0, unet_ms / profiled_ms) if profiled_ms > 0 else None,
        "peak_mem_mb": timing.peak_mb if device.type == "cuda" else None,
        "height": height,
        "width": width,
        "megapixels": megapixels,
        "s_per_megapixel": per_image["median"] / 1e3 / megapixels,
        # CPU: the process's peak resident set during the timed runs, and its rise over the start.
        "peak_rss_mb": timing.peak_mb if device.type != "cuda" else None,
        "peak_rss_delta_mb": timing.peak_delta_mb,
        "tiling": backend.restorer.describe().get("tiling") if backend.restorer is not None else None,
        "tflops": achieved_gflops / 1e3,
        # FLOP/s over the whole restoration and over the UNet's own time, and as fractions of this
        # machine's measured peak of the arm's precision (benchmarks/peak.py, same run).
        "gflops": achieved_gflops,
        "unet_gflops": unet_gflops,
        "peak_gflops": peak_gflops,
        "peak_kernel": measured.get("peak", {}).get(precision, {}).get("kernel"),
        "fraction_of_peak": peak_bench.fraction(achieved_gflops, measured, precision),
        "unet_fraction_of_peak": peak_bench.fraction(unet_gflops, measured, precision),
        # Against a stated peak (--peak-tflops; CUDA's default) where one is given, else the measured one.
        "compute_fraction": (achieved_gflops / 1e3 / args.peak_tflops if args.peak_tflops
                             else peak_bench.fraction(achieved_gflops, measured, precision)),  # fmt: skip
        "output": timing.output.detach().float().cpu() if timing.output is not None else None,
    }
    return record


def is_compiled(name: str) -> bool:
    """Whether a backend runs torch.compile (its first call compiles, for a minute or more)."""
    return BACKENDS[name].compile_mode is not None


def configurations(args: argparse.Namespace) -> list[tuple[Config, list[str]]]:
    """(config, backends) in run order.

    Every configuration with the backends that do not compile first: the centre (all
    backends), then the star arms (--sweep-backends), or the whole grid; then the same
    configurations again with the torch.compile backends only. Compiling takes minutes
    per backend, so a time budget cuts the compiled backends, never an arm (batch 32 holds
    the images/s target). Each --scaling-threads count adds the centre with the sweep arms.
    """
    threads = args.threads  # None: torch's count when the sweep runs
    axes = {"task": args.tasks, "size": args.sizes, "batch": args.batches, "steps": args.steps}
    centre = Config(args.tasks[0], args.sizes[0], args.batches[0], args.steps[0], threads)
    if args.sweep == "grid":
        grid = [Config(t, s, b, n, threads) for t in args.tasks for s in args.sizes for b in args.batches for n in args.steps]
        runs = [(cfg, list(args.backends)) for cfg in grid]
    else:
        runs = [(centre, list(args.backends))]
        for axis in args.star_order:
            for value in axes[axis][1:]:
                cfg = Config(**{**asdict(centre), axis: value})
                runs.append((cfg, [b for b in args.backends if b in args.sweep_backends]))
    for count in getattr(args, "scaling_threads", None) or ():
        if count != (threads or torch.get_num_threads()):
            runs.append((Config(**{**asdict(centre), "threads": count}), [b for b in args.backends if b in args.sweep_backends]))
    first = [(cfg, [b for b in names if not is_compiled(b)]) for cfg, names in runs]
    last = [(cfg, [b for b in names if is_compiled(b)]) for cfg, names in runs]
    return [(cfg, names) for cfg, names in first + last if names]


def derive(results: list[dict[str, Any]]) -> None:
    """Speedups vs the baseline and the compile recipe, and PSNR vs the baseline, same run."""
    by_config: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_config.setdefault((r["task"], r["size"], r["batch"], r["steps"], r.get("threads")), {})[r["backend"]] = r
    # Thread scaling: each arm against itself at the fewest threads it ran with, same configuration.
    by_arm: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        if "error" not in r and r.get("threads"):
            by_arm.setdefault((r["backend"], r["task"], r["size"], r["batch"], r["steps"]), []).append(r)
    for runs in by_arm.values():
        base = min(runs, key=lambda r: r["threads"])
        for r in runs:
            r["thread_scaling"] = base["per_image_ms"]["median"] / r["per_image_ms"]["median"]
            r["thread_scaling_base"] = base["threads"]
    for group in by_config.values():
        base, recipe = group.get(BASELINE), group.get(COMPILE_RECIPE)
        for r in group.values():
            if "error" in r:
                continue
            for label, ref in (("speedup_vs_baseline", base), ("speedup_vs_compile", recipe)):
                ok = ref is not None and "error" not in ref
                r[label] = ref["per_image_ms"]["median"] / r["per_image_ms"]["median"] if ok else None
            if base is not None and base.get("output") is not None and r.get("output") is not None:
                value = harness.psnr_db(r["output"], base["output"])
                r["psnr_vs_baseline_db"] = None if math.isinf(value) else value
                r["output_identical_to_baseline"] = math.isinf(value)
                # The tolerance every fast path is held to: 8-bit levels of the written image.
                levels = (r["output"].clamp(0, 1) * 255).round() - (base["output"].clamp(0, 1) * 255).round()
                r["within_1_level_fraction"] = float((levels.abs() <= 1).float().mean())


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = cliargs.OneLineParser(
        prog="diffpir bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=cliargs.DefaultsFormatter,
        epilog="examples: diffpir bench --device cpu --sizes 256 --batches 1 --steps 20 --repeats 3; "
        "diffpir bench --device cuda --random-weights --arch ffhq_10m",
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--checkpoint", type=Path, default=None, help="UNet weights (unset: the bundled prior)")
    parser.add_argument("--arch", default=None, choices=arch_names(), help="UNet preset of --checkpoint / --random-weights")
    parser.add_argument("--random-weights", action="store_true", help="seeded random weights of --arch (GPU targets)")
    parser.add_argument("--tasks", nargs="+", default=["deblur", "sr", "inpaint"], choices=TASKS, help="tasks; the first is the centre")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[256, 64, 512],
                        help="image sizes: a square side (256) or WIDTHxHEIGHT (2048x1536)")
    parser.add_argument("--batches", nargs="+", type=cliargs.positive_int, default=[1, 32, 16, 4], help="batch sizes")
    parser.add_argument("--steps", nargs="+", type=cliargs.num_steps, default=[20, 5, 10, 100], help="DiffPIR steps")
    parser.add_argument("--backends", nargs="+", default=None, choices=sorted(BACKENDS), metavar="ARM",
                        help=f"arms to run, of: {', '.join(sorted(BACKENDS))} (default: per device; reference and default first)")  # fmt: skip
    parser.add_argument("--sweep", choices=("star", "grid"), default="star", help="star: one axis at a time; grid: all")
    parser.add_argument("--sweep-backends", nargs="+", default=None, choices=sorted(BACKENDS), metavar="ARM",
                        help="arms for the star's non-centre points (default: per device)")  # fmt: skip
    parser.add_argument("--star-order", nargs="+", default=["batch", "steps", "task", "size"],
                        choices=("batch", "steps", "task", "size"), help="axes of the star, in run order")  # fmt: skip
    parser.add_argument("--warmup", type=cliargs.non_negative_int, default=2, help="untimed runs first (capture, compile)")
    parser.add_argument("--repeats", type=cliargs.positive_int, default=5, help="timed runs per arm (median reported)")
    parser.add_argument("--peak-tflops", type=cliargs.positive_float, default=None,
                        help=f"compute peak for the fraction ({DEFAULT_PEAK_TFLOPS} on CUDA when unset)")  # fmt: skip
    parser.add_argument("--threads", type=cliargs.thread_count, default=None, help="CPU threads of every arm (unset: torch's)")
    parser.add_argument("--scaling-threads", nargs="+", type=cliargs.thread_count, default=[], metavar="N",
                        help="also run the centre configuration's sweep arms at these thread counts (thread scaling)")
    parser.add_argument("--order", choices=("interleaved", "sequential"), default="interleaved",
                        help="interleaved: each round runs every arm once (load hits all alike); sequential: arm by arm")
    parser.add_argument("--peak", action=argparse.BooleanOptionalAction, default=None,
                        help="measure this machine's GEMM/convolution peak per precision in the same run "
                        "(benchmarks/peak.py; default: on for a CPU run)")  # fmt: skip
    parser.add_argument("--tile", type=_tile, default="auto",
                        help="the restorer arms' tiling (diffpir restore --tile): auto, off or a tile side")
    parser.add_argument("--overlap", type=cliargs.non_negative_int, default=None, help="their tile overlap (default: the runtime's)")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="cuDNN autotuning on CUDA, for every arm alike")  # fmt: skip
    parser.add_argument("--time-budget", type=cliargs.positive_float, default=None, help="seconds; later runs are skipped")
    parser.add_argument("--out-dir", type=cliargs.output_path, default=Path("."), help="where latency.{json,md,png} go")
    parser.add_argument("--history", default="none", help="a JSONL file to append one line per run to, or 'none'")
    parser.add_argument("--no-plot", action="store_true", help="skip latency.png")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.device = str(device)
    if args.checkpoint is not None:
        check_input_file(args.checkpoint, "--checkpoint")
    args.source = ModelSource.from_files({"checkpoint": args.checkpoint}, args.arch, random_weights=args.random_weights)
    too_big = [s for s in args.sizes for b in args.batches if s * s * b > MAX_PIXELS]
    if too_big:
        raise DiffPIRError(f"--sizes {too_big[0]} with --batches {max(args.batches)}: more than {MAX_PIXELS:,} pixels per batch")
    # Every file the run writes, checked before it starts; a run that fails leaves none of them.
    args.plan = OutputPlan([args.checkpoint])
    for name in ("latency.json", "latency.md", *(() if args.no_plot else ("latency.png",))):
        args.plan.add(args.out_dir / name, f"--out-dir {args.out_dir}")
    if args.history.lower() != "none":
        args.plan.add(Path(args.history), "--history", suffixes=(".jsonl", ".json", ".txt"))
    multiple = build_unet_size_multiple(args.source.arch_name)
    bad = [s for s in args.sizes if any(side % multiple for side in size_hw(s))]
    if bad:
        raise DiffPIRError(f"--sizes {bad[0]}: expected sides that are multiples of {multiple} (the model's size multiple)")
    args.backends = args.backends or DEFAULT_BACKENDS["cuda" if device.type == "cuda" else "cpu"]
    args.sweep_backends = args.sweep_backends or DEFAULT_SWEEP_BACKENDS["cuda" if device.type == "cuda" else "cpu"]
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = DEFAULT_PEAK_TFLOPS
    if args.peak is None:
        args.peak = device.type == "cpu"
    return args


def _tile(text: str) -> Union[str, int]:
    """argparse type of --tile: auto, off or a positive tile side (the Restorer's own check)."""
    from diffpir_rt.runtime import TilingPolicy

    value: Union[str, int] = text if text in ("auto", "off") else (int(text) if text.strip().isdigit() else text)
    try:
        TilingPolicy(value, None, 64)
    except DiffPIRError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def build_unet_size_multiple(arch: str) -> int:
    with torch.device("meta"):
        return build_unet(arch).size_multiple


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole sweep; torch's thread count and cuDNN autotuning are restored afterwards."""
    device = torch.device(args.device)
    threads, autotune = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        # latency.json is rewritten after every configuration, so a run killed by a time limit
        # keeps its finished rows; a run that fails with an error removes what it wrote.
        with args.plan.transaction():
            return _sweep(args, device)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = autotune


@dataclass
class _SweepState:
    """What the steps of one sweep share: arguments, clock, the document being written and the arms built so far."""

    args: argparse.Namespace
    device: torch.device
    started: float
    document: dict[str, Any]
    models: Models
    backends: dict[tuple[str, Optional[int]], Backend] = field(default_factory=dict)
    flops_cache: dict[Union[int, str], float] = field(default_factory=dict)
    peaks: dict[int, Any] = field(default_factory=dict)

    @property
    def results(self) -> list[dict[str, Any]]:
        """The result records so far (the document's own list)."""
        return self.document["results"]

    def over_budget(self) -> bool:
        """Whether --time-budget is spent: later arms are skipped, not the results written so far."""
        return self.args.time_budget is not None and time.monotonic() - self.started > self.args.time_budget


def _sweep_meta(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The run's environment, model and settings: recorded with the results."""
    return harness.environment(device) | {
        "arch": args.source.arch_name,
        "model": args.source.to_dict(),
        "peak_tflops": args.peak_tflops,
        "peak_note": "dense fp16/bf16 tensor-core rate (measured ~790-798 TFLOP/s on H100/H200 here)"
        if args.peak_tflops else None,
        "baseline": BASELINE,
        "compile_recipe": COMPILE_RECIPE,
        "backends": {name: asdict(BACKENDS[name]) for name in args.backends},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("source", "plan")},
        "seed": SEED,
    }


def _measure_peaks(args: argparse.Namespace, configs: list[tuple[Config, list[str]]]) -> dict[int, Any]:
    """This machine's peak rates at every thread count of the sweep, for the arms' FLOP/s fractions."""
    from . import peak as peak_bench

    # "auto" may resolve to bf16 (a CPU with native bf16), never to int8 (opt-in).
    dtypes = {BACKENDS[n].dtype for n in args.backends}
    wanted = ["fp32"] + [p for p in ("bf16", "int8") if p in dtypes or (p == "bf16" and "auto" in dtypes)]
    peaks: dict[int, Any] = {}
    for count in sorted({cfg.threads for cfg, _ in configs}):
        logger.info("this machine's %s peak at %d thread(s)", "/".join(wanted), count)
        peaks[count] = peak_bench.measure_peaks(count, wanted)
    return peaks


def _save(state: _SweepState) -> None:
    """Derive speedups and rewrite latency.json, so a run killed later keeps its finished configurations."""
    from diffpir_rt.kernels import ORIGINS

    document = state.document
    document["meta"]["kernel_origins"] = {f"{name}@cuda:{index}": origin for (name, index), origin in ORIGINS.items()}
    derive(state.results)
    for r in state.results:  # outputs only serve the PSNR of their finished configuration
        r.pop("output", None)
    document["meta"]["elapsed_s"] = round(time.monotonic() - state.started, 1)
    document["meta"]["load_average_at_end"] = harness.load_average()
    harness.write_json(state.args.out_dir / "latency.json", document)


def _failure_recorder(results: list[dict[str, Any]], device: torch.device, cfg: Config) -> Callable[[str, BaseException], None]:
    """The callback that records a failing arm (in the results and on stderr) so the sweep goes on."""

    def failed(name: str, exc: BaseException) -> None:
        if device.type == "cuda" and isinstance(exc, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        results.append({"backend": name, **asdict(cfg), "error": f"{type(exc).__name__}: {exc}"[:500]})
        print(f"[E] {name} {cfg}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        traceback.print_exception(exc, file=sys.stderr)

    return failed


def _runnable_arms(
    state: _SweepState, cfg: Config, names: list[str], failed: Callable[[str, BaseException], None]
) -> dict[str, Backend]:
    """The arms of a configuration that can run, each built once per thread count; the others are recorded as skipped or failed."""
    runnable: dict[str, Backend] = {}
    for name in names:
        if state.over_budget():
            state.results.append({"backend": name, **asdict(cfg), "error": "skipped: time budget spent"})
            continue
        if BACKENDS[name].runtime == "onnxruntime" and (why := onnxruntime_problem(state.device)) is not None:
            state.results.append({"backend": name, **asdict(cfg), "error": f"skipped: {why}"})
            continue
        try:  # keep going: one failing backend must not lose the sweep
            key = (name, cfg.threads)
            if key not in state.backends:
                spec = BACKENDS[name]
                state.backends[key] = Backend(name, spec, state.models.get(spec, cfg.threads), state.device)
            runnable[name] = state.backends[key]
        except Exception as exc:  # noqa: BLE001
            failed(name, exc)
    return runnable


def _measure_arms(
    state: _SweepState, cfg: Config, problem: Problem, runnable: dict[str, Backend], failed: Callable[[str, BaseException], None]
) -> dict[str, dict[str, Any]]:
    """Time the runnable arms, interleaved or one after another (--order); one record per arm that finished."""
    args, flops = state.args, state.flops_cache[cfg.size]
    if args.order == "interleaved":
        return measure_interleaved(runnable, cfg, problem, args, flops, state.peaks, failed)
    records: dict[str, dict[str, Any]] = {}
    for name, backend in runnable.items():
        if state.over_budget():
            state.results.append({"backend": name, **asdict(cfg), "error": "skipped: time budget spent"})
            continue
        try:
            records[name] = measure(backend, cfg, problem, args, flops, state.peaks)
        except Exception as exc:  # noqa: BLE001
            failed(name, exc)
    return records


def _run_configuration(state: _SweepState, cfg: Config, names: list[str]) -> None:
    """One configuration: build and time its arms, record them in sweep order, free the arms and save."""
    results = state.results
    problem = make_problem(cfg, state.device, state.args.source)
    if cfg.size not in state.flops_cache:
        state.flops_cache[cfg.size] = flops_per_call(state.args.source.arch_name, cfg.size)
    torch.set_num_threads(cfg.threads)
    failed = _failure_recorder(results, state.device, cfg)
    runnable = _runnable_arms(state, cfg, names, failed)
    torch.set_num_threads(cfg.threads)  # a Restorer made above sets its own
    logger.info("%s: %s", cfg, ", ".join(runnable))
    records = _measure_arms(state, cfg, problem, runnable, failed)
    for name in names:
        if name in records:
            records[name]["flops_per_call"] = state.flops_cache[cfg.size]
            results.append(records[name])
            print(report.one_line(records[name]), flush=True)
    harness.write_json(state.args.out_dir / "latency.json", {**state.document, "results": [
        {k: v for k, v in r.items() if k != "output"} for r in results]})  # fmt: skip
    for backend in runnable.values():
        backend.release()
    _save(state)


def _write_reports(document: dict[str, Any], args: argparse.Namespace) -> None:
    """latency.md, the plot (unless --no-plot) and the history line (unless --history none)."""
    out_dir: Path = args.out_dir
    (out_dir / "latency.md").write_text(report.markdown(document))
    if not args.no_plot:
        report.plot(document, out_dir / "latency.png")
    if args.history.lower() != "none":
        harness.append_history(Path(args.history), document)


def _sweep(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Every configuration in turn (saving after each), then the reports; returns the document."""
    started = time.monotonic()
    meta = _sweep_meta(args, device)
    models = Models(args.source, device, args.threads, {"tile": args.tile, "overlap": args.overlap})
    state = _SweepState(args, device, started, {"meta": meta, "results": []}, models)
    default_threads = torch.get_num_threads()  # --threads, already set by run(), or torch's own
    configs = [(replace(cfg, threads=cfg.threads or default_threads), names) for cfg, names in configurations(args)]
    if args.peak:
        state.peaks = _measure_peaks(args, configs)
        meta["peaks"] = {str(count): found for count, found in state.peaks.items()}
    for cfg, names in configs:
        _run_configuration(state, cfg, names)
    _save(state)
    _write_reports(state.document, args)
    return state.document


def main(argv: Optional[list[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[I] %(name)s: %(message)s")
    try:
        args = parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        document = run(args)
    except DiffPIRError:
        raise
    except Exception as exc:  # a sweep arm's own failure is recorded and skipped; this is the harness's
        logger.debug("benchmark failed", exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DiffPIRError(f"the benchmark failed ({type(exc).__name__}: {first}); its reports were removed "
                           "(run with -v for the traceback)") from exc  # fmt: skip
    print(report.markdown(document))
    failures = [r for r in document["results"] if "error" in r and not r["error"].startswith("skipped")]
    return 1 if failures and len(failures) == len(document["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
