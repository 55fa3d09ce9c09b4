"""The CUDA-graph runtime: the whole N-step DiffPIR loop captured once, replayed per image.

The loop is engine.sample's (spec §4): model call, data step, re-noise, on static
buffers laid out by graph_plan.py. Per image, `load` refills the buffers (measurement,
blur kernel or mask, x_T, per-step noise drawn in the sampler's order) and the graph is
replayed; a new operator of the same family changes buffers, not the graph. The math is
the engine's: the kernels' torch paths are `diffpir_update` and
`FourierDataStep.correction`, and impl="cupy" swaps in the fused CUDA kernels.

Data step and DiffPIR step run in fp32; only the model may be reduced precision (see
fast_unet.prepare_unet). Without CUDA (or with capture=False) the same static-buffer loop
runs eagerly, which is how its equality with engine.sample is tested on CPU.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from .fused import fourier_correction, predict_x0_01, step_elementwise, step_fourier
from diffpir_rt.kernels import Impl, resolve_impl

from diffpir_rt.errors import DiffPIRError
from .graph_plan import GraphPlan, operator_family, plan_graph
from .imageio import from_model
from .operators import ElementwiseDataStep, FourierDataStep, Operator, check_image_batch
from .sampler import DiffPIRConfig, EpsModel, _check_state, _padded_model, initial_state
from .schedule import linear_schedule

logger = logging.getLogger(__name__)

Noise = Union[Sequence[Tensor], Tensor]


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


class GraphRuntime:
    """One planned loop on static buffers; captured as a CUDA graph on first run (CUDA only).

    Args:
        eps_model: (x_t fp32 (B, C, H, W), t int64 (B,)) -> eps; e.g. a UNetDenoiser or
            fast_unet.prepare_unet(...). Its `size_multiple` pads as in engine.sample.
        plan: from graph_plan.plan_graph.
        device: where buffers live (the model's device).
        impl: kernels: "cupy" (fused CUDA kernels), "torch" (engine functions) or "auto".
        capture: capture a CUDA graph (default: on CUDA devices); False runs the loop eagerly.
        warmup: eager loop runs before capture (cuFFT plans, cuDNN algorithms, kernel loads).
    """

    def __init__(
        self,
        eps_model: EpsModel,
        plan: GraphPlan,
        device: Union[str, torch.device],
        *,
        impl: Impl = "auto",
        capture: Optional[bool] = None,
        warmup: int = 2,
    ) -> None:
        self.plan = plan
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.capture = self.device.type == "cuda" if capture is None else bool(capture)
        if self.capture and self.device.type != "cuda":
            raise DiffPIRError(f"capture: CUDA graphs need a CUDA device, got {self.device}")
        self.eps_model = eps_model
        self.impl: Impl = resolve_impl(impl, torch.empty(0, device=self.device), "graph_runtime")
        self.warmup = int(warmup)
        self.buffers: dict[str, Tensor] = {
            spec.name: torch.zeros(spec.shape, dtype=spec.dtype, device=self.device) for spec in plan.buffers
        }
        for step in plan.steps:
            self.buffers["timesteps"][step.index].fill_(step.t)
        self._model = _padded_model(eps_model, plan.pad_mode)
        self._data_step = self._static_data_step()
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._loaded = False

    # ------------------------------------------------------------------ buffers

    def _static_data_step(self) -> Union[FourierDataStep, ElementwiseDataStep]:
        """The operator's data step built on the static buffers (the graph's view of it)."""
        b = self.buffers
        if self.plan.family == "fourier":
            return FourierDataStep(b["otf"], b["otf_abs2_folded"], b["y_spectrum"], self.plan.sf)
        return ElementwiseDataStep(b["mask"], b["y"])

    @torch.no_grad()
    def load(
        self,
        operator: Operator,
        y: Tensor,
        x_T: Optional[Tensor] = None,
        noise: Optional[Noise] = None,
        seed: Optional[int] = None,
    ) -> None:
        """Fill the static buffers for one restoration, drawing randomness as engine.sample does.

        Args:
            operator: of the plan's family and scale (its kernel or mask may differ per call).
            y: (B, C, h, w) measurement in [0, 1], the plan's y_shape.
            x_T, noise, seed: as in engine.sample (x_T's noise first, then one per step).

        Raises:
            DiffPIRError: y or operator that do not fit the plan, bad x_T / noise.
        """
        plan = self.plan
        check_image_batch(y)
        if tuple(y.shape) != plan.y_shape:
            raise DiffPIRError(f"y: shape {tuple(y.shape)} does not fit this runtime's plan {plan.y_shape}")
        if operator_family(operator) != (plan.family, plan.sf) or operator.pad_mode != plan.pad_mode:
            raise DiffPIRError(
                f"operator: {type(operator).__name__} {operator_family(operator)} does not fit this runtime's "
                f"plan ({plan.family!r}, sf {plan.sf})"
            )
        y = y.to(self.device, torch.float32)
        data_step = operator.data_step(y)
        b = self.buffers
        if plan.family == "fourier":
            b["otf"].copy_(data_step.otf)  # broadcasts one kernel to the batch
            b["otf_abs2_folded"].copy_(data_step.otf_abs2_folded)
            b["y_spectrum"].copy_(data_step.y_spectrum)
        else:
            mask = data_step.mask
            if mask.ndim == 4 and mask.shape[1] != b["mask"].shape[1] and mask.shape[1] != 1:
                raise DiffPIRError(
                    f"operator: a {mask.shape[1]}-channel mask does not fit this runtime's "
                    f"{b['mask'].shape[1]}-channel mask buffer"
                )
            b["mask"].copy_(mask)  # broadcasts a shared mask over the batch (and channels)
            b["y"].copy_(data_step.y)

        generator = None
        if x_T is None or noise is None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed) if seed is not None else generator.seed()
        shape = plan.image_shape
        if x_T is None:
            z = torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)
            b["x_T"].copy_(initial_state(operator, y, plan.config, z, linear_schedule()))
        else:
            b["x_T"].copy_(_check_state("x_T", x_T, torch.Size(shape), y))
        n_steps = len(plan.steps)
        if noise is None:
            for i in range(n_steps):
                torch.randn(shape, generator=generator, out=b["noise"][i])
        else:
            if len(noise) != n_steps:
                raise DiffPIRError(f"noise: expected {n_steps} tensors (one per step), got {len(noise)}")
            for i in range(n_steps):
                b["noise"][i].copy_(_check_state(f"noise[{i}]", noise[i], torch.Size(shape), y))
        self._loaded = True

    # ------------------------------------------------------------------ the loop

    @torch.no_grad()
    def loop(self) -> None:
        """The static-buffer loop, eagerly: what the graph records. Writes buffers["out"]."""
        b, impl = self.buffers, self.impl
        x = b["x_T"]
        for step in self.plan.steps:
            c = step.coefficients
            # 1. prior step (one NFE), spec §3; fp32 eps, contiguous for the kernels
            eps = self._model(x, b["timesteps"][step.index]).to(torch.float32).contiguous()
            z = b["noise"][step.index]
            # 2. data step on [0, 1] images with rho_t, then effective eps and re-noise, spec §4, §6
            if self.plan.family == "fourier":
                x0_01 = predict_x0_01(x, eps, c, impl=impl)
                correction = fourier_correction(self._data_step, torch.fft.fft2(x0_01), step.rho, impl=impl)
                x = step_fourier(x, eps, z, c, self._data_step, correction, impl=impl)
            else:
                x = step_elementwise(x, eps, z, c, self._data_step, step.rho, impl=impl)
        # 3. the official final call at t = 0 is discarded, so skipped (spec §4.3)
        b["out"].copy_(from_model(x).clamp(0.0, 1.0))

    @torch.no_grad()
    def _capture(self) -> None:
        self._graph = capture_cuda_graph(self.loop, self.device, warmup=self.warmup)
        logger.info("captured the %d-step %s loop for %s (impl %s)", len(self.plan.steps), self.plan.family,
                    self.plan.image_shape, self.impl)  # fmt: skip

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
                self._capture()
            self._graph.replay()
        return self.buffers["out"]

    def restore(
        self,
        operator: Operator,
        y: Tensor,
        x_T: Optional[Tensor] = None,
        noise: Optional[Noise] = None,
        seed: Optional[int] = None,
    ) -> Tensor:
        """load + run: the restored (B, C, H, W) image in [0, 1], a fresh tensor."""
        self.load(operator, y, x_T=x_T, noise=noise, seed=seed)
        return self.run().clone()


class GraphSampler:
    """engine.sample's contract over cached GraphRuntimes, one per (shapes, steps, task, backend).

    Args:
        eps_model: the model every runtime shares (e.g. fast_unet.prepare_unet(...)).
        device, impl, capture, warmup: passed to each GraphRuntime.
    """

    def __init__(
        self,
        eps_model: EpsModel,
        device: Union[str, torch.device],
        *,
        impl: Impl = "auto",
        capture: Optional[bool] = None,
        warmup: int = 2,
    ) -> None:
        self.eps_model = eps_model
        self.device = torch.device(device)
        self.impl = impl
        self.capture = capture
        self.warmup = warmup
        self.runtimes: dict[tuple, GraphRuntime] = {}

    def runtime_for(self, operator: Operator, y_shape: torch.Size, config: DiffPIRConfig) -> GraphRuntime:
        plan = plan_graph(operator, y_shape, config)
        key = plan.key((self.impl, self.capture))
        if key not in self.runtimes:
            self.runtimes[key] = GraphRuntime(
                self.eps_model, plan, self.device, impl=self.impl, capture=self.capture, warmup=self.warmup
            )
        return self.runtimes[key]

    def sample(
        self,
        operator: Operator,
        y: Tensor,
        config: DiffPIRConfig,
        x_T: Optional[Tensor] = None,
        noise: Optional[Noise] = None,
        seed: Optional[int] = None,
    ) -> Tensor:
        """Restore y like engine.sample (same arguments, minus the model and callback).

        Returns:
            (B, C, H, W), or (C, H, W) for an unbatched y, in [0, 1].
        """
        if not isinstance(y, Tensor):
            raise DiffPIRError(f"y: expected a torch.Tensor, got {type(y).__name__}")
        unbatched = y.ndim == 3
        if unbatched:
            y = y[None]
        check_image_batch(y)
        out = self.runtime_for(operator, y.shape, config).restore(operator, y, x_T=x_T, noise=noise, seed=seed)
        return out[0] if unbatched else out
