"""RePaint against the float64 numpy reference (tests/methods/reference_methods.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_runtime import GraphSampler
from diffpir_rt.engine.methods import METHODS, RePaintConfig, build_method
from diffpir_rt.engine.methods.ddpm import space_timesteps
from diffpir_rt.engine.methods.repaint import schedule_jump
from diffpir_rt.engine.operators import Deblur, Inpaint
from diffpir_rt.engine.sampler import sample

from . import reference_methods as R
from .spectral_family import SHAPE, LinearModel, flat, noises, one_step

SMALL = dict(t_T=12, jump_length=3, jump_n_sample=3)  # 12 + 3*2*3 = 30 model calls, 18 undo steps


def masks(rng, batch: int = 2) -> np.ndarray:
    return (rng.random((batch, 8, 8)) > 0.5).astype(np.float64)


def test_defaults_schedule_and_costs() -> None:
    config = RePaintConfig()
    assert (config.t_T, config.jump_length, config.jump_n_sample, config.variance) == (250, 10, 10, "learned")
    assert config.num_model_calls == 2410 and config.num_undo_steps == 2160 and config.noise_count == 6979
    fast = RePaintConfig.fast()
    assert (fast.num_model_calls, fast.num_undo_steps, fast.noise_count) == (460, 360, 1279)
    for params in [(250, 10, 10), (100, 10, 5), (12, 3, 3), (20, 1, 2), (7, 6, 4)]:
        assert schedule_jump(*params) == R.repaint_schedule_jump(params[0], 1, params[1], params[2])
    for count in (250, 100, 12, 1000):
        assert space_timesteps(1000, str(count)) == R.space_timesteps(1000, str(count))
    chain, ref = build_method(config).chain, R.respaced("250")
    for name in ("betas", "alphas_cumprod", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        np.testing.assert_allclose(getattr(chain, name), getattr(ref, name), rtol=1e-13, atol=0)
    steps = build_method(config).steps()
    assert len(steps) == 2410 + 2409 + 2160 and sum(s.noise for s in steps) == 6979
    assert sum(s.t is not None for s in steps) == 2410
    assert all(s.t is None for s in steps if s.kind in ("undo", "inject"))
    assert steps[0].t == 999 and steps[-1].t == 0 and steps[-1].t_next == -1
    assert METHODS["repaint"][0] is RePaintConfig and RePaintConfig.tasks == ("inpaint",)


REFERENCE_VARIANCE = {"learned": "learned_range", "fixed_small": "fixed_small", "fixed_large": "fixed_large"}


@pytest.mark.parametrize("variance", ["learned", "fixed_small", "fixed_large"])
def test_steps_match_reference_float64_and_float32(variance: str, rng) -> None:
    """Each kind of step (reverse at several indices incl. i = 0, inject, undo) from the same
    state and noise as the reference's functions: <= 1e-9 in float64, <= 1e-4 in float32."""
    m = masks(rng)
    op = Inpaint(m)
    y = op.forward(torch.from_numpy(rng.random((2, *SHAPE))))
    config = RePaintConfig(**SMALL, variance=variance)
    method = build_method(config)
    model = LinearModel(variance=True)
    var_type, var_fn = REFERENCE_VARIANCE[variance], model.var_fn if variance == "learned" else None
    sched = R.respaced(str(config.t_T))
    index = {t: i for i, t in enumerate(sched.timestep_map)}
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        data = op.data_step(y.to(dtype))
        for step in method.steps():
            x = torch.from_numpy(rng.normal(size=(2, *SHAPE))).to(dtype)
            z = torch.from_numpy(rng.normal(size=(2, 2, *SHAPE))).to(dtype)
            if step.kind == "inject":
                got = method.update(x, None, step, data, z)
                assert torch.equal(method._sample_noise, z[0])  # handed to the reverse step after it
                method._sample_noise = None
                i = index[step.t_next]
                for b in range(2):
                    mask = np.tile(m[b].ravel(), SHAPE[0])
                    y_m = R.measurement_to_model_units(np.diag(mask), flat(y, b))
                    expected = R.repaint_inject_known(flat(x, b), mask, y_m, sched.alphas_cumprod[i], flat(z[1], b))
                    np.testing.assert_allclose(flat(got, b), expected, atol=tol, rtol=0)
                continue
            if step.kind == "undo":
                got = one_step(method, model, data, x, step, z[:1])
                i = index[step.t_next] - 1
                for b in range(2):
                    expected = R.repaint_undo_step(flat(x, b), i, sched, flat(z[0], b))
                    np.testing.assert_allclose(flat(got, b), expected, atol=tol, rtol=0)
                continue
            if step.noise == 0:
                method._sample_noise = z[0]  # what the inject step before it leaves
                got = one_step(method, model, data, x, step, None)
                assert method._sample_noise is None
            else:
                got = one_step(method, model, data, x, step, z[:1])
            i = index[step.t]
            for b in range(2):
                expected, _ = R.ddpm_step(flat(x, b), i, model.eps_fn, sched, flat(z[0], b), var_type, var_fn)
                np.testing.assert_allclose(flat(got, b), expected, atol=tol, rtol=0)


@pytest.mark.parametrize("variance", ["learned", "fixed_small"])
def test_full_loop_matches_reference(variance: str, rng) -> None:
    """sample() with explicit x_T and the 2 * 30 - 1 + 18 = 77 noise tensors = repaint_loop."""
    m = masks(rng)
    op = Inpaint(m)
    y = op.forward(torch.from_numpy(rng.random((2, *SHAPE))))
    config = RePaintConfig(**SMALL, variance=variance)
    assert config.noise_count == 77
    model = LinearModel(variance=True)
    var_type, var_fn = REFERENCE_VARIANCE[variance], model.var_fn if variance == "learned" else None
    x_T = torch.from_numpy(rng.normal(size=(2, *SHAPE)))
    step_noise = noises(rng, config.noise_count, (2, *SHAPE))
    got = sample(model, op, y, config, x_T=x_T, noise=step_noise)
    for b in range(2):
        mask, z_b = np.tile(m[b].ravel(), SHAPE[0]), [flat(z, b) for z in step_noise]
        expected = R.repaint_loop(model.eps_fn, mask, flat(y, b), flat(x_T, b), z_b,
                                  var_type=var_type, var_fn=var_fn, **SMALL)  # fmt: skip
        np.testing.assert_allclose(flat(got, b), expected, atol=1e-9, rtol=0)


def test_noiseless_known_region(rng) -> None:
    """What "the known region equals y" means for RePaint, precisely.

    The official loop pastes q(y_m, t) into the known region before every model call but the
    first, and never pastes y into the output (docs/methods.md, section 7). So:
    (1) after every inject step the known region of the state is exactly
        sqrt(abar_i) y_m + sqrt(1 - abar_i) z_known (to the last bit, for a binary mask);
    (2) the output is the clipped x0 of the t = 0 call, whose known region is
        y_m + sqrt(1/abar_0 - 1)(z_known - eps): it equals y up to
        |out - y| <= 0.5 sqrt(1/abar_0 - 1) |z_known - eps| = 0.005 |z_known - eps| ([0, 1]
        units; the clip only moves it closer), not exactly;
    (3) with a model whose x0 prediction agrees with y on the known region (an oracle for an
        image consistent with y), the output's known region is y to rounding.
    """
    m = masks(rng, 1)
    op = Inpaint(m)
    truth = torch.from_numpy(rng.random((1, *SHAPE)))
    y = op.forward(truth)
    known = torch.from_numpy(m).bool()[:, None].expand(1, *SHAPE)
    y_m = 2 * y - torch.from_numpy(m)[:, None]
    config = RePaintConfig(**SMALL)
    method = build_method(config)
    chain = method.chain
    model = LinearModel(variance=True)
    step_noise = noises(rng, config.noise_count, (1, *SHAPE))
    states = []
    out = sample(model, op, y, config, seed=0, noise=step_noise, callback=lambda info: states.append(info["x"]))

    offsets = np.cumsum([0] + [s.noise for s in method.steps()])
    index = {t: i for i, t in enumerate(chain.timestep_map)}
    for step, state, offset in zip(method.steps(), states, offsets):
        if step.kind == "inject":
            ab = chain.alphas_cumprod[index[step.t_next]]
            expected = np.sqrt(ab) * y_m + np.sqrt(1 - ab) * step_noise[offset + 1]
            assert torch.equal(state[known], expected[known])
    last_inject = [s for s in method.steps() if s.kind == "inject"][-1]
    x_in = states[-2]  # the state the t = 0 model call sees
    eps = model(x_in, torch.zeros(1, dtype=torch.int64))
    bound = 0.5 * np.sqrt(1 / chain.alphas_cumprod[0] - 1) * (step_noise[offsets[last_inject.index] + 1] - eps).abs()
    assert last_inject.t_next == 0 and np.sqrt(1 / chain.alphas_cumprod[0] - 1) == pytest.approx(0.01, rel=1e-3)
    assert ((out - y).abs()[known] <= bound[known] * (1 + 1e-9) + 1e-13).all()  # equality where not clipped
    assert (out - y).abs()[known].max() > 1e-6  # not exact: y is never pasted into the output

    truth_m = 2 * truth - 1

    def oracle(x_t, t):  # eps of a point mass at the truth: x0 = truth exactly
        ab = torch.as_tensor(R.ALPHA_BAR, dtype=x_t.dtype)[t][:, None, None, None]
        return (x_t - ab.sqrt() * truth_m) / (1 - ab).sqrt()

    oracle.eps_and_variance = lambda x_t, t: (oracle(x_t, t), torch.zeros_like(x_t))
    out = sample(oracle, op, y, config, seed=1)
    assert torch.allclose(out[known], y[known], atol=1e-12)


def test_graph_runtime_equals_sample(rng) -> None:
    """Per-sample masks in a batch of 2, float32: bit-identical to sample()."""
    op = Inpaint(masks(rng))
    y = op.forward(torch.rand(2, *SHAPE, dtype=torch.float64)).float()
    config = RePaintConfig(t_T=8, jump_length=2, jump_n_sample=2)
    model = LinearModel(variance=True)
    expected = sample(model, op, y, config, seed=4)
    assert torch.equal(GraphSampler(model, "cpu", impl="torch").sample(op, y, config, seed=4), expected)


def test_errors(rng) -> None:
    with pytest.raises(DiffPIRError, match="jump_length: expected an integer"):
        RePaintConfig(t_T=10, jump_length=10)
    with pytest.raises(DiffPIRError, match="t_T: expected an integer"):
        RePaintConfig(t_T=1)
    with pytest.raises(DiffPIRError, match="jump_n_sample: expected an integer"):
        RePaintConfig(jump_n_sample=0)
    with pytest.raises(DiffPIRError, match="variance: expected one of"):
        RePaintConfig(variance="learned_range")
    for task in ("deblur", "sr", "denoise"):
        with pytest.raises(DiffPIRError, match=f"method repaint: does not apply to task {task}"):
            RePaintConfig.for_task(task, 0.0)
    assert RePaintConfig.for_task("inpaint", 0.0) == RePaintConfig()
    y = torch.rand(1, *SHAPE, dtype=torch.float64)
    with pytest.raises(DiffPIRError, match="method repaint: applies to inpaint, not to this operator"):
        sample(LinearModel(variance=True), Deblur(np.ones((3, 3)) / 9), y, RePaintConfig(**SMALL))
    with pytest.raises(DiffPIRError, match="eps_model: the method needs the learned variance"):
        sample(LinearModel(), Inpaint(np.ones((8, 8))), y, RePaintConfig(**SMALL), seed=0)
    # fixed variances need no learned variance
    sample(LinearModel(), Inpaint(np.ones((8, 8))), y, RePaintConfig(**SMALL, variance="fixed_large"), seed=0)
