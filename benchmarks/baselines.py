"""Baselines beside DiffPIR in the quality table: classical restorers and DiffPIR's data step alone.

Each baseline maps a Measurement to an (H, W, 3) float image (unclipped; metrics
quantise). Their parameters are fixed rules of the known noise level, set on set3c
(never on CBSD68/McMaster, where the benchmark reports), and recorded in the results.

* measurement: y itself (same-size tasks only): the number every method must beat.
* wiener: scikit-image `restoration.wiener`, per channel, Laplacian regulariser,
  balance = WIENER_BALANCE_PER_VARIANCE * (sigma_n^2 + sigma_q^2), sigma_q = 1/(255 sqrt 12)
  the 8-bit quantisation noise of y. skimage builds its transfer function by padding the
  kernel and rolling its centre to (0, 0), then FFTs: exactly the circular convolution of
  the official blur (checked in tests), so no boundary handling is needed.
* unsupervised_wiener: skimage's Gibbs-sampled Wiener (regulariser weights estimated per
  image), per channel, rng = the image seed.
* bicubic: MATLAB-style bicubic upsampling x sf (`engine.degrade.imresize`), the
  classical SR reference (the measurement was made by the same resampler).
* biharmonic: skimage `restoration.inpaint_biharmonic` of the missing pixels.
* tv: skimage `denoise_tv_chambolle`, weight = TV_WEIGHT_PER_SIGMA * sigma_n.
* nlmeans: skimage `denoise_nl_means`, h = NLM_H_PER_SIGMA * sigma_n, 5x5 patches,
  13x13 search window, fast mode, sigma_n given.
* datastep: DiffPIR's own data step with no prior: operator.prox(x_init, y, rho_final),
  x_init = operator.init_estimate(y) (y; bicubic upsampling for SR; y with 0 holes for
  inpainting), rho_final = lam max(sigma_n, 0.001)^2 / sigma_bar_t^2 at the last timestep
  t > 0 of the run's schedule (the sampler's last data step), with the run's lam and steps.

Tuned baselines (opt-in: `--methods tuned`; each costs a parameter search or a slow solver
per image). They are the references the diffusion prior must beat, so they get every
advantage a classical method can have:

* wiener_oracle, tv_oracle, nlmeans_oracle: the fixed baselines above with their one
  parameter (Wiener balance, TV weight, NL-means h) chosen per image against the ground
  truth, maximising the benchmark's own PSNR (uint8, shaved border). An oracle: no real
  restorer could choose so, which is the point of an upper bound. The search
  (`oracle_search`) is a log-spaced grid over a range in units of the noise level, then
  golden-section refinement around the best grid point; the fixed rule's value is one of
  the candidates, so an oracle never scores below its fixed baseline. Deterministic.
* bm3d: colour BM3D (the `bm3d` package, profile 'np') with the true sigma_n. That package
  is free for non-commercial use only: an optional evaluation extra, never a dependency of
  the engine; without it the eval skips bm3d with a note.
"""

from __future__ import annotations

from diffpir_rt.lazy import lazy_module

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from diffpir_rt.engine import DiffPIRConfig, DiffPIRError, get_task, linear_schedule

from . import metrics
from .protocol import Measurement

torch = lazy_module("torch")

#: Wiener balance per unit noise variance; best within 2x on set3c for both noiseless
#: (quantisation noise only) and sigma_n = 0.05 Gaussian and motion blur.
WIENER_BALANCE_PER_VARIANCE = 50.0
#: Std of the 8-bit rounding of a measurement, in [0, 1] units.
QUANTISATION_STD = 1.0 / (255.0 * math.sqrt(12.0))
TV_WEIGHT_PER_SIGMA = 0.8
NLM_H_PER_SIGMA = 0.8

Baseline = Callable[[Measurement, Optional[DiffPIRConfig]], np.ndarray]


def _per_channel(y: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.stack([fn(y[..., c]) for c in range(y.shape[-1])], axis=-1)


def measurement(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    return m.y


def noise_variance(m: Measurement) -> float:
    """sigma_n^2 + sigma_q^2: the variance of the measurement's noise, 8-bit rounding included."""
    return m.spec.sigma_n**2 + QUANTISATION_STD**2


def wiener_with(m: Measurement, balance: float) -> np.ndarray:
    """skimage's Wiener filter of y, per channel, Laplacian regulariser weighted by `balance`."""
    from skimage.restoration import wiener as skimage_wiener

    return _per_channel(m.y, lambda channel: skimage_wiener(channel, m.kernel, balance, clip=False))


def wiener(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    return wiener_with(m, WIENER_BALANCE_PER_VARIANCE * noise_variance(m))


def unsupervised_wiener(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import unsupervised_wiener as skimage_unsupervised_wiener

    return _per_channel(m.y, lambda channel: skimage_unsupervised_wiener(channel, m.kernel, clip=False, rng=m.seed)[0])


def bicubic(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from diffpir_rt.engine import degrade

    return degrade.imresize(m.y, float(m.operator.sf))


def biharmonic(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    assert m.mask is not None
    return inpaint_biharmonic(m.y, m.mask == 0, channel_axis=-1)


def tv_with(m: Measurement, weight: float) -> np.ndarray:
    """Chambolle's total-variation denoising of y (all channels together) with this weight."""
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(m.y, weight=weight, channel_axis=-1)


def tv(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    return tv_with(m, TV_WEIGHT_PER_SIGMA * m.spec.sigma_n)


def nlmeans_with(m: Measurement, h: float) -> np.ndarray:
    """Non-local means of y with filtering strength h: 5x5 patches, 13x13 search, fast mode, sigma_n given."""
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(m.y, h=h, sigma=m.spec.sigma_n, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1)


def nlmeans(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    return nlmeans_with(m, NLM_H_PER_SIGMA * m.spec.sigma_n)


# ----------------------------------------------------------------------------- tuned baselines


@dataclass(frozen=True)
class OracleSearch:
    """How an oracle baseline searches its one parameter, per image.

    The parameter is `unit(m) * r` with r searched on a log scale: `grid` points from
    r_low to r_high, then `refine` golden-section steps inside the two grid intervals
    around the best point. The fixed rule's r is evaluated too.

    Args:
        parameter: the restorer's parameter name (for reports).
        unit: what r is in units of ("variance": sigma_n^2 + sigma_q^2, "sigma": sigma_n).
        r_low, r_high: the searched range of r (the fixed rule's r lies inside).
        r_fixed: the fixed baseline's r.
        grid: grid points (>= 3); refine: golden-section steps (one evaluation each).
    """

    parameter: str
    unit: str
    r_low: float
    r_high: float
    r_fixed: float
    grid: int = 13
    refine: int = 8

    def __post_init__(self) -> None:
        if self.unit not in ("variance", "sigma"):
            raise DiffPIRError(f"oracle search {self.parameter}: unit {self.unit!r}; expected 'variance' or 'sigma'")
        if not 0 < self.r_low < self.r_high or self.grid < 3 or self.refine < 0:
            raise DiffPIRError(f"oracle search {self.parameter}: expected 0 < r_low < r_high, grid >= 3, refine >= 0")

    def scale(self, m: Measurement) -> float:
        return noise_variance(m) if self.unit == "variance" else m.spec.sigma_n


#: Golden-section ratio (sqrt 5 - 1) / 2.
GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def oracle_search(
    score: Callable[[float], float], low: float, high: float, grid: int, refine: int, extra: Sequence[float] = ()
) -> tuple[float, float]:
    """(argmax, max) of score(p) for p in [low, high], searched on log p; deterministic.

    A log-spaced grid of `grid` points plus the `extra` points finds the best neighbourhood
    (the PSNR of these filters against their parameter is unimodal in practice, but a grid
    first keeps a flat start from misleading the refinement); `refine` golden-section steps
    then shrink the bracket [grid[i-1], grid[i+1]] around the best grid point i. The result
    is the best of every point evaluated (first one on ties), so it is never below the grid's
    or the extra points' best.
    """
    cache: dict[float, float] = {}

    def f(p: float) -> float:
        if p not in cache:
            cache[p] = float(score(p))
        return cache[p]

    points = [float(p) for p in np.geomspace(low, high, grid)]
    for p in (*points, *(float(e) for e in extra)):
        f(p)
    best = max(range(grid), key=lambda i: (f(points[i]), -i))
    a, b = math.log(points[max(best - 1, 0)]), math.log(points[min(best + 1, grid - 1)])
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    for _ in range(refine):
        if f(math.exp(c)) >= f(math.exp(d)):
            b, d = d, c
            c = b - GOLDEN * (b - a)
        else:
            a, c = c, d
            d = a + GOLDEN * (b - a)
    argmax = max(cache, key=lambda p: cache[p])  # dicts keep insertion order: the first maximum wins
    return argmax, cache[argmax]


def oracle_psnr(m: Measurement, x: np.ndarray) -> float:
    """The benchmark's own score of a restoration: PSNR on uint8 after clip and round, border shaved."""
    return metrics.psnr(metrics.to_uint8(m.gt), metrics.to_uint8(x), m.border)


#: The oracle baselines: name -> (the restorer of one parameter value, its search).
ORACLES: dict[str, tuple[Callable[[Measurement, float], np.ndarray], OracleSearch]] = {
    "wiener_oracle": (wiener_with, OracleSearch("balance", "variance", 0.5, 5e4, WIENER_BALANCE_PER_VARIANCE)),
    "tv_oracle": (tv_with, OracleSearch("weight", "sigma", 0.05, 10.0, TV_WEIGHT_PER_SIGMA)),
    "nlmeans_oracle": (nlmeans_with, OracleSearch("h", "sigma", 0.05, 5.0, NLM_H_PER_SIGMA)),
}


def oracle_choice(name: str, m: Measurement) -> tuple[float, float]:
    """(parameter value, PSNR) the oracle baseline `name` picks for this measurement."""
    restore, search = ORACLES[name]
    unit = search.scale(m)
    return oracle_search(lambda p: oracle_psnr(m, restore(m, p)), search.r_low * unit, search.r_high * unit,
                         search.grid, search.refine, extra=(search.r_fixed * unit,))  # fmt: skip


def _oracle(name: str) -> Baseline:
    def run(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
        restore = ORACLES[name][0]
        return restore(m, oracle_choice(name, m)[0])

    run.__name__ = name
    return run


def bm3d_available() -> bool:
    return importlib.util.find_spec("bm3d") is not None


def bm3d(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    if not bm3d_available():
        raise DiffPIRError(f"bm3d baseline: {unavailable('bm3d')}")
    import bm3d as bm3d_package

    return np.asarray(bm3d_package.bm3d_rgb(m.y, sigma_psd=m.spec.sigma_n, profile="np"), dtype=np.float64)


def final_rho(config: DiffPIRConfig) -> float:
    """rho of the sampler's last data step: at the smallest timestep t > 0 of config's schedule."""
    t_last = config.timesteps()[-2]
    return float(linear_schedule().rho(config.lam, config.sigma_n)[t_last])


def datastep(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    if config is None:
        raise DiffPIRError("datastep baseline: needs the run's DiffPIRConfig (lam, sigma_n, steps)")
    y = m.y_tensor()
    with torch.no_grad():
        x = m.operator.prox(m.operator.init_estimate(y), y, final_rho(config))
    return x[0].permute(1, 2, 0).double().numpy()


#: name -> function, in report column order. Which task a baseline serves is the task's
#: declaration (engine.Task.baselines, its primary one first).
BASELINES: dict[str, Baseline] = {
    "measurement": measurement,
    "wiener": wiener,
    "wiener_oracle": _oracle("wiener_oracle"),
    "unsupervised_wiener": unsupervised_wiener,
    "bicubic": bicubic,
    "biharmonic": biharmonic,
    "tv": tv,
    "tv_oracle": _oracle("tv_oracle"),
    "nlmeans": nlmeans,
    "nlmeans_oracle": _oracle("nlmeans_oracle"),
    "bm3d": bm3d,
    "datastep": datastep,
}
#: The tuned baselines: opt-in (`--methods tuned`), each costs a search or a slow solver per
#: image. Each serves the tasks of the fixed baseline it stands in for.
TUNED: dict[str, str] = {"wiener_oracle": "wiener", "tv_oracle": "tv", "nlmeans_oracle": "nlmeans", "bm3d": "nlmeans"}


def _oracle_note(name: str, what: str) -> str:
    search = ORACLES[name][1]
    unit = "(σ_n² + σ_q²)" if search.unit == "variance" else "σ_n"
    return (f"{what} with its {search.parameter} chosen per image against the ground truth (an oracle upper bound): "
            f"PSNR on uint8 maximised over {search.parameter} = r {unit}, r log-spaced in [{search.r_low:g}, {search.r_high:g}] "
            f"({search.grid} points, the fixed rule's r = {search.r_fixed:g} too), then {search.refine} golden-section steps.")  # fmt: skip


#: One line per tuned baseline for the reports.
TUNED_NOTES: dict[str, str] = {
    "wiener_oracle": _oracle_note("wiener_oracle", "the wiener baseline"),
    "tv_oracle": _oracle_note("tv_oracle", "the tv baseline"),
    "nlmeans_oracle": _oracle_note("nlmeans_oracle", "the nlmeans baseline"),
    "bm3d": "colour BM3D (package bm3d, profile 'np') with the true σ_n; free for non-commercial use only "
    "(optional extra eval-bm3d).",
}


def applies(name: str, task: str) -> bool:
    return TUNED.get(name, name) in get_task(task).baselines


def unavailable(name: str) -> Optional[str]:
    """Why baseline `name` cannot run on this machine (an optional package is missing), or None."""
    if name == "bm3d" and not bm3d_available():
        return "package bm3d not installed (pip install 'diffpir-rt[eval-bm3d]'; its licence: non-commercial use only)"
    return None


def parameters() -> dict[str, float]:
    """The fixed baseline rules and the oracles' search ranges, recorded with every run."""
    searches = {f"{name}_{field}": getattr(search, field) for name, (_, search) in ORACLES.items()
                for field in ("r_low", "r_high", "grid", "refine")}  # fmt: skip
    return {
        "wiener_balance_per_variance": WIENER_BALANCE_PER_VARIANCE,
        "quantisation_std": QUANTISATION_STD,
        "tv_weight_per_sigma": TV_WEIGHT_PER_SIGMA,
        "nlm_h_per_sigma": NLM_H_PER_SIGMA,
        **searches,
    }
