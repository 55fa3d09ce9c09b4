"""The CUDA-graph runtime: a method's whole loop recorded once, replayed per batch.

The loop is `engine.methods.loop.run_steps`, the reference sampler's own, run on static
buffers: the bound operator (blur spectra or mask, and the measurement), x_T, every
step's noise and timesteps. Per restoration, `load` refills the buffers (drawing the
noise exactly as `engine.sample` does, through the same `prepare`) and the graph is
replayed; a new kernel, mask or measurement of the same layout changes buffers, not the
graph. Without CUDA (or with capture=False) the same static-buffer loop runs eagerly,
which is how its equality with `engine.sample` is tested on CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Hashable, Optional, Union

import torch
from torch import Tensor

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.kernels import Impl

from .fast_unet import check_capturable
from .methods import Method, Step, build_method
from .methods.loop import EpsModel, check_output, pad_model, run_steps
from .operators import DataStep, Operator, check_image_batch
from .sampler import Noise, check_applicable, operator_output, prepare

logger = logging.getLogger(__name__)


def capture_cuda_graph(fn: Callable[[], Any], device: torch.device, warmup: int = 1) -> "torch.cuda.CUDAGraph":
    """Warm `fn` up on a side stream (cuFFT plans, cuDNN algorithms, kernel loads), then record
    one call of it as a CUDA graph; replay with `graph.replay()`."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph


# ----------------------------------------------------------------------------- static operators


def _tensor_fields(data: DataStep) -> dict[str, Tensor]:
    return {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if isinstance(getattr(data, f.name), Tensor)}


def data_layout(data: Optional[DataStep], batch: int) -> tuple[Hashable, ...]:
    """What a captured graph bakes in about a bound operator: its type, and per tensor field
    the shape with per-sample dimensions widened to the batch, and the dtype."""
    if data is None:
        return ()
    static = tuple(
        (f.name, getattr(data, f.name)) for f in dataclasses.fields(data) if not isinstance(getattr(data, f.name), Tensor)
    )
    shapes = tuple(
        (name, (batch, *t.shape[1:]) if t.ndim >= 1 else (), str(t.dtype)) for name, t in _tensor_fields(data).items()
    )
    return (type(data).__name__, static, shapes)


def static_copy(data: DataStep, batch: int, device: torch.device) -> DataStep:
    """A copy of `data` whose tensors are fresh buffers of the batch-widened layout."""
    buffers = {
        name: torch.zeros((batch, *t.shape[1:]) if t.ndim >= 1 else (), dtype=t.dtype, device=device)
        for name, t in _tensor_fields(data).items()
    }
    return dataclasses.replace(data, **buffers)


def load_data(static: DataStep, data: DataStep) -> None:
    """Copy a bound operator into the static one (one kernel or mask broadcasts to the batch)."""
    for name, buffer in _tensor_fields(static).items():
        value = getattr(data, name)
        try:
            buffer.copy_(value)
        except RuntimeError:
            raise DiffPIRError(
                f"operator: its {name} of shape {tuple(value.shape)} does not fit this runtime's {tuple(buffer.shape)}"
            ) from None


class StaticInputs:
    """Each step's timesteps and noise as views of the runtime's static buffers."""

    def __init__(self, timesteps: Tensor, noise: Tensor, steps: tuple[Step, ...]) -> None:
        self._timesteps = timesteps
        self._noise = noise
        self._offsets: dict[int, int] = {}
        offset = 0
        for step in steps:
            self._offsets[step.index] = offset
            offset += step.noise

    def timesteps(self, step: Step) -> Tensor:
        return self._timesteps[step.index]

    def noise(self, step: Step) -> Optional[Tensor]:
        if step.noise == 0:
            return None
        start = self._offsets[step.index]
        return self._noise[start : start + step.noise]


# ----------------------------------------------------------------------------- runtime


class GraphRuntime:
    """One method's loop for one layout, on static buffers; a CUDA graph on first run (CUDA only).

    Args:
        eps_model: (x_t fp32 (B, C, H, W), t int64 (B,)) -> eps; e.g. a backend's denoiser
            or fast_unet.prepare_unet(...). Its `size_multiple` pads as in engine.sample.
        method: built for the run (engine.methods.build_method(config, impl)).
        data: a bound operator of the layout to serve (its values are not kept), or None
            for generation.
        y_shape: the measurement's (B, C, h, w) (None for generation).
        image_shape: the image's (B, C, H, W).
        pad_mode: how images are padded to the model's size multiple (the operator's).
        device: where buffers live (the model's device).
        capture: record a CUDA graph (default: on CUDA devices); False runs the loop eagerly.
        warmup: eager loop runs before capture (cuFFT plans, cuDNN algorithms, kernel loads).
    """

    def __init__(
        self,
        eps_model: EpsModel,
        method: Method,
        data: Optional[DataStep],
        y_shape: Optional[tuple[int, ...]],
        image_shape: tuple[int, ...],
        pad_mode: str,
        device: Union[str, torch.device],
        *,
        capture: Optional[bool] = None,
        warmup: int = 2,
    ) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise DiffPIRError(f"capture: CUDA graphs need a CUDA device, got {self.device}")
        if self.capture:
            check_capturable(eps_model)  # torch.compile's own CUDA graphs fail inside ours
        if method.needs_grad and self.capture:
            raise DiffPIRError(f"method {method.config.method}: differentiates through the model; it cannot run in a CUDA graph")
        self.method = method
        self.steps = method.steps()
        self.y_shape = None if y_shape is None else tuple(y_shape)
        self.image_shape = tuple(image_shape)
        self.pad_mode = pad_mode
        self.warmup = int(warmup)
        batch = self.image_shape[0]
        total_noise = sum(step.noise for step in self.steps)
        self.buffers: dict[str, Tensor] = {
            "x_T": torch.zeros(self.image_shape, device=self.device),
            "noise": torch.zeros((total_noise, *self.image_shape), device=self.device),
            "timesteps": torch.zeros((len(self.steps), batch), dtype=torch.int64, device=self.device),
            "out": torch.zeros(self.image_shape, device=self.device),
        }
        for step in self.steps:
            if step.t is not None:
                self.buffers["timesteps"][step.index].fill_(step.t)
        self.data = None if data is None else static_copy(data, batch, self.device)
        self.layout = data_layout(data, batch)
        self._inputs = StaticInputs(self.buffers["timesteps"], self.buffers["noise"], self.steps)
        self._model = pad_model(eps_model, pad_mode)
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._loaded = False

    @property
    def nbytes(self) -> int:
        """Bytes of the static buffers (the noise buffer dominates: steps x image)."""
        tensors = list(self.buffers.values()) + (list(_tensor_fields(self.data).values()) if self.data is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def load(
        self,
        operator: Optional[Operator],
        y: Optional[Tensor],
        x_T: Optional[Tensor] = None,
        noise: Optional[Noise] = None,
        seed: Any = None,
        data: Optional[DataStep] = None,
    ) -> None:
        """Fill the static buffers for one restoration, drawing randomness as engine.sample does.

        data: operator.data_step(y) when the caller has it already (its spectra cost FFTs).

        Raises:
            DiffPIRError: y or an operator that do not fit this runtime, bad x_T / noise / seed.
        """
        like = torch.empty((), device=self.device)
        data = None
        if operator is not None:
            check_image_batch(y)
            if tuple(y.shape) != self.y_shape:
                raise DiffPIRError(f"y: shape {tuple(y.shape)} does not fit this runtime's {self.y_shape}")
            y = y.to(self.device, torch.float32)
            data = operator.data_step(y) if data is None else data
            if data_layout(data, self.image_shape[0]) != self.layout or operator.pad_mode != self.pad_mode:
                raise DiffPIRError(f"operator: {type(operator).__name__} does not fit this runtime's layout")
            load_data(self.data, data)
        x, stream = prepare(self.method, operator, y, data, torch.Size(self.image_shape), like, x_T, noise, seed)
        self.buffers["x_T"].copy_(x)
        for i in range(self.buffers["noise"].shape[0]):
            self.buffers["noise"][i].copy_(stream.next())
        self._loaded = True

    @torch.no_grad()
    def loop(self) -> None:
        """The static-buffer loop, eagerly: what the graph records. Writes buffers["out"]."""
        out = run_steps(self.method, self._model, self.data, self.buffers["x_T"], self._inputs, self.steps)
        self.buffers["out"].copy_(out)

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def run(self) -> Tensor:
        """Run the loop on the loaded buffers (replaying the graph, capturing it first if
        needed); returns buffers["out"], which the next run overwrites."""
        if not self._loaded:
            raise DiffPIRError("graph runtime: load(operator, y, ...) before run()")
        if not self.capture:
            self.loop()
        else:
            if self._graph is None:
                self._graph = capture_cuda_graph(self.loop, self.device, warmup=self.warmup)
                logger.info("captured the %d-step %s loop for %s", len(self.steps), self.method.config.method, self.image_shape)
            self._graph.replay()
        return self.buffers["out"]

    def restore(
        self, operator: Optional[Operator], y: Optional[Tensor], x_T: Optional[Tensor] = None, noise: Optional[Noise] = None,
        seed: Any = None, data: Optional[DataStep] = None,
    ) -> Tensor:
        """load + run: the (B, C, H, W) image in [0, 1] (the operator's output of the loop's
        result, see engine.sampler.operator_output), a fresh tensor."""
        self.load(operator, y, x_T=x_T, noise=noise, seed=seed, data=data)
        return check_output(operator_output(operator, self.run(), self.y_shape).clone())


class GraphSampler:
    """engine.sample's contract over cached GraphRuntimes, one per (method config, layout).

    Args:
        eps_model: the model every runtime shares.
        device: where the runtimes live.
        impl: kernels for the methods that have fused ones: "cupy", "torch" or "auto".
        capture, warmup: passed to each GraphRuntime.
    """

    def __init__(
        self, eps_model: EpsModel, device: Union[str, torch.device], *, impl: Impl = "auto", capture: Optional[bool] = None, warmup: int = 2
    ) -> None:
        self.eps_model = eps_model
        self.device = torch.device(device)
        self.impl = impl
        self.capture = capture
        self.warmup = warmup
        self.runtimes: dict[tuple, GraphRuntime] = {}

    def runtime_for(self, operator: Operator, y: Tensor, config: Any) -> GraphRuntime:
        return self._runtime_and_data(operator, y, config)[0]

    def _runtime_and_data(self, operator: Operator, y: Tensor, config: Any) -> tuple[GraphRuntime, DataStep]:
        """The runtime serving this layout, and y's bound operator (computed once per restore)."""
        data = operator.data_step(y)
        image_shape = tuple(operator.image_shape(y.shape))
        key = (config, tuple(y.shape), image_shape, data_layout(data, image_shape[0]), operator.pad_mode)
        if key not in self.runtimes:
            method = build_method(config, impl=self.impl)
            check_applicable(method, data, config.method)
            self.runtimes[key] = GraphRuntime(
                self.eps_model, method, data, tuple(y.shape), image_shape, operator.pad_mode, self.device,
                capture=self.capture, warmup=self.warmup,
            )  # fmt: skip
        return self.runtimes[key], data

    def sample(
        self, operator: Operator, y: Tensor, config: Any, x_T: Optional[Tensor] = None, noise: Optional[Noise] = None, seed: Any = None
    ) -> Tensor:
        """Restore y like engine.sample (same arguments, minus the model and callback)."""
        if not isinstance(y, Tensor):
            raise DiffPIRError(f"y: expected a torch.Tensor, got {type(y).__name__}")
        unbatched = y.ndim == 3
        if unbatched:
            y = y[None]
        check_image_batch(y)
        y = y.to(self.device, torch.float32)
        runtime, data = self._runtime_and_data(operator, y, config)
        out = runtime.restore(operator, y, x_T=x_T, noise=noise, seed=seed, data=data)
        return out[0] if unbatched else out
