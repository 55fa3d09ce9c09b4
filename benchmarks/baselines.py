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
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from diffpir_rt.engine import DiffPIRConfig, DiffPIRError, linear_schedule

from .protocol import Measurement

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


def wiener(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import wiener as skimage_wiener

    balance = WIENER_BALANCE_PER_VARIANCE * (m.spec.sigma_n**2 + QUANTISATION_STD**2)
    return _per_channel(m.y, lambda channel: skimage_wiener(channel, m.kernel, balance, clip=False))


def unsupervised_wiener(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import unsupervised_wiener as skimage_unsupervised_wiener

    return _per_channel(m.y, lambda channel: skimage_unsupervised_wiener(channel, m.kernel, clip=False, rng=m.seed)[0])


def bicubic(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from diffpir_rt.engine import degrade

    return degrade.imresize(m.y, float(m.spec.scale))


def biharmonic(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    assert m.mask is not None
    return inpaint_biharmonic(m.y, m.mask == 0, channel_axis=-1)


def tv(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(m.y, weight=TV_WEIGHT_PER_SIGMA * m.spec.sigma_n, channel_axis=-1)


def nlmeans(m: Measurement, config: Optional[DiffPIRConfig] = None) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    sigma = m.spec.sigma_n
    return denoise_nl_means(
        m.y, h=NLM_H_PER_SIGMA * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
    )


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


#: name -> (engine tasks it applies to, function). Order = column order in reports.
BASELINES: dict[str, tuple[tuple[str, ...], Baseline]] = {
    "measurement": (("deblur", "inpaint", "denoise"), measurement),
    "wiener": (("deblur",), wiener),
    "unsupervised_wiener": (("deblur",), unsupervised_wiener),
    "bicubic": (("sr",), bicubic),
    "biharmonic": (("inpaint",), biharmonic),
    "tv": (("denoise",), tv),
    "nlmeans": (("denoise",), nlmeans),
    "datastep": (("deblur", "sr", "inpaint", "denoise"), datastep),
}
#: The baseline shown in the image grids, per engine task.
PRIMARY = {"deblur": "wiener", "sr": "bicubic", "inpaint": "biharmonic", "denoise": "nlmeans"}


def applies(name: str, task: str) -> bool:
    return task in BASELINES[name][0]


def parameters() -> dict[str, float]:
    """The fixed baseline rules, recorded with every run."""
    return {
        "wiener_balance_per_variance": WIENER_BALANCE_PER_VARIANCE,
        "quantisation_std": QUANTISATION_STD,
        "tv_weight_per_sigma": TV_WEIGHT_PER_SIGMA,
        "nlm_h_per_sigma": NLM_H_PER_SIGMA,
    }
