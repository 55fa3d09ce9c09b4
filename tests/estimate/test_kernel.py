"""The kernel M-step against a dense float64 least-squares solution, the projection onto blur
kernels, and the coarse-to-fine estimate on a synthetic blur."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.estimate import KernelFit, fit_kernel, kernel_error, project_kernel
from diffpir_rt.engine.estimate.sparse import CoarseToFine, estimate_kernel, prune_kernel, recentre_kernel


def gradients_np(x: np.ndarray) -> np.ndarray:
    """[∂_h x, ∂_v x] per channel, backward circular differences: (C, H, W) -> (2C, H, W)."""
    return np.concatenate([x - np.roll(x, 1, axis=-1), x - np.roll(x, 1, axis=-2)])


def dense_fit(x0: np.ndarray, y: np.ndarray, n: int, alpha: float, beta: float, mask: np.ndarray | None) -> np.ndarray:
    """argmin_k ‖W (∂y − k ⊛ ∂x0)‖² + α E ‖k‖² + β E ‖∇k‖², written out as dense matrices (float64).

    k ⊛ g = Σ_j k[j] roll(g, j − c) with c = n // 2 (psf2otf's centring); E = Σ (∂x0)²; ∇ on the
    n × n support with zeros outside (the 5-point Laplacian's Dirichlet form).
    """
    gx, gy = gradients_np(x0), gradients_np(y)
    c = n // 2
    columns = [np.roll(gx, (jy - c, jx - c), axis=(-2, -1)).ravel() for jy in range(n) for jx in range(n)]
    a = np.stack(columns, axis=1)
    b = gy.ravel()
    if mask is not None:
        m = mask[None].repeat(x0.shape[0], 0)
        w = np.concatenate([m * np.roll(m, 1, axis=-1), m * np.roll(m, 1, axis=-2)]).ravel()
        a, b = a * w[:, None], b * w
    energy = float((gx**2).sum())
    # ∇ as a (2 n (n+1)) x n² difference matrix with zero boundary: its Gram is the Dirichlet Laplacian
    rows = []
    for i in range(n + 1):
        for j in range(n):
            for vertical in (True, False):
                row = np.zeros((n, n))
                a_pos, b_pos = ((i - 1, j), (i, j)) if vertical else ((j, i - 1), (j, i))
                for (p, q), sign in ((a_pos, -1.0), (b_pos, 1.0)):
                    if 0 <= p < n and 0 <= q < n:
                        row[p, q] = sign
                rows.append(row.ravel())
    d = np.stack(rows)
    normal = a.T @ a + alpha * energy * np.eye(n * n) + beta * energy * d.T @ d
    return np.linalg.solve(normal, a.T @ b).reshape(n, n)


@pytest.mark.parametrize("masked", [False, True])
def test_the_m_step_is_the_dense_least_squares_solution(masked: bool) -> None:
    rng = np.random.default_rng(0)
    channels, size, n = 2, 12, 5
    x0 = rng.random((channels, size, size))
    k_true = rng.random((n, n))
    k_true /= k_true.sum()
    y = rng.random((channels, size, size))  # any y: the solve is what is tested, not a recovery
    mask = None
    if masked:
        mask = np.zeros((size, size))
        mask[2:10, 3:11] = 1.0
    fit = KernelFit(alpha=0.03, beta=0.02, iters=2 * n * n, threshold=0.0)
    got = fit_kernel(
        torch.from_numpy(x0)[None], torch.from_numpy(y)[None], torch.from_numpy(k_true)[None], fit,
        None if mask is None else torch.from_numpy(mask)[None, None], project=False,
    )[0].numpy()  # fmt: skip
    expected = dense_fit(x0, y, n, 0.03, 0.02, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)


def test_the_m_step_recovers_a_kernel_from_the_true_image() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((1, 3, 32, 32)))
    k = torch.zeros(7, 7, dtype=torch.float64)
    k[3, 1:6] = torch.tensor([0.1, 0.2, 0.4, 0.2, 0.1])
    from diffpir_rt.engine.operators import Deblur

    y = Deblur(k).forward(x)
    start = torch.zeros(1, 7, 7, dtype=torch.float64)
    start[0, 3, 3] = 1.0
    got = fit_kernel(x, y, start, KernelFit(alpha=1e-8, beta=0.0, iters=60, threshold=0.0))
    assert float(kernel_error(got[0], k)[0]) < 1e-4


def test_projection_gives_blur_kernels() -> None:
    rng = np.random.default_rng(2)
    raw = torch.from_numpy(rng.normal(size=(3, 9, 9)))
    k = project_kernel(raw, threshold=0.1)
    assert k.shape == (3, 9, 9)
    assert torch.all(k >= 0)
    assert torch.allclose(k.sum(dim=(-2, -1)), torch.ones(3, dtype=torch.float64))
    peak = k.amax(dim=(-2, -1), keepdim=True)
    assert torch.all((k == 0) | (k >= 0.1 * peak - 1e-15))  # nothing left below the threshold
    delta = project_kernel(-torch.ones(1, 5, 5))  # nothing positive: the centred delta
    assert float(delta[0, 2, 2]) == 1.0 and float(delta.sum()) == 1.0


def test_recentring_and_pruning() -> None:
    k = torch.zeros(1, 9, 9, dtype=torch.float64)
    k[0, 1, 1:4] = 0.3  # a line off centre, centre of mass at (1, 2)
    k[0, 8, 8] = 0.02  # an isolated speck
    centred = recentre_kernel(k)
    r = torch.arange(9, dtype=torch.float64)
    assert float((centred[0].sum(1) * r).sum()) == pytest.approx(4.0, abs=0.5)
    assert float((centred[0].sum(0) * r).sum()) == pytest.approx(4.0, abs=0.5)
    pruned = prune_kernel(k, mass=0.1)
    assert float(pruned[0, 8, 8]) == 0.0 and float(pruned.sum()) == pytest.approx(1.0)
    assert torch.all(pruned[0, 1, 1:4] > 0)


def test_coarse_to_fine_finds_a_synthetic_motion_blur() -> None:
    """A piecewise-constant image (what the L0 prior assumes) blurred by a short diagonal line."""
    rng = np.random.default_rng(3)
    x = np.zeros((3, 96, 96))
    for _ in range(40):
        top, left, h, w = rng.integers(0, 80, 4)
        x[:, top : top + h // 2 + 4, left : left + w // 2 + 4] = rng.random((3, 1, 1))
    k = np.zeros((9, 9))
    for i in range(2, 7):
        k[i, i] = 1.0
    k /= k.sum()
    from diffpir_rt.engine.operators import Deblur

    y = Deblur(k).forward(torch.from_numpy(x)[None])
    noiseless = CoarseToFine(fit=KernelFit(alpha=0.05, beta=0.0, iters=30, threshold=0.05))  # no noise to regularise against
    estimate = estimate_kernel(y, 9, noiseless)
    assert estimate.shape == (1, 9, 9)
    assert torch.all(estimate >= 0) and float(estimate.sum()) == pytest.approx(1.0)
    assert float(kernel_error(estimate[0], torch.from_numpy(k), max_shift=1)[0]) < 0.5


def test_refusals() -> None:
    with pytest.raises(DiffPIRError, match="kernel size"):
        estimate_kernel(torch.rand(1, 3, 64, 64), 8)
    with pytest.raises(DiffPIRError, match="boundary"):
        estimate_kernel(torch.rand(1, 3, 64, 64), 9, boundary="mirror")
    with pytest.raises(DiffPIRError, match="iters"):
        KernelFit(iters=-1)
    with pytest.raises(DiffPIRError, match="threshold"):
        KernelFit(threshold=1.5)


def test_a_large_photos_kernel_comes_from_its_busiest_window() -> None:
    from diffpir_rt.engine.estimate import best_window, estimate_kernel_on_window

    y = torch.full((1, 3, 80, 120), 0.5, dtype=torch.float64)
    y[..., 40:80, 80:120] = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert best_window(y, 40) == (40, 80)  # the only textured corner
    kernel, where = estimate_kernel_on_window(y, 9, window=40, boundary="circular")
    assert where == (40, 80) and kernel.shape == (1, 9, 9)
    with pytest.raises(DiffPIRError, match="larger than a quarter of the 40-px window"):
        estimate_kernel_on_window(y, 11, window=40)
