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

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from diffpir_rt.engine import (
    METHODS,
    DiffPIRConfig,
    ModelSource,
    Operator,
    build_method,
    generate,
    make_denoiser_from,
    onnxruntime_problem,
    resolve_device,
    sample,
)
from diffpir_rt.errors import DiffPIRError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
#: Above this many bytes of pre-drawn noise a CUDA graph is not worth its memory (RePaint's
#: default schedule draws ~7000 images of noise); such runs take the eager loop.
MAX_GRAPH_NOISE_BYTES = 2 * 1024**3


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
    """The UNet precision to use: 'auto' is fp16 on CUDA and fp32 on CPU; fp16 on CPU is refused."""
    if precision not in PRECISIONS:
        raise DiffPIRError(f"--dtype {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise DiffPIRError(
            "--dtype fp16: CPUs have no fast fp16 arithmetic (about 100x slower than fp32 here); "
            "use --dtype bf16 or fp32 on the CPU"
        )
    return precision


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
        if backend not in BACKENDS:
            raise DiffPIRError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise DiffPIRError(f"--threads {threads!r}: expected a positive integer")
        self.device = resolve_device(str(device))
        self.reference = bool(reference)
        self.threads = threads
        self._notify = notify or (lambda line: print(f"[diffpir] {line}", file=sys.stderr))
        if self.source.kind in ("onnx", "tensorrt") and precision != "auto":
            raise DiffPIRError(
                f"--dtype {precision}: applies to torch weights; a {self.source.kind} file runs at the precision "
                "it was exported with (`diffpir export onnx --fp16`)"
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
        self.runs = 0

    # ------------------------------------------------------------------ preparation

    def _fallback(self, path: RuntimePath, line: str) -> None:
        path.fallbacks.append(line)
        self._notify(line)

    def _prepare(self, backend: str) -> tuple[RuntimePath, Any]:
        device, source = self.device, self.source
        if source.kind in ("onnx", "tensorrt"):
            wanted = "onnxruntime" if source.kind == "onnx" else "tensorrt"
            if backend not in ("auto", wanted):
                raise DiffPIRError(f"--backend {backend}: a {source.kind} model runs on the {wanted} backend")
            denoiser = make_denoiser_from(source, device=device, threads=self.threads)
            name = "onnxruntime" if wanted == "onnxruntime" else ("cuda-graph" if device.type == "cuda" else "tensorrt")
            return RuntimePath(name, wanted, str(denoiser.describe().get("precision", "fp32")), str(device),
                               reason=f"the model is a {source.kind} file"), denoiser  # fmt: skip
        if backend == "tensorrt":
            raise DiffPIRError("--backend tensorrt: needs a TensorRT plan (--engine) from `diffpir export trt`")

        if self.reference:
            if backend not in ("auto", "torch"):
                raise DiffPIRError(f"--reference runs the torch fp32 loop; drop --backend {backend}")
            model = make_denoiser_from(source, device=device)  # fp32, NCHW, the reference attention
            return RuntimePath("reference", "torch", "fp32", str(device), reason="--reference: the fp32 eager loop"), model

        if device.type == "cuda":
            if backend == "onnxruntime":
                raise DiffPIRError("--backend onnxruntime: on CUDA the graph runtime is the fast path; use --device cpu for ONNX Runtime")
            model = self._fast_torch(self.precision)
            from diffpir_rt.kernels import cupy_problem

            path = RuntimePath("cuda-graph", "torch", self.precision, str(device), kernels="cupy",
                               reason="CUDA: the whole loop as one CUDA graph, fused kernels, reduced-precision UNet")  # fmt: skip
            problem = cupy_problem()
            if problem is not None:
                path.kernels = "torch"
                self._fallback(path, f"fused kernels unavailable ({problem}); the graph runs the engine's torch step")
            return path, model

        # CPU
        problem = onnxruntime_problem("cpu", export=True) if backend in ("auto", "onnxruntime") else "--backend torch"
        if backend == "onnxruntime" and problem is not None:
            raise DiffPIRError(f"--backend onnxruntime: {problem}")
        if problem is None and self.precision == "fp32":
            from .onnx_cache import cached_onnx

            onnx_path = cached_onnx(source, notify=self._notify)
            try:
                denoiser = make_denoiser_from(ModelSource("onnx", onnx_path), device=device, threads=self.threads)
            except DiffPIRError as e:  # a damaged cache file: make it again, once
                self._notify(f"the cached ONNX graph is unusable ({e}); exporting it again")
                onnx_path = cached_onnx(source, notify=self._notify, refresh=True)
                denoiser = make_denoiser_from(ModelSource("onnx", onnx_path), device=device, threads=self.threads)
            return RuntimePath("onnxruntime", "onnxruntime", "fp32", str(device),
                               reason="CPU: ONNX Runtime is the fastest CPU UNet measured (docs/runtime.md)"), denoiser  # fmt: skip
        model = self._fast_torch(self.precision)
        reason = "CPU: torch channels-last + SDPA"
        if backend == "auto" and problem is not None:
            reason += f" (ONNX Runtime path unavailable: {problem})"
        elif self.precision != "fp32":
            reason += f" in {self.precision}"
        return RuntimePath("torch-fast", "torch", self.precision, str(device), reason=reason), model

    def _fast_torch(self, precision: str) -> Any:
        """The torch model of the fast paths: channels-last convolutions and fused attention."""
        return make_denoiser_from(self.source, device=self.device, dtype=precision, channels_last=True, attention="sdpa")

    # ------------------------------------------------------------------ configuration

    def task_defaults(self, task: str):
        """The task's default hyperparameters for this model (its card's tuned ones, or the official)."""
        return self.source.task_defaults(task)

    def config(self, task: str, method: str = "diffpir", **overrides: Any) -> Any:
        """The config of `method` for `task`: this model's defaults, then `overrides` (None = default)."""
        if method not in METHODS:
            raise DiffPIRError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        config_class = METHODS[method][0]
        if method == "diffpir":
            d = self.task_defaults(task)
            base = {"lam": d.lam, "zeta": d.zeta, "sigma_n": d.sigma_n, "steps": d.steps}
            unknown = sorted(set(overrides) - set(config_class.field_names()))
            if unknown:
                raise DiffPIRError(f"method diffpir: has no parameter {unknown[0]!r}")
            return DiffPIRConfig(**{**base, **overrides})
        sigma_n = overrides.get("sigma_n", self.task_defaults(task).sigma_n)
        base = config_class.for_task(task, sigma_n)
        unknown = sorted(set(overrides) - set(config_class.field_names()))
        if unknown:
            raise DiffPIRError(f"method {method}: has no parameter {unknown[0]!r} (it takes {', '.join(config_class.field_names())})")
        from dataclasses import replace

        return replace(base, **overrides)

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
        config: Any,
        seed: Any = None,
        x_T: Optional[Tensor] = None,
        noise: Optional[Sequence[Tensor]] = None,
        callback: Optional[Callable[[dict[str, Any]], None]] = None,
    ) -> Tensor:
        """Restore a batch. y: (B, C, h, w) or (C, h, w) in [0, 1]; returns the image(s) in [0, 1].

        seed: one integer for the batch, one per sample (a sample's result then does not
        depend on its batch), or None. x_T / noise: as in engine.sample.
        """
        if not isinstance(y, Tensor):
            raise DiffPIRError(f"y: expected a torch.Tensor, got {type(y).__name__}")
        y = y.to(self.device, torch.float32)
        self.runs += 1
        method = build_method(config)
        model = self._model_for(method)
        out = self._restore(method, model, y, operator, config, seed, x_T, noise, callback)
        # the loop's domain (an operator may restore on a larger one than its output, engine.boundary)
        self.tiling.note(self.tiling.wrap(model), operator.image_shape(y.shape if y.ndim == 4 else (1, *y.shape)))
        return out

    def _restore(self, method, model, y, operator, config, seed, x_T, noise, callback) -> Tensor:
        """The path's loop (restore's body): the graph runtime, or engine.sample; tiled per self.tiling."""
        tiled = self.tiling.wrap(self.denoiser)
        if model is not self.denoiser or method.needs_grad:
            return sample(self.tiling.wrap(model), operator, y, config, x_T=x_T, noise=noise, seed=seed, callback=callback)
        if self.path.name == "cuda-graph" and callback is None:
            image_bytes = 4 * operator.image_shape(y.shape if y.ndim == 4 else (1, *y.shape)).numel()
            if sum(s.noise for s in method.steps()) * image_bytes > MAX_GRAPH_NOISE_BYTES:
                return sample(tiled, operator, y, config, x_T=x_T, noise=noise, seed=seed)
            try:
                return self._graph_sampler().sample(operator, y, config, x_T=x_T, noise=noise, seed=seed)
            except DiffPIRError:
                raise
            except RuntimeError as e:  # a capture the driver refused: the same loop, eagerly
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self.path.name = "cuda-eager"
                self._fallback(self.path, f"CUDA graph capture failed ({first}); running the loop eagerly")
        return sample(tiled, operator, y, config, x_T=x_T, noise=noise, seed=seed, callback=callback)

    def generate(self, shape: Sequence[int], config: Any, seed: Any = None, callback=None) -> Tensor:
        """Unconditional samples (DDIM, DDPM) of shape (B, C, H, W) in [0, 1]."""
        model = self.tiling.wrap(self._model_for(build_method(config)))
        out = generate(model, shape, config, seed=seed, device=self.device, callback=callback)
        self.tiling.note(model, out.shape)
        return out

    def _model_for(self, method: Any) -> Any:
        """The denoiser that can serve `method`: the prepared one, unless the method needs the
        learned variance or gradients that it cannot give (an ONNX/TensorRT graph outputs eps
        only); then the same weights on torch, prepared once, with a notice."""
        model = self.denoiser
        missing = None
        if method.needs_variance and not hasattr(model, "eps_and_variance"):
            missing = "the learned variance"
        elif method.needs_grad and self.path.backend != "torch":
            missing = "gradients through the model"
        if missing is None:
            return model
        if self.source.kind in ("onnx", "tensorrt"):
            raise DiffPIRError(
                f"method {method.config.method}: needs {missing}, which a {self.source.kind} graph does not give; "
                "use the torch weights (--checkpoint) or a fixed variance (--param variance=fixed_small)"
            )
        if getattr(self, "_torch_fallback", None) is None:
            self._torch_fallback = self._fast_torch("fp32" if self.device.type == "cpu" else self.precision)
            self._notify(f"method {method.config.method} needs {missing}: running it on torch instead of {self.path.backend}")
        return self._torch_fallback

    def denoiser_size(self) -> int:
        """The model's training image side: the natural size for unconditional samples."""
        from diffpir_rt.engine import resolve_arch

        try:
            return resolve_arch(self.source.arch_name)[1].image_size
        except DiffPIRError:
            return 64

    # ------------------------------------------------------------------ records

    def describe(self) -> dict[str, Any]:
        """What runs, for run records: the path and why, the model, the backend's own description."""
        return {
            "path": self.path.to_dict(),
            "model": self.source.to_dict(),
            "backend": self.denoiser.describe(),
            "tiling": self.tiling.describe(),
            "torch": torch.__version__,
        }
