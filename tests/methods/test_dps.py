"""DPS against the float64 numpy reference (gradient from the model's exact VJP), per-sample
norms in a batch, the torch-backend requirement, the graph runtime on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.backends.torch_backend import TorchDenoiser
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import DPSConfig, build_method
from diffpir_rt.engine.operators import Deblur, Inpaint
from diffpir_rt.engine.sampler import generate, sample
from diffpir_rt.engine.unet import build_unet
from tests.methods import reference_methods as R
from tests.methods.gd_family import (
    LinearModel,
    batch_problem,
    flat,
    gaussian_kernel,
    noises,
    one_step,
    problem,
    step_at,
)

TASKS = ["deblur", "sr", "inpaint", "denoise"]
REF_VARIANCE = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_step_matches_reference(task: str, dtype: torch.dtype, tol: float, rng) -> None:
    op, shape, y, A = problem(task, rng)
    model = LinearModel(shape[1:])
    method = build_method(DPSConfig(zeta=0.4, steps=10))
    data = op.data_step(y.to(dtype))
    sched, y_m = R.respaced("10"), R.measurement_to_model_units(A, flat(y))
    for i in (9, 3, 0):
        x = torch.from_numpy(rng.normal(size=shape))
        z = torch.from_numpy(rng.normal(size=shape))
        got = one_step(method, model, data, x.to(dtype), step_at(method, i), z.to(dtype)[None])
        want, _, _ = R.dps_step(flat(x), i, model.eps_fn, model.vjp_fn, sched, A, y_m, 0.4, flat(z),
                                "learned_range", model.var_fn)  # fmt: skip
        assert np.abs(flat(got) - want).max() <= tol


@pytest.mark.parametrize("task,variance", [("deblur", "learned"), ("sr", "fixed_small"), ("inpaint", "learned"), ("denoise", "fixed_large")])
def test_loop_matches_reference_float64(task: str, variance: str, rng) -> None:
    op, shape, y, A = problem(task, rng)
    model = LinearModel(shape[1:], seed=7)
    config = DPSConfig(zeta=0.3, steps=8, variance=variance)
    x_T = torch.from_numpy(rng.normal(size=shape))
    zs = noises(rng, 8, shape)
    got = sample(model, op, y, config, x_T=x_T, noise=zs)
    want = R.dps_loop(model.eps_fn, model.vjp_fn, A, flat(y), 0.05, flat(x_T), [flat(z) for z in zs], zeta=0.3,
                      timestep_respacing="8", var_type=REF_VARIANCE[variance],
                      var_fn=model.var_fn if variance == "learned" else None)  # fmt: skip
    assert np.abs(flat(got) - want).max() <= 1e-9


def test_norm_is_per_sample_not_over_the_batch(rng) -> None:
    """A batch of 2 with per-sample kernels restores each image as it would alone."""
    kernels = np.stack([gaussian_kernel(3, 0.6), gaussian_kernel(3, 1.2)])
    shape = (2, 2, 6, 6)
    model = LinearModel(shape[1:], seed=8)
    y = torch.from_numpy(rng.random(shape))
    x_T = torch.from_numpy(rng.normal(size=shape))
    zs = noises(rng, 6, shape)
    config = DPSConfig(zeta=0.5, steps=6)
    both = sample(model, Deblur(kernels), y, config, x_T=x_T, noise=zs)
    for b in range(2):
        alone = sample(model, Deblur(kernels[b]), y[b : b + 1], config, x_T=x_T[b : b + 1], noise=[z[b : b + 1] for z in zs])
        torch.testing.assert_close(both[b : b + 1], alone, rtol=0, atol=1e-12)


def test_graph_runtime_equals_sample_on_cpu(rng) -> None:
    for task in TASKS:
        op, shape, y = batch_problem(task, rng)
        model = LinearModel(shape[1:], seed=9)
        config = DPSConfig(zeta=0.3, steps=4)
        x_T, zs = torch.randn(shape), [torch.randn(shape) for _ in range(4)]
        got = GraphSampler(model, "cpu", capture=False).sample(op, y, config, x_T=x_T, noise=zs)
        assert torch.equal(got, sample(model, op, y, config, x_T=x_T, noise=zs)), task
        assert torch.equal(GraphSampler(model, "cpu").sample(op, y, config, seed=5), sample(model, op, y, config, seed=5))


def test_runs_through_the_torch_backend() -> None:
    torch.manual_seed(0)
    backend = TorchDenoiser(UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False))
    op = Inpaint((torch.rand(16, 16) > 0.5).double())
    y = op.forward(torch.rand(1, 3, 16, 16))
    out = sample(backend, op, y, DPSConfig(zeta=0.5, steps=3), seed=0)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_errors(rng) -> None:
    op, shape, y, _ = problem("deblur", rng)

    class Frozen(LinearModel):  # e.g. ONNX Runtime: eps comes back without an autograd graph
        def __call__(self, x, t):
            return super().__call__(x, t).detach()

    with pytest.raises(DiffPIRError, match="DPS needs the torch backend"):
        sample(Frozen(shape[1:], variance=False), op, y, DPSConfig(steps=3, variance="fixed_small"), seed=0)
    with pytest.raises(DiffPIRError, match="needs the learned variance"):
        sample(LinearModel(shape[1:], variance=False), op, y, DPSConfig(steps=3), seed=0)
    with pytest.raises(DiffPIRError, match="method dps: restores a measurement"):
        generate(LinearModel(shape[1:]), shape, DPSConfig(steps=3), seed=0)
    for kwargs, match in [({"zeta": 0.0}, "zeta: expected a number > 0"), ({"zeta": float("inf")}, "zeta: expected a number > 0"),
                          ({"steps": 0}, "steps: expected an integer"), ({"variance": "small"}, "variance: expected one of")]:  # fmt: skip
        with pytest.raises(DiffPIRError, match=match):
            DPSConfig(**kwargs)
    assert [DPSConfig.for_task(t, 0.05).zeta for t in TASKS] == [0.3, 0.3, 0.5, 0.3]
    assert DPSConfig().num_model_calls == 1000 and DPSConfig().variance == "learned"
    with pytest.raises(DiffPIRError, match="task: expected one of deblur, sr, inpaint, denoise, got .colorize."):
        DPSConfig.for_task("colorize", 0.05)
