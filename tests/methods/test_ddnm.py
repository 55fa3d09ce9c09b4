"""DDNM / DDNM+ against the float64 numpy reference (tests/methods/reference_methods.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import METHODS, DDNMConfig, build_method
from diffpir_rt.engine.methods.ddnm import ddnm_timestep_pairs
from diffpir_rt.engine.operators import Deblur, Inpaint, SuperResolution
from diffpir_rt.engine.sampler import sample

from . import reference_methods as R
from .spectral_family import (
    SHAPE, LinearModel, dense_matrix, flat, gaussian_kernel, measurement, noises, one_step, problems, random_kernel, random_state,
)  # fmt: skip

TASKS = ["deblur", "sr2", "inpaint", "denoise"]


def test_defaults_schedule_and_counts() -> None:
    config = DDNMConfig(sigma_n=0.0)
    assert (config.steps, config.eta, config.travel_length, config.travel_repeat) == (100, 0.85, 1, 1)
    assert config.timestep_pairs() == R.ddnm_time_pairs(100, 1, 1)
    assert config.num_model_calls == 100 and config.noise_count == 100
    for params in [(100, 10, 3), (20, 2, 3), (50, 5, 2), (30, 1, 4)]:
        assert ddnm_timestep_pairs(*params) == R.ddnm_time_pairs(*params)
    travel = DDNMConfig(sigma_n=0.0, travel_length=10, travel_repeat=3)
    assert travel.num_model_calls == 280 and travel.noise_count == 460
    method = build_method(travel)
    assert sum(s.t is not None for s in method.steps()) == 280
    assert [s.kind for s in method.steps()].count("travel") == 180
    assert all(s.noise == 1 for s in method.steps()) and METHODS["ddnm"][0] is DDNMConfig
    assert DDNMConfig.for_task("inpaint", 0.05) == DDNMConfig(sigma_n=0.05)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n", [0.0, 0.05])
def test_reverse_steps_match_reference_float64(task: str, sigma_n: float, rng) -> None:
    """Reverse steps across the schedule (DDNM for sigma_n = 0, SVD DDNM+ otherwise): <= 1e-9."""
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = DDNMConfig(sigma_n=sigma_n, steps=20)
    method, model, data = build_method(config), LinearModel(), op.data_step(y)
    refs = []
    for b, single in enumerate(singles):
        A = dense_matrix(single)
        sp = R.spectral(A, config.rcond)
        refs.append((A, sp, R.pinv_from_spectral(sp), R.measurement_to_model_units(A, flat(y, b))))
    for step in method.steps():
        x, z = random_state(rng, step.t), torch.from_numpy(rng.normal(size=(1, 2, *SHAPE)))
        got = one_step(method, model, data, x, step, z)
        for b, (A, sp, A_pinv, y_m) in enumerate(refs):
            if sigma_n == 0:
                expected, _ = R.ddnm_step(flat(x, b), step.t, step.t_next, model.eps_fn, A, A_pinv, y_m, flat(z[0], b))
            else:
                expected, _ = R.ddnm_plus_step(flat(x, b), step.t, step.t_next, model.eps_fn, A, sp, y_m, 2 * sigma_n, flat(z[0], b))
            np.testing.assert_allclose(flat(got, b), expected, atol=1e-9, rtol=0, err_msg=f"{step.t} -> {step.t_next}")


@pytest.mark.parametrize("task", TASKS)
def test_reverse_steps_float32_within_1e4(task: str, rng) -> None:
    sigma_n = 0.05
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n).float()
    config = DDNMConfig(sigma_n=sigma_n, steps=20)
    method, model, data = build_method(config), LinearModel(), op.data_step(y)
    refs = []
    for b, single in enumerate(singles):
        A = dense_matrix(single)
        refs.append((A, R.spectral(A, config.rcond), R.measurement_to_model_units(A, flat(y, b))))
    for step in method.steps()[::4] + method.steps()[-1:]:
        x, z = random_state(rng, step.t, torch.float32), torch.from_numpy(rng.normal(size=(1, 2, *SHAPE))).float()
        got = one_step(method, model, data, x, step, z)
        assert got.dtype == torch.float32
        for b, (A, sp, y_m) in enumerate(refs):
            expected, _ = R.ddnm_plus_step(flat(x, b), step.t, step.t_next, model.eps_fn, A, sp, y_m, 2 * sigma_n, flat(z[0], b))
            np.testing.assert_allclose(flat(got, b), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n,travel", [(0.0, (1, 1)), (0.05, (1, 1)), (0.0, (3, 2)), (0.05, (2, 3))])
def test_full_loop_matches_reference(task: str, sigma_n: float, travel: tuple[int, int], rng) -> None:
    """sample() with explicit x_T and noise = ddnm_loop (with and without time travel), per sample."""
    op, singles = problems(rng)[task]
    y = measurement(op, rng, sigma_n)
    config = DDNMConfig(sigma_n=sigma_n, steps=10, travel_length=travel[0], travel_repeat=travel[1])
    model = LinearModel()
    x_T = torch.from_numpy(rng.normal(size=(2, *SHAPE)))
    step_noise = noises(rng, config.noise_count, (2, *SHAPE))
    got = sample(model, op, y, config, x_T=x_T, noise=step_noise)
    for b, single in enumerate(singles):
        expected = R.ddnm_loop(model.eps_fn, dense_matrix(single), flat(y, b), sigma_n, flat(x_T, b),
                               [flat(z, b) for z in step_noise], T_sampling=10, travel_length=travel[0],
                               travel_repeat=travel[1], zero_threshold=config.rcond)  # fmt: skip
        np.testing.assert_allclose(flat(got, b), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "op",
    [Deblur(np.stack([random_kernel(np.random.default_rng(1), 3), gaussian_kernel(3, 0.5)])),
     SuperResolution(2, np.stack([random_kernel(np.random.default_rng(2), 3), gaussian_kernel(3, 0.6)])),
     Inpaint((np.random.default_rng(3).random((2, 8, 8)) > 0.5).astype(np.float64))],
    ids=["deblur", "sr2", "inpaint"],
)  # fmt: skip
def test_noiseless_projection_makes_x0_consistent(op, rng) -> None:
    """DDNM, sigma_n = 0: after every reverse step, x0_hat = (x_t' - c1 z - c2 eps) / sqrt(abar')
    satisfies A x0_hat = y_m to rounding; the last step (0, -1) returns x0_hat itself.
    (The kernels here have all singular values above rcond: A A^+ = I.)"""
    y = measurement(op, rng, 0.0)
    config = DDNMConfig(sigma_n=0.0, steps=10)
    method, model, data = build_method(config), LinearModel(), op.data_step(y)
    y_m = 2 * y - op.forward(torch.ones(2, *SHAPE, dtype=torch.float64))
    x = torch.from_numpy(rng.normal(size=(2, *SHAPE)))
    for step in method.steps():
        z = torch.from_numpy(rng.normal(size=(1, 2, *SHAPE)))
        eps = model(x, torch.full((2,), step.t))
        x = one_step(method, model, data, x, step, z)
        x0_hat = (x - step["c1"] * z[0] - step["c2"] * eps) / step["a"]
        scale = 1.0 + step["c1"] / step["a"]  # the rounding of the subtraction grows with c / a
        assert torch.allclose(op.forward(x0_hat), y_m, atol=1e-13 * scale * 10, rtol=0), step.t
    assert torch.allclose(op.forward(x), y_m, atol=1e-13)  # the final state (before clipping)


def test_projection_onto_the_kept_range_with_a_null_space(rng) -> None:
    """A Gaussian blur with |K^| < rcond: the projection fixes the kept spectral coordinates
    only, A^+ A x0_hat = A^+ y_m (U_k^T A x0_hat = U_k^T y_m); the dropped ones keep the prior's."""
    op, _ = problems(rng)["deblur"]
    y = measurement(op, rng, 0.0)
    states = []
    sample(LinearModel(), op, y, DDNMConfig(sigma_n=0.0, steps=5), seed=0, callback=lambda info: states.append(info["x"]))
    data = op.data_step(y)
    y_m = 2 * y - op.forward(torch.ones(2, *SHAPE, dtype=torch.float64))
    assert torch.allclose(data.pinv(op.forward(states[-1])), data.pinv(y_m), atol=1e-11)
    assert not torch.allclose(op.forward(states[-1]), y_m, atol=1e-6)  # the null space is really there


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("sigma_n", [0.0, 0.05])
def test_graph_runtime_equals_sample(task: str, sigma_n: float, rng) -> None:
    op, _ = problems(rng)[task]
    y = measurement(op, rng, sigma_n).float()
    config = DDNMConfig(sigma_n=sigma_n, steps=6, travel_length=2, travel_repeat=2)
    model = LinearModel()
    expected = sample(model, op, y, config, seed=5)
    assert torch.equal(GraphSampler(model, "cpu", impl="torch").sample(op, y, config, seed=5), expected)


def test_errors() -> None:
    with pytest.raises(DiffPIRError, match="eta: expected a number in"):
        DDNMConfig(sigma_n=0.0, eta=2.0)
    with pytest.raises(DiffPIRError, match="travel_length: expected an integer"):
        DDNMConfig(sigma_n=0.0, travel_length=0)
    with pytest.raises(DiffPIRError, match="travel_repeat: expected an integer"):
        DDNMConfig(sigma_n=0.0, travel_repeat=1.5)
    with pytest.raises(DiffPIRError, match="steps: expected an integer"):
        DDNMConfig(sigma_n=0.0, steps=1001)
    with pytest.raises(DiffPIRError, match="noise_aware: expected true or false"):
        DDNMConfig(sigma_n=0.0, noise_aware=1)
    with pytest.raises(DiffPIRError, match="task: expected one of"):
        DDNMConfig.for_task("deblurring", 0.0)
    y = torch.rand(1, *SHAPE, dtype=torch.float64)
    with pytest.raises(DiffPIRError, match="noise: expected 100 tensors"):
        sample(LinearModel(), Inpaint(np.ones((8, 8))), y, DDNMConfig(sigma_n=0.0), noise=[])
