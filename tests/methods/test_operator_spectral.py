"""The operators' linear algebra against dense linear algebra on small sizes.

A^+ (thresholded), the range filters sum_i f(s_i) v_i v_i^T, the singular values, the Gram
solve (A A^T + mu I)^-1 and A^T of every operator family, per-sample kernels and masks
included, against np.linalg.svd / np.linalg.pinv / np.linalg.solve of the dense matrix
A built from the operator's forward on the identity basis.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine.operators import RCOND, Deblur, Denoise, Inpaint, SuperResolution

from .spectral_family import dense_matrix, gaussian_kernel, random_kernel

def cases(rng: np.random.Generator) -> dict[str, tuple[object, list[object], tuple[int, ...]]]:
    """name -> (batch operator, per-sample single operators, image shape (C, H, W))."""
    kernels = [gaussian_kernel(5, 1.2), random_kernel(rng, 5)]  # the Gaussian has |K^| < RCOND
    masks = [(rng.random((8, 8)) > 0.5).astype(np.float64) for _ in range(2)]
    grey = np.clip(rng.random((1, 2, 8, 8)) * 1.2 - 0.1, 0.0, 1.0)  # per-channel grey mask, some <= RCOND
    return {
        "deblur": (Deblur(np.stack(kernels)), [Deblur(k) for k in kernels], (2, 8, 8)),
        "sr2": (SuperResolution(2, np.stack(kernels[::-1])), [SuperResolution(2, k) for k in kernels[::-1]], (2, 8, 8)),
        "sr3": (SuperResolution(3, random_kernel(rng, 5)), None, (1, 9, 9)),
        "sr4_default_kernel": (SuperResolution(4), None, (1, 28, 28)),  # the official 25x25 kernel
        "inpaint": (Inpaint(np.stack(masks)), [Inpaint(m) for m in masks], (2, 8, 8)),
        "inpaint_grey_per_channel": (Inpaint(grey), None, (2, 8, 8)),
        "denoise": (Denoise(), None, (2, 8, 8)),
    }


CASES = list(cases(np.random.default_rng(0)))


def per_sample(name: str, rng: np.random.Generator):
    """(batch operator, [single operator per sample], shape, batch)."""
    op, singles, shape = cases(rng)[name]
    return (op, singles, shape, 2) if singles is not None else (op, [op], shape, 1)


def dense_svd(A: np.ndarray, rcond: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(U_k, s_k, V_k) of the singular values > rcond."""
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    # a value right at the cut-off would make the comparison depend on rounding
    assert np.min(np.abs(s - rcond)) > 1e-9, "pick a problem without singular values at rcond"
    keep = s > rcond
    return U[:, keep], s[keep], Vt[keep].T


def batch_input(rng: np.random.Generator, batch: int, shape) -> torch.Tensor:
    return torch.from_numpy(rng.normal(size=(batch, *shape)))


def filter_functions(s: np.ndarray | torch.Tensor):
    """A few f(s) on the grid: 1 (the projector A^+ A), s^2 + 0.5 s, 1 / (1 + s), and a branchy one."""
    lib = torch if isinstance(s, torch.Tensor) else np
    return [s * 0 + 1.0, s**2 + 0.5 * s, 1.0 / (1.0 + s), lib.where(s > 0.5, 2.0 - s, 3.0 * s)]


@pytest.mark.parametrize("name", CASES)
def test_pinv_equals_thresholded_dense_svd(name: str, rng: np.random.Generator) -> None:
    op, singles, shape, batch = per_sample(name, rng)
    y_shape = tuple(op.forward(torch.zeros(batch, *shape, dtype=torch.float64)).shape)
    r = torch.from_numpy(rng.normal(size=y_shape))
    for rcond in (RCOND, 1e-3):
        got = op.data_step(r).pinv(r, rcond)
        for b, single in enumerate(singles):
            A = dense_matrix(single, shape)
            U, s, V = dense_svd(A, rcond)
            expected = V @ ((U.T @ r[b].numpy().ravel()) / s)
            np.testing.assert_allclose(got[b].numpy().ravel(), expected, atol=1e-11)


@pytest.mark.parametrize("name", CASES)
def test_pinv_equals_numpy_pinv(name: str, rng: np.random.Generator) -> None:
    """The engine's A^+ (absolute cut-off rcond) is np.linalg.pinv with the relative cut-off rcond / s_max."""
    op, singles, shape, batch = per_sample(name, rng)
    y_shape = tuple(op.forward(torch.zeros(batch, *shape, dtype=torch.float64)).shape)
    r = torch.from_numpy(rng.normal(size=y_shape))
    got = op.data_step(r).pinv(r)
    for b, single in enumerate(singles):
        A = dense_matrix(single, shape)
        dense_svd(A, RCOND)  # no singular value at the cut-off
        A_pinv = np.linalg.pinv(A, rcond=RCOND / np.linalg.norm(A, 2))
        np.testing.assert_allclose(got[b].numpy().ravel(), A_pinv @ r[b].numpy().ravel(), atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_range_filters_equal_dense_spectral_filters(name: str, rng: np.random.Generator) -> None:
    """range_filter(x, f(s)) = V_k diag(f(s_k)) V_k^T x over s > rcond; f = 1 is A^+ A."""
    op, singles, shape, batch = per_sample(name, rng)
    x = batch_input(rng, batch, shape)
    data = op.data_step(op.forward(x))
    grid = data.singular_values()
    dense = [dense_matrix(single, shape) for single in singles]
    for rcond in (RCOND, 1e-3):
        svds = [dense_svd(A, rcond) for A in dense]
        for k, f_grid in enumerate(filter_functions(grid)):
            got = data.range_filter(x, f_grid, rcond)
            for b, (A, (_, s, V)) in enumerate(zip(dense, svds)):
                xb = x[b].numpy().ravel()
                expected = V @ (filter_functions(s)[k] * (V.T @ xb))
                np.testing.assert_allclose(got[b].numpy().ravel(), expected, atol=1e-11, err_msg=f"f #{k}, rcond {rcond}")
                if k == 0:  # the projector onto the kept row space, by np.linalg.pinv
                    projector = np.linalg.pinv(A, rcond=rcond / s.max()) @ A
                    np.testing.assert_allclose(got[b].numpy().ravel(), projector @ xb, atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_singular_values_are_the_dense_ones(name: str, rng: np.random.Generator) -> None:
    """The grid of singular_values(), repeated over what it broadcasts to (channels, and the
    pixels for Denoise), is the multiset of A's nonzero singular values."""
    op, singles, shape, batch = per_sample(name, rng)
    x = torch.zeros(batch, *shape, dtype=torch.float64)
    data = op.data_step(op.forward(x))
    y_shape = tuple(data.measurement().shape)
    grid = data.singular_values()
    for b, single in enumerate(singles):
        full = torch.broadcast_to(grid, (batch, *y_shape[1:]) if grid.ndim else y_shape)[b if grid.ndim and grid.shape[0] > 1 else 0]
        ours = np.sort(full.numpy().ravel())[::-1]
        dense = np.linalg.svd(dense_matrix(single, shape), compute_uv=False)
        dense = np.concatenate([dense, np.zeros(ours.size - dense.size)]) if dense.size < ours.size else dense[: ours.size]
        np.testing.assert_allclose(ours, dense, atol=1e-12)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mu", [1e-4, 0.3])
def test_gram_solve_and_adjoint_equal_dense(name: str, mu: float, rng: np.random.Generator) -> None:
    op, singles, shape, batch = per_sample(name, rng)
    y_shape = tuple(op.forward(torch.zeros(batch, *shape, dtype=torch.float64)).shape)
    r = torch.from_numpy(rng.normal(size=y_shape))
    data = op.data_step(r)
    solved, adjoint = data.gram_solve(r, mu), data.adjoint(r)
    for b, single in enumerate(singles):
        A = dense_matrix(single, shape)
        rb = r[b].numpy().ravel()
        expected = np.linalg.solve(A @ A.T + mu * np.eye(A.shape[0]), rb)
        np.testing.assert_allclose(solved[b].numpy().ravel(), expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(adjoint[b].numpy().ravel(), A.T @ rb, atol=1e-12)


def test_float32_primitives_within_1e5_of_float64(rng: np.random.Generator) -> None:
    """The methods run the primitives in fp32: they stay close to the float64 values."""
    for name in ("deblur", "sr2", "inpaint"):
        op, _, shape, batch = per_sample(name, rng)
        x = batch_input(rng, batch, shape)
        y = op.forward(x)
        d64, d32 = op.data_step(y), op.data_step(y.float())
        coefficients = 1.0 / (1.0 + d64.singular_values())
        for got, want in [
            (d32.pinv(y.float()), d64.pinv(y)),
            (d32.range_filter(x.float(), coefficients.float()), d64.range_filter(x, coefficients)),
        ]:
            assert torch.allclose(got.double(), want, atol=1e-5), name
