"""DDRM against the float64 numpy reference (tests/methods/reference_methods.py).

The reference works in a dense SVD of A; the engine in the operator's own basis (Fourier
for blur/SR, pixels for masks) through range_filter / pinv / singular_values. Both treat
singular values below the cut-off (the engine's rcond) as missing coordinates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import METHODS, DDRMConfig, build_method
from diffpir_rt.engine.operators import Deblur, Inpaint
from diffpir_rt.engine.sampler import sample

from . import reference_methods as R
from .spectral_family import (
    SHAPE, LinearModel, dense_matrix, flat, measurement, noises, one_step, problems, random_state, seeded_draw,
)  # fmt: skip

TASKS = ["deblur", "sr2", "inpaint", "denoise"]


def reference_spectra(singles, y, config):
    """Per-sample DdrmSpectral of the dense A with the engine's cut-off ("missing" zeros)."""
    out = []
    for b, single in enumerate(singles):
        A = dense_matrix(single)
        y_m = R.measurement_to_model_units(A, flat(y, b))
        out.append(R.ddrm_spectral(A, y_m, zero_threshold=config.rcond, zero_singulars="missing"))
    return out


def test_defaults_and_timesteps() -> None:
    config = DDRMConfig(sigma_n=0.05)
    assert (config.steps, config.eta, config.eta_b) == (20, 0.85, 1.0)
    assert config.timestep_pairs() == R.ddrm_timestep_pairs(20)
    assert config.timestep_pairs()[0] == (950, 900) and config.timestep_pairs()[-1] == (0, -1)
    assert config.num_model_calls == 20 and DDRMConfig(0.0, steps=30).num_model_calls == 31
    method = build_method(config)
    assert [(s.t, s.t_next) for s in method.steps()] == R.ddrm_timestep_pairs(20)
    assert all(s.noise == 1 for s in method.steps()) and method.init_noise() == 1
    assert METHODS["ddrm"] == (DDRMConfig, type(method))
    assert DDRMConfig.for_task("sr", 0.01) == DDRMConfig(sigma_n=0.01)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n", [0.0, 0.05])
def test_initial_state_matches_reference(task: str, sigma_n: float, rng) -> None:
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = DDRMConfig(sigma_n=sigma_n)
    z = torch.from_numpy(rng.normal(size=(2, *SHAPE)))
    x_T = build_method(config).initial_state(op, y, op.data_step(y), [z])
    for b, spec in enumerate(reference_spectra(singles, y, config)):
        expected = R.ddrm_init(spec, 2 * sigma_n, 950, flat(z, b))
        np.testing.assert_allclose(flat(x_T, b), expected, atol=1e-9)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n", [0.0, 0.05])
def test_every_step_matches_reference_float64(task: str, sigma_n: float, rng) -> None:
    """Each of the 20 steps from the same state, eps and noise: <= 1e-9."""
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = DDRMConfig(sigma_n=sigma_n)
    method, model, data = build_method(config), LinearModel(), op.data_step(y)
    specs = reference_spectra(singles, y, config)
    for step in method.steps():
        x = random_state(rng, step.t)
        z = torch.from_numpy(rng.normal(size=(1, 2, *SHAPE)))
        got = one_step(method, model, data, x, step, z)
        for b, spec in enumerate(specs):
            expected, _ = R.ddrm_step(flat(x, b), step.t, step.t_next, model.eps_fn, spec, 2 * sigma_n, flat(z[0], b), 0.85, 1.0)
            np.testing.assert_allclose(flat(got, b), expected, atol=1e-9, rtol=0, err_msg=f"step {step.t} -> {step.t_next}")


@pytest.mark.parametrize("task", TASKS)
def test_steps_float32_within_1e4(task: str, rng) -> None:
    """The same steps with float32 inputs and operator: <= 1e-4 from the float64 reference."""
    sigma_n = 0.05
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = DDRMConfig(sigma_n=sigma_n, eta_b=0.7)
    method, model, data = build_method(config), LinearModel(), op.data_step(y.float())
    specs = reference_spectra(singles, y.float().double(), config)
    for step in method.steps()[::3] + method.steps()[-2:]:
        x = random_state(rng, step.t, torch.float32)
        z = torch.from_numpy(rng.normal(size=(1, 2, *SHAPE))).float()
        got = one_step(method, model, data, x, step, z)
        assert got.dtype == torch.float32
        for b, spec in enumerate(specs):
            expected, _ = R.ddrm_step(flat(x, b), step.t, step.t_next, model.eps_fn, spec, 2 * sigma_n, flat(z[0], b), 0.85, 0.7)
            np.testing.assert_allclose(flat(got, b), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n", [0.0, 0.05])
def test_full_loop_matches_reference(task: str, sigma_n: float, rng) -> None:
    """sample() with the seed's x_T draw and explicit step noise = ddrm_loop, per sample."""
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = DDRMConfig(sigma_n=sigma_n, steps=10)
    model = LinearModel()
    step_noise = noises(rng, config.noise_count, (2, *SHAPE))
    got = sample(model, op, y, config, noise=step_noise, seed=3)
    z_T = seeded_draw((2, *SHAPE), 3)
    for b, single in enumerate(singles):
        expected = R.ddrm_loop(model.eps_fn, dense_matrix(single), flat(y, b), sigma_n, flat(z_T, b),
                               [flat(z, b) for z in step_noise], num_steps=10, zero_threshold=config.rcond)  # fmt: skip
        np.testing.assert_allclose(flat(got, b), expected, atol=1e-9, rtol=0)


def test_noiseless_inpainting_pins_the_known_pixels_to_y(rng) -> None:
    """sigma_y = 0, eta_b = 1: every known pixel takes the "noisier than y" rule, y_bar/s +
    sigma' z, so after each step t -> t' >= 0 the known pixels of the state are exactly
    sqrt(abar_t') (y_m + sigma_t' z). (The last pair (0, -1) then returns the t = 0 call's x0
    unchanged by the data, as the official code does: y is not pasted into the output.)"""
    mask = (rng.random((8, 8)) > 0.5).astype(np.float64)
    op = Inpaint(mask)
    y = op.forward(torch.from_numpy(rng.random((1, *SHAPE))))
    config = DDRMConfig(sigma_n=0.0, steps=10)
    step_noise = noises(rng, config.noise_count, (1, *SHAPE))
    states = []
    sample(LinearModel(), op, y, config, noise=step_noise, seed=0, callback=lambda info: states.append(info["x"].clone()))
    known = torch.from_numpy(mask).bool().expand(1, *SHAPE)
    y_m = 2 * y - torch.from_numpy(mask)
    for (t, t_next), state, z in zip(config.timestep_pairs()[:-1], states, step_noise):
        ab = R.alpha_bar_at(t_next)
        expected = np.sqrt(ab) * (y_m + np.sqrt(1 - ab) / np.sqrt(ab) * z)
        assert torch.allclose(state[known], expected[known], atol=1e-13, rtol=0), (t, t_next)


@pytest.mark.parametrize("task", ["deblur", "sr2", "inpaint", "denoise"])
def test_graph_runtime_equals_sample(task: str, rng) -> None:
    """Per-sample kernels/masks, batch of 2, float32: the static-buffer loop is bit-identical."""
    op, _ = problems(rng)[task]
    y = measurement(op, rng, 0.05).float()
    config = DDRMConfig(sigma_n=0.05, steps=5)
    model = LinearModel()
    expected = sample(model, op, y, config, seed=11)
    got = GraphSampler(model, "cpu", impl="torch").sample(op, y, config, seed=11)
    assert torch.equal(got, expected)


def test_errors(rng) -> None:
    with pytest.raises(DiffPIRError, match="eta: expected a number in"):
        DDRMConfig(sigma_n=0.0, eta=1.5)
    with pytest.raises(DiffPIRError, match="eta_b"):
        DDRMConfig(sigma_n=0.0, eta_b=-0.1)
    with pytest.raises(DiffPIRError, match="steps: expected an integer"):
        DDRMConfig(sigma_n=0.0, steps=0)
    with pytest.raises(DiffPIRError, match="rcond: expected a number in"):
        DDRMConfig(sigma_n=0.0, rcond=0.0)
    with pytest.raises(DiffPIRError, match="sigma_n"):
        DDRMConfig(sigma_n=float("nan"))
    with pytest.raises(DiffPIRError, match="task: expected one of"):
        DDRMConfig.for_task("colorize", 0.0)
    with pytest.raises(DiffPIRError, match="method ddrm: restores a measurement"):
        from diffpir_rt.engine.sampler import generate

        generate(LinearModel(), (1, *SHAPE), DDRMConfig(sigma_n=0.0))
    y = torch.rand(1, *SHAPE, dtype=torch.float64)
    with pytest.raises(DiffPIRError, match="noise: expected 20 tensors"):
        sample(LinearModel(), Deblur(np.ones((3, 3)) / 9), y, DDRMConfig(sigma_n=0.0), noise=[torch.randn(1, *SHAPE)])
