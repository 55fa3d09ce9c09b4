"""DPIR (HQS with the diffusion denoiser) against the float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import METHODS, DPIRConfig, build_method
from diffpir_rt.engine.operators import Denoise, Inpaint
from diffpir_rt.engine.sampler import sample

from . import reference_methods as R
from .spectral_family import SHAPE, LinearModel, dense_matrix, flat, measurement, problems

SIGMA_N = 7.65 / 255  # the official deblurring script's noise level


def config_for(task: str, sigma_n: float = SIGMA_N, **overrides) -> DPIRConfig:
    base = DPIRConfig.for_task("sr" if task.startswith("sr") else task, sigma_n, scale=2)
    return DPIRConfig(**{**{f: getattr(base, f) for f in base.field_names()}, **overrides})


def test_defaults_schedule_and_timesteps() -> None:
    config = DPIRConfig.for_task("deblur", SIGMA_N)
    assert (config.iter_num, config.model_sigma1, config.model_sigma2) == (8, 49.0, None)
    sigmas, rhos = config.sigmas_rhos()
    ref_sigmas, ref_rhos = R.dpir_sigmas_rhos(SIGMA_N, 8)
    np.testing.assert_allclose(sigmas, ref_sigmas, rtol=1e-14)
    np.testing.assert_allclose(rhos, ref_rhos, rtol=1e-14)
    method = build_method(config)
    assert [s.t for s in method.steps()] == [112, 86, 65, 49, 37, 27, 20, 14]  # docs/methods.md, section 10
    assert [s.t for s in method.steps()] == [R.sigma_to_timestep(s) for s in ref_sigmas]
    assert all(s.noise == 0 for s in method.steps()) and method.init_noise() == 0
    assert config.num_model_calls == 8 and config.noise_count == 0
    sr = DPIRConfig.for_task("sr", 0.0)
    assert (sr.iter_num, sr.model_sigma2, sr.num_model_calls) == (24, 4.0, 24)
    assert DPIRConfig.for_task("sr", 0.05, scale=2).model_sigma2 == pytest.approx(0.05 * 255)
    np.testing.assert_allclose(sr.sigmas_rhos()[0], R.dpir_sigmas_rhos(0.0, 24, 49.0, R.dpir_model_sigma2("sr", 0.0, 4))[0])
    denoise = DPIRConfig.for_task("denoise", 0.1)
    assert denoise.num_model_calls == 1 and denoise.sigmas_rhos()[0] == pytest.approx([0.1])
    assert METHODS["dpir"][0] is DPIRConfig


@pytest.mark.parametrize("task", ["deblur", "sr2", "denoise"])
def test_every_iteration_matches_reference(task: str, rng) -> None:
    """The state before each model call is sqrt(abar_t)(2 x - 1) of the reference's HQS iterate
    after its data step (<= 1e-9, float64); the output is the reference loop's."""
    sigma_n = SIGMA_N
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = config_for(task, sigma_n, iter_num=4) if task != "denoise" else config_for(task, sigma_n)
    method, model = build_method(config), LinearModel()
    states = []
    got = sample(model, op, y, config, callback=lambda info: states.append(info["x"]))
    x_init = op.init_estimate(y)
    sigmas, rhos = config.sigmas_rhos()
    first = method.initial_state(op, y, op.data_step(y), [])
    states = [first] + states
    for b, single in enumerate(singles):
        A = dense_matrix(single)
        x = flat(x_init, b)
        for k, (sigma, rho) in enumerate(zip(sigmas, rhos)):
            x = R.hqs_data_step(A, flat(y, b), x, rho)
            ab = R.alpha_bar_at(R.sigma_to_timestep(sigma))
            np.testing.assert_allclose(flat(states[k], b), np.sqrt(ab) * R.to_model_units(x), atol=1e-9, rtol=0)
            x = R.diffusion_denoiser(x, sigma, model.eps_fn)
        np.testing.assert_allclose(flat(got, b), np.clip(x, 0, 1), atol=1e-9, rtol=0)
        expected = R.dpir_loop(model.eps_fn, A, flat(y, b), sigma_n, flat(x_init, b), iter_num=config.iter_num,
                               model_sigma1=config.model_sigma1, model_sigma2=config.model_sigma2)  # fmt: skip
        np.testing.assert_allclose(flat(got, b), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("task", ["deblur", "sr2"])
def test_float32_within_1e4(task: str, rng) -> None:
    op, singles = problems(rng)[task]
    y = measurement(op, rng, SIGMA_N)
    config = config_for(task)
    got = sample(LinearModel(), op, y.float(), config)
    assert got.dtype == torch.float32
    for b, single in enumerate(singles):
        x_init = flat(op.init_estimate(y.float()), b)
        expected = R.dpir_loop(LinearModel().eps_fn, dense_matrix(single), flat(y.float(), b), SIGMA_N, x_init,
                               iter_num=config.iter_num, model_sigma2=config.model_sigma2)  # fmt: skip
        np.testing.assert_allclose(flat(got, b), expected, atol=1e-4, rtol=0)


def test_denoising_is_one_denoiser_call_at_sigma_n(rng) -> None:
    """for_task("denoise"): the official main_dpir_denoising.py, D(y, sigma_n) (the data step
    with A = I leaves y unchanged)."""
    y = torch.from_numpy(rng.random((2, *SHAPE)))
    model = LinearModel()
    got = sample(model, Denoise(), y, DPIRConfig.for_task("denoise", 0.1))
    for b in range(2):
        np.testing.assert_allclose(flat(got, b), np.clip(R.diffusion_denoiser(flat(y, b), 0.1, model.eps_fn), 0, 1), atol=1e-12)


@pytest.mark.parametrize("task", ["deblur", "sr2", "denoise"])
def test_graph_runtime_equals_sample(task: str, rng) -> None:
    op, _ = problems(rng)[task]
    y = measurement(op, rng, SIGMA_N).float()
    config = config_for(task)
    model = LinearModel()
    assert torch.equal(GraphSampler(model, "cpu", impl="torch").sample(op, y, config, seed=0), sample(model, op, y, config, seed=0))


def test_errors() -> None:
    with pytest.raises(DiffPIRError, match="does not apply to task inpaint .it restores deblur, sr, denoise"):
        DPIRConfig.for_task("inpaint", 0.05)
    with pytest.raises(DiffPIRError, match="model_sigma2: the default sigma_n \\* 255 needs sigma_n > 0"):
        DPIRConfig.for_task("deblur", 0.0)
    with pytest.raises(DiffPIRError, match="DPIR denoising needs sigma_n > 0"):
        DPIRConfig.for_task("denoise", 0.0)
    with pytest.raises(DiffPIRError, match="iter_num: expected an integer"):
        DPIRConfig(sigma_n=0.05, iter_num=0)
    with pytest.raises(DiffPIRError, match="model_sigma2: expected a number in"):
        DPIRConfig(sigma_n=0.0, model_sigma2=-1.0)
    with pytest.raises(DiffPIRError, match="method dpir: restores a measurement"):
        from diffpir_rt.engine.sampler import generate

        generate(LinearModel(), (1, *SHAPE), DPIRConfig(sigma_n=0.05))
    # Inpainting is not a DPIR task, but HQS with the mask prox runs if asked for explicitly.
    y = torch.rand(1, *SHAPE, dtype=torch.float64)
    out = sample(LinearModel(), Inpaint(np.ones((8, 8))), y, DPIRConfig(sigma_n=0.05, iter_num=2))
    assert out.shape == y.shape
