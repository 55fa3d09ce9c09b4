"""The captured CUDA graph against the eager loop and engine.sample, and fp16 quality (GPU only).

Tolerances: graph replay vs the same loop run eagerly: 1e-6 (the same kernels; only capture
differs). fp32 graph (either impl) vs engine.sample: 1e-4 max abs on the [0, 1] output (the
fused kernels round differently from torch's composites, ~1e-7 per step), with TF32 off for
the module (`no_tf32`): cuDNN convolutions default to TF32, whose ~1e-3 relative rounding
the early steps amplify far past 1e-4. fp16 UNet + fused kernels vs fp32 engine.sample on
ffhq_10m with random weights: >= 45 dB PSNR, a provisional threshold (see the test).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.fast_unet import prepare_unet
from diffpir_rt.engine.graph_runtime import GraphRuntime, GraphSampler
from diffpir_rt.engine.methods import build_method
from diffpir_rt.engine.operators import Deblur, Inpaint, SuperResolution
from diffpir_rt.engine.sampler import DiffPIRConfig, sample
from diffpir_rt.engine.unet import build_unet

from ..gpu_support import record_measurement, requires_cuda, requires_cupy
from .test_graph_runtime import gaussian

pytestmark = [*requires_cuda, pytest.mark.usefixtures("no_tf32")]
CONFIG = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=10)
INPAINT = DiffPIRConfig(lam=1.0, zeta=1.0, sigma_n=0.0, steps=10)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1.0 / (a - b).pow(2).mean().clamp_min(1e-20)))


@pytest.fixture(scope="module")
def tiny() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).cuda().eval().requires_grad_(False)


def runtime_for(model, op, y: torch.Tensor, config, impl: str, capture: bool) -> GraphRuntime:
    """A GraphRuntime serving op's layout for y's shape, on CUDA."""
    image_shape = tuple(op.image_shape(y.shape))
    return GraphRuntime(model, build_method(config, impl=impl), op.data_step(y), tuple(y.shape), image_shape,
                        op.pad_mode, "cuda", capture=capture)  # fmt: skip


def _problem(task: str, size: int, batch: int = 2):
    rng = np.random.default_rng(0)
    if task == "deblur":
        op, y_shape, config = Deblur(gaussian(9, 2.0)), (batch, 3, size, size), CONFIG
    elif task == "sr4":
        op, y_shape, config = SuperResolution(4), (batch, 3, size // 4, size // 4), CONFIG
    else:
        op, y_shape, config = Inpaint((rng.random((size, size)) > 0.5).astype(np.float32)), (batch, 3, size, size), INPAINT
    g = torch.Generator(device="cuda").manual_seed(1)
    y = torch.rand(y_shape, generator=g, device="cuda")
    shape = tuple(op.image_shape(torch.Size(y_shape)))
    x_T = torch.randn(shape, generator=g, device="cuda")
    noise = [torch.randn(shape, generator=g, device="cuda") for _ in range(config.num_model_calls)]
    return op, y, config, x_T, noise


@pytest.mark.parametrize("task", ["deblur", "sr4", "inpaint"])
@pytest.mark.parametrize("impl", ["torch", pytest.param("cupy", marks=requires_cupy)])
def test_graph_replay_equals_eager_loop_and_sample(task: str, impl: str, tiny) -> None:
    op, y, config, x_T, noise = _problem(task, 32)
    eager = runtime_for(tiny, op, y, config, impl, capture=False).restore(op, y, x_T=x_T, noise=noise)
    runtime = runtime_for(tiny, op, y, config, impl, capture=True)
    graph = runtime.restore(op, y, x_T=x_T, noise=noise)
    assert runtime.captured
    assert (graph - eager).abs().max() <= 1e-6
    reference = sample(tiny, op, y, config, x_T=x_T, noise=noise)
    assert (graph - reference).abs().max() <= 1e-4
    # Replaying again with another image (new buffers, same graph) still matches.
    op2, y2, _, x_T2, noise2 = _problem(task, 32)
    y2 = y2.flip(-1)
    again = runtime.restore(op2, y2, x_T=x_T2, noise=noise2)
    assert (again - sample(tiny, op2, y2, config, x_T=x_T2, noise=noise2)).abs().max() <= 1e-4


def test_seeded_graph_sampler_equals_seeded_sample(tiny) -> None:
    op, y, config, _, _ = _problem("deblur", 32)
    out = GraphSampler(tiny, "cuda", impl="torch").sample(op, y, config, seed=11)
    assert (out - sample(tiny, op, y, config, seed=11)).abs().max() <= 1e-4


@pytest.mark.parametrize("task", ["deblur", "inpaint"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_psnr_against_fp32(task: str, dtype: torch.dtype) -> None:
    """ffhq_10m (random weights), 64x64, 10 steps: fp16 >= 45 dB, bf16 >= 30 dB; both recorded.

    PROVISIONAL thresholds: no GPU run has measured these yet. The figure is printed and
    recorded (gpu_support.record_measurement -> the GPU suite's summary.json, "measurements")
    before the assertion, so the first run reports it even when it fails; set the thresholds
    from that run (a few dB under the measured value) and drop this note.
    """
    torch.manual_seed(0)
    fp32 = UNetDenoiser(build_unet("ffhq_10m")).cuda().eval().requires_grad_(False)
    op, y, config, x_T, noise = _problem(task, 64, batch=1)
    reference = sample(fp32, op, y, config, x_T=x_T, noise=noise)  # true fp32: TF32 is off (no_tf32)
    fast = prepare_unet(fp32, dtype)
    out = GraphSampler(fast, "cuda", impl="auto").sample(op, y, config, x_T=x_T, noise=noise)
    value = psnr(out, reference)
    threshold = 45.0 if dtype == torch.float16 else 30.0  # provisional, see the docstring
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    record_measurement(f"psnr_{name}_vs_fp32_db", value, task=task, arch="ffhq_10m", size=64, steps=10,
                       threshold=threshold, provisional=True)  # fmt: skip
    assert value >= threshold
