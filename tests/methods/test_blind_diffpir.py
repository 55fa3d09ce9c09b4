"""Blind DiffPIR on the one loop: through engine.sample and the graph runtime's static loop with the
tiny random model, the kernel it leaves behind, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError, ExtendedDeblur
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.estimate import initial_kernel
from diffpir_rt.engine.graph_runtime import GraphRuntime
from diffpir_rt.engine.methods import METHODS, build_method
from diffpir_rt.engine.methods.blind_diffpir import BlindDiffPIR, BlindDiffPIRConfig, blind_operator, prepare_blind
from diffpir_rt.engine.operators import Deblur, SuperResolution
from diffpir_rt.engine.sampler import sample
from diffpir_rt.engine.unet import build_unet

N = 7
CONFIG = BlindDiffPIRConfig(lam=2.0, zeta=1.0, sigma_n=0.02, steps=4, kernel_size=N, kernel_iters=5, kernel_t_max=999)


@pytest.fixture(autouse=True)
def registered():
    """The method joins the registry for the test only (the registry line is the lead's to add)."""
    had = "blind_diffpir" in METHODS
    METHODS["blind_diffpir"] = (BlindDiffPIRConfig, BlindDiffPIR)
    yield
    if not had:
        METHODS.pop("blind_diffpir", None)


@pytest.fixture(scope="module")
def model() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


def blurred(batch: int = 1, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g, dtype=torch.float64)
    k = torch.zeros(N, N, dtype=torch.float64)
    k[3, 1:6] = 0.2
    return (Deblur(k).forward(x) + 0.02 * torch.randn(x.shape, generator=g, dtype=torch.float64)).float()


def check_kernels(kernel: torch.Tensor, batch: int) -> None:
    assert kernel.shape == (batch, N, N) and kernel.dtype == torch.float64
    assert torch.all(kernel >= 0)
    assert torch.allclose(kernel.sum(dim=(-2, -1)), torch.ones(batch, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("boundary", ["circular", "extend"])
def test_runs_through_sample_and_leaves_its_kernel_on_the_operator(model, boundary: str) -> None:
    y = blurred(batch=2)
    op = blind_operator(N, boundary, multiple=1)
    out = sample(model, op, y, CONFIG, seed=[1, 2])
    assert out.shape == y.shape and torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    kernel = op.estimate.kernel()
    check_kernels(kernel, 2)
    assert not torch.allclose(kernel[0], initial_kernel(N, 1.0))  # the M-step moved it


def test_the_kernel_starts_from_the_operators_and_stays_without_updates(model) -> None:
    """kernel_t_max 0: no step re-estimates, so the loop is DiffPIR with the operator's kernel."""
    from diffpir_rt.engine import DiffPIRConfig

    y = blurred()
    k0 = torch.zeros(N, N, dtype=torch.float64)
    k0[2:5, 2:5] = 1 / 9
    op = blind_operator(N, "circular", init=k0)
    frozen = BlindDiffPIRConfig(lam=2.0, zeta=1.0, sigma_n=0.05, steps=4, kernel_size=N, kernel_t_max=0)
    got = sample(model, op, y, frozen, seed=3)
    assert torch.allclose(op.estimate.kernel()[0], k0, atol=1e-6)
    expected = sample(model, Deblur(k0), y, DiffPIRConfig(lam=2.0, zeta=1.0, sigma_n=0.05, steps=4), seed=3)
    assert torch.allclose(got, expected, atol=1e-5)
    # above kernel_sigma_max the loop does not re-estimate either, whatever kernel_t_max says
    noisy = BlindDiffPIRConfig(lam=2.0, zeta=1.0, sigma_n=0.05, steps=4, kernel_size=N, kernel_t_max=999, kernel_sigma_max=0.02)
    assert torch.equal(sample(model, op, y, noisy, seed=3), got)
    assert not any(step["fit"] for step in build_method(noisy).steps())


def test_the_graph_runtimes_static_loop_equals_sample(model) -> None:
    """What the CUDA graph records (the static-buffer loop, run eagerly on CPU) is engine.sample's
    loop: same image, same kernel, and a second restoration on the same runtime starts afresh
    (the kernel state is reset at the first step, inside the loop)."""
    y = blurred()
    shape = (1, 3, 32, 32)
    noise = [torch.randn(shape) for _ in range(CONFIG.num_model_calls)]
    op = blind_operator(N, "circular")
    expected = sample(model, op, y, CONFIG, noise=noise, seed=5)
    expected_kernel = op.estimate.kernel()
    runtime = GraphRuntime(model, build_method(CONFIG), op.data_step(y), tuple(y.shape), shape, op.pad_mode, "cpu")
    for _ in range(2):
        op2 = blind_operator(N, "circular")
        got = runtime.restore(op2, y, noise=noise, seed=5)
        assert torch.equal(got, expected)
        assert torch.equal(op2.estimate.kernel(), expected_kernel)


def test_prepare_blind_estimates_the_first_kernel(model) -> None:
    y = blurred(batch=2, size=48)
    op = prepare_blind(y, N, "circular")
    assert isinstance(op, Deblur) and op.kernel.shape == (2, N, N)
    extended = prepare_blind(y, N, "extend", multiple=1)
    assert isinstance(extended, ExtendedDeblur)
    out = sample(model, extended, y, CONFIG, seed=0)
    assert out.shape == y.shape
    check_kernels(extended.estimate.kernel(), 2)


def test_refusals(model) -> None:
    y = blurred(size=24)
    with pytest.raises(DiffPIRError, match="larger than a quarter"):
        sample(model, blind_operator(N, "circular"), y, CONFIG, seed=0)  # 4 x 7 > 24
    with pytest.raises(DiffPIRError, match="odd"):
        BlindDiffPIRConfig(lam=2.0, zeta=1.0, sigma_n=0.02, steps=4, kernel_size=8)
    with pytest.raises(DiffPIRError, match="expected the operator of a square, odd-sized initial kernel"):
        sample(model, Deblur(np.ones((5, 4)) / 20), blurred(), CONFIG, seed=0)
    with pytest.raises(DiffPIRError, match="for deblurring, not for super-resolution"):
        sample(model, SuperResolution(2, np.ones((N, N)) / N**2), blurred(size=32), CONFIG, seed=0)
    with pytest.raises(DiffPIRError, match="boundary"):
        blind_operator(N, "reflect")
    with pytest.raises(DiffPIRError, match="init: expected a 7x7"):
        blind_operator(N, "circular", init=torch.ones(5, 5) / 25)


def test_estimate_operator_of_a_large_photo_uses_one_window() -> None:
    """`--kernel auto` on a photo wider than the estimate window: a kernel of the asked support, a
    circular Deblur carrying the estimate (the runtime puts it under the boundary model)."""
    from diffpir_rt.engine.methods.blind_diffpir import ESTIMATE_WINDOW, kernel_estimate

    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 40, ESTIMATE_WINDOW + 8, generator=g, dtype=torch.float64)
    k = torch.zeros(N, N, dtype=torch.float64)
    k[3, 1:6] = 0.2
    y = Deblur(k).forward(x).float()
    op = BlindDiffPIRConfig.estimate_operator(y, sigma_n=0.01, boundary="extend", overrides={"kernel_size": N})
    assert isinstance(op, Deblur) and kernel_estimate(op) is op.estimate
    check_kernels(op.kernel.to(torch.float64), 1)
    with pytest.raises(DiffPIRError, match="larger than a quarter"):
        BlindDiffPIRConfig.estimate_operator(y, sigma_n=0.01, boundary="extend", overrides={"kernel_size": 11})
