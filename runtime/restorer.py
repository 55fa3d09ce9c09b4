"""`Restorer`: one restoration session, the object every entry point goes through.

Built once from a model source, a backend, a device and a precision, it prepares the
denoiser, picks the path that runs (see `choose_path`), caches what is expensive (the
CUDA-graph runtimes per shape/steps/method, the ONNX Runtime session and its exported
graph) and restores batches. The fp32 eager loop (`engine.sample`) is the reference;
every faster path states its tolerance against it (docs/runtime.md) and a test holds it.

Paths, fastest tested first:
- CUDA: the graph runtime (the whole loop as one CUDA graph) with the fused kernels and
  an fp16 UNet (channels-last, fused attention). No CuPy: the same graph with the
  engine's torch step. A capture that fails: the same loop eagerly. Each fallback
  prints one line naming its reason.
- CPU: ONNX Runtime when installed (the fastest CPU UNet measured; the graph is
  exported once per model into the user cache), else torch channels-last + SDPA.
- `reference=True`: the fp32 eager loop with the plain UNet.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from diffpir_rt.engine import (
    AUTO,
    BACKENDS,
    DEFAULT_METHOD,
    Configured,
    config_class,
    estimating_method,
    kernel_estimate,
    task_of,
    ModelSource,
    Operator,
    build_method,
    configure,
    generate,
    get_task,
    make_denoiser_from,
    resolve_device,
    sample,
)
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from .options import DEFAULT_SIGMA_N, PRECISIONS, RuntimeOptions, backend_choices

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

logger = logging.getLogger(__name__)
#: Above this many bytes of pre-drawn noise a CUDA graph is not worth its memory (RePaint's
#: default schedule draws ~7000 images of noise); such runs take the eager loop.
MAX_GRAPH_NOISE_BYTES = 2 * 1024**3


def _estimates_record(estimated: Optional[list[float]], operator: Any) -> dict[str, Any]:
    """The run record's entries for what was estimated from the measurement: sigma_n (one per
    sample, a number for one sample) and the kernel of a blind restoration."""
    out: dict[str, Any] = {}
    if estimated is not None:
        out["sigma_n_estimate"] = estimated if len(estimated) > 1 else estimated[0]
    blind = kernel_estimate(operator)
    if blind is not None:
        kernels = [[[round(float(v), 6) for v in row] for row in k] for k in blind.kernel()]
        out["kernel_estimate"] = kernels[0] if len(kernels) == 1 else kernels
    return out


def measured_sigma_n(y: Tensor, operator: Any) -> list[float]:
    """`sigma_n auto`: engine.estimate_sigma_n of each sample of y ((B, C, h, w) or (C, h, w) in [0, 1]),
    on the observed pixels only where the operator has a mask (inpainting)."""
    from diffpir_rt.engine import estimate_sigma_n

    batch = y if y.ndim == 4 else y[None]
    mask = getattr(operator, "mask", None)
    if mask is not None and tuple(mask.shape[-2:]) != tuple(batch.shape[-2:]):
        mask = None  # a broadcast all-ones mask (denoising's): every pixel is observed
    sigma = estimate_sigma_n(batch.detach().to("cpu"), None if mask is None else mask.detach().to("cpu"))
    return [round(min(1.0, max(0.0, float(s))), 6) for s in sigma]


@dataclass
class RuntimePath:
    """What runs a restoration, and why: recorded in every run record.

    Attributes:
        name: "reference", "cuda-graph", "cuda-eager", "onnxruntime" or "torch-fast".
        backend: "torch", "onnxruntime" or "tensorrt".
        precision: the UNet's compute precision; the loop itself is always fp32.
        device: where it runs.
        kernels: "cupy" (fused CUDA kernels), "torch" (the engine's step), for the DiffPIR step.
        reason: why this path, including every fallback taken.
    """

    name: str
    backend: str
    precision: str
    device: str
    kernels: str = "torch"
    reason: str = ""
    fallbacks: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_precision(precision: str, device: torch.device) -> str:
    """The UNet precision to use. 'auto': fp16 on CUDA; on a CPU, bf16 where it has native bf16
    arithmetic (measured there 1.3-1.45x faster than the fp32 path with restorations within
    0.002 dB, docs/runtime.md), fp32 elsewhere (emulated bf16 is slower). fp16 on CPU is refused."""
    if precision not in PRECISIONS:
        raise DiffPIRError(f"--dtype {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        from diffpir_rt.engine import cpu_native_bf16

        return "bf16" if cpu_native_bf16() else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise DiffPIRError("--dtype int8: the int8 graph runs on ONNX Runtime on the CPU; use --device cpu")
    if precision == "fp16" and device.type == "cpu":
        raise DiffPIRError(
            "--dtype fp16: CPUs have no fast fp16 arithmetic (about 100x slower than fp32 here); "
            "use --dtype bf16 or fp32 on the CPU"
        )
    return precision


#: File kinds the runtime can make from torch weights for a backend that runs only files,
#: each made once per weights and cached (engine.Backend.made_from_torch names one).
def _make_onnx(source: ModelSource, notify: Callable[[str], None], refresh: bool = False, precision: str = "fp32") -> Any:
    from .onnx_cache import cached_onnx

    return cached_onnx(source, notify=notify, refresh=refresh, precision=precision)


ARTIFACT_MAKERS: dict[str, Callable[..., Any]] = {"onnx": _make_onnx}


class Restorer:
    """A prepared denoiser on one device, and the fastest tested way to run the loop with it.

    Args:
        model: where the weights come from (default: the bundled prior).
        backend: "auto", "torch", "onnxruntime" or "tensorrt" (a TensorRT plan source).
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto" (fp16 on CUDA, fp32 on CPU), "fp32", "fp16" or "bf16" (the UNet only).
        reference: run the fp32 eager reference loop, whatever the device.
        threads: CPU threads (torch intra-op, and ONNX Runtime's session).
        notify: where one-line notices go (fallbacks, a first-time export); default stderr.
        tile: the UNet on overlapping tiles (runtime.tiling): "auto" (default: images above
            ~640² pixels, tiles near the model's training size), None/"off", or a tile side.
        overlap: pixels neighbouring tiles share at least (default: tile // 8, at least 16).
    """

    def __init__(
        self,
        model: Optional[ModelSource] = None,
        *,
        backend: str = "auto",
        device: Union[str, torch.device] = "auto",
        precision: str = "auto",
        reference: bool = False,
        threads: Optional[int] = None,
        notify: Optional[Callable[[str], None]] = None,
        tile: Union[None, str, int] = "auto",
        overlap: Optional[int] = None,
    ) -> None:
        self.source = model if model is not None else ModelSource()
        if not isinstance(self.source, ModelSource):
            raise DiffPIRError(f"model: expected a ModelSource, got {type(self.source).__name__}")
        if backend not in backend_choices():
            raise DiffPIRError(f"--backend {backend!r}: expected one of {', '.join(backend_choices())}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise DiffPIRError(f"--threads {threads!r}: expected a positive integer")
        self.device = resolve_device(str(device))
        self.reference = bool(reference)
        self.threads = threads
        self._notify = notify or (lambda line: print(f"[diffpir] {line}", file=sys.stderr))
        if not self._torch_weights() and precision != "auto":
            raise DiffPIRError(
                f"--dtype {precision}: applies to torch weights; a {self.source.kind} file runs at the precision "
                "it was exported with (`diffpir export onnx --dtype fp16`)"
            )
        if reference and precision not in ("auto", "fp32"):
            raise DiffPIRError(f"--reference runs fp32; drop --dtype {precision}")
        self.precision = "fp32" if reference else check_precision(precision, self.device)
        if threads is not None:
            torch.set_num_threads(threads)
        self.path, self.denoiser = self._prepare(backend)
        from .tiling import TilingPolicy

        self.tiling = TilingPolicy(tile, overlap, self.denoiser_size())
        self.tiling.wrap(self.denoiser)  # a tile or overlap this model cannot take is refused here
        self._graphs: Any = None  # a GraphSampler, made on first CUDA restore
        self._tuned: dict[tuple[str, str], dict[str, Any]] = {}
        self._said: set[str] = set()  # notices already given (each is said once per Restorer)
        self._torch_fallback: Any = None
        self.last_path: Optional[RuntimePath] = None
        self.last_record: Optional[dict[str, Any]] = None
        self.runs = 0

    @classmethod
    def from_options(cls, options: RuntimeOptions, notify: Optional[Callable[[str], None]] = None) -> "Restorer":
        """The Restorer of typed options (what `diffpir restore`, the service and batch jobs build)."""
        if not isinstance(options, RuntimeOptions):
            raise DiffPIRError(f"options: expected a RuntimeOptions, got {type(options).__name__}")
        return cls(options.model, backend=options.backend, device=options.device, precision=options.dtype,
                   reference=options.reference, threads=options.threads, notify=notify, tile=options.tile,
                   overlap=options.overlap)  # fmt: skip

    # ------------------------------------------------------------------ preparation

    def _fallback(self, path: RuntimePath, line: str) -> None:
        path.fallbacks.append(line)
        self._notify(line)

    def _torch_weights(self) -> bool:
        """Whether the source is torch weights (which any backend made from them can run)."""
        from diffpir_rt.engine.backends import backend_for_kind

        return "bundled" in backend_for_kind(self.source.kind).runs_kinds

    def _prepare(self, backend: str) -> tuple[RuntimePath, Any]:
        """The path and its denoiser, chosen from the backends' declarations (engine.backends).

        A model file of a backend (an ONNX graph, a TensorRT plan) runs on that backend.
        Torch weights run on the first backend that serves this device and precision, is
        available here and can run them (directly, or from a file the runtime makes from them,
        such as the cached ONNX export): the declared `auto_rank` order, or the one asked for.
        """
        from diffpir_rt.engine.backends import backend_for_kind, get_backend

        device, source, dev = self.device, self.source, self.device.type
        if backend != "auto":
            get_backend(backend)
        if not self._torch_weights():
            owner = backend_for_kind(source.kind)
            if backend not in ("auto", owner.name):
                raise DiffPIRError(f"--backend {backend}: a {source.kind} model runs on the {owner.name} backend")
            if dev not in owner.devices:
                raise DiffPIRError(f"--device {dev}: the {owner.name} backend runs on {', '.join(owner.devices)}")
            denoiser = make_denoiser_from(source, device=device, threads=self.threads)
            name = "cuda-graph" if dev == "cuda" and owner.graph_capture else owner.path_name
            return RuntimePath(name, owner.name, str(denoiser.describe().get("precision", "fp32")), str(device),
                               reason=f"the model is a {source.kind} file"), denoiser  # fmt: skip

        if self.reference:
            if backend not in ("auto", "torch"):
                raise DiffPIRError(f"--reference runs the torch fp32 loop; drop --backend {backend}")
            model = make_denoiser_from(source, device=device)  # fp32, NCHW, the reference attention
            return RuntimePath("reference", "torch", "fp32", str(device), reason="--reference: the fp32 eager loop"), model

        if backend != "auto":
            candidates = [get_backend(backend)]
        else:
            candidates = sorted((b for b in BACKENDS.values() if dev in b.auto_rank), key=lambda b: b.auto_rank[dev])
        passed: list[str] = []
        for candidate in candidates:
            problem = self._problem(candidate, dev)
            if problem is not None:
                if backend != "auto":
                    raise DiffPIRError(f"--backend {candidate.name}: {problem}")
                passed.append(f"{candidate.name}: {problem}")
                continue
            return self._on(candidate, passed)
        raise DiffPIRError(f"no backend serves {dev} at {self.precision} here ({'; '.join(passed)})")

    def _problem(self, candidate: Any, dev: str) -> Optional[str]:
        """Why `candidate` cannot run these torch weights here, or None."""
        if dev not in candidate.devices:
            return f"runs on {', '.join(candidate.devices)}, not {dev}"
        if self.precision not in candidate.precisions:
            return f"runs {', '.join(candidate.precisions)}, not {self.precision}"
        if "bundled" not in candidate.runs_kinds and candidate.made_from_torch not in ARTIFACT_MAKERS:
            flag = candidate.file_flag or "its model file"
            return f"needs {flag}; it cannot be made from torch weights here"
        return candidate.problem(dev)

    def _on(self, candidate: Any, passed: list[str]) -> tuple[RuntimePath, Any]:
        """The path on a chosen backend for torch weights."""
        device, dev = self.device, self.device.type
        skipped = f" ({'; '.join(passed)})" if passed else ""
        if "bundled" in candidate.runs_kinds:  # runs the torch weights themselves
            model = self._fast_torch(self.precision)
            if dev == "cuda" and candidate.graph_capture:
                path = RuntimePath("cuda-graph", candidate.name, self.precision, str(device), kernels="cupy",
                                   reason="CUDA: the whole loop as one CUDA graph, fused kernels, reduced-precision UNet")  # fmt: skip
                from diffpir_rt.kernels import cupy_problem

                problem = cupy_problem()
                if problem is not None:
                    path.kernels = "torch"
                    self._fallback(path, f"fused kernels unavailable ({problem}); the graph runs the engine's torch step")
                return path, model
            reason = f"{dev.upper() if dev == 'cpu' else dev}: {candidate.description}"
            if self.precision != "fp32":
                reason += f" in {self.precision}"
            return RuntimePath(candidate.path_name, candidate.name, self.precision, str(device), reason=reason + skipped), model
        # a file the runtime makes from the torch weights, once per weights (e.g. the cached ONNX export)
        make = ARTIFACT_MAKERS[candidate.made_from_torch]
        path_file = make(self.source, notify=self._notify, precision=self.precision)
        try:
            denoiser = candidate.load(ModelSource(candidate.file_kind, path_file), device=device, precision=self.precision,
                                      threads=self.threads)  # fmt: skip
        except DiffPIRError as e:  # a damaged cache file: make it again, once
            self._notify(f"the cached {candidate.made_from_torch} file is unusable ({e}); making it again")
            path_file = make(self.source, notify=self._notify, refresh=True, precision=self.precision)
            denoiser = candidate.load(ModelSource(candidate.file_kind, path_file), device=device, precision=self.precision,
                                      threads=self.threads)  # fmt: skip
        reason = f"{dev.upper() if dev == 'cpu' else dev}: {candidate.description} (docs/runtime.md)"
        return RuntimePath(candidate.path_name, candidate.name, self.precision, str(device), reason=reason + skipped), denoiser

    def _fast_torch(self, precision: str) -> Any:
        """The torch model of the fast paths: channels-last convolutions and fused attention."""
        return make_denoiser_from(self.source, device=self.device, dtype=precision, channels_last=True, attention="sdpa")

    # ------------------------------------------------------------------ configuration

    def tuned_defaults(self, method: str, task: str) -> dict[str, Any]:
        """This model's tuned values for a method and task (its card's), resolved once per Restorer:
        a checkpoint source decides whether its card applies by hashing the weights file."""
        key = (method, task)
        if key not in self._tuned:
            self._tuned[key] = self.source.tuned_defaults(method, task)
        return self._tuned[key]

    def default_sigma_n(self, task: str) -> float:
        """The noise level assumed when none is given: this model's tuned one for the task, else the task's."""
        key = ("sigma_n", task)
        if key not in self._tuned:
            self._tuned[key] = {"sigma_n": self.source.default_sigma_n(task)}
        return float(self._tuned[key]["sigma_n"])

    def configure(self, task: str, method: Optional[str] = None, scale: Optional[int] = None, **overrides: Any) -> Configured:
        """The config of `method` (default: engine.DEFAULT_METHOD) for `task`, with notes: the
        method's per-task defaults, this model's tuned values, then `overrides` (None = default);
        `steps` and `sigma_n` are accepted by every method (engine.configure)."""
        method = method or DEFAULT_METHOD
        get_task(task)
        sigma_n = overrides.get("sigma_n")
        if isinstance(sigma_n, str) and sigma_n == AUTO:
            raise DiffPIRError("sigma_n auto: estimated from the measurement, so it is given where the measurement is: "
                               "restore(y, operator, sigma_n='auto')")  # fmt: skip
        sigma_n = self.default_sigma_n(task) if sigma_n is None else sigma_n
        return configure(method, task, sigma_n=sigma_n, scale=scale, tuned=self.tuned_defaults(method, task), overrides=overrides)

    def config(self, task: str, method: Optional[str] = None, **overrides: Any) -> Any:
        """The config of `method` for `task`: this model's defaults, then `overrides` (see configure)."""
        return self.configure(task, method, **overrides).config

    # ------------------------------------------------------------------ running

    def _graph_sampler(self):
        from diffpir_rt.engine import GraphSampler

        if self._graphs is None:
            self._graphs = GraphSampler(self.tiling.wrap(self.denoiser), self.device, impl="cupy" if self.path.kernels == "cupy" else "torch")
        return self._graphs

    def restore(
        self,
        y: Tensor,
        operator: Operator,
        config: Any = None,
        seed: Any = None,
        x_T: Optional[Tensor] = None,
        noise: Optional[Sequence[Tensor]] = None,
        callback: Optional[Callable[[dict[str, Any]], None]] = None,
        *,
        method: Optional[str] = None,
        boundary: Optional[str] = "auto",
        sigma_n: Union[float, str, None] = None,
    ) -> Tensor:
        """Restore a batch as `diffpir restore` does. y: (B, C, h, w) or (C, h, w) in [0, 1];
        returns the image(s) in [0, 1], and keeps the run record in `last_record` (`save` writes both).

        config: the method's config; None = this model's defaults for the operator's task and
            `method` (engine.DEFAULT_METHOD by default), as the CLI takes them.
        seed: one integer for the batch, one per sample (a sample's result then does not
            depend on its batch), or None. x_T / noise: as in engine.sample.
        boundary: "auto" (as the CLI: the task's best real-photo model the method can run, extend
            or else taper, Task.resolve_boundary; a fallback is said once and noted in the record),
            "extend", "taper", "circular" (the official protocol's synthetic measurements), or None
            (the operator as given).
        sigma_n: the measurement's noise level, replacing the config's: a number, or "auto" (estimated
            from y by engine.estimate_sigma_n, the mean over the batch; each sample's estimate is kept in
            the run record as `sigma_n_estimate`). None: the config's; without a config, "auto"
            (runtime.options.DEFAULT_SIGMA_N, as the command line), or this model's default where no
            estimate can be made.

        An operator with a kernel to estimate (engine.prepare_blind, `--kernel auto`) runs the method
        that estimates it when no config is given; the kernel it ends with is in the run record
        (`kernel_estimate`) and on `operator.estimate.kernel()`.
        """
        if not isinstance(y, torch.Tensor):
            raise DiffPIRError(f"y: expected a torch.Tensor, got {type(y).__name__}")
        task = task_of(operator)
        if config is None and method is None and task is not None and kernel_estimate(operator) is not None:
            method = estimating_method("kernel", task.name)
        sigma_n, estimated = self._resolve_sigma_n(y, operator, config, method, sigma_n)
        configured = self._configured(task, operator, config, method, sigma_n)
        config = configured.config
        for note in configured.notes:
            self.say(note)
        operator, resolved, boundary_note = self._with_boundary(task, operator, config, boundary)
        y = y.to(self.device, torch.float32)
        self.runs += 1
        loop = build_method(config)
        model, path = self._model_for(loop)
        start = time.perf_counter()
        out = self._restore(loop, model, path, y, operator, config, seed, x_T, noise, callback)
        self.last_path = path
        # the loop's domain (an operator may restore on a larger one than its output, engine.boundary)
        self.tiling.note(self.tiling.wrap(model), operator.image_shape(y.shape if y.ndim == 4 else (1, *y.shape)))
        self.last_record = self._record(task, configured, resolved, seed, time.perf_counter() - start, y, operator)
        if boundary_note:
            self.last_record["notes"].append(boundary_note)
        self.last_record.update(_estimates_record(estimated, operator))
        return out

    def _resolve_sigma_n(self, y: Tensor, operator: Operator, config: Any, method: Optional[str],
                         sigma_n: Union[float, str, None]) -> tuple[Optional[float], Optional[list[float]]]:  # fmt: skip
        """The number restore uses for sigma_n (None: the config's or the model's), and the per-sample
        estimates when it was estimated. Without a config or a value, "auto", as the command line."""
        defaulted = config is None and sigma_n is None and config_class(method or DEFAULT_METHOD).uses_sigma_n()
        if defaulted:
            sigma_n = DEFAULT_SIGMA_N  # as the command line takes it (runtime.options)
        if not isinstance(sigma_n, str):
            return sigma_n, None
        if sigma_n != AUTO:
            raise DiffPIRError(f"sigma_n: expected a number in [0, 1] or {AUTO}, got {sigma_n!r}")
        try:
            estimated = measured_sigma_n(y, operator)
        except DiffPIRError as e:
            if not defaulted:
                raise
            self._say(f"sigma_n: no estimate ({e}); the model's default applies")
            return None, None
        return round(sum(estimated) / len(estimated), 6), estimated

    def _configured(self, task: Any, operator: Operator, config: Any, method: Optional[str],
                    sigma_n: Optional[float]) -> Configured:  # fmt: skip
        """The given config (with sigma_n replaced where it has one), or this model's defaults for the task."""
        if config is None:
            if task is None:
                raise DiffPIRError(f"config: required for a {type(operator).__name__} operator (no task declares it)")
            return self.configure(task.name, method, scale=task.record(operator).get("scale"), sigma_n=sigma_n)
        if sigma_n is not None and type(config).uses_sigma_n():
            config = dataclasses.replace(config, sigma_n=sigma_n)
        return Configured(config, (), "given by the caller")

    def _with_boundary(self, task: Any, operator: Operator, config: Any,
                       boundary: Optional[str]) -> tuple[Operator, Optional[str], Optional[str]]:  # fmt: skip
        """The operator on the boundary model that runs, that model's name, and the one-line note
        when `auto` could not give this method the task's best model (said once here)."""
        if task is None or boundary is None:
            return operator, None, None
        resolved = task.resolve_boundary(boundary, type(config).capabilities, config.method)
        note = task.boundary_note(boundary, resolved, config.method)
        if note:
            self.say(note)
        # the extended grid suits the UNet and the method's own size rule (ILVR's low-pass factor)
        multiple = math.lcm(int(getattr(self.denoiser, "size_multiple", 1)), int(config.size_multiple))
        return task.apply_boundary(operator, resolved, multiple), resolved, note

    def _record(self, task: Any, configured: Configured, boundary: Optional[str], seed: Any, seconds: float,
                y: Tensor, operator: Any) -> dict[str, Any]:  # fmt: skip
        """The run record of a restoration: what ran, with what, how long (the CLI adds its files)."""
        config = configured.config
        return {
            **({"task": task.name} if task is not None else {}),
            "method": config.method,
            "config": config.to_dict(),
            "defaults_source": configured.defaults_source,
            **(task.record(operator) if task is not None else {}),
            "boundary": boundary,
            "seed": seed if not isinstance(seed, torch.Tensor) else seed.tolist(),
            "model_calls": config.model_calls(),
            "batch_size": int(y.shape[0]) if y.ndim == 4 else 1,
            "notes": list(configured.notes),
            **({"unused": configured.ignored} if configured.ignored else {}),
            "runtime": self.describe(),
            "seconds": round(seconds, 3),
        }

    def save(self, path: Union[str, "os.PathLike[str]"], x: Tensor, bit_depth: int = 8) -> None:
        """Write a restored image (C, H, W) or (1, C, H, W) and, beside it, `<path>.json`, the run record
        of the last restoration: what `diffpir restore` writes, atomically (an old record never stays
        beside a new image)."""
        import json
        from pathlib import Path

        from diffpir_rt.engine.imageio import write_image, write_text

        if self.last_record is None:
            raise DiffPIRError("save: no restoration to record yet (call restore first)")
        image = x[0] if x.ndim == 4 else x
        out = write_image(Path(path), image.detach().cpu(), bit_depth=bit_depth)
        write_text(out.with_name(out.name + ".json"), json.dumps({**self.last_record, "bit_depth": bit_depth}, indent=2) + "\n")

    def say(self, line: str) -> None:
        """A one-line notice on the notify channel, said once per Restorer (the CLI says the boundary note
        through it before the work, so the restoration does not repeat it)."""
        if line not in self._said:
            self._said.add(line)
            self._notify(line)

    def _restore(self, method, model, path: RuntimePath, y, operator, config, seed, x_T, noise, callback) -> Tensor:
        """The path's loop (restore's body): the graph runtime, or engine.sample; tiled per self.tiling.
        Every way the loop leaves the prepared path is written into `path` (a copy for this run)."""
        tiled = self.tiling.wrap(model)
        if path.name != "cuda-graph":
            return sample(tiled, operator, y, config, x_T=x_T, noise=noise, seed=seed, callback=callback)
        if not type(config).capabilities.graph_capture or method.needs_grad:
            self._eager(path, f"method {config.method} runs eagerly (its loop is not captured in a CUDA graph)")
            return sample(tiled, operator, y, config, x_T=x_T, noise=noise, seed=seed, callback=callback)
        image_bytes = 4 * operator.image_shape(y.shape if y.ndim == 4 else (1, *y.shape)).numel()
        if sum(s.noise for s in method.steps()) * image_bytes > MAX_GRAPH_NOISE_BYTES:
            self._eager(path, "the run's pre-drawn noise would not fit a CUDA graph's buffers; running the loop eagerly")
            return sample(tiled, operator, y, config, x_T=x_T, noise=noise, seed=seed, callback=callback)
        try:
            out = self._graph_sampler().sample(operator, y, config, x_T=x_T, noise=noise, seed=seed)
        except DiffPIRError:
            raise
        except RuntimeError as e:  # a capture the driver refused: the same loop, eagerly
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.path.name = "cuda-eager"
            self._eager(path, f"CUDA graph capture failed ({first}); running the loop eagerly")
            return sample(tiled, operator, y, config, x_T=x_T, noise=noise, seed=seed, callback=callback)
        if callback is not None:  # one replay runs every step: report them done
            for step in (s for s in method.steps() if s.t is not None):
                callback({"i": step.index, "t": step.t})
        return out

    def path_for(self, config: Any) -> RuntimePath:
        """The path a restoration with `config` takes here (its fallbacks included), before running it."""
        return self._model_for(build_method(config))[1]

    def _eager(self, path: RuntimePath, line: str) -> None:
        path.name = "cuda-eager"
        if line not in path.fallbacks:
            path.fallbacks.append(line)
        self.say(line)

    def generate(self, shape: Sequence[int], config: Any, seed: Any = None, callback=None) -> Tensor:
        """Unconditional samples (DDIM, DDPM) of shape (B, C, H, W) in [0, 1]."""
        model, self.last_path = self._model_for(build_method(config))
        model = self.tiling.wrap(model)
        out = generate(model, shape, config, seed=seed, device=self.device, callback=callback)
        self.tiling.note(model, out.shape)
        return out

    def _model_for(self, method: Any) -> tuple[Any, RuntimePath]:
        """The denoiser that can serve `method`, and the path it runs on for this run: the prepared
        one, unless the method needs the learned variance or gradients that it cannot give (an
        ONNX/TensorRT graph outputs eps only); then the same weights on torch, prepared once,
        with a notice (said once) and the fallback in this run's path."""
        path = RuntimePath(**{**self.path.to_dict(), "fallbacks": list(self.path.fallbacks)})
        model = self.denoiser
        missing = None
        if method.needs_variance and not hasattr(model, "eps_and_variance"):
            missing = "the learned variance"
        elif method.needs_grad and not BACKENDS[self.path.backend].gives_gradients:
            missing = "gradients through the model"
        if missing is None:
            return model, path
        if not self._torch_weights():
            raise DiffPIRError(
                f"method {method.config.method}: needs {missing}, which a {self.source.kind} graph does not give; "
                "use the torch weights (--checkpoint) or a fixed variance (--variance fixed_small)"
            )
        precision = "fp32" if self.device.type == "cpu" else self.precision
        if getattr(self, "_torch_fallback", None) is None:
            self._torch_fallback = self._fast_torch(precision)
        line = f"method {method.config.method} needs {missing}: running it on torch instead of {self.path.backend}"
        path.fallbacks.append(line)
        path.name = "torch-fast" if self.device.type == "cpu" else "cuda-eager"
        path.backend, path.precision = "torch", precision
        self.say(line)
        return self._torch_fallback, path

    def denoiser_size(self) -> int:
        """The model's training image side: the natural size for unconditional samples."""
        from diffpir_rt.engine import resolve_arch

        try:
            return resolve_arch(self.source.arch_name)[1].image_size
        except DiffPIRError:
            return 64

    # ------------------------------------------------------------------ records

    def describe(self) -> dict[str, Any]:
        """What runs, for run records: the path that ran the last restoration (or the prepared one)
        and why, with every fallback, the model, the backend's own description."""
        path = self.last_path if self.last_path is not None else self.path
        model = self._torch_fallback if path.backend == "torch" and self.path.backend != "torch" else self.denoiser
        return {
            "path": path.to_dict(),
            "model": self.source.to_dict(),
            "backend": model.describe(),
            "tiling": self.tiling.describe(),
            "torch": torch.__version__,
        }
