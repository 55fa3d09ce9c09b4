"""Float64 numpy reference transcriptions of the restoration methods.

Written from the papers and the official repositories (never from the engine's torch
code); docs/methods.md lists, per method, the sources, the defaults, the noise order and
every place where paper and official code disagree. Everything is dense linear algebra on
flat vectors, so these references share nothing with the engine's FFT-based operators.

Fixed conventions
-----------------
* Schedule: betas = linspace(1e-4, 0.02, 1000) (float64), alpha_bar = cumprod(1 - betas).
  Original timesteps t are 0..999; t = -1 means alpha_bar = 1 (the `compute_alpha`
  convention of the DDRM/DDNM code). guided-diffusion-based methods (DDIM, DDPM, DPS,
  RePaint, ILVR, DMPS) run on a respaced chain indexed by i; the UNet is always called with
  the ORIGINAL timestep `sched.timestep_map[i]`.
* An image is a flat float64 vector of length n ((C, H, W) flattened C-order). The diffusion
  state is in MODEL units [-1, 1].
* A (m x n) acts on [0, 1]-unit images; y (m,) is in [0, 1] units with Gaussian noise of std
  sigma_n. In model units y_m = 2*y - A @ 1 and the noise std is 2*sigma_n (the DDRM/DDNM
  code doubles sigma_0 / sigma_y "to account for scaling to [-1,1]").
* eps_fn(x_t, t) -> eps (n,). var_fn(x_t, t) -> model_var_values v (n,) in [-1, 1]
  (second half of a learn_sigma UNet output; same UNet call, so no extra NFE).
* Randomness is injected: every random draw is a caller-supplied pixel-space N(0, I) vector
  of length n, consumed in the order the official code draws it. Where the official code
  draws in the SVD basis the reference takes pixel z and uses z_bar = V^T z; every spectral
  coefficient depends only on the singular value, so the result does not depend on which
  SVD (signs, order, rotations inside repeated singular values) is used.
* Loops return the final image in [0, 1] units, clipped like the official code saves it
  (`clip=False` returns (x + 1) / 2 unclipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Sequence

import numpy as np

Array = np.ndarray
EpsFn = Callable[[Array, int], Array]
VarFn = Callable[[Array, int], Array]
EpsVjpFn = Callable[[Array, int, Array], Array]
VarType = Literal["fixed_small", "fixed_large", "learned_range"]

NUM_TIMESTEPS = 1000
ZERO_SV = 1e-10  # singular values below this count as zero (absolute; A has O(1) entries)


# =============================================================================
# Schedule
# =============================================================================


def linear_betas(
    num_timesteps: int = NUM_TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 0.02
) -> Array:
    """The DDPM linear schedule every official repo uses (float64)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


ALPHA_BAR: Array = np.cumprod(1.0 - linear_betas())


def alpha_bar_at(t: int) -> float:
    """alpha_bar at an original timestep; t = -1 gives 1 (DDRM/DDNM `compute_alpha`)."""
    return 1.0 if t < 0 else float(ALPHA_BAR[t])


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> set[int]:
    """guided-diffusion `respace.space_timesteps`: which original timesteps are kept.

    "ddimN" picks the smallest integer stride giving exactly N steps (range(0, T, stride));
    "N" (or [N, ...]) spreads N steps evenly over each section with Python's round()
    (banker's rounding) on an accumulated float, so "250" keeps 0 and 999.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
        counts = [int(c) for c in section_counts.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, steps = 0, []
    for k, count in enumerate(counts):
        size = size_per + (1 if k < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        frac_stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += frac_stride
        start += size
    return set(steps)


def ddim_timesteps(num_steps: int, num_timesteps: int = NUM_TIMESTEPS) -> list[int]:
    """Original timesteps of "ddimN" respacing in sampling (descending) order."""
    return sorted(space_timesteps(num_timesteps, f"ddim{num_steps}"), reverse=True)


@dataclass(frozen=True)
class SpacedSchedule:
    """guided-diffusion SpacedDiffusion quantities, indexed by the respaced index i."""

    timestep_map: tuple[int, ...]
    betas: Array
    alphas_cumprod: Array
    alphas_cumprod_prev: Array
    posterior_variance: Array
    posterior_log_variance_clipped: Array
    posterior_mean_coef1: Array
    posterior_mean_coef2: Array

    @property
    def num_steps(self) -> int:
        return len(self.timestep_map)

    @property
    def alphas(self) -> Array:
        return 1.0 - self.betas


def spaced_schedule(
    use_timesteps: Iterable[int] | None = None, base_betas: Array | None = None
) -> SpacedSchedule:
    """Respaced chain: new beta_i = 1 - abar[t_i] / abar[t_{i-1}] over the kept timesteps."""
    base = linear_betas() if base_betas is None else np.asarray(base_betas, dtype=np.float64)
    keep = set(range(base.size)) if use_timesteps is None else set(use_timesteps)
    last, new_betas, tmap = 1.0, [], []
    for t, ab in enumerate(np.cumprod(1.0 - base)):
        if t in keep:
            new_betas.append(1.0 - ab / last)
            last = ab
            tmap.append(t)
    betas = np.array(new_betas, dtype=np.float64)
    ab = np.cumprod(1.0 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    return SpacedSchedule(
        timestep_map=tuple(tmap),
        betas=betas,
        alphas_cumprod=ab,
        alphas_cumprod_prev=ab_prev,
        posterior_variance=post_var,
        posterior_log_variance_clipped=np.log(np.append(post_var[1], post_var[1:])),
        posterior_mean_coef1=betas * np.sqrt(ab_prev) / (1.0 - ab),
        posterior_mean_coef2=(1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab),
    )


def respaced(timestep_respacing: str | int) -> SpacedSchedule:
    """Shorthand: the SpacedSchedule for a guided-diffusion `timestep_respacing` value."""
    return spaced_schedule(space_timesteps(NUM_TIMESTEPS, timestep_respacing))


# =============================================================================
# Units, Tweedie, noise stream
# =============================================================================


def to_model_units(x01: Array) -> Array:
    return 2.0 * x01 - 1.0


def output_image(x_model: Array, clip: bool = True) -> Array:
    """(x + 1) / 2, clipped to [0, 1] as every official script does before saving."""
    x = (x_model + 1.0) / 2.0
    return np.clip(x, 0.0, 1.0) if clip else x


def measurement_to_model_units(A: Array, y: Array) -> Array:
    """y_m = 2 y - A 1, i.e. A applied to the [-1, 1] image plus twice the [0,1] noise."""
    return 2.0 * y - A @ np.ones(A.shape[1])


def predict_x0(x_t: Array, eps: Array, ab: float) -> Array:
    """Tweedie mean x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab) (written as GD does)."""
    return np.sqrt(1.0 / ab) * x_t - np.sqrt(1.0 / ab - 1.0) * eps


def predict_eps(x_t: Array, x0: Array, ab: float) -> Array:
    """eps re-derived from a (possibly clipped) x0 (GD `_predict_eps_from_xstart`)."""
    return (np.sqrt(1.0 / ab) * x_t - x0) / np.sqrt(1.0 / ab - 1.0)


def q_sample(x0: Array, ab: float, noise: Array) -> Array:
    """Forward marginal q(x_t | x_0) = sqrt(ab) x0 + sqrt(1 - ab) z."""
    return np.sqrt(ab) * x0 + np.sqrt(1.0 - ab) * noise


class NoiseStream:
    """Hands out the caller's noise vectors in order and checks that all were used."""

    def __init__(self, noises: Sequence[Array]):
        self._noises = list(noises)
        self._k = 0

    def next(self) -> Array:
        if self._k >= len(self._noises):
            raise ValueError(f"ran out of noise vectors after {self._k}")
        z = np.asarray(self._noises[self._k], dtype=np.float64)
        self._k += 1
        return z

    def assert_exhausted(self) -> None:
        if self._k != len(self._noises):
            raise ValueError(f"{len(self._noises)} noise vectors given, {self._k} consumed")


# =============================================================================
# Spectral helpers (dense)
# =============================================================================


@dataclass(frozen=True)
class Spectral:
    """Full SVD A = U diag(s) V^T; s padded with zeros to length n, small values zeroed."""

    U: Array  # (m, m)
    s: Array  # (n,), descending, zeros past min(m, n) and below the threshold
    Vt: Array  # (n, n)

    @property
    def rank(self) -> int:
        return int(np.count_nonzero(self.s))


def spectral(A: Array, zero_threshold: float = ZERO_SV) -> Spectral:
    """SVD with the official `singulars[singulars < ZERO] = 0` thresholding."""
    U, s, Vt = np.linalg.svd(A, full_matrices=True)
    s_full = np.zeros(A.shape[1])
    s_full[: s.size] = np.where(s < zero_threshold, 0.0, s)
    return Spectral(U=U, s=s_full, Vt=Vt)


def singular_values(A: Array) -> Array:
    """Singular values of A, descending."""
    return np.linalg.svd(A, compute_uv=False)


def pinv_from_spectral(sp: Spectral) -> Array:
    """A^+ = V diag(1/s) U^T over nonzero s (H_functions.H_pinv / A_functions.A_pinv)."""
    k = sp.rank
    return sp.Vt[:k].T @ (sp.U[:, :k].T / sp.s[:k, None])


def pinv_dense(A: Array, zero_threshold: float = ZERO_SV) -> Array:
    """Thresholded dense pseudo-inverse."""
    return pinv_from_spectral(spectral(A, zero_threshold))


def solve_gram(A: Array, r: Array, mu: float) -> Array:
    """(A A^T + mu I)^{-1} r by a dense solve (no SVD)."""
    return np.linalg.solve(A @ A.T + mu * np.eye(A.shape[0]), r)


# =============================================================================
# Generation: DDIM and DDPM (guided-diffusion)
# =============================================================================


def ddim_sigma(ab: float, ab_prev: float, eta: float) -> float:
    """DDIM eq. 16: eta * sqrt((1 - ab_prev)/(1 - ab)) * sqrt(1 - ab/ab_prev)."""
    return eta * np.sqrt((1.0 - ab_prev) / (1.0 - ab)) * np.sqrt(1.0 - ab / ab_prev)


def ddim_step(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    sched: SpacedSchedule,
    noise: Array,
    eta: float = 0.0,
    clip_denoised: bool = True,
) -> tuple[Array, Array]:
    """GD `ddim_sample`: clip x0, re-derive eps from it, step to ab_prev (=1 at i=0).

    Consumes one noise vector, also at i = 0 where it is multiplied by zero.
    """
    ab, ab_prev = sched.alphas_cumprod[i], sched.alphas_cumprod_prev[i]
    eps = eps_fn(x_t, sched.timestep_map[i])
    x0 = predict_x0(x_t, eps, ab)
    if clip_denoised:
        x0 = np.clip(x0, -1.0, 1.0)
    eps = predict_eps(x_t, x0, ab)
    sigma = ddim_sigma(ab, ab_prev, eta)
    mean = x0 * np.sqrt(ab_prev) + np.sqrt(1.0 - ab_prev - sigma**2) * eps
    x_prev = mean + sigma * noise if i != 0 else mean
    return x_prev, x0


def ddim_loop(
    eps_fn: EpsFn,
    x_T: Array,
    noises: Sequence[Array],
    num_steps: int = 50,
    eta: float = 0.0,
    clip_denoised: bool = True,
    clip: bool = True,
) -> Array:
    """Unconditional DDIM on "ddim{num_steps}" respacing; noises: one per step."""
    sched = respaced(f"ddim{num_steps}")
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    for i in reversed(range(sched.num_steps)):
        x, _ = ddim_step(x, i, eps_fn, sched, stream.next(), eta, clip_denoised)
    stream.assert_exhausted()
    return output_image(x, clip)


def resolve_var_type(var_type: VarType | None, var_fn: VarFn | None) -> VarType:
    """Default: learned_range when the model gives v (learn_sigma UNets), else fixed_small."""
    if var_type is None:
        return "learned_range" if var_fn is not None else "fixed_small"
    if var_type == "learned_range" and var_fn is None:
        raise ValueError("learned_range needs var_fn")
    return var_type


def ddpm_log_variance(
    sched: SpacedSchedule, i: int, var_type: VarType, v: Array | None = None
) -> Array | float:
    """GD p_mean_variance log-variance.

    fixed_small: log of posterior variance with entry 0 replaced by entry 1 ("clipped");
    fixed_large: log of betas with entry 0 replaced by posterior_variance[1];
    learned_range: frac * log(beta_i) + (1 - frac) * clipped_log_post_var_i, frac = (v+1)/2.
    """
    if var_type == "fixed_small":
        return float(sched.posterior_log_variance_clipped[i])
    if var_type == "fixed_large":
        return float(np.log(np.append(sched.posterior_variance[1], sched.betas[1:]))[i])
    if var_type == "learned_range":
        assert v is not None
        frac = (v + 1.0) / 2.0
        return frac * np.log(sched.betas[i]) + (1.0 - frac) * sched.posterior_log_variance_clipped[i]
    raise ValueError(var_type)


def ddpm_p_mean_variance(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    sched: SpacedSchedule,
    var_type: VarType,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
) -> tuple[Array, Array | float, Array, Array]:
    """(posterior mean from clipped x0, log-variance, clipped x0, raw eps)."""
    t = sched.timestep_map[i]
    eps = eps_fn(x_t, t)
    v = var_fn(x_t, t) if var_type == "learned_range" else None
    x0 = predict_x0(x_t, eps, sched.alphas_cumprod[i])
    if clip_denoised:
        x0 = np.clip(x0, -1.0, 1.0)
    mean = sched.posterior_mean_coef1[i] * x0 + sched.posterior_mean_coef2[i] * x_t
    return mean, ddpm_log_variance(sched, i, var_type, v), x0, eps


def ddpm_step(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    sched: SpacedSchedule,
    noise: Array,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
) -> tuple[Array, Array]:
    """GD `p_sample`: mean + exp(logvar / 2) z, no noise at i = 0 (z still consumed)."""
    vt = resolve_var_type(var_type, var_fn)
    mean, logvar, x0, _ = ddpm_p_mean_variance(x_t, i, eps_fn, sched, vt, var_fn, clip_denoised)
    x_prev = mean + np.exp(0.5 * logvar) * noise if i != 0 else mean
    return x_prev, x0


def ddpm_loop(
    eps_fn: EpsFn,
    x_T: Array,
    noises: Sequence[Array],
    timestep_respacing: str | int = "1000",
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
    clip: bool = True,
) -> Array:
    """Unconditional ancestral sampling; noises: one per step."""
    sched = respaced(timestep_respacing)
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    for i in reversed(range(sched.num_steps)):
        x, _ = ddpm_step(x, i, eps_fn, sched, stream.next(), var_type, var_fn, clip_denoised)
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# DDRM (bahjat-kawar/ddrm, functions/denoising.py efficient_generalized_steps)
# =============================================================================


def ddrm_timestep_pairs(num_steps: int = 20, num_timesteps: int = NUM_TIMESTEPS) -> list[tuple[int, int]]:
    """(t, t_next) pairs: seq = range(0, T, T // steps), seq_next = [-1] + seq[:-1], reversed.

    20 steps -> (950, 900), ..., (50, 0), (0, -1). If T % steps != 0 there are
    len(range(0, T, T // steps)) pairs, not `num_steps` (30 -> 31).
    """
    seq = list(range(0, num_timesteps, num_timesteps // num_steps))
    seq_next = [-1] + seq[:-1]
    return list(zip(reversed(seq), reversed(seq_next)))


@dataclass(frozen=True)
class DdrmSpectral:
    """The measured spectral coordinates: the first k columns of V, their s, and U^T y."""

    Vt: Array  # (n, n)
    s: Array  # (k,)
    Ut_y: Array  # (k,)


def ddrm_spectral(
    A: Array,
    y_m: Array,
    zero_threshold: float = ZERO_SV,
    zero_singulars: Literal["missing", "generalH"] = "missing",
) -> DdrmSpectral:
    """Choose which V-coordinates are "measured".

    "missing": only s > 0 (after thresholding) are measured; the rest follow the
    missing-pixel rule. This is what the structured official classes do (Inpainting,
    SuperResolution, Denoising, Colorization keep only positive singular values).
    "generalH": all min(m, n) = m coordinates are measured, zeros included, as the official
    GeneralH/Deblurring classes do; with sigma_0 > 0 a zeroed coordinate then lands in the
    "less noisy than y" case (0 < sigma_0). Needs m <= n.
    """
    m, n = A.shape
    U, s, Vt = np.linalg.svd(A, full_matrices=True)
    s = np.where(s < zero_threshold, 0.0, s)
    if zero_singulars == "missing":
        k = int(np.count_nonzero(s))
    elif zero_singulars == "generalH":
        if m > n:
            raise ValueError("generalH mode needs m <= n")
        k = s.size
    else:
        raise ValueError(zero_singulars)
    return DdrmSpectral(Vt=Vt, s=s[:k].copy(), Ut_y=U[:, :k].T @ y_m)


def ddrm_sigma(ab: float) -> float:
    """DDRM noise level in the x/sqrt(ab) parametrisation: sqrt(1 - ab) / sqrt(ab)."""
    return np.sqrt(1.0 - ab) / np.sqrt(ab)


def ddrm_init(spec: DdrmSpectral, sigma_0: float, t_T: int, z: Array) -> Array:
    """x_T from p(x_T | y) in the spectral basis (the official init), z_bar = V^T z.

    Coordinates with s * sigma_T > sigma_0 get mean U^T y / s and std
    sqrt(sigma_T^2 - (sigma_0/s)^2); all others mean 0, std sigma_T. The official code then
    DIVIDES by sigma_T (not multiply by sqrt(abar_T)); at t_T = 950 the two differ by ~1e-5.
    """
    sigma_T = ddrm_sigma(alpha_bar_at(t_T))
    n = spec.Vt.shape[0]
    large = np.flatnonzero(spec.s * sigma_T > sigma_0)
    inv_s = np.zeros(n)
    mean = np.zeros(n)
    inv_s[large] = sigma_0 / spec.s[large]
    mean[large] = spec.Ut_y[large] / spec.s[large]
    remaining = np.sqrt(np.clip(sigma_T**2 - inv_s**2, 0.0, None))
    return spec.Vt.T @ ((mean + remaining * (spec.Vt @ z)) / sigma_T)


def ddrm_case_masks(s: Array, sigma_next: float, sigma_0: float) -> tuple[Array, Array]:
    """(before, after): s*sigma_next > sigma_0 ("noisier than y"), < sigma_0 ("less noisy").

    Coordinates in neither (equality, e.g. sigma_0 = 0 at the last step) are treated as
    missing, as in the official code.
    """
    return s * sigma_next > sigma_0, s * sigma_next < sigma_0


def ddrm_step(
    x_t: Array,
    t: int,
    t_next: int,
    eps_fn: EpsFn,
    spec: DdrmSpectral,
    sigma_0: float,
    noise: Array,
    eta: float = 0.85,
    eta_b: float = 1.0,
) -> tuple[Array, Array]:
    """One DDRM step in the spectral basis; x0 is NOT clipped. Returns (x_next, x0).

    missing: x0_bar + sqrt(1-eta^2) sigma' eps_bar + eta sigma' z_bar
    after:   x0_bar + sqrt(1-eta^2) sigma' (U^T y - s x0_bar)/sigma_0 + eta sigma' z_bar
    before:  eta_b U^T y / s + (1-eta_b) x0_bar + sqrt(sigma'^2 - eta_b^2 sigma_0^2/s^2) z_bar
    x_next = sqrt(abar_next) V (.)   with sigma' = sigma(t_next) (0 at t_next = -1).
    """
    ab, ab_next = alpha_bar_at(t), alpha_bar_at(t_next)
    eps = eps_fn(x_t, t)
    x0 = (x_t - eps * np.sqrt(1.0 - ab)) / np.sqrt(ab)
    sigma_next = ddrm_sigma(ab_next)
    x0_bar, eps_bar, z_bar = spec.Vt @ x0, spec.Vt @ eps, spec.Vt @ noise
    s, Ut_y = spec.s, spec.Ut_y

    std = sigma_next * eta  # etaA = etaC = eta in the official runner
    tilde = np.sqrt(sigma_next**2 - std**2)
    out = x0_bar + tilde * eps_bar + std * z_bar  # missing

    before, after = ddrm_case_masks(s, sigma_next, sigma_0)
    a = np.flatnonzero(after)
    out[a] = x0_bar[a] + tilde * (Ut_y[a] - s[a] * x0_bar[a]) / sigma_0 + std * z_bar[a]
    b = np.flatnonzero(before)
    std_b = np.sqrt(sigma_next**2 - sigma_0**2 / s[b] ** 2 * eta_b**2)
    out[b] = Ut_y[b] / s[b] * eta_b + (1.0 - eta_b) * x0_bar[b] + std_b * z_bar[b]

    return np.sqrt(ab_next) * (spec.Vt.T @ out), x0


def ddrm_loop(
    eps_fn: EpsFn,
    A: Array,
    y: Array,
    sigma_n: float,
    x_T: Array,
    noises: Sequence[Array],
    num_steps: int = 20,
    eta: float = 0.85,
    eta_b: float = 1.0,
    zero_threshold: float = ZERO_SV,
    zero_singulars: Literal["missing", "generalH"] = "missing",
    clip: bool = True,
) -> Array:
    """DDRM. x_T: the pixel-space init draw (spectral init applied here);
    noises: one per step (len(ddrm_timestep_pairs(num_steps)))."""
    y_m, sigma_0 = measurement_to_model_units(A, y), 2.0 * sigma_n
    spec = ddrm_spectral(A, y_m, zero_threshold, zero_singulars)
    pairs = ddrm_timestep_pairs(num_steps)
    x = ddrm_init(spec, sigma_0, pairs[0][0], np.asarray(x_T, dtype=np.float64))
    stream = NoiseStream(noises)
    for t, t_next in pairs:
        x, _ = ddrm_step(x, t, t_next, eps_fn, spec, sigma_0, stream.next(), eta, eta_b)
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# Jump / time-travel schedules (RePaint scheduler.py; DDNM copies the simple form)
# =============================================================================


def _check_times(times: list[int], t_0: int, t_T: int) -> None:
    assert times[0] > times[1], (times[0], times[1])
    assert times[-1] == -1, times[-1]
    for a, b in zip(times[:-1], times[1:]):
        assert abs(a - b) == 1, (a, b)
    for t in times:
        assert t_0 <= t <= t_T, (t, t_0, t_T)


def repaint_schedule_jump(
    t_T: int = 250,
    n_sample: int = 1,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    jump2_length: int = 1,
    jump2_n_sample: int = 1,
    jump3_length: int = 1,
    jump3_n_sample: int = 1,
    start_resampling: int = 100_000_000,
) -> list[int]:
    """RePaint `get_schedule_jump`: respaced indices t_T-1 ... 0, -1 with jumps back up.

    Each pair (a, b) with b < a is one reverse step (one UNet call); b > a is one forward
    "undo" step. With the defaults: 2410 reverse steps and 2160 undo steps.
    """
    def fresh(length: int, n: int) -> dict[int, int]:
        return {j: n - 1 for j in range(0, t_T - length, length)}

    jumps = fresh(jump_length, jump_n_sample)
    jumps2 = fresh(jump2_length, jump2_n_sample)
    jumps3 = fresh(jump3_length, jump3_n_sample)
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if t + 1 < t_T - 1 and t <= start_resampling:
            for _ in range(n_sample - 1):
                t += 1
                ts.append(t)
                if t >= 0:
                    t -= 1
                    ts.append(t)
        if jumps3.get(t, 0) > 0 and t <= start_resampling - jump3_length:
            jumps3[t] -= 1
            for _ in range(jump3_length):
                t += 1
                ts.append(t)
        if jumps2.get(t, 0) > 0 and t <= start_resampling - jump2_length:
            jumps2[t] -= 1
            for _ in range(jump2_length):
                t += 1
                ts.append(t)
            jumps3 = fresh(jump3_length, jump3_n_sample)
        if jumps.get(t, 0) > 0 and t <= start_resampling - jump_length:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
            jumps2 = fresh(jump2_length, jump2_n_sample)
            jumps3 = fresh(jump3_length, jump3_n_sample)
    ts.append(-1)
    _check_times(ts, -1, t_T)
    return ts


def schedule_moves(times: Sequence[int]) -> tuple[int, int]:
    """(reverse steps = UNet calls, forward/undo steps) of a jump schedule."""
    pairs = list(zip(times[:-1], times[1:]))
    return sum(b < a for a, b in pairs), sum(b > a for a, b in pairs)


# =============================================================================
# DDNM / DDNM+ (wyhuai/DDNM)
# =============================================================================


def ddnm_time_schedule(T_sampling: int = 100, travel_length: int = 1, travel_repeat: int = 1) -> list[int]:
    """DDNM `get_schedule_jump` (RePaint's with n_sample = 1), in units of `skip`."""
    return repaint_schedule_jump(T_sampling, 1, travel_length, travel_repeat)


def ddnm_time_pairs(
    T_sampling: int = 100,
    travel_length: int = 1,
    travel_repeat: int = 1,
    num_timesteps: int = NUM_TIMESTEPS,
) -> list[tuple[int, int]]:
    """(i, j) original-timestep pairs: i*skip, j*skip with skip = T // T_sampling, j < 0 -> -1.

    j < i: reverse step from i to j (one UNet call); j > i: time-travel to j.
    Defaults: (990, 980), ..., (10, 0), (0, -1): 100 UNet calls.
    """
    skip = num_timesteps // T_sampling
    times = ddnm_time_schedule(T_sampling, travel_length, travel_repeat)
    return [(i * skip, j * skip if j >= 0 else -1) for i, j in zip(times[:-1], times[1:])]


def ddnm_coeffs(ab_next: float, eta: float) -> tuple[float, float]:
    """(c1, c2) = sqrt(1 - ab_next) * (eta, sqrt(1 - eta^2)): DDRM-style eta, NOT DDIM's."""
    return np.sqrt(1.0 - ab_next) * eta, np.sqrt(1.0 - ab_next) * np.sqrt(1.0 - eta**2)


def ddnm_project(x0: Array, A: Array, A_pinv: Array, y_m: Array, lam: float | Array = 1.0) -> Array:
    """Range-null-space correction x0 - lam * A^+ (A x0 - y) (lam = 1: A x0_hat = y)."""
    return x0 - lam * (A_pinv @ (A @ x0 - y_m))


def ddnm_step(
    x_t: Array,
    t: int,
    t_next: int,
    eps_fn: EpsFn,
    A: Array,
    A_pinv: Array,
    y_m: Array,
    noise: Array,
    eta: float = 0.85,
) -> tuple[Array, Array]:
    """Noise-free DDNM (svd_ddnm.ddnm_diffusion). Returns (x_next, x0 BEFORE projection).

    x_next = sqrt(ab') x0_hat + c1 z + c2 eps, x0 not clipped; z consumed also at t' = -1.
    """
    ab, ab_next = alpha_bar_at(t), alpha_bar_at(t_next)
    eps = eps_fn(x_t, t)
    x0 = (x_t - eps * np.sqrt(1.0 - ab)) / np.sqrt(ab)
    x0_hat = ddnm_project(x0, A, A_pinv, y_m)
    c1, c2 = ddnm_coeffs(ab_next, eta)
    return np.sqrt(ab_next) * x0_hat + c1 * noise + c2 * eps, x0


def ddnm_plus_lambda(s: Array, a: float, sigma_y: float, sigma_t: float, eta: float) -> Array:
    """Per-coordinate Sigma_t scale (official `Lambda`): 1, or s sigma_t sqrt(1-eta^2)/(a sigma_y)
    where sigma_t < a sigma_y / s (s = 0 -> 1)."""
    lam = np.ones_like(s)
    if a != 0 and sigma_y != 0:
        inv_s = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
        change = sigma_t < a * sigma_y * inv_s
        lam[change] = s[change] * sigma_t * np.sqrt(1.0 - eta**2) / a / sigma_y
    return lam


def ddnm_plus_noise_coeffs(
    s: Array, a: float, sigma_y: float, sigma_t: float, eta: float
) -> tuple[Array, Array]:
    """(d1, d2): per-coordinate weights of z_bar and eps_bar (official `Lambda_noise`).

    default / s == 0:            d1 = sigma_t eta,   d2 = sigma_t sqrt(1 - eta^2)
    sigma_t < a sigma_y / s:     d1 = sigma_t eta,   d2 = 0
    sigma_t > a sigma_y / s:     d1 = sqrt(sigma_t^2 - a^2 sigma_y^2 / s^2), d2 = 0
    (equality keeps the default, as in the code).
    """
    d1 = np.full_like(s, sigma_t * eta)
    d2 = np.full_like(s, sigma_t * np.sqrt(1.0 - eta**2))
    if a != 0 and sigma_y != 0:
        inv_s = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
        low = sigma_t < a * sigma_y * inv_s
        d1[low], d2[low] = sigma_t * eta, 0.0
        high = sigma_t > a * sigma_y * inv_s
        d1[high] = np.sqrt(sigma_t**2 - a**2 * sigma_y**2 * inv_s[high] ** 2)
        d2[high] = 0.0
        zero = s == 0
        d1[zero], d2[zero] = sigma_t * eta, sigma_t * np.sqrt(1.0 - eta**2)
    return d1, d2


def ddnm_plus_step(
    x_t: Array,
    t: int,
    t_next: int,
    eps_fn: EpsFn,
    A: Array,
    sp: Spectral,
    y_m: Array,
    sigma_y: float,
    noise: Array,
    eta: float = 0.85,
) -> tuple[Array, Array]:
    """SVD-based DDNM+ (svd_ddnm.ddnm_plus_diffusion), a = sqrt(ab'), sigma_t = sqrt(1 - ab').

    x0_hat = x0 - V diag(lambda) V^T A^+ (A x0 - y)
    x_next = a x0_hat + V (d1 * V^T z + d2 * V^T eps)
    sigma_y is in model units (2 sigma_n). With sigma_y = 0 this equals `ddnm_step`.
    """
    ab, ab_next = alpha_bar_at(t), alpha_bar_at(t_next)
    eps = eps_fn(x_t, t)
    x0 = (x_t - eps * np.sqrt(1.0 - ab)) / np.sqrt(ab)
    a, sigma_t = np.sqrt(ab_next), np.sqrt(1.0 - ab_next)
    r_bar = sp.Vt @ (pinv_from_spectral(sp) @ (A @ x0 - y_m))
    x0_hat = x0 - sp.Vt.T @ (ddnm_plus_lambda(sp.s, a, sigma_y, sigma_t, eta) * r_bar)
    d1, d2 = ddnm_plus_noise_coeffs(sp.s, a, sigma_y, sigma_t, eta)
    return a * x0_hat + sp.Vt.T @ (d1 * (sp.Vt @ noise) + d2 * (sp.Vt @ eps)), x0


def ddnm_plus_simplified_step(
    x_t: Array,
    t: int,
    t_next: int,
    eps_fn: EpsFn,
    A: Array,
    A_pinv: Array,
    y_m: Array,
    sigma_y: float,
    noise: Array,
    eta: float = 0.85,
) -> tuple[Array, Array]:
    """`--simplified` DDNM+ (diffusion.py simplified_ddnm_plus), scalar, code quirks kept:

    sigma_t = sqrt(1 - ab'^2) (ab' SQUARED) and a_t = ab' (not its sqrt);
    sigma_t >= ab' sigma_y: lam = 1, gamma = sqrt(sigma_t^2 - (ab' sigma_y)^2), else
    lam = sigma_t / (ab' sigma_y), gamma = 0;
    x_next = sqrt(ab') (x0 - lam A^+(A x0 - y)) + gamma (c1 z + c2 eps).
    Even with sigma_y = 0 the stochastic part is scaled by sqrt(1 - ab'^2) != 1.
    """
    ab, ab_next = alpha_bar_at(t), alpha_bar_at(t_next)
    eps = eps_fn(x_t, t)
    x0 = (x_t - eps * np.sqrt(1.0 - ab)) / np.sqrt(ab)
    sigma_t = np.sqrt(1.0 - ab_next**2)
    if sigma_t >= ab_next * sigma_y:
        lam, gamma = 1.0, np.sqrt(sigma_t**2 - (ab_next * sigma_y) ** 2)
    else:
        lam, gamma = sigma_t / (ab_next * sigma_y), 0.0
    x0_hat = ddnm_project(x0, A, A_pinv, y_m, lam)
    c1, c2 = ddnm_coeffs(ab_next, eta)
    return np.sqrt(ab_next) * x0_hat + gamma * (c1 * noise + c2 * eps), x0


def ddnm_travel_step(x0_last: Array, t_next: int, noise: Array) -> Array:
    """Time travel: re-noise the LAST unprojected x0 to t_next (not chained from x)."""
    return q_sample(x0_last, alpha_bar_at(t_next), noise)


def ddnm_loop(
    eps_fn: EpsFn,
    A: Array,
    y: Array,
    sigma_n: float,
    x_T: Array,
    noises: Sequence[Array],
    T_sampling: int = 100,
    travel_length: int = 1,
    travel_repeat: int = 1,
    eta: float = 0.85,
    variant: Literal["svd", "simplified"] = "svd",
    zero_threshold: float = ZERO_SV,
    clip: bool = True,
) -> Array:
    """DDNM (sigma_n = 0) / DDNM+ (sigma_n > 0). noises: one per pair of ddnm_time_pairs.

    variant "svd" = the path of the official evaluation script (no --simplified).
    """
    y_m, sigma_y = measurement_to_model_units(A, y), 2.0 * sigma_n
    sp = spectral(A, zero_threshold)
    A_pinv = pinv_from_spectral(sp)
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    x0_last: Array | None = None
    for i, j in ddnm_time_pairs(T_sampling, travel_length, travel_repeat):
        z = stream.next()
        if j < i:
            if variant == "simplified":
                x, x0_last = ddnm_plus_simplified_step(x, i, j, eps_fn, A, A_pinv, y_m, sigma_y, z, eta)
            elif sigma_y == 0:
                x, x0_last = ddnm_step(x, i, j, eps_fn, A, A_pinv, y_m, z, eta)
            else:
                x, x0_last = ddnm_plus_step(x, i, j, eps_fn, A, sp, y_m, sigma_y, z, eta)
        else:
            assert x0_last is not None
            x = ddnm_travel_step(x0_last, j, z)
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# DPS (DPS2022/diffusion-posterior-sampling, condition_methods.PosteriorSampling)
# =============================================================================

DPS_SCALES: dict[str, float] = {  # configs/*_config.yaml conditioning.params.scale
    "super_resolution": 0.3,
    "gaussian_deblur": 0.3,
    "motion_deblur": 0.3,
    "nonlinear_deblur": 0.3,
    "inpainting": 0.5,
    "phase_retrieval": 1.0,
}


def dps_norm_grad(
    x_t: Array,
    t: int,
    eps: Array,
    ab: float,
    A: Array,
    y_m: Array,
    eps_vjp_fn: EpsVjpFn,
    clip_denoised: bool = True,
) -> tuple[Array, float]:
    """grad_{x_t} ||y_m - A x0_hat(x_t)|| (the norm, not squared), through the clamp.

    x0_hat = clamp(c1 x_t - c2 eps(x_t)), c1 = 1/sqrt(ab), c2 = sqrt(1/ab - 1);
    u = D A^T (-(y - A x0_hat)) / ||.||, D = 1 where the clamp is inactive;
    grad = c1 u - c2 J_eps^T u.
    """
    c1, c2 = np.sqrt(1.0 / ab), np.sqrt(1.0 / ab - 1.0)
    x0_raw = c1 * x_t - c2 * eps
    if clip_denoised:
        x0 = np.clip(x0_raw, -1.0, 1.0)
        pass_through = ((x0_raw >= -1.0) & (x0_raw <= 1.0)).astype(np.float64)
    else:
        x0, pass_through = x0_raw, np.ones_like(x0_raw)
    r = y_m - A @ x0
    norm = float(np.linalg.norm(r))
    if norm == 0.0:
        return np.zeros_like(x_t), norm
    u = pass_through * (A.T @ (-r / norm))
    return c1 * u - c2 * eps_vjp_fn(x_t, t, u), norm


def dps_step(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    eps_vjp_fn: EpsVjpFn,
    sched: SpacedSchedule,
    A: Array,
    y_m: Array,
    zeta: float,
    noise: Array,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
) -> tuple[Array, Array, float]:
    """x' = p_sample(x_t); x_{t-1} = x' - zeta * grad_{x_t} ||y - A x0_hat(x_t)||.

    Applied at every step including i = 0. Returns (x_prev, clipped x0, residual norm).
    """
    vt = resolve_var_type(var_type, var_fn)
    mean, logvar, x0, eps = ddpm_p_mean_variance(x_t, i, eps_fn, sched, vt, var_fn, clip_denoised)
    x_prime = mean + np.exp(0.5 * logvar) * noise if i != 0 else mean
    t = sched.timestep_map[i]
    grad, norm = dps_norm_grad(x_t, t, eps, sched.alphas_cumprod[i], A, y_m, eps_vjp_fn, clip_denoised)
    return x_prime - zeta * grad, x0, norm


def dps_loop(
    eps_fn: EpsFn,
    eps_vjp_fn: EpsVjpFn,
    A: Array,
    y: Array,
    sigma_n: float,
    x_T: Array,
    noises: Sequence[Array],
    zeta: float = 0.3,
    timestep_respacing: str | int = "1000",
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
    clip: bool = True,
) -> Array:
    """DPS; noises: one per step (sigma_n only enters through y; the norm is in model units)."""
    del sigma_n  # DPS never uses the noise level
    sched, y_m = respaced(timestep_respacing), measurement_to_model_units(A, y)
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    for i in reversed(range(sched.num_steps)):
        x, _, _ = dps_step(x, i, eps_fn, eps_vjp_fn, sched, A, y_m, zeta, stream.next(),
                           var_type, var_fn, clip_denoised)
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# RePaint (andreas128/RePaint, gaussian_diffusion.p_sample / p_sample_loop_progressive)
# =============================================================================


def repaint_inject_known(x_t: Array, mask: Array, y_m: Array, ab: float, noise: Array) -> Array:
    """Known region replaced by q_sample(y, t) at the SAME level t as x_t (inpa_inj_sched_prev)."""
    return mask * q_sample(y_m, ab, noise) + (1.0 - mask) * x_t


def repaint_reverse_step(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    sched: SpacedSchedule,
    mask: Array,
    y_m: Array,
    noise_sample: Array,
    noise_known: Array | None,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
) -> tuple[Array, Array]:
    """Inject the known region into x_t (skipped when noise_known is None: the very first
    step, before any x0 exists), then p_sample. Noise order: sample noise, then known noise."""
    if noise_known is not None:
        x_t = repaint_inject_known(x_t, mask, y_m, sched.alphas_cumprod[i], noise_known)
    return ddpm_step(x_t, i, eps_fn, sched, noise_sample, var_type, var_fn, clip_denoised)


def repaint_undo_step(x: Array, i: int, sched: SpacedSchedule, noise: Array) -> Array:
    """Forward q(x_{i+1} | x_i) on the respaced chain (`undo`, inpa_inj_time_shift = 1)."""
    beta = sched.betas[i + 1]
    return np.sqrt(1.0 - beta) * x + np.sqrt(beta) * noise


def repaint_noise_count(times: Sequence[int]) -> int:
    """2 per reverse step except the first (1), 1 per undo step."""
    n_rev, n_fwd = schedule_moves(times)
    return 2 * n_rev - 1 + n_fwd


def repaint_loop(
    eps_fn: EpsFn,
    mask: Array,
    y: Array,
    x_T: Array,
    noises: Sequence[Array],
    t_T: int = 250,
    n_sample: int = 1,
    jump_length: int = 10,
    jump_n_sample: int = 10,
    timestep_respacing: str | None = None,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
    clip: bool = True,
) -> Array:
    """RePaint with A = diag(mask) (mask 1 = known), y full-size with zeros where unknown.

    Returns the final p_sample output (= clipped x0 at i = 0) with NO final paste of y.
    """
    A = np.diag(mask.astype(np.float64))
    y_m = measurement_to_model_units(A, y)
    sched = respaced(timestep_respacing or str(t_T))
    times = repaint_schedule_jump(t_T, n_sample, jump_length, jump_n_sample)
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    have_x0 = False
    for t_last, t_cur in zip(times[:-1], times[1:]):
        if t_cur < t_last:
            z_sample = stream.next()
            z_known = stream.next() if have_x0 else None
            x, _ = repaint_reverse_step(x, t_last, eps_fn, sched, mask, y_m, z_sample, z_known,
                                        var_type, var_fn, clip_denoised)
            have_x0 = True
        else:
            x = repaint_undo_step(x, t_last, sched, stream.next())
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# ILVR (jychoi118/ilvr_adm, gaussian_diffusion.p_sample_loop_progressive + resizer.py)
# =============================================================================


def _cubic(x: Array) -> Array:
    """Keys cubic (a = -0.5), the Resizer's default kernel."""
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (
        -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    ) * ((1 < ax) & (ax <= 2))


def resizer_weights_1d(in_length: int, scale: float, antialiasing: bool = True) -> Array:
    """Dense (out x in) matrix of the ILVR/DPS `Resizer` along one axis (cubic kernel).

    Antialiasing (kernel stretched by 1/scale) only when downscaling; reflection at borders
    via the mirror index trick; weights normalised to sum 1 per output pixel.
    """
    antialias = antialiasing and scale < 1
    out_length = int(np.ceil(in_length * scale))
    kernel_width = 4.0
    if antialias:
        def kernel(arg: Array) -> Array:
            return scale * _cubic(scale * arg)
        kernel_width *= 1.0 / scale
    else:
        kernel = _cubic
    out_coords = np.arange(1, out_length + 1)
    shifted = out_coords - (out_length - in_length * scale) / 2
    match = shifted / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(match - kernel_width / 2)
    expanded = int(np.ceil(kernel_width) + 2)
    fov = (left[:, None] + np.arange(expanded) - 1).astype(np.int64)
    weights = kernel(1.0 * match[:, None] - fov - 1)
    sums = weights.sum(axis=1)
    sums[sums == 0] = 1.0
    weights = weights / sums[:, None]
    mirror = np.concatenate((np.arange(in_length), np.arange(in_length - 1, -1, -1)))
    fov = mirror[np.mod(fov, mirror.size)]
    W = np.zeros((out_length, in_length))
    np.add.at(W, (np.repeat(np.arange(out_length), expanded), fov.ravel()), weights.ravel())
    return W


def resizer_matrix(channels: int, height: int, width: int, scale: float) -> Array:
    """Resizer on a flat (C, H, W) image: kron(I_C, kron(W_h, W_w))."""
    return np.kron(np.eye(channels), np.kron(resizer_weights_1d(height, scale),
                                             resizer_weights_1d(width, scale)))


def ilvr_phi_matrix(channels: int, height: int, width: int, down_N: int) -> Array:
    """phi_N = up(down(.)) exactly as ilvr_sample.py builds it (both Resizers, cubic)."""
    down = resizer_matrix(channels, height, width, 1.0 / down_N)
    up = resizer_matrix(channels, height // down_N, width // down_N, float(down_N))
    return up @ down


def block_average_phi(channels: int, height: int, width: int, N: int) -> Array:
    """Idempotent alternative phi: N x N block mean then nearest upsampling."""
    def axis(L: int) -> Array:
        return np.kron(np.eye(L // N), np.full((N, N), 1.0 / N))
    return np.kron(np.eye(channels), np.kron(axis(height), axis(width)))


def ilvr_step(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    sched: SpacedSchedule,
    phi: Array,
    ref_m: Array,
    range_t: int,
    noise_sample: Array,
    noise_ref: Array | None,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
) -> tuple[Array, Array]:
    """x' = p_sample(x_t); if i > range_t: x' - phi x' + phi q_sample(ref, i).

    The reference is noised to level i (the level of x_t, as the official code does),
    not i-1 as in the paper. Noise order: sample noise, then reference noise.
    """
    x_prev, x0 = ddpm_step(x_t, i, eps_fn, sched, noise_sample, var_type, var_fn, clip_denoised)
    if i > range_t:
        assert noise_ref is not None
        ref_t = q_sample(ref_m, sched.alphas_cumprod[i], noise_ref)
        x_prev = x_prev - phi @ x_prev + phi @ ref_t
    return x_prev, x0


def ilvr_noise_count(num_steps: int, range_t: int) -> int:
    """One per step plus one per step with i > range_t."""
    return num_steps + sum(1 for i in range(num_steps) if i > range_t)


def ilvr_loop(
    eps_fn: EpsFn,
    phi: Array,
    reference: Array,
    x_T: Array,
    noises: Sequence[Array],
    timestep_respacing: str | int = "100",
    range_t: int = 0,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
    clip: bool = True,
) -> Array:
    """ILVR with a [0,1]-unit reference image (for a measurement y = Down ref, any image whose
    Down equals y gives the same phi(ref); the noise term phi z needs the full-size z)."""
    sched, ref_m = respaced(timestep_respacing), to_model_units(reference)
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    for i in reversed(range(sched.num_steps)):
        z_sample = stream.next()
        z_ref = stream.next() if i > range_t else None
        x, _ = ilvr_step(x, i, eps_fn, sched, phi, ref_m, range_t, z_sample, z_ref,
                         var_type, var_fn, clip_denoised)
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# DMPS (mengxiangming/dmps, condition_methods.PosteriorSampling_meng)
# =============================================================================

DMPS_LAMBDA = 1.75  # configs/*_config.yaml conditioning.params.scale


def dmps_likelihood_step(
    x: Array,
    i: int,
    sched: SpacedSchedule,
    sp: Spectral,
    y_m: Array,
    sigma_y: float,
    lam: float = DMPS_LAMBDA,
) -> Array:
    """Closed-form pseudo-likelihood step applied to the DDPM sample x = x'_{t-1}:

    x + lam (1 - alpha_t)/sqrt(alpha_t) / sqrt(ab_t)
          * V diag(s / (s^2 (1-ab_t)/ab_t + sigma_y^2)) U^T (y - A x / sqrt(ab_t))
    = x + lam (1-alpha_t)/sqrt(alpha_t) A^T (c A A^T + sigma_y^2 I)^{-1} (y - A x/sqrt(ab)) / sqrt(ab)
    with alpha_t, ab_t of the CURRENT step i (clipped to [1e-16, 1 - 1e-16]) and A the
    thresholded operator. sigma_y in model units (2 sigma_n).
    """
    ab = float(np.clip(sched.alphas_cumprod[i], 1e-16, 1 - 1e-16))
    alpha = float(np.clip(sched.alphas[i], 1e-16, 1 - 1e-16))
    c = (1.0 - ab) / ab
    k = min(sp.U.shape[0], sp.Vt.shape[0])
    s = sp.s[:k]
    Ut_r = sp.U[:, :k].T @ y_m - s * (sp.Vt[:k] @ x) / np.sqrt(ab)
    coef = np.divide(s, s**2 * c + sigma_y**2, out=np.zeros_like(s), where=s > 0)
    grad = sp.Vt[:k].T @ (coef * Ut_r) / np.sqrt(ab)
    return x + lam * grad * (1.0 - alpha) / np.sqrt(alpha)


def dmps_step(
    x_t: Array,
    i: int,
    eps_fn: EpsFn,
    sched: SpacedSchedule,
    sp: Spectral,
    y_m: Array,
    sigma_y: float,
    noise: Array,
    lam: float = DMPS_LAMBDA,
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
) -> tuple[Array, Array]:
    """DDPM p_sample then the likelihood step (at every i, including 0)."""
    x_prime, x0 = ddpm_step(x_t, i, eps_fn, sched, noise, var_type, var_fn, clip_denoised)
    return dmps_likelihood_step(x_prime, i, sched, sp, y_m, sigma_y, lam), x0


def dmps_loop(
    eps_fn: EpsFn,
    A: Array,
    y: Array,
    sigma_n: float,
    x_T: Array,
    noises: Sequence[Array],
    lam: float = DMPS_LAMBDA,
    timestep_respacing: str | int = "1000",
    var_type: VarType | None = None,
    var_fn: VarFn | None = None,
    clip_denoised: bool = True,
    zero_threshold: float = 0.0,
    clip: bool = True,
) -> Array:
    """DMPS; noises: one per step."""
    sched, y_m = respaced(timestep_respacing), measurement_to_model_units(A, y)
    sp = spectral(A, zero_threshold)
    stream, x = NoiseStream(noises), np.asarray(x_T, dtype=np.float64)
    for i in reversed(range(sched.num_steps)):
        x, _ = dmps_step(x, i, eps_fn, sched, sp, y_m, 2.0 * sigma_n, stream.next(), lam,
                         var_type, var_fn, clip_denoised)
    stream.assert_exhausted()
    return output_image(x, clip)


# =============================================================================
# DPIR (cszn/DPIR, utils_pnp.get_rho_sigma + HQS loop) with a diffusion denoiser
# =============================================================================


def dpir_model_sigma2(task: Literal["deblur", "sr"], sigma_n: float, sf: int = 1) -> float:
    """Last denoiser level in /255 units: deblur sigma_n*255; SR max(sf, sigma_n*255)."""
    return sigma_n * 255.0 if task == "deblur" else max(float(sf), sigma_n * 255.0)


def dpir_sigmas_rhos(
    sigma_n: float,
    iter_num: int,
    model_sigma1: float = 49.0,
    model_sigma2: float | None = None,
    w: float = 1.0,
) -> tuple[Array, Array]:
    """sigma_k = logspace(49, model_sigma2, K)/255 (w = 1), rho_k = 0.23 max(0.255/255, sigma_n)^2 / sigma_k^2.

    The official casts the sigmas to float32; here they stay float64.
    """
    s2 = sigma_n * 255.0 if model_sigma2 is None else model_sigma2
    if s2 <= 0:
        raise ValueError("model_sigma2 must be > 0 (the official deblur script needs sigma_n > 0)")
    log = np.logspace(np.log10(model_sigma1), np.log10(s2), iter_num)
    lin = np.linspace(model_sigma1, s2, iter_num)
    sigmas = (log * w + lin * (1.0 - w)) / 255.0
    sigma = max(0.255 / 255.0, sigma_n)
    return sigmas, 0.23 * sigma**2 / sigmas**2


def sigma_to_timestep(sigma: float) -> int:
    """t whose model-unit noise-to-signal sqrt((1-ab)/ab) is closest to 2 sigma ([0,1] sigma)."""
    return int(np.argmin(np.abs(np.sqrt((1.0 - ALPHA_BAR) / ALPHA_BAR) - 2.0 * sigma)))


def diffusion_denoiser(x: Array, sigma: float, eps_fn: EpsFn, clip_denoised: bool = False) -> Array:
    """D(x, sigma) in [0,1] units: x_t = sqrt(ab_t)(2x - 1), one eps call, Tweedie x0, back.

    The input is treated as x0 + 2 sigma n in model units, so scaling by sqrt(ab_t) gives a
    valid x_t exactly when sqrt((1-ab_t)/ab_t) = 2 sigma. No clipping by default.
    """
    t = sigma_to_timestep(sigma)
    ab = alpha_bar_at(t)
    x_t = np.sqrt(ab) * to_model_units(x)
    x0 = (x_t - np.sqrt(1.0 - ab) * eps_fn(x_t, t)) / np.sqrt(ab)
    if clip_denoised:
        x0 = np.clip(x0, -1.0, 1.0)
    return (x0 + 1.0) / 2.0


def hqs_data_step(A: Array, y: Array, z: Array, rho: float) -> Array:
    """argmin_x ||y - A x||^2 + rho ||x - z||^2 = (A^T A + rho I)^{-1}(A^T y + rho z), [0,1] units."""
    n = A.shape[1]
    return np.linalg.solve(A.T @ A + rho * np.eye(n), A.T @ y + rho * z)


def dpir_loop(
    eps_fn: EpsFn,
    A: Array,
    y: Array,
    sigma_n: float,
    x_init: Array,
    iter_num: int = 8,
    model_sigma1: float = 49.0,
    model_sigma2: float | None = None,
    w: float = 1.0,
    clip_denoised: bool = False,
    clip: bool = True,
) -> Array:
    """HQS: for k: x = data_step(x, rho_k); x = D(x, sigma_k). Deterministic (no noise).

    x_init in [0,1] units (official: deblur y itself, SR bicubic-upsampled y). Output clipped.
    """
    sigmas, rhos = dpir_sigmas_rhos(sigma_n, iter_num, model_sigma1, model_sigma2, w)
    x = np.asarray(x_init, dtype=np.float64)
    for sigma_k, rho_k in zip(sigmas, rhos):
        x = hqs_data_step(A, y, x, rho_k)
        x = diffusion_denoiser(x, sigma_k, eps_fn, clip_denoised)
    return np.clip(x, 0.0, 1.0) if clip else x
