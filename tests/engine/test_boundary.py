"""Boundary-aware deblurring (engine/boundary.py, docs/algorithm.md §11): the extension, the masked
data step against dense linear algebra, the operator through every runtime, the policy and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.cli import main
from diffpir_rt.engine import (
    METHODS,
    Deblur,
    DiffPIRConfig,
    DiffPIRError,
    ExtendedDeblur,
    GraphSampler,
    SuperResolution,
    Tapered,
    build_unet,
    get_task,
    sample,
)
from diffpir_rt.runtime import resolve_boundary
from diffpir_rt.engine.boundary import edgetaper_extend, good_size, kernel_radius, pads_for, reflect_extend, taper_weights
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.graph_runtime import GraphRuntime
from diffpir_rt.engine.imageio import read_image, write_image
from diffpir_rt.engine.methods import build_method

from ..conftest import cli_error

CONFIG = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=4)
TEST_IMAGE = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"


def gaussian(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


def motion(size: int, seed: int) -> np.ndarray:
    """An asymmetric kernel (a random short path), so K and Kᵀ differ."""
    k = np.random.default_rng(seed).random((size, size)) ** 4
    k[: size // 2] *= 0.1
    return k / k.sum()


@pytest.fixture(scope="module")
def model() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- sizes


def test_pad_size_rule() -> None:
    assert kernel_radius((61, 61)) == 30 and kernel_radius((1, 7, 4)) == 3 and kernel_radius((6, 2)) == 3
    assert good_size(316, 16) == 320 and good_size(11) == 12 and good_size(7) == 7 and good_size(13) == 14
    assert pads_for(256, 256, 30, 16) == (30, 34, 30, 34)  # 316 = 4 x 79 -> 320 = 2^6 x 5
    for h in range(1, 120, 7):
        for multiple in (1, 8, 16):
            t, b, l, r = pads_for(h, h + 3, 9, multiple)
            assert t == l == 9 and b >= 9 and r >= 9
            for n in (h + t + b, h + 3 + l + r):
                assert n % multiple == 0
                for p in (2, 3, 5, 7):
                    while n % p == 0:
                        n //= p
                assert n == 1  # 7-smooth: fast FFTs
            assert h + t + b == good_size(h + 18, multiple)  # the smallest such size
    op = ExtendedDeblur(Deblur(gaussian(61, 3.0)), multiple=16)
    assert op.pads((1, 3, 256, 256)) == (30, 34, 30, 34) and op.image_shape((1, 3, 256, 256)) == (1, 3, 320, 320)
    assert op.image_shape((2, 1, 100, 37)) == (2, 1, 160, 112)


def test_edgetaper_weights_and_extension() -> None:
    pads = (4, 6, 3, 5)
    w = taper_weights(10, 7, pads)
    assert w.shape == (20, 15)
    assert torch.all(w[4:14, 3:10] == 1)  # the frame
    assert torch.all(w[0] == 0) and torch.all(w[-1] == 0) and torch.all(w[:, 0] == 0) and torch.all(w[:, -1] == 0)  # the seam
    rows = w[:, 5]
    assert torch.allclose(rows[:4], torch.tensor([(1 + math.cos(math.pi * d / 4)) / 2 for d in (4, 3, 2, 1)], dtype=torch.float64))
    assert torch.allclose(rows[14:], torch.tensor([(1 + math.cos(math.pi * d / 6)) / 2 for d in range(1, 7)], dtype=torch.float64))
    assert torch.all(rows[:5].diff() > 0) and torch.all(rows[13:].diff() < 0)  # monotone into the frame
    y = torch.rand(2, 3, 10, 7, dtype=torch.float64)
    assert np.array_equal(reflect_extend(y, pads).numpy(), np.pad(y.numpy(), ((0, 0), (0, 0), (4, 6), (3, 5)), mode="symmetric"))
    k = motion(5, 0)
    op = ExtendedDeblur(Deblur(k), multiple=1)
    otf = op._spectra(20, 15, y)[0]
    ext = edgetaper_extend(y, pads, otf)
    assert torch.equal(ext[..., 4:14, 3:10], y)  # the frame is the measurement
    blurred = Deblur(k).forward(reflect_extend(y, pads))
    assert torch.allclose(ext[..., 0, :], blurred[..., 0, :]) and torch.allclose(ext[..., :, -1], blurred[..., :, -1])


# ----------------------------------------------------------------------------- the masked data step


def dense_blur(k: np.ndarray, height: int, width: int) -> torch.Tensor:
    """K (circular convolution on the extended grid) as an (N, N) float64 matrix."""
    eye = torch.eye(height * width, dtype=torch.float64).reshape(-1, 1, height, width)
    return Deblur(k).forward(eye).reshape(height * width, height * width).T


def dense_problem(k: np.ndarray, h: int, w: int, rho: float, seed: int = 0):
    op = ExtendedDeblur(Deblur(k), multiple=1)
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(1, 1, h, w, dtype=torch.float64, generator=g)
    height, width = op.image_shape(y.shape)[-2:]
    x0 = torch.rand(1, 1, height, width, dtype=torch.float64, generator=g)
    K = dense_blur(k, height, width)
    t, _, l, _ = op.pads(y.shape)
    mask = torch.zeros(height, width, dtype=torch.float64)
    mask[t : t + h, l : l + w] = 1
    M = torch.diag(mask.flatten())
    normal = K.T @ M @ K + rho * torch.eye(height * width, dtype=torch.float64)
    return op, y, x0, K, M, normal


@pytest.mark.parametrize("h, w", [(6, 5), (5, 6), (7, 7)])
def test_masked_step_solves_the_masked_prox(h: int, w: int) -> None:
    """Enough PCG iterations reach the exact argmin_x ||M (y_ext - K x)||² + ρ ||x - x0||² (a dense solve),
    whatever the pads of y_ext hold (only the frame is data)."""
    k, rho = motion(3, 1), 0.03
    op, y, x0, K, M, normal = dense_problem(k, h, w, rho)
    y_ext = op.extend(y)
    exact = torch.linalg.solve(normal, K.T @ M @ y_ext.flatten() + rho * x0.flatten())
    got = ExtendedDeblur(Deblur(k), multiple=1, iters=80).data_step(y)(x0, rho)
    assert (got.flatten() - exact).abs().max() < 1e-9
    assert op.prox(x0, y, rho).shape == x0.shape


@pytest.mark.parametrize("iters", [0, 1, 3, 5])
def test_fixed_iteration_pcg_equals_a_dense_transcription(iters: int) -> None:
    """The Fourier-domain PCG is the textbook PCG on (KᵀMK + ρ) d = KᵀM (y_ext - K x0), preconditioned
    by (KᵀK + ρ)⁻¹, started at the circular closed form on y_ext, iteration by iteration."""
    k, rho = motion(3, 2), 0.01
    op, y, x0, _, _, _ = dense_problem(k, 7, 6, rho, seed=1)
    expected = dense_pcg(k, y, x0, rho, op.extend(y), iters)
    got = ExtendedDeblur(Deblur(k), multiple=1, iters=iters).data_step(y)(x0, rho)
    # Equal up to float64 rounding (which CG grows as it converges); one iteration more or less moves x by ~1e-2.
    assert (got - expected).abs().max() < 1e-7


def dense_pcg(k: np.ndarray, y: torch.Tensor, x0: torch.Tensor, rho: float, w: torch.Tensor, iters: int) -> torch.Tensor:
    """x after `iters` textbook PCG steps on the masked prox, from the circular closed form on the
    extended measurement w, with dense matrices (written from the equations, independently of the engine)."""
    op = ExtendedDeblur(Deblur(k), multiple=1)
    height, width = x0.shape[-2:]
    n = height * width
    K = dense_blur(k, height, width)
    t, _, l, _ = op.pads(y.shape)
    h, w_ = y.shape[-2:]
    mask = torch.zeros(height, width, dtype=torch.float64)
    mask[t : t + h, l : l + w_] = 1
    M = torch.diag(mask.flatten())
    eye = torch.eye(n, dtype=torch.float64)
    normal, precond = K.T @ M @ K + rho * eye, torch.linalg.inv(K.T @ K + rho * eye)
    x0v = x0.flatten()
    d = precond @ K.T @ (w.flatten() - K @ x0v)  # the circular prox on w
    r = K.T @ M @ (op.extend(y).flatten() - K @ x0v) - normal @ d  # the frame of y_ext is y: only it enters b
    z = precond @ r
    p, rz = z, r @ z
    for _ in range(iters):
        q = normal @ p
        alpha = rz / (p @ q)
        d, r = d + alpha * p, r - alpha * q
        z = precond @ r
        p, rz = z + (r @ z) / rz * p, r @ z
    return (x0v + d).reshape(x0.shape)


def carried_measurement(k: np.ndarray, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """w = M y_ext + (1 - M) K x: the frame's data, and the blur of the last solution in the pads."""
    op = ExtendedDeblur(Deblur(k), multiple=1)
    t, _, l, _ = op.pads(y.shape)
    h, w = y.shape[-2:]
    out = Deblur(k).forward(x)
    out[..., t : t + h, l : l + w] = y
    return out


def test_carried_warm_start_equals_a_dense_transcription() -> None:
    """Each solve after the first starts from the circular closed form on y with the previous solution's
    blur in the pads (not on y_ext), then runs its PCG steps: three chained solves against dense algebra,
    at both iteration counts of the schedule (early below early_rho, late above)."""
    k = motion(3, 4)
    op, y, x0, *_ = dense_problem(k, 6, 7, 0.01, seed=2)
    data = ExtendedDeblur(Deblur(k), multiple=1, iters=2, early_iters=4, early_rho=0.05).data_step(y)
    g = torch.Generator().manual_seed(3)
    w = op.extend(y)  # the first solve's warm start: the edgetaper extension
    for rho, iters in ((0.01, 4), (0.2, 2), (0.03, 4)):
        x0 = x0 + 0.1 * torch.randn(x0.shape, dtype=torch.float64, generator=g)  # the denoiser's next estimate
        assert data.iterations(rho) == iters
        got = data(x0, rho)
        assert (got - dense_pcg(k, y, x0, rho, w, iters)).abs().max() < 1e-7, rho  # float64 rounding, grown by CG
        w = carried_measurement(k, y, got)
        assert torch.allclose(torch.fft.irfft2(data.warm_spectrum, s=x0.shape[-2:]), w, atol=1e-10)
    assert data.iterations(torch.tensor(0.5)) == 4  # a tensor ρ is not read: the larger count


def test_carried_start_converges_to_the_prox_and_begin_loop_resets() -> None:
    """From any carried start, enough iterations reach the same exact prox; after begin_loop the next
    solve is exactly a fresh step's first; with carry=False every solve is one."""
    k, rho = motion(3, 5), 0.03
    op, y, x0, K, M, normal = dense_problem(k, 7, 5, rho, seed=3)
    exact = torch.linalg.solve(normal, K.T @ M @ op.extend(y).flatten() + rho * x0.flatten()).reshape(x0.shape)
    data = ExtendedDeblur(Deblur(k), multiple=1, iters=80).data_step(y)
    data(torch.zeros_like(x0), 1e-4)  # another problem first: the carried start is now its solution's blur
    assert (data(x0, rho) - exact).abs().max() < 1e-9

    def first(x: torch.Tensor, carry: bool = True) -> torch.Tensor:  # a fresh step's first solve
        return ExtendedDeblur(Deblur(k), multiple=1, iters=1, early_iters=1, carry=carry).data_step(y)(x, rho)

    used = ExtendedDeblur(Deblur(k), multiple=1, iters=1, early_iters=1).data_step(y)
    used(x0 + 0.3, rho)
    assert (used(x0, rho) - first(x0)).abs().max() > 1e-6  # started from the carried pads
    used.begin_loop()
    assert torch.equal(used(x0, rho), first(x0))
    stateless = ExtendedDeblur(Deblur(k), multiple=1, iters=1, early_iters=1, carry=False).data_step(y)
    assert torch.equal(stateless(x0 + 0.3, rho), first(x0 + 0.3)) and torch.equal(stateless(x0, rho), first(x0))


def test_masked_step_is_accurate_in_float32() -> None:
    """A photo-like problem (y = the frame of a blurred smooth scene plus noise, x0 = the scene plus
    noise) at the data weights of a run (ρ ~ 1e-6 at the first step): float32 makes nearly all of
    float64's progress on the objective from the warm start, and the same iterate once ρ is not
    tiny. (At small ρ, κ ~ 1/ρ: CG in float32 loses orthogonality, and its iterates differ along
    directions the data barely constrains, where ten iterations are far from the exact minimiser
    in float64 too.)"""
    k = motion(9, 3)
    # One solve at a time from the same start (carry=False: repeated calls on one bound step
    # would otherwise warm-start each from the last), at the 10 iterations this was written for.
    op = ExtendedDeblur(Deblur(k), multiple=8, iters=10, carry=False)
    g = torch.Generator().manual_seed(4)
    scene = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 68, 64, dtype=torch.float64, generator=g), 5, 1, 2)
    y = Deblur(k).forward(scene)[..., 12:-12, 12:-12] + 0.05 * torch.randn(1, 3, 44, 40, dtype=torch.float64, generator=g)
    x_true = op.extend(scene[..., 12:-12, 12:-12])
    x0 = x_true + 0.2 * torch.randn(x_true.shape, dtype=torch.float64, generator=g)
    data = op.data_step(y)
    for rho in (1e-6, 1e-4, 1e-2):
        exact = data(x0, rho)
        single = op.data_step(y.float())(x0.float(), rho)
        assert single.dtype == torch.float32

        def objective(x: torch.Tensor, rho: float = rho) -> float:
            return float((data.forward(x) - y).pow(2).sum() + rho * (x - x0).pow(2).sum())

        warm = ExtendedDeblur(Deblur(k), multiple=8, iters=0, early_iters=0).data_step(y)(x0, rho)  # the closed form on y_ext
        assert objective(exact) < objective(warm)
        assert objective(single.double()) - objective(exact) < 0.1 * (objective(warm) - objective(exact)), rho
        if rho >= 1e-2:
            assert (single.double() - exact).abs().max() < 1e-4, rho


def test_per_sample_kernels_are_a_batch_dimension() -> None:
    k1, k2 = motion(5, 5), gaussian(5, 1.2)
    y = torch.rand(2, 3, 12, 9, dtype=torch.float64)
    both = ExtendedDeblur(Deblur(np.stack([k1, k2])), multiple=4)
    x0 = torch.rand(both.image_shape(y.shape), dtype=torch.float64)
    batched = both.data_step(y)(x0, 0.02)
    assert batched.shape == x0.shape
    for i, k in enumerate((k1, k2)):
        alone = ExtendedDeblur(Deblur(k), multiple=4).data_step(y[i : i + 1])(x0[i : i + 1], 0.02)
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-12)
    with pytest.raises(DiffPIRError, match="per-sample"):
        both.data_step(torch.rand(3, 3, 12, 9))


def test_forward_and_adjoint_are_the_masked_operator() -> None:
    k = motion(5, 6)
    op = ExtendedDeblur(Deblur(k), multiple=4)
    y = torch.rand(2, 3, 11, 10, dtype=torch.float64)
    data = op.data_step(y)
    x = torch.rand(op.image_shape(y.shape), dtype=torch.float64)
    r = torch.rand_like(y)
    ax = data.forward(x)
    assert ax.shape == y.shape and torch.allclose(ax, op.crop(op.forward(x), y.shape))  # A = S K: the frame of K x
    assert torch.allclose((ax * r).sum(), (x * data.adjoint(r)).sum())  # <A x, r> = <x, Aᵀ r>
    assert torch.equal(data.measurement(), y)
    for call in (lambda: data.pinv(r), lambda: data.singular_values(), lambda: data.gram_solve(r, 0.1),
                 lambda: data.range_filter(x, torch.ones(1))):  # fmt: skip
        with pytest.raises(DiffPIRError, match="--boundary taper"):
            call()


def test_wrapper_refuses_what_it_cannot_extend() -> None:
    with pytest.raises(DiffPIRError, match="applies to deblurring"):
        ExtendedDeblur(SuperResolution(2))
    with pytest.raises(DiffPIRError, match="multiple"):
        ExtendedDeblur(Deblur(gaussian(3, 1.0)), multiple=0)
    with pytest.raises(DiffPIRError, match="iters"):
        ExtendedDeblur(Deblur(gaussian(3, 1.0)), iters=-1)


# ----------------------------------------------------------------------------- through the runtimes


def test_sample_returns_the_frame_and_the_graph_runtime_is_bit_identical(model) -> None:
    op = ExtendedDeblur(Deblur(np.stack([gaussian(7, 1.5), motion(7, 7)])), multiple=model.size_multiple)
    y = torch.rand(2, 3, 13, 17)
    shape = op.image_shape(y.shape)
    assert shape[-2:] != y.shape[-2:]
    x_T = torch.randn(shape)
    noise = [torch.randn(shape) for _ in range(CONFIG.num_model_calls)]
    expected = sample(model, op, y, CONFIG, x_T=x_T, noise=noise)
    assert expected.shape == y.shape and expected.is_contiguous()  # output size = input size
    runtime = GraphRuntime(model, build_method(CONFIG), op.data_step(y), tuple(y.shape), tuple(shape), op.pad_mode, "cpu")
    assert not runtime.capture
    assert torch.equal(runtime.restore(op, y, x_T=x_T, noise=noise), expected)
    seeded = sample(model, op, y, CONFIG, seed=5)
    sampler = GraphSampler(model, "cpu", capture=False)
    assert torch.equal(sampler.sample(op, y, CONFIG, seed=5), seeded)
    # A new kernel of the same size refills the buffers of the same runtime.
    other = ExtendedDeblur(Deblur(np.stack([motion(7, 8), gaussian(7, 2.5)])), multiple=model.size_multiple)
    assert torch.equal(sampler.sample(other, y, CONFIG, seed=5), sample(model, other, y, CONFIG, seed=5))
    assert len(sampler.runtimes) == 1
    one = ExtendedDeblur(Deblur(gaussian(7, 1.5)), multiple=model.size_multiple)
    assert sample(model, one, y[0], CONFIG, seed=5).shape == y.shape[1:]  # unbatched


def test_the_loop_restarts_the_carried_warm_start(model) -> None:
    """run_steps calls begin_loop before the first step: the static-buffer loop run twice on the same
    loaded buffers (a CUDA graph replayed without a reload) gives the same image as sample()."""
    op = ExtendedDeblur(Deblur(motion(7, 9)), multiple=model.size_multiple)
    y = torch.rand(1, 3, 13, 17)
    shape = op.image_shape(y.shape)
    runtime = GraphRuntime(model, build_method(CONFIG), op.data_step(y), tuple(y.shape), tuple(shape), op.pad_mode, "cpu")
    runtime.load(op, y, seed=3)
    first = runtime.run().clone()
    assert torch.equal(runtime.run(), first)
    assert torch.equal(op.output(first, y.shape), sample(model, op, y, CONFIG, seed=3))


def test_methods_that_need_closed_forms_refuse_with_the_message(model) -> None:
    op = ExtendedDeblur(Deblur(gaussian(5, 1.0)), multiple=model.size_multiple)
    y = torch.rand(1, 3, 12, 12)
    for name in ("ddrm", "ddnm", "dmps", "ilvr"):
        config = METHODS[name][0].for_task("deblur", 0.05)
        with pytest.raises(DiffPIRError, match=rf"^method {name}: .*use --boundary taper") as info:
            sample(model, op, y, config, seed=0)
        assert "\n" not in str(info.value)
    for name in ("dps", "dpir"):  # the prox (dpir) or A and Aᵀ (dps) are all they need
        config = METHODS[name][0].for_task("deblur", 0.05)
        config = dataclasses.replace(config, steps=3) if name == "dps" else config
        out = sample(model, op, y, config, seed=0)
        assert out.shape == y.shape and torch.isfinite(out).all()


# ----------------------------------------------------------------------------- policy, jobs and the CLI


def test_resolve_boundary_policy() -> None:
    assert resolve_boundary("deblur", "auto", "diffpir") == "extend"
    assert resolve_boundary("deblur", "auto", "ddrm") == "taper"  # auto never picks what cannot run
    assert resolve_boundary("deblur", "circular", "diffpir") == "circular"  # circular only when asked for
    assert resolve_boundary("sr", "auto", "diffpir") == "extend" and resolve_boundary("sr", "circular", "diffpir") == "circular"
    assert resolve_boundary("sr", "auto", "ddnm") == "taper"
    assert resolve_boundary("inpaint", "auto", "diffpir") is None and resolve_boundary("denoise", "circular", "diffpir") is None
    for task, boundary, method, message in [
        ("sr", "extend", "ddrm", "use --boundary taper"),
        ("inpaint", "extend", "diffpir", "has no boundary model"),
        ("deblur", "extend", "ddnm", "use --boundary taper"),
        ("deblur", "wrap", "diffpir", "expected one of auto, extend, taper, circular"),
    ]:
        with pytest.raises(DiffPIRError, match=message):
            resolve_boundary(task, boundary, method)
    op, deblur = Deblur(gaussian(3, 1.0)), get_task("deblur")
    assert deblur.apply_boundary(op, "circular") is op and deblur.apply_boundary(op, None) is op
    assert isinstance(deblur.apply_boundary(op, "extend", 8), ExtendedDeblur)
    assert isinstance(deblur.apply_boundary(op, "taper", 8), Tapered)


def test_requests_batch_by_kernel_size_and_do_not_depend_on_the_batch(tmp_path: Path) -> None:
    from diffpir_rt.engine import ModelSource
    from diffpir_rt.runtime import Restorer, RestoreRequest, batch_key, run_requests

    torch.manual_seed(0)
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_unet("tiny").state_dict().items()}, str(ckpt))
    restorer = Restorer(ModelSource("checkpoint", ckpt, "tiny"), device="cpu", reference=True)
    ys = [torch.rand(3, 14, 15) for _ in range(2)]
    requests = [RestoreRequest("deblur", y, Deblur(k), overrides={"steps": 3}, seed=s)
                for y, k, s in zip(ys, (gaussian(5, 1.0), motion(5, 9)), (3, 4))]  # fmt: skip
    batched = run_requests(restorer, requests)
    for request, (image, record) in zip(requests, batched):
        assert record["boundary"] == "extend" and record["batch_size"] == 2 and image.shape == request.y.shape
        ((alone, _),) = run_requests(restorer, [request])
        # Same seeds, same extension: equal up to float rounding. The UNet's batched and single
        # answers differ by ~1e-6, which the truncated PCG (not a linear map of x0) can grow at the
        # first steps' tiny ρ; the circular step keeps them at 1e-6 (docs/algorithm.md §11).
        assert (image - alone).abs().mean() < 1e-3 and (image - alone).abs().max() < 0.1
    wider = RestoreRequest("deblur", ys[0], Deblur(gaussian(7, 1.0)), overrides={"steps": 3})
    assert batch_key(restorer, wider) != batch_key(restorer, requests[0])  # another extension: another batch
    circular = RestoreRequest("deblur", ys[0], Deblur(gaussian(7, 1.0)), overrides={"steps": 3}, boundary="circular")
    ((_, record),) = run_requests(restorer, [circular])
    assert record["boundary"] == "circular"


def test_cli_boundary_in_the_record(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    y = write_image(tmp_path / "y.png", read_image(TEST_IMAGE)[:, 40:77, 30:63])  # 33 x 37
    np.save(tmp_path / "k.npy", gaussian(9, 2.0))
    common = ["restore", "--checkpoint", str(tiny_checkpoint), "--arch", "tiny", "--steps", "3", "--quiet", "--input", str(y)]
    for boundary, expected in ((None, "extend"), ("circular", "circular"), ("extend", "extend")):
        out = tmp_path / f"x_{boundary}.png"
        flag = [] if boundary is None else ["--boundary", boundary]
        assert main([*common, "--task", "deblur", "--kernel", str(tmp_path / "k.npy"), "--output", str(out), *flag]) == 0
        assert json.loads(out.with_name(out.name + ".json").read_text())["boundary"] == expected
        assert read_image(out).shape == read_image(y).shape  # output size = input size
    out = tmp_path / "sr.png"
    for method, expected in (("diffpir", "extend"), ("ddrm", "taper")):  # auto: the best model the method runs
        assert main([*common, "--task", "sr", "--scale", "2", "--output", str(out), "--method", method]) == 0
        assert json.loads(out.with_name(out.name + ".json").read_text())["boundary"] == expected
        assert read_image(out).shape[-2:] == tuple(2 * n for n in read_image(y).shape[-2:])
    err = capsys.readouterr().err  # auto's fallback is said once per command, even with --quiet
    assert err.count("method ddrm cannot run on --boundary extend of --task sr") == 1 and "method diffpir" not in err
    err = cli_error(capsys, [*common, "--task", "inpaint", "--mask", str(y), "--output", str(tmp_path / "e.png"), "--boundary", "extend"])
    assert "--boundary extend: --task inpaint has no boundary model" in err
    err = cli_error(capsys, [*common, "--task", "deblur", "--kernel", str(tmp_path / "k.npy"), "--output",
                             str(tmp_path / "e.png"), "--boundary", "extend", "--method", "ddrm"])  # fmt: skip
    assert "method ddrm" in err and "--boundary taper" in err
    assert not (tmp_path / "e.png").exists()
