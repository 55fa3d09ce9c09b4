"""DDPM generation and the guided-diffusion respacing against the float64 numpy references;
the UNet's learned-variance half through UNetDenoiser and the torch backend."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.backends.torch_backend import TorchDenoiser
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.graph_runtime import GraphRuntime
from diffpir_rt.engine.methods import DDPMConfig, build_method
from diffpir_rt.engine.methods.ddpm import schedule_of, space_timesteps
from diffpir_rt.engine.methods.loop import DrawnInputs, NoiseStream, run_steps
from diffpir_rt.engine.sampler import generate
from diffpir_rt.engine.archs import resolve_arch
from diffpir_rt.engine.unet import build_unet
from tests.methods import reference_methods as R
from tests.methods.gd_family import LinearModel, flat, noises, one_step, step_at

SHAPE = (1, 2, 4, 4)
REF_VARIANCE = {"fixed_small": "fixed_small", "fixed_large": "fixed_large", "learned": "learned_range"}


@pytest.mark.parametrize("spec", ["ddim50", "ddim30", "ddim20", "ddim7", "250", "1000", "10", "37", "10,20,30", "2"])
def test_space_timesteps_matches_guided_diffusion(spec: str) -> None:
    assert space_timesteps(1000, spec) == R.space_timesteps(1000, spec)


def test_respaced_tables_match_the_reference() -> None:
    for steps, spacing, spec in [(10, "even", "10"), (25, "ddim", "ddim25"), (1000, "even", "1000")]:
        ours, ref = schedule_of(steps, spacing), R.respaced(spec)
        assert ours.timestep_map == ref.timestep_map
        for name in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "posterior_log_variance_clipped",
                     "posterior_mean_coef1", "posterior_mean_coef2"):  # fmt: skip
            np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-13, atol=0)
    assert DDPMConfig(steps=30, spacing="ddim").timesteps()[:2] == [986, 952]  # stride 34


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_step_matches_reference(variance: str, dtype: torch.dtype, tol: float, rng) -> None:
    model = LinearModel(SHAPE[1:])
    config = DDPMConfig(steps=10, variance=variance)
    method = build_method(config)
    sched = R.respaced("10")
    for i in (9, 4, 1, 0):
        x = torch.from_numpy(rng.normal(size=SHAPE))
        z = torch.from_numpy(rng.normal(size=SHAPE))
        got = one_step(method, model, None, x.to(dtype), step_at(method, i), z.to(dtype)[None])
        want, _ = R.ddpm_step(flat(x), i, model.eps_fn, sched, flat(z), REF_VARIANCE[variance],
                              model.var_fn if variance == "learned" else None)  # fmt: skip
        assert np.abs(flat(got) - want).max() <= tol


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned"])
def test_loop_matches_reference_float64(variance: str, rng) -> None:
    model = LinearModel(SHAPE[1:], seed=1)
    config = DDPMConfig(steps=10, variance=variance)
    x_T = torch.from_numpy(rng.normal(size=SHAPE))
    zs = noises(rng, config.num_model_calls, SHAPE)
    method = build_method(config)
    inputs = DrawnInputs(NoiseStream(torch.Size(SHAPE), x_T, given=zs), 1, x_T.device)
    got = run_steps(method, model, None, x_T, inputs, method.steps())  # generate()'s loop, in float64
    want = R.ddpm_loop(model.eps_fn, flat(x_T), [flat(z) for z in zs], "10", REF_VARIANCE[variance],
                       model.var_fn if variance == "learned" else None)  # fmt: skip
    assert np.abs(flat(got) - want).max() <= 1e-9
    # generate() itself runs in float32.
    out = generate(model, SHAPE, config, x_T=x_T, noise=zs)
    assert out.dtype == torch.float32 and np.abs(flat(out) - want).max() <= 1e-4


def test_generate_equals_graph_runtime_and_counts(rng) -> None:
    shape = (2, 3, 4, 4)
    model = LinearModel(shape[1:], seed=2)
    config = DDPMConfig(steps=6, variance="learned")
    assert config.num_model_calls == 6 and DDPMConfig().num_model_calls == 1000
    x_T = torch.randn(shape)
    zs = [torch.randn(shape) for _ in range(6)]
    expected = generate(model, shape, config, x_T=x_T, noise=zs)
    runtime = GraphRuntime(model, build_method(config), None, None, shape, "reflect", "cpu", capture=False)
    assert torch.equal(runtime.restore(None, None, x_T=x_T, noise=zs), expected)
    seeded = GraphRuntime(model, build_method(config), None, None, shape, "reflect", "cpu", capture=False)
    assert torch.equal(seeded.restore(None, None, seed=[3, 4]), generate(model, shape, config, seed=[3, 4]))
    assert expected.shape == shape and 0 <= float(expected.min()) and float(expected.max()) <= 1


def test_config_errors(rng) -> None:
    for kwargs, match in [
        ({"steps": 1}, "steps: expected an integer in"),
        ({"steps": 1001}, "steps: expected an integer in"),
        ({"steps": 600, "spacing": "ddim"}, "steps: 600 steps cannot be spaced"),
        ({"spacing": "quad"}, "spacing: expected one of"),
        ({"variance": "learned_range"}, "variance: expected one of"),
        ({"clip_denoised": 1}, "clip_denoised: expected true or false"),
    ]:
        with pytest.raises(DiffPIRError, match=match):
            DDPMConfig(**kwargs)
    with pytest.raises(DiffPIRError, match="method ddpm: does not apply to task sr"):
        DDPMConfig.for_task("sr", 0.0)
    # "learned" asks the model for its variance; a model without it is told so.
    with pytest.raises(DiffPIRError, match="needs the learned variance"):
        generate(LinearModel(SHAPE[1:], variance=False), SHAPE, DDPMConfig(steps=3, variance="learned"), seed=0)
    from diffpir_rt.engine.operators import Denoise
    from diffpir_rt.engine.sampler import sample

    with pytest.raises(DiffPIRError, match="method ddpm: applies to no measurement"):
        sample(LinearModel((2, 4, 4)), Denoise(), torch.rand(1, 2, 4, 4), DDPMConfig(steps=3), seed=0)


# ----------------------------------------------------------------------------- the model's variance half


@pytest.fixture(scope="module")
def unet() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


def test_unet_eps_and_variance_is_the_second_half(unet) -> None:
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 700])
    eps, v = unet.eps_and_variance(x, t)
    full = unet.unet(x, t)
    assert torch.equal(eps, full[:, :3]) and torch.equal(v, full[:, 3:]) and torch.equal(eps, unet(x, t))
    backend = TorchDenoiser(unet)
    eps_b, v_b = backend.eps_and_variance(x, 7)
    assert torch.equal(eps_b, unet(x, 7)) and torch.equal(v_b, unet.eps_and_variance(x, 7)[1])
    out = generate(backend, (1, 3, 16, 16), DDPMConfig(steps=3, variance="learned"), seed=0)
    assert out.shape == (1, 3, 16, 16)


def test_unet_without_learn_sigma_says_so() -> None:
    _, config = resolve_arch("tiny")
    plain = UNetDenoiser(build_unet(dataclasses.replace(config, learn_sigma=False))).eval()
    with pytest.raises(DiffPIRError, match="without learn_sigma"):
        plain.eps_and_variance(torch.randn(1, 3, 16, 16), 3)
    with pytest.raises(DiffPIRError, match="without learn_sigma"):
        generate(plain, (1, 3, 16, 16), DDPMConfig(steps=2, variance="learned"), seed=0)
    assert generate(plain, (1, 3, 16, 16), DDPMConfig(steps=2), seed=0).shape == (1, 3, 16, 16)


def test_torch_backend_is_differentiable_only_under_autograd(unet) -> None:
    backend = TorchDenoiser(unet)
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    with torch.enable_grad():
        eps = backend(x, 10)
        assert eps.requires_grad
        (grad,) = torch.autograd.grad(eps.square().sum(), x)
        assert grad.abs().sum() > 0
        assert backend.eps_and_variance(x, 10)[1].requires_grad
    with torch.no_grad():
        assert not backend(x, 10).requires_grad
