"""DDIM generation against the float64 numpy reference (guided-diffusion `ddim_sample`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphRuntime
from diffpir_rt.engine.methods import DDIMConfig, build_method
from diffpir_rt.engine.methods.loop import DrawnInputs, NoiseStream, run_steps
from diffpir_rt.engine.sampler import generate
from tests.methods import reference_methods as R
from tests.methods.gd_family import LinearModel, flat, noises, one_step, step_at

SHAPE = (1, 3, 4, 4)


def test_timesteps_are_guided_diffusions_ddimN() -> None:
    assert DDIMConfig(steps=50).timesteps() == list(range(980, -1, -20))
    assert DDIMConfig(steps=20).timesteps()[:2] == [950, 900]
    assert DDIMConfig(steps=30).timesteps() == list(range(0, 1000, 34))[::-1]  # 1000 // 30 would give 31 steps
    for n in (7, 25, 30, 100, 500):
        assert DDIMConfig(steps=n).timesteps() == R.ddim_timesteps(n)
        assert DDIMConfig(steps=n).num_model_calls == n
    assert DDIMConfig().steps == 25 and DDIMConfig().eta == 0.0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_step_matches_reference(eta: float, dtype: torch.dtype, tol: float, rng) -> None:
    model = LinearModel(SHAPE[1:], variance=False)
    method = build_method(DDIMConfig(steps=10, eta=eta))
    sched = R.respaced("ddim10")
    for i in (9, 5, 1, 0):
        x = torch.from_numpy(rng.normal(size=SHAPE))
        z = torch.from_numpy(rng.normal(size=SHAPE))
        got = one_step(method, model, None, x.to(dtype), step_at(method, i), z.to(dtype)[None])
        want, x0 = R.ddim_step(flat(x), i, model.eps_fn, sched, flat(z), eta)
        assert np.abs(flat(got) - want).max() <= tol
        if i == 0:  # the step to abar = 1 returns the clamped x0
            assert np.abs(flat(got) - x0).max() <= tol


@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_loop_matches_reference_float64(eta: float, rng) -> None:
    model = LinearModel(SHAPE[1:], seed=3, variance=False)
    config = DDIMConfig(steps=12, eta=eta)
    x_T = torch.from_numpy(rng.normal(size=SHAPE))
    zs = noises(rng, 12, SHAPE)
    method = build_method(config)
    inputs = DrawnInputs(NoiseStream(torch.Size(SHAPE), x_T, given=zs), 1, x_T.device)
    got = run_steps(method, model, None, x_T, inputs, method.steps())  # generate()'s loop, in float64
    want = R.ddim_loop(model.eps_fn, flat(x_T), [flat(z) for z in zs], num_steps=12, eta=eta)
    assert np.abs(flat(got) - want).max() <= 1e-9
    out = generate(model, SHAPE, config, x_T=x_T, noise=zs)
    assert np.abs(flat(out) - want).max() <= 1e-4


def test_eta_zero_is_deterministic_given_x_T() -> None:
    shape = (2, 3, 4, 4)
    model = LinearModel(shape[1:], seed=4, variance=False)
    x_T = torch.randn(shape)
    config = DDIMConfig(steps=8, eta=0.0)
    a = generate(model, shape, config, x_T=x_T, seed=1)
    b = generate(model, shape, config, x_T=x_T, seed=2)
    c = generate(model, shape, config, x_T=x_T, noise=[torch.randn(shape) * 5 for _ in range(8)])
    assert torch.equal(a, b) and torch.equal(a, c)
    noisy = DDIMConfig(steps=8, eta=0.5)
    assert not torch.equal(generate(model, shape, noisy, x_T=x_T, seed=1), generate(model, shape, noisy, x_T=x_T, seed=2))


def test_graph_runtime_equals_generate() -> None:
    shape = (2, 3, 4, 4)
    model = LinearModel(shape[1:], seed=5, variance=False)
    config = DDIMConfig(steps=5, eta=0.3)
    for kwargs in ({"seed": 11}, {"x_T": torch.randn(shape), "noise": [torch.randn(shape) for _ in range(5)]}):
        runtime = GraphRuntime(model, build_method(config), None, None, shape, "reflect", "cpu", capture=False)
        assert torch.equal(runtime.restore(None, None, **kwargs), generate(model, shape, config, **kwargs))


def test_errors() -> None:
    for kwargs, match in [
        ({"steps": 600}, "no integer stride gives exactly 600"),
        ({"steps": 1}, "steps: expected an integer in"),
        ({"eta": 1.5}, r"eta: expected a number in \[0, 1\]"),
        ({"eta": float("nan")}, "eta: expected a number in"),
        ({"clip_denoised": "yes"}, "clip_denoised: expected true or false"),
    ]:
        with pytest.raises(DiffPIRError, match=match):
            DDIMConfig(**kwargs)
    with pytest.raises(DiffPIRError, match="method ddim: does not apply to task deblur"):
        DDIMConfig.for_task("deblur", 0.05)
    with pytest.raises(DiffPIRError, match="noise: expected 4 tensors"):
        generate(LinearModel(SHAPE[1:]), SHAPE, DDIMConfig(steps=4), noise=[torch.randn(SHAPE)])
