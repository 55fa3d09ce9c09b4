"""ILVR against the float64 numpy reference: the official Resizer as dense matrices, the step
and the loop for SR (y = down(ref)), deblurring and denoising (ref = y), the graph runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import ILVRConfig, build_method
from diffpir_rt.engine.methods.ilvr import LowPass, resizer_matrix
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.sampler import sample
from tests.methods import reference_methods as R
from tests.methods.gd_family import LinearModel, batch_problem, flat, gaussian_kernel, noises, one_step, step_at

REF_VARIANCE = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}


@pytest.mark.parametrize("length,factor", [(8, 2), (12, 3), (16, 4), (32, 8), (6, 2), (64, 32)])
def test_resizer_matches_the_reference(length: int, factor: int) -> None:
    np.testing.assert_allclose(resizer_matrix(length, 1.0 / factor), R.resizer_weights_1d(length, 1.0 / factor), rtol=0, atol=1e-14)
    np.testing.assert_allclose(resizer_matrix(length // factor, float(factor)), R.resizer_weights_1d(length // factor, float(factor)),
                               rtol=0, atol=1e-14)  # fmt: skip
    assert np.allclose(resizer_matrix(length, 1.0 / factor).sum(axis=1), 1.0)  # normalised: down(1) = 1


def test_phi_matches_the_dense_reference(rng) -> None:
    C, H, W, N = 2, 8, 12, 4
    x = rng.normal(size=(3, C, H, W))
    got = LowPass(N).phi(torch.from_numpy(x))
    Phi = R.ilvr_phi_matrix(C, H, W, N)
    for b in range(3):
        np.testing.assert_allclose(got[b].flatten().numpy(), Phi @ x[b].ravel(), rtol=0, atol=1e-13)


def sr_problem(rng, N: int = 2, C: int = 2, H: int = 8):
    """SR whose y is exactly the Resizer's down(ref): ILVR's phi(ref) = up(y) then holds exactly."""
    ref = rng.random((C, H, H))
    y = (R.resizer_matrix(C, H, H, 1.0 / N) @ ref.ravel()).reshape(1, C, H // N, H // N)
    return SuperResolution(N, gaussian_kernel(3, 0.7)), (1, C, H, H), torch.from_numpy(y), ref.ravel(), R.ilvr_phi_matrix(C, H, H, N)


def restoration_problem(task: str, rng, N: int):
    shape = (1, 2, 8, 8)
    op = Deblur(gaussian_kernel(3, 0.8)) if task == "deblur" else Denoise()
    y = op.forward(torch.from_numpy(rng.random(shape))) + 0.05 * torch.from_numpy(rng.normal(size=shape))
    return op, shape, y, flat(y), R.ilvr_phi_matrix(2, 8, 8, N)


def problems(rng):
    return {"sr": (*sr_problem(rng), ILVRConfig(steps=10, range_t=3)),
            "deblur": (*restoration_problem("deblur", rng, 4), ILVRConfig(steps=10, range_t=3, factor=4)),
            "denoise": (*restoration_problem("denoise", rng, 2), ILVRConfig(steps=10, range_t=3, factor=2))}  # fmt: skip


@pytest.mark.parametrize("task", ["sr", "deblur", "denoise"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_step_matches_reference(task: str, dtype: torch.dtype, tol: float, rng) -> None:
    op, shape, y, ref, phi, config = problems(rng)[task]
    model = LinearModel(shape[1:])
    method = build_method(config)
    data = op.data_step(y.to(dtype))
    sched, ref_m = R.respaced("10"), R.to_model_units(ref)
    for i in (9, 4, 3, 0):  # refined above range_t = 3, plain DDPM at and below it
        x = torch.from_numpy(rng.normal(size=shape))
        z = torch.from_numpy(rng.normal(size=(2, *shape)))
        step = step_at(method, i)
        assert step.noise == (2 if i > 3 else 1)
        got = one_step(method, model, data, x.to(dtype), step, z[: step.noise].to(dtype))
        want, _ = R.ilvr_step(flat(x), i, model.eps_fn, sched, phi, ref_m, 3, flat(z[0]),
                              flat(z[1]) if i > 3 else None, "learned_range", model.var_fn)  # fmt: skip
        assert np.abs(flat(got) - want).max() <= tol


@pytest.mark.parametrize("task,variance", [("sr", "learned"), ("deblur", "fixed_small"), ("denoise", "fixed_large")])
def test_loop_matches_reference_float64(task: str, variance: str, rng) -> None:
    op, shape, y, ref, phi, config = problems(rng)[task]
    config = ILVRConfig(factor=config.factor, range_t=3, steps=10, variance=variance)
    model = LinearModel(shape[1:], seed=7)
    x_T = torch.from_numpy(rng.normal(size=shape))
    zs = noises(rng, R.ilvr_noise_count(10, 3), shape)
    got = sample(model, op, y, config, x_T=x_T, noise=zs)
    want = R.ilvr_loop(model.eps_fn, phi, ref, flat(x_T), [flat(z) for z in zs], "10", 3, REF_VARIANCE[variance],
                       model.var_fn if variance == "learned" else None)  # fmt: skip
    assert np.abs(flat(got) - want).max() <= 1e-9


def test_graph_runtime_equals_sample_on_cpu(rng) -> None:
    for task in ["deblur", "sr", "denoise"]:
        op, shape, y = batch_problem(task, rng)
        model = LinearModel(shape[1:], seed=9)
        config = ILVRConfig(factor=2 if task != "sr" else None, steps=4, range_t=1)
        x_T, zs = torch.randn(shape), [torch.randn(shape) for _ in range(R.ilvr_noise_count(4, 1))]
        got = GraphSampler(model, "cpu", capture=False).sample(op, y, config, x_T=x_T, noise=zs)
        assert torch.equal(got, sample(model, op, y, config, x_T=x_T, noise=zs)), task
        assert torch.equal(GraphSampler(model, "cpu").sample(op, y, config, seed=5), sample(model, op, y, config, seed=5))


def test_defaults_and_errors(rng) -> None:
    assert ILVRConfig().num_model_calls == 100 and ILVRConfig().range_t == 20
    assert ILVRConfig.for_task("sr", 0.0).factor is None
    assert (ILVRConfig.for_task("deblur", 0.0).factor, ILVRConfig.for_task("denoise", 0.1).factor) == (8, 4)
    with pytest.raises(DiffPIRError, match="method ilvr: does not apply to task inpaint"):
        ILVRConfig.for_task("inpaint", 0.0)
    for kwargs, match in [({"range_t": 10, "steps": 10}, "range_t: expected an integer in"), ({"factor": 0}, "factor: expected an integer"),
                          ({"spacing": "ddim", "steps": 700}, "steps: 700 steps cannot be spaced")]:  # fmt: skip
        with pytest.raises(DiffPIRError, match=match):
            ILVRConfig(**kwargs)
    model = LinearModel((3, 8, 8))
    config = ILVRConfig(steps=3, range_t=0, variance="fixed_small")
    with pytest.raises(DiffPIRError, match="not to inpainting"):
        sample(model, Inpaint(np.ones((8, 8))), torch.rand(1, 3, 8, 8), config, seed=0)
    with pytest.raises(DiffPIRError, match="factor is the scale 2, got 4"):
        sample(model, SuperResolution(2, gaussian_kernel(3, 0.7)), torch.rand(1, 3, 4, 4),
               ILVRConfig(factor=4, steps=3, range_t=0, variance="fixed_small"), seed=0)  # fmt: skip
    with pytest.raises(DiffPIRError, match="factor 3 does not divide the 8x8 image"):
        sample(model, Denoise(), torch.rand(1, 3, 8, 8), ILVRConfig(factor=3, steps=3, range_t=0, variance="fixed_small"), seed=0)
