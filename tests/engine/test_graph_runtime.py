"""The graph runtime's static-buffer loop equals engine.sample (CPU: run eagerly, no capture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.fast_unet import prepare_unet
from diffpir_rt.engine.graph_runtime import GraphRuntime, GraphSampler
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.methods import build_method
from diffpir_rt.engine.sampler import DiffPIRConfig, sample
from diffpir_rt.engine.unet import AttentionBlock, build_unet

CONFIG = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=6)
SHORT = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=3)  # 2 model calls, for multi-run tests


def gaussian(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


@pytest.fixture(scope="module")
def model() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


def runtime_for(model, op, y_shape, config=None, **kwargs) -> GraphRuntime:
    """A GraphRuntime serving op's layout for measurements of y_shape."""
    config = config or CONFIG
    data = op.data_step(torch.rand(y_shape))
    image_shape = tuple(op.image_shape(torch.Size(y_shape)))
    return GraphRuntime(model, build_method(config, impl=kwargs.pop("impl", "torch")), data, tuple(y_shape), image_shape,
                        op.pad_mode, "cpu", **kwargs)  # fmt: skip


def problems(rng: np.random.Generator) -> dict[str, tuple[object, tuple[int, ...]]]:
    """task -> (operator, y shape); 13x13 exercises the model's padding."""
    return {
        "deblur": (Deblur(gaussian(7, 1.5)), (2, 3, 16, 16)),
        "deblur_per_sample": (Deblur(np.stack([gaussian(5, 1.0), gaussian(5, 2.0)])), (2, 3, 16, 16)),
        "sr2": (SuperResolution(2, gaussian(5, 1.0)), (2, 3, 8, 8)),
        "sr4": (SuperResolution(4, gaussian(9, 2.0)), (1, 3, 8, 8)),
        "inpaint": (Inpaint((rng.random((2, 16, 16)) > 0.5).astype(np.float64)), (2, 3, 16, 16)),
        "inpaint_per_channel": (Inpaint((rng.random((1, 3, 16, 16)) > 0.5).astype(np.float64)), (2, 3, 16, 16)),
        "denoise": (Denoise(), (2, 3, 16, 16)),
        "deblur_padded": (Deblur(gaussian(5, 1.0)), (1, 3, 13, 13)),
    }


@pytest.mark.parametrize("task", list(problems(np.random.default_rng(0))))
def test_static_buffer_loop_equals_sample_with_explicit_noise(task: str, model, rng) -> None:
    op, y_shape = problems(rng)[task]
    y = torch.rand(y_shape)
    shape = tuple(op.image_shape(torch.Size(y_shape)))
    x_T = torch.randn(shape)
    noise = [torch.randn(shape) for _ in range(CONFIG.num_model_calls)]
    expected = sample(model, op, y, CONFIG, x_T=x_T, noise=noise)
    runtime = runtime_for(model, op, y_shape)
    assert not runtime.capture
    got = runtime.restore(op, y, x_T=x_T, noise=noise)
    assert torch.equal(got, expected)  # the same engine functions in the same order: bit-identical


@pytest.mark.parametrize("task", ["deblur", "sr4", "inpaint"])
def test_seeded_draws_follow_the_samplers_order(task: str, model, rng) -> None:
    op, y_shape = problems(rng)[task]
    y = torch.rand(y_shape)
    assert torch.equal(GraphSampler(model, "cpu").sample(op, y, SHORT, seed=7), sample(model, op, y, SHORT, seed=7))


def test_new_operator_refills_buffers_without_a_new_runtime(model, rng) -> None:
    sampler = GraphSampler(model, "cpu", impl="torch")
    y = torch.rand(2, 3, 16, 16)
    operators = [Deblur(gaussian(7, 1.0)), Deblur(gaussian(7, 2.5)),
                 Inpaint((rng.random((16, 16)) > 0.3).astype(np.float64)), Denoise()]  # fmt: skip
    for seed, op in enumerate(operators):
        assert torch.equal(sampler.sample(op, y, SHORT, seed=seed), sample(model, op, y, SHORT, seed=seed))
    # The two blurs share one runtime; a mask and Denoise's scalar ones are two layouts.
    assert len(sampler.runtimes) == 3


def test_unbatched_input(model) -> None:
    op, y = Denoise(), torch.rand(3, 16, 16)
    out = GraphSampler(model, "cpu").sample(op, y, CONFIG, seed=0)
    assert out.shape == (3, 16, 16) and torch.equal(out, sample(model, op, y, CONFIG, seed=0))


def test_reduced_precision_model_only_changes_the_unet(model) -> None:
    """bf16 UNet (CPU) inside the fp32 loop: close to fp32, and the original model untouched."""
    fast = prepare_unet(model, torch.bfloat16, channels_last=True, attention="sdpa")
    assert next(model.parameters()).dtype == torch.float32
    assert all(b.attention_impl == "legacy" for b in model.modules() if isinstance(b, AttentionBlock))
    op, y = Deblur(gaussian(7, 1.5)), torch.rand(1, 3, 16, 16)
    out = GraphSampler(fast, "cpu").sample(op, y, CONFIG, seed=0)
    ref = sample(model, op, y, CONFIG, seed=0)
    assert out.dtype == torch.float32
    psnr = 10 * torch.log10(1 / (out - ref).pow(2).mean())
    assert psnr > 25  # bf16 has 8 mantissa bits; the GPU test holds fp16 to 45 dB


def test_errors(model) -> None:
    op = Deblur(gaussian(5, 1.0))
    runtime = runtime_for(model, op, (1, 3, 16, 16))
    with pytest.raises(DiffPIRError, match="graph runtime: load"):
        runtime.run()
    with pytest.raises(DiffPIRError, match=r"y: shape \(2, 3, 16, 16\) does not fit this runtime's \(1, 3, 16, 16\)"):
        runtime.load(op, torch.rand(2, 3, 16, 16))
    with pytest.raises(DiffPIRError, match="operator: Inpaint does not fit this runtime's layout"):
        runtime.load(Inpaint(np.ones((16, 16))), torch.rand(1, 3, 16, 16))
    with pytest.raises(DiffPIRError, match="noise: expected 5 tensors"):
        runtime.load(op, torch.rand(1, 3, 16, 16), noise=[torch.randn(1, 3, 16, 16)])
    with pytest.raises(DiffPIRError, match="x_T: expected shape"):
        runtime.load(op, torch.rand(1, 3, 16, 16), x_T=torch.randn(1, 3, 8, 8))
    shared = runtime_for(model, Inpaint(np.ones((16, 16))), (1, 3, 16, 16))
    with pytest.raises(DiffPIRError, match="operator: Inpaint does not fit this runtime's layout"):
        shared.load(Inpaint(np.ones((1, 3, 16, 16))), torch.rand(1, 3, 16, 16))
    with pytest.raises(DiffPIRError, match="capture: CUDA graphs need a CUDA device, got cpu"):
        runtime_for(model, op, (1, 3, 16, 16), capture=True)
    with pytest.raises(DiffPIRError, match="impl='cupy' needs CUDA tensors"):
        runtime_for(model, op, (1, 3, 16, 16), impl="cupy").restore(op, torch.rand(1, 3, 16, 16), seed=0)
