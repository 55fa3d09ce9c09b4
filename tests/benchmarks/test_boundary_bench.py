"""benchmarks/boundary.py (the proof of docs/algorithm.md §11): its measurements and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from diffpir_rt.benchmarks import boundary


def test_measurements_and_regions() -> None:
    rng = np.random.default_rng(0)
    big = rng.random((40 + 2 * boundary.MARGIN, 40 + 2 * boundary.MARGIN, 3))
    gt = big[boundary.MARGIN : -boundary.MARGIN, boundary.MARGIN : -boundary.MARGIN]
    k = rng.random((5, 7))
    k /= k.sum()
    zero = np.zeros_like(gt)
    scene = boundary.measure("scene", gt, big, k, zero)
    assert np.allclose(scene[10:-10, 10:-10], boundary.measure("reflect", gt, big, k, zero)[10:-10, 10:-10])  # same blur inside
    assert np.allclose(scene, ndi.convolve(big, k[..., None], mode="constant")[boundary.MARGIN : -boundary.MARGIN, boundary.MARGIN : -boundary.MARGIN])
    p = boundary.region_psnr(gt, gt + 0.1 * (np.arange(40)[:, None, None] < 3), border=3)
    assert p["interior"] == float("inf") and p["border"] < p["total"] < 40


def test_one_tiny_run(tmp_path: Path) -> None:
    if not (boundary.DATA / "CBSD68").is_dir():
        pytest.skip(f"no test images in {boundary.DATA}")
    code = boundary.main(["--images", "CBSD68/102061", "--kernels", "motion", "--measurements", "scene", "--size", "64",
                          "--steps", "3", "--reference", "--out", str(tmp_path)])  # fmt: skip
    assert code in (0, 1)  # 3 steps at 64²: the target is not the point here
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["boundary_ran"] for r in result["runs"]] == ["circular", "extend"]
    assert {r["strategy"] for r in result["summary"]} == {"circular", "extend"}
    assert (tmp_path / "results.md").read_text().startswith("# Boundary handling") and (tmp_path / "grid.png").stat().st_size > 0
