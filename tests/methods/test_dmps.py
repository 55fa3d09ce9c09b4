"""DMPS against the float64 numpy reference (dense SVD likelihood step), sigma_n = 0, batches,
the graph runtime on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import DMPSConfig, build_method
from diffpir_rt.engine.operators import RCOND
from diffpir_rt.engine.sampler import generate, sample
from tests.methods import reference_methods as R
from tests.methods.gd_family import LinearModel, batch_problem, flat, noises, one_step, problem, step_at

TASKS = ["deblur", "sr", "inpaint", "denoise"]
REF_VARIANCE = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n", [0.05, 0.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_step_matches_reference(task: str, sigma_n: float, dtype: torch.dtype, tol: float, rng) -> None:
    op, shape, y, A = problem(task, rng, sigma_n)
    model = LinearModel(shape[1:])
    method = build_method(DMPSConfig(sigma_n=sigma_n, steps=10))
    data = op.data_step(y.to(dtype))
    # sigma_n = 0 takes A^+ with singular values <= RCOND dropped: the reference's thresholded A.
    sp = R.spectral(A, RCOND if sigma_n == 0 else 0.0)
    sched, y_m = R.respaced("10"), R.measurement_to_model_units(A, flat(y))
    for i in (9, 4, 0):
        x = torch.from_numpy(rng.normal(size=shape))
        z = torch.from_numpy(rng.normal(size=shape))
        got = one_step(method, model, data, x.to(dtype), step_at(method, i), z.to(dtype)[None])
        want, _ = R.dmps_step(flat(x), i, model.eps_fn, sched, sp, y_m, 2 * sigma_n, flat(z), 1.75,
                              "learned_range", model.var_fn)  # fmt: skip
        assert np.abs(flat(got) - want).max() <= tol


@pytest.mark.parametrize("task,variance,sigma_n", [("deblur", "learned", 0.05), ("sr", "fixed_small", 0.02),
                                                   ("inpaint", "learned", 0.0), ("denoise", "fixed_large", 0.1)])  # fmt: skip
def test_loop_matches_reference_float64(task: str, variance: str, sigma_n: float, rng) -> None:
    op, shape, y, A = problem(task, rng, sigma_n)
    model = LinearModel(shape[1:], seed=7)
    config = DMPSConfig(sigma_n=sigma_n, lam=1.5, steps=8, variance=variance)
    x_T = torch.from_numpy(rng.normal(size=shape))
    zs = noises(rng, 8, shape)
    got = sample(model, op, y, config, x_T=x_T, noise=zs)
    want = R.dmps_loop(model.eps_fn, A, flat(y), sigma_n, flat(x_T), [flat(z) for z in zs], lam=1.5,
                       timestep_respacing="8", var_type=REF_VARIANCE[variance],
                       var_fn=model.var_fn if variance == "learned" else None,
                       zero_threshold=RCOND if sigma_n == 0 else 0.0)  # fmt: skip
    assert np.abs(flat(got) - want).max() <= 1e-9


def test_noiseless_blur_is_finite_despite_a_null_space(rng) -> None:
    """sigma_n = 0 with a blur whose spectrum has exact zeros (a 2-tap box on an even grid)."""
    from diffpir_rt.engine.operators import Deblur

    op = Deblur(np.ones((1, 2)) / 2)
    y = op.forward(torch.rand(1, 1, 8, 8, dtype=torch.float64))
    out = sample(LinearModel((1, 8, 8)), op, y, DMPSConfig(sigma_n=0.0, steps=5, variance="fixed_small"), seed=0)
    assert torch.isfinite(out).all()


def test_graph_runtime_equals_sample_on_cpu(rng) -> None:
    for task in TASKS:
        op, shape, y = batch_problem(task, rng)
        model = LinearModel(shape[1:], seed=9)
        config = DMPSConfig(sigma_n=0.05, steps=4)
        x_T, zs = torch.randn(shape), [torch.randn(shape) for _ in range(4)]
        got = GraphSampler(model, "cpu", capture=False).sample(op, y, config, x_T=x_T, noise=zs)
        assert torch.equal(got, sample(model, op, y, config, x_T=x_T, noise=zs)), task
        assert torch.equal(GraphSampler(model, "cpu").sample(op, y, config, seed=5), sample(model, op, y, config, seed=5))


def test_errors(rng) -> None:
    op, shape, y, _ = problem("deblur", rng)
    for kwargs, match in [({"sigma_n": -0.1}, "sigma_n: expected a number in"), ({"sigma_n": 0.05, "lam": 0.0}, "lam: expected a number > 0"),
                          ({"sigma_n": 0.05, "steps": 2000}, "steps: expected an integer"),
                          ({"sigma_n": 0.05, "variance": "auto"}, "variance: expected one of")]:  # fmt: skip
        with pytest.raises(DiffPIRError, match=match):
            DMPSConfig(**kwargs)
    with pytest.raises(DiffPIRError, match="needs the learned variance"):
        sample(LinearModel(shape[1:], variance=False), op, y, DMPSConfig(sigma_n=0.05, steps=3), seed=0)
    with pytest.raises(DiffPIRError, match="method dmps: restores a measurement"):
        generate(LinearModel(shape[1:]), shape, DMPSConfig(sigma_n=0.05, steps=3), seed=0)
    config = DMPSConfig.for_task("sr", 0.05)
    assert (config.lam, config.sigma_n, config.steps, config.num_model_calls) == (1.75, 0.05, 1000, 1000)
    with pytest.raises(DiffPIRError, match="task: expected one of deblur, sr, inpaint, denoise, got 'phase'"):
        DMPSConfig.for_task("phase", 0.05)
