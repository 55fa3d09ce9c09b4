"""The tuned baselines: the per-image oracle search, the oracles against their fixed rules and
against brute force, BM3D where its package is installed, and how eval plans them.

Images are synthetic (48x48: flat patches, a ramp, a disc and fine stripes), so the search's
claims are checked on content no parameter was ever chosen on. No timing assertions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffpir_rt.benchmarks import baselines, quality
from diffpir_rt.benchmarks.protocol import Scenario, TestImage, make_measurement
from diffpir_rt.engine import DiffPIRError

SMALL = {"kernel_size": 9}


def _synthetic(size: int = 48) -> TestImage:
    """A colour test card: two flat halves, a diagonal ramp in green, a disc and fine stripes."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    red = np.where(xx < 0.5, 0.25, 0.75)
    green = 0.2 + 0.6 * (xx + yy) / 2
    blue = np.where((xx - 0.6) ** 2 + (yy - 0.4) ** 2 < 0.06, 0.9, 0.3)
    blue = blue + np.where(yy > 0.8, 0.1 * np.sign(np.sin(xx * 40)), 0.0)
    return TestImage("synthetic", "card.png", 3, np.clip(np.stack([red, green, blue], axis=-1), 0, 1))


@pytest.fixture(scope="module")
def card() -> TestImage:
    return _synthetic()


# ----------------------------------------------------------------------------- the search


@pytest.mark.parametrize("peak", [3e-3, 0.37, 41.0])
def test_search_finds_the_peak_of_a_unimodal_score_like_brute_force(peak: float) -> None:
    def score(p: float) -> float:
        return -((math.log(p) - math.log(peak)) ** 2) + 0.1 * math.cos(math.log(p))  # smooth, one maximum near peak

    low, high = 1e-4, 1e3
    p, best = baselines.oracle_search(score, low, high, grid=13, refine=12)
    brute = [float(q) for q in np.geomspace(low, high, 20001)]
    brute_argmax = max(brute, key=score)
    # 12 golden-section steps leave a bracket of 2 grid steps x 0.618^12: ~0.008 in log p
    assert abs(math.log(p / brute_argmax)) < 0.01
    assert best >= score(brute_argmax) - 1e-4
    assert best == score(p) and low <= p <= high


def test_search_at_the_edge_of_the_range_stays_inside_it() -> None:
    p, best = baselines.oracle_search(lambda q: q, 0.1, 10.0, grid=5, refine=6)  # increasing: the top end wins
    assert p == pytest.approx(10.0) and best == pytest.approx(10.0)


def test_search_returns_the_best_extra_point_when_it_beats_the_grid() -> None:
    # a spike between grid points that only the extra point hits
    def score(q: float) -> float:
        return 5.0 if q == 0.777 else -abs(math.log(q))

    p, best = baselines.oracle_search(score, 0.01, 100.0, grid=5, refine=3, extra=(0.777,))
    assert (p, best) == (0.777, 5.0)


def test_search_is_deterministic_and_evaluates_grid_plus_refine_points() -> None:
    calls: list[float] = []

    def score(q: float) -> float:
        calls.append(q)
        return -abs(math.log(q / 2.0))

    first = baselines.oracle_search(score, 0.1, 100.0, grid=9, refine=5, extra=(0.5,))
    n_first = len(calls)
    assert first == baselines.oracle_search(score, 0.1, 100.0, grid=9, refine=5, extra=(0.5,))
    assert calls[:n_first] == calls[n_first:]
    # 9 grid points, the extra one, and at most 2 + (refine - 1) new golden-section points
    assert 10 <= n_first <= 9 + 1 + 2 + 4


def test_search_settings_are_checked() -> None:
    with pytest.raises(DiffPIRError, match="expected 0 < r_low < r_high"):
        baselines.OracleSearch("h", "sigma", 2.0, 1.0, 1.5)
    with pytest.raises(DiffPIRError, match="unit"):
        baselines.OracleSearch("h", "decibel", 0.1, 1.0, 0.5)


# ----------------------------------------------------------------------------- the oracles


@pytest.mark.parametrize(
    "oracle, fixed, label, sigma",
    [
        ("wiener_oracle", "wiener", "deblur/gaussian", 0.05),
        ("wiener_oracle", "wiener", "deblur/gaussian", 0.0),  # quantisation noise only
        ("tv_oracle", "tv", "denoise", 0.1),
        ("nlmeans_oracle", "nlmeans", "denoise", 0.1),
    ],
)
def test_an_oracle_is_at_least_as_good_as_its_fixed_rule(card: TestImage, oracle: str, fixed: str, label: str, sigma: float) -> None:
    spec = Scenario.named(label, sigma, **SMALL)
    (result,) = quality.evaluate(None, spec, [card], {}, methods=["measurement", fixed, oracle])
    assert result.metrics[oracle]["psnr"] >= result.metrics[fixed]["psnr"]
    assert result.metrics[oracle]["psnr"] > result.metrics["measurement"]["psnr"]


@pytest.mark.parametrize("oracle, label, sigma", [("wiener_oracle", "deblur/gaussian", 0.05), ("tv_oracle", "denoise", 0.1)])
def test_an_oracle_matches_a_brute_force_scan_of_its_range(card: TestImage, oracle: str, label: str, sigma: float) -> None:
    m = make_measurement(Scenario.named(label, sigma, **SMALL), card)
    restore, search = baselines.ORACLES[oracle]
    unit = search.scale(m)
    scan = [baselines.oracle_psnr(m, restore(m, r * unit)) for r in np.geomspace(search.r_low, search.r_high, 97)]
    value, psnr = baselines.oracle_choice(oracle, m)
    assert psnr >= max(scan) - 0.05  # the search is as good as a 97-point scan, to within uint8 steps
    assert psnr == pytest.approx(baselines.oracle_psnr(m, restore(m, value)))  # what it reports is what it returns
    np.testing.assert_array_equal(baselines.BASELINES[oracle](m), restore(m, value))


def test_the_oracle_restoration_is_deterministic(card: TestImage) -> None:
    m = make_measurement(Scenario.named("denoise", 0.1), card)
    np.testing.assert_array_equal(baselines.BASELINES["nlmeans_oracle"](m), baselines.BASELINES["nlmeans_oracle"](m))
    assert baselines.oracle_choice("nlmeans_oracle", m) == baselines.oracle_choice("nlmeans_oracle", m)


def test_the_oracles_ranges_hold_their_fixed_rules() -> None:
    for restore, search in baselines.ORACLES.values():
        assert search.r_low < search.r_fixed < search.r_high
    assert set(baselines.TUNED) == {*baselines.ORACLES, "bm3d"}
    assert {f"{name}_r_low" for name in baselines.ORACLES} <= set(baselines.parameters())


def test_bm3d_beats_the_measurement_when_installed() -> None:
    pytest.importorskip("bm3d", reason="optional evaluation extra eval-bm3d (non-commercial licence)")
    spec = Scenario.named("denoise", 0.1)
    (result,) = quality.evaluate(None, spec, [_synthetic(32)], {}, methods=["measurement", "bm3d"])
    assert result.metrics["bm3d"]["psnr"] > result.metrics["measurement"]["psnr"] + 3.0


# ----------------------------------------------------------------------------- planning


def test_tuned_baselines_are_opt_in_and_serve_their_fixed_baselines_tasks() -> None:
    assert not set(baselines.TUNED) & set(quality.default_methods())
    assert not set(baselines.TUNED) & set(quality.CLASSICAL)
    assert quality.method_aliases()["tuned"] == tuple(baselines.TUNED)
    requested = [*quality.CLASSICAL, *baselines.TUNED]
    names, _ = quality.plan_methods(Scenario.named("deblur/gaussian", 0.05), requested)
    assert [n for n in names if n in baselines.TUNED] == ["wiener_oracle"]
    names, _ = quality.plan_methods(Scenario.named("sr/x4", 0.05), requested)
    assert not set(names) & set(baselines.TUNED)
    names, _ = quality.plan_methods(Scenario.named("denoise", 0.1), requested)
    assert names.index("tv") < names.index("tv_oracle") and names.index("nlmeans") < names.index("nlmeans_oracle")


def test_bm3d_without_its_package_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(baselines, "bm3d_available", lambda: False)
    names, skipped = quality.plan_methods(Scenario.named("denoise", 0.1), ["nlmeans", "bm3d"])
    assert names == ["nlmeans"]
    assert [s["method"] for s in skipped] == ["bm3d"] and "not installed" in skipped[0]["reason"]
    with pytest.raises(DiffPIRError, match="bm3d baseline: package bm3d not installed"):
        baselines.bm3d(make_measurement(Scenario.named("denoise", 0.1), _synthetic(16)))
