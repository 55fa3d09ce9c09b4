"""Self-checks of the numpy method references (tiny sizes, CPU, a few seconds).

These test the references against closed-form facts (projections, oracle denoisers,
finite differences, known schedules), not against the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.methods import reference_methods as R

N = 12  # image length (C, H, W) = (3, 2, 2)


def oracle_eps(x_star_m: np.ndarray):
    """eps of a point-mass prior at x_star (model units): Tweedie x0 is exactly x_star."""
    def eps_fn(x_t: np.ndarray, t: int) -> np.ndarray:
        ab = R.alpha_bar_at(t)
        return (x_t - np.sqrt(ab) * x_star_m) / np.sqrt(1.0 - ab)
    return eps_fn


def linear_eps(rng: np.random.Generator, n: int = N):
    """eps = (1 + t/1000) M x + c and its exact vector-Jacobian product."""
    M = rng.normal(size=(n, n)) * 0.1
    c = rng.normal(size=n) * 0.1

    def eps_fn(x: np.ndarray, t: int) -> np.ndarray:
        return (1 + t / 1000) * (M @ x) + c

    def vjp(x: np.ndarray, t: int, v: np.ndarray) -> np.ndarray:
        return (1 + t / 1000) * (M.T @ v)

    return eps_fn, vjp


def noises(rng: np.random.Generator, k: int, n: int = N) -> list[np.ndarray]:
    return [rng.normal(size=n) for _ in range(k)]


# ----------------------------------------------------------------------------- schedules


def test_schedule_and_respacing() -> None:
    assert R.ALPHA_BAR[0] == pytest.approx(1 - 1e-4)
    assert R.ddim_timesteps(50) == list(range(980, -1, -20))
    assert R.ddim_timesteps(20)[:2] == [950, 900]
    ts30 = R.ddim_timesteps(30)  # 1000 // 30 = 33 would give 31 steps; GD picks stride 34
    assert len(ts30) == 30 and ts30[-2] == 34
    s250 = R.space_timesteps(1000, "250")
    assert len(s250) == 250 and {0, 999} <= s250
    full = R.spaced_schedule()
    np.testing.assert_allclose(full.betas, R.linear_betas(), rtol=1e-12)
    sched = R.respaced("ddim10")
    np.testing.assert_allclose(sched.alphas_cumprod, R.ALPHA_BAR[list(sched.timestep_map)], rtol=1e-12)
    assert sched.alphas_cumprod_prev[0] == 1.0


def test_ddpm_variance_types() -> None:
    sched = R.respaced("50")
    i = 7
    assert R.ddpm_log_variance(sched, i, "fixed_large") == pytest.approx(np.log(sched.betas[i]))
    assert R.ddpm_log_variance(sched, 0, "fixed_large") == pytest.approx(np.log(sched.posterior_variance[1]))
    assert R.ddpm_log_variance(sched, 0, "fixed_small") == pytest.approx(np.log(sched.posterior_variance[1]))
    v = np.array([-1.0, 1.0])
    lv = R.ddpm_log_variance(sched, i, "learned_range", v)
    np.testing.assert_allclose(lv, [np.log(sched.posterior_variance[i]), np.log(sched.betas[i])])


def test_jump_schedules_and_counts() -> None:
    assert R.ddnm_time_schedule(100, 1, 1) == list(range(99, -2, -1))
    assert R.ddnm_time_schedule(20, 2, 3) == R.repaint_schedule_jump(20, 1, 2, 3)
    pairs = R.ddnm_time_pairs()
    assert pairs[0] == (990, 980) and pairs[-1] == (0, -1) and len(pairs) == 100
    times = R.repaint_schedule_jump()  # t_T=250, jump_length=10, jump_n_sample=10
    assert R.schedule_moves(times) == (2410, 2160)
    assert R.repaint_noise_count(times) == 6979
    assert R.ddrm_timestep_pairs(20)[0] == (950, 900) and R.ddrm_timestep_pairs(20)[-1] == (0, -1)
    assert len(R.ddrm_timestep_pairs(30)) == 31


def test_noise_stream_counts(rng: np.random.Generator) -> None:
    eps_fn, _ = linear_eps(rng)
    with pytest.raises(ValueError):
        R.ddim_loop(eps_fn, rng.normal(size=N), noises(rng, 4), num_steps=5)
    with pytest.raises(ValueError):
        R.ddim_loop(eps_fn, rng.normal(size=N), noises(rng, 6), num_steps=5)


# ----------------------------------------------------------------------------- spectral


def test_spectral_helpers(rng: np.random.Generator) -> None:
    A = rng.normal(size=(5, 8))
    np.testing.assert_allclose(R.pinv_dense(A), np.linalg.pinv(A), atol=1e-12)
    B = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 8))  # rank 2
    np.testing.assert_allclose(R.pinv_dense(B, 1e-8), np.linalg.pinv(B, rcond=1e-10), atol=1e-10)
    np.testing.assert_allclose(R.singular_values(A), np.linalg.svd(A, compute_uv=False))
    r = rng.normal(size=5)
    np.testing.assert_allclose(R.solve_gram(A, r, 0.3), np.linalg.inv(A @ A.T + 0.3 * np.eye(5)) @ r)
    sp = R.spectral(B, 1e-8)
    assert sp.rank == 2 and sp.s.shape == (8,)
    np.testing.assert_allclose(sp.U @ np.diag(sp.s[:6]) @ sp.Vt[:6], B, atol=1e-10)


# ----------------------------------------------------------------------------- DDIM / DDPM


def test_ddim_eta0_deterministic_and_oracle(rng: np.random.Generator) -> None:
    eps_fn, _ = linear_eps(rng)
    xT = rng.normal(size=N)
    a = R.ddim_loop(eps_fn, xT, noises(rng, 10), num_steps=10, clip=False)
    b = R.ddim_loop(eps_fn, xT, noises(rng, 10), num_steps=10, clip=False)
    np.testing.assert_array_equal(a, b)
    c = R.ddim_loop(eps_fn, xT, noises(rng, 10), num_steps=10, eta=1.0, clip=False)
    assert not np.allclose(a, c)
    x_star = rng.uniform(0.1, 0.9, size=N)
    out = R.ddim_loop(oracle_eps(2 * x_star - 1), xT, noises(rng, 10), num_steps=10, eta=0.5)
    np.testing.assert_allclose(out, x_star, atol=1e-10)


def test_ddpm_oracle_returns_target(rng: np.random.Generator) -> None:
    x_star = rng.uniform(0.1, 0.9, size=N)
    for vt in ("fixed_small", "fixed_large"):
        out = R.ddpm_loop(oracle_eps(2 * x_star - 1), rng.normal(size=N), noises(rng, 20), "20", vt)
        np.testing.assert_allclose(out, x_star, atol=1e-10)


# ----------------------------------------------------------------------------- DDRM


def test_ddrm_identity_noiseless_returns_y(rng: np.random.Generator) -> None:
    y = rng.uniform(0.1, 0.9, size=N)
    out = R.ddrm_loop(oracle_eps(2 * y - 1), np.eye(N), y, 0.0, rng.normal(size=N), noises(rng, 20))
    np.testing.assert_allclose(out, y, atol=1e-10)


def test_ddrm_oracle_general_operator(rng: np.random.Generator) -> None:
    A = rng.normal(size=(5, N)) / np.sqrt(N)
    x_star = rng.uniform(0.1, 0.9, size=N)
    for sigma_n in (0.0, 0.05):
        y = A @ x_star + sigma_n * rng.normal(size=5)
        out = R.ddrm_loop(oracle_eps(2 * x_star - 1), A, y, sigma_n, rng.normal(size=N), noises(rng, 20))
        np.testing.assert_allclose(out, x_star, atol=1e-10)


def test_ddrm_measurement_rotation_invariance(rng: np.random.Generator) -> None:
    """Only the projectors of the SVD matter: rotating the measurement space changes nothing."""
    eps_fn, _ = linear_eps(rng)
    A = rng.normal(size=(6, N)) / np.sqrt(N)
    y = A @ rng.uniform(size=N) + 0.05 * rng.normal(size=6)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    xT, zs = rng.normal(size=N), noises(rng, 20)
    a = R.ddrm_loop(eps_fn, A, y, 0.05, xT, zs, clip=False)
    b = R.ddrm_loop(eps_fn, Q @ A, Q @ y, 0.05, xT, zs, clip=False)
    np.testing.assert_allclose(a, b, atol=1e-9)


def test_ddrm_init_without_usable_measurement_is_the_noise(rng: np.random.Generator) -> None:
    A = rng.normal(size=(4, N)) * 1e-3  # s * sigma_T <= sigma_0: nothing is "large"
    spec = R.ddrm_spectral(A, rng.normal(size=4))
    z = rng.normal(size=N)
    np.testing.assert_allclose(R.ddrm_init(spec, 10.0, 950, z), z, atol=1e-12)


def test_ddrm_inpainting_modes_agree_without_noise(rng: np.random.Generator) -> None:
    mask = (rng.uniform(size=N) > 0.4).astype(float)
    A = np.diag(mask)
    y = mask * rng.uniform(size=N)
    eps_fn, _ = linear_eps(rng)
    xT, zs = rng.normal(size=N), noises(rng, 20)
    a = R.ddrm_loop(eps_fn, A, y, 0.0, xT, zs, zero_singulars="missing", clip=False)
    b = R.ddrm_loop(eps_fn, A, y, 0.0, xT, zs, zero_singulars="generalH", clip=False)
    np.testing.assert_allclose(a, b, atol=1e-10)


# ----------------------------------------------------------------------------- DDNM


def test_ddnm_projection_and_final_consistency(rng: np.random.Generator) -> None:
    A = rng.normal(size=(5, N)) / np.sqrt(N)
    y = A @ rng.uniform(size=N)
    y_m = R.measurement_to_model_units(A, y)
    A_pinv = R.pinv_dense(A)
    x0_hat = R.ddnm_project(rng.normal(size=N), A, A_pinv, y_m)
    np.testing.assert_allclose(A @ x0_hat, y_m, atol=1e-10)
    eps_fn, _ = linear_eps(rng)
    pairs = R.ddnm_time_pairs(10, 2, 2)
    out = R.ddnm_loop(eps_fn, A, y, 0.0, rng.normal(size=N), noises(rng, len(pairs)), 10, 2, 2, clip=False)
    np.testing.assert_allclose(A @ out, y, atol=1e-10)


def test_ddnm_plus_reduces_to_ddnm_without_noise(rng: np.random.Generator) -> None:
    A = rng.normal(size=(5, N)) / np.sqrt(N)
    y_m = rng.normal(size=5)
    eps_fn, _ = linear_eps(rng)
    x, z = rng.normal(size=N), rng.normal(size=N)
    sp = R.spectral(A)
    a = R.ddnm_step(x, 500, 490, eps_fn, A, R.pinv_from_spectral(sp), y_m, z)
    b = R.ddnm_plus_step(x, 500, 490, eps_fn, A, sp, y_m, 0.0, z)
    np.testing.assert_allclose(a[0], b[0], atol=1e-12)


def test_ddnm_plus_coefficients() -> None:
    s = np.array([2.0, 0.5, 0.0])
    a, sigma_y, sigma_t, eta = 0.8, 0.5, 0.4, 0.6
    # thresholds a sigma_y / s = [0.2, 0.8, inf(s=0 -> default)]
    lam = R.ddnm_plus_lambda(s, a, sigma_y, sigma_t, eta)
    np.testing.assert_allclose(lam, [1.0, 0.5 * 0.4 * 0.8 / 0.8 / 0.5, 1.0])
    d1, d2 = R.ddnm_plus_noise_coeffs(s, a, sigma_y, sigma_t, eta)
    np.testing.assert_allclose(d1, [np.sqrt(0.4**2 - 0.2**2), 0.4 * 0.6, 0.4 * 0.6])
    np.testing.assert_allclose(d2, [0.0, 0.0, 0.4 * 0.8])


def test_ddnm_simplified_last_step_skips_projection_when_noisy(rng: np.random.Generator) -> None:
    A = rng.normal(size=(5, N)) / np.sqrt(N)
    eps_fn, _ = linear_eps(rng)
    x, z, y_m = rng.normal(size=N), rng.normal(size=N), rng.normal(size=5)
    A_pinv = R.pinv_dense(A)
    x_next, x0 = R.ddnm_plus_simplified_step(x, 0, -1, eps_fn, A, A_pinv, y_m, 0.1, z)
    np.testing.assert_allclose(x_next, x0)  # lambda = 0, gamma = 0 at ab' = 1
    x_next, _ = R.ddnm_plus_simplified_step(x, 0, -1, eps_fn, A, A_pinv, y_m, 0.0, z)
    np.testing.assert_allclose(A @ x_next, y_m, atol=1e-10)


# ----------------------------------------------------------------------------- RePaint


def test_repaint_known_region_injection(rng: np.random.Generator) -> None:
    mask = (rng.uniform(size=N) > 0.5).astype(float)
    y_m, x, z = rng.normal(size=N), rng.normal(size=N), rng.normal(size=N)
    ab = 0.3
    out = R.repaint_inject_known(x, mask, mask * y_m, ab, z)
    known = mask == 1
    np.testing.assert_allclose(out[known], np.sqrt(ab) * y_m[known] + np.sqrt(1 - ab) * z[known])
    np.testing.assert_array_equal(out[~known], x[~known])


def test_repaint_undo_matches_marginals() -> None:
    sched = R.respaced("25")
    i = 10
    assert np.sqrt(1 - sched.betas[i + 1]) * np.sqrt(sched.alphas_cumprod[i]) == pytest.approx(
        np.sqrt(sched.alphas_cumprod[i + 1]))


def test_repaint_loop_oracle(rng: np.random.Generator) -> None:
    mask = (rng.uniform(size=N) > 0.5).astype(float)
    x_star = rng.uniform(0.1, 0.9, size=N)
    times = R.repaint_schedule_jump(10, 1, 2, 2)
    out = R.repaint_loop(oracle_eps(2 * x_star - 1), mask, mask * x_star, rng.normal(size=N),
                         noises(rng, R.repaint_noise_count(times)), t_T=10, jump_length=2, jump_n_sample=2)
    np.testing.assert_allclose(out, x_star, atol=1e-10)


# ----------------------------------------------------------------------------- DPS


def test_dps_gradient_matches_finite_differences(rng: np.random.Generator) -> None:
    eps_fn, vjp = linear_eps(rng)
    A = rng.normal(size=(5, N)) / np.sqrt(N)
    y_m = rng.normal(size=5)
    t = 400
    ab = R.alpha_bar_at(t)
    x = 0.3 * np.sqrt(ab) * rng.normal(size=N)  # keeps x0_hat inside [-1, 1]

    def norm(xx: np.ndarray) -> float:
        x0 = np.clip(R.predict_x0(xx, eps_fn(xx, t), ab), -1, 1)
        return float(np.linalg.norm(y_m - A @ x0))

    grad, value = R.dps_norm_grad(x, t, eps_fn(x, t), ab, A, y_m, vjp)
    assert value == pytest.approx(norm(x))
    h = 1e-6
    fd = np.array([(norm(x + h * e) - norm(x - h * e)) / (2 * h) for e in np.eye(N)])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_dps_zero_scale_is_ddpm(rng: np.random.Generator) -> None:
    eps_fn, vjp = linear_eps(rng)
    sched = R.respaced("1000")
    A = rng.normal(size=(5, N))
    x, z = rng.normal(size=N), rng.normal(size=N)
    a, _, _ = R.dps_step(x, 321, eps_fn, vjp, sched, A, rng.normal(size=5), 0.0, z)
    b, _ = R.ddpm_step(x, 321, eps_fn, sched, z)
    np.testing.assert_array_equal(a, b)
    out = R.dps_loop(eps_fn, vjp, A, rng.uniform(size=5), 0.05, x, noises(rng, 20), 0.3, "20")
    assert out.shape == (N,) and np.all((out >= 0) & (out <= 1))


# ----------------------------------------------------------------------------- ILVR


def test_resizer_matrices() -> None:
    W = R.resizer_weights_1d(8, 0.5)
    assert W.shape == (4, 8)
    np.testing.assert_allclose(W.sum(axis=1), 1.0)
    P = R.ilvr_phi_matrix(2, 8, 8, 2)
    assert P.shape == (128, 128)
    np.testing.assert_allclose(P @ np.full(128, 0.7), 0.7)
    B = R.block_average_phi(3, 4, 4, 2)
    np.testing.assert_allclose(B @ B, B, atol=1e-14)


def test_ilvr_step_low_frequencies_follow_reference(rng: np.random.Generator) -> None:
    n = 48
    phi = R.block_average_phi(3, 4, 4, 2)
    eps_fn, _ = linear_eps(rng, n)
    sched = R.respaced("100")
    x, z1, z2, ref_m = (rng.normal(size=n) for _ in range(4))
    i = 50
    out, _ = R.ilvr_step(x, i, eps_fn, sched, phi, ref_m, 20, z1, z2)
    ref_t = R.q_sample(ref_m, sched.alphas_cumprod[i], z2)
    np.testing.assert_allclose(phi @ out, phi @ ref_t, atol=1e-12)
    below, _ = R.ilvr_step(x, 10, eps_fn, sched, phi, ref_m, 20, z1, None)
    np.testing.assert_array_equal(below, R.ddpm_step(x, 10, eps_fn, sched, z1)[0])
    k = R.ilvr_noise_count(10, 3)
    assert k == 16
    R.ilvr_loop(eps_fn, phi, rng.uniform(size=n), rng.normal(size=n), noises(rng, k, n), "10", 3)


# ----------------------------------------------------------------------------- DMPS


def test_dmps_likelihood_closed_forms(rng: np.random.Generator) -> None:
    sched = R.respaced("1000")
    i, sigma_y, lam = 300, 0.1, 1.75
    ab, alpha = sched.alphas_cumprod[i], sched.alphas[i]
    c = (1 - ab) / ab
    x, y_m = rng.normal(size=N), rng.normal(size=N)
    out = R.dmps_likelihood_step(x, i, sched, R.spectral(np.eye(N)), y_m, sigma_y, lam)
    expected = x + lam * (1 - alpha) / np.sqrt(alpha) * (y_m - x / np.sqrt(ab)) / (c + sigma_y**2) / np.sqrt(ab)
    np.testing.assert_allclose(out, expected, atol=1e-12)
    A = rng.normal(size=(5, N)) / np.sqrt(N)
    y_m = rng.normal(size=5)
    out = R.dmps_likelihood_step(x, i, sched, R.spectral(A, 0.0), y_m, sigma_y, lam)
    grad = A.T @ R.solve_gram(np.sqrt(c) * A, y_m - A @ x / np.sqrt(ab), sigma_y**2) / np.sqrt(ab)
    np.testing.assert_allclose(out, x + lam * (1 - alpha) / np.sqrt(alpha) * grad, atol=1e-10)


def test_dmps_zero_lambda_is_ddpm(rng: np.random.Generator) -> None:
    eps_fn, _ = linear_eps(rng)
    sched = R.respaced("1000")
    A = rng.normal(size=(5, N))
    x, z = rng.normal(size=N), rng.normal(size=N)
    a, _ = R.dmps_step(x, 77, eps_fn, sched, R.spectral(A), rng.normal(size=5), 0.1, z, lam=0.0)
    np.testing.assert_array_equal(a, R.ddpm_step(x, 77, eps_fn, sched, z)[0])


# ----------------------------------------------------------------------------- DPIR


def test_dpir_schedule_and_data_step(rng: np.random.Generator) -> None:
    sigma_n = 7.65 / 255
    sigmas, rhos = R.dpir_sigmas_rhos(sigma_n, 8)
    np.testing.assert_allclose(sigmas[[0, -1]], [49 / 255, sigma_n])
    np.testing.assert_allclose(rhos, 0.23 * sigma_n**2 / sigmas**2)
    assert R.dpir_model_sigma2("sr", 0.0, sf=4) == 4.0
    with pytest.raises(ValueError):
        R.dpir_sigmas_rhos(0.0, 8)
    t = R.sigma_to_timestep(sigmas[0])
    assert abs(np.sqrt((1 - R.ALPHA_BAR[t]) / R.ALPHA_BAR[t]) - 2 * sigmas[0]) < 3e-3
    A, y, z = rng.normal(size=(5, N)), rng.normal(size=5), rng.normal(size=N)
    x = R.hqs_data_step(A, y, z, 0.2)
    np.testing.assert_allclose(A.T @ (A @ x - y) + 0.2 * (x - z), 0.0, atol=1e-10)


def test_dpir_oracle_denoiser(rng: np.random.Generator) -> None:
    x_star = rng.uniform(0.1, 0.9, size=N)
    eps_fn = oracle_eps(2 * x_star - 1)
    np.testing.assert_allclose(R.diffusion_denoiser(rng.uniform(size=N), 0.1, eps_fn), x_star, atol=1e-10)
    out = R.dpir_loop(eps_fn, np.eye(N), x_star + 0.03 * rng.normal(size=N), 0.03, x_star, iter_num=8)
    np.testing.assert_allclose(out, x_star, atol=1e-10)
