"""The sampler against an independent float64 transcription of the official loop, plus invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.methods.diffpir import initial_state
from diffpir_rt.engine.sampler import DiffPIRConfig, sample
from diffpir_rt.engine.schedule import linear_schedule, timesteps

from .reference_diffpir import reference_sample


def toy_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth nonlinear stand-in for the UNet, defined for torch (B,C,H,W) and t (B,)."""
    scale = (0.5 + t.to(x.dtype) / 2000.0).view(-1, 1, 1, 1)
    return torch.tanh(0.7 * x + 0.3 * torch.roll(x, 1, dims=-1)) * scale


def toy_eps_numpy(x: np.ndarray, t: int) -> np.ndarray:
    return np.tanh(0.7 * x + 0.3 * np.roll(x, 1, axis=-1)) * (0.5 + t / 2000.0)


class CountingModel:
    def __init__(self, size_multiple: int = 1):
        self.calls: list[tuple[tuple[int, ...], list[int]]] = []
        self.size_multiple = size_multiple

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.int64 and t.shape == (x.shape[0],)
        self.calls.append((tuple(x.shape), t.tolist()))
        return toy_eps(x, t)


def _gaussian(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


def _problem(task: str, rng: np.random.Generator):
    """(operator, y (1,3,h,w) float64, reference kwargs) for a 16x16 image."""
    x = rng.random((1, 3, 16, 16))
    if task == "deblur":
        kernel = _gaussian(7, 1.5)
        op = Deblur(kernel)
        kwargs = {"kernel": kernel, "sf": 1}
    elif task == "sr":
        kernel = rng.random((5, 5))
        kernel /= kernel.sum()
        op = SuperResolution(2, kernel)
        kwargs = {"kernel": kernel, "sf": 2}
    elif task == "inpaint":
        mask = (rng.random((16, 16)) > 0.5).astype(np.float64)
        op = Inpaint(mask)
        kwargs = {"mask": mask}
    else:
        op = Denoise()
        kwargs = {}
    y = op.forward(torch.from_numpy(x)) + 0.05 * torch.from_numpy(rng.standard_normal(op.forward(torch.from_numpy(x)).shape))
    return op, y, kwargs


TASKS = ["deblur", "sr", "inpaint", "denoise"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("zeta", [0.0, 0.3, 1.0])
def test_matches_independent_official_loop(task: str, zeta: float, rng: np.random.Generator) -> None:
    op, y, kwargs = _problem(task, rng)
    config = DiffPIRConfig(lam=7.0, zeta=zeta, sigma_n=0.05, steps=10)
    ts = config.timesteps()
    shape = op.image_shape(y.shape)
    x_T = torch.from_numpy(rng.standard_normal(tuple(shape)))
    noise = [torch.from_numpy(rng.standard_normal(tuple(shape))) for _ in ts[:-1]]
    expected = reference_sample(
        toy_eps_numpy, task, y[0].numpy(), x_T[0].numpy(), [n[0].numpy() for n in noise], ts,
        lam=7.0, zeta=zeta, sigma_n=0.05, **kwargs,
    )
    got64 = sample(toy_eps, op, y, config, x_T=x_T, noise=noise)[0].numpy()
    np.testing.assert_allclose(got64, expected, atol=1e-9)
    got32 = sample(toy_eps, op, y.float(), config, x_T=x_T.float(), noise=[n.float() for n in noise])
    assert got32.dtype == torch.float32
    assert np.abs(got32[0].double().numpy() - expected).max() <= 1e-4


def test_seeded_runs_are_bit_identical_and_seeds_matter(rng: np.random.Generator) -> None:
    op, y, _ = _problem("deblur", rng)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=5)
    a = sample(toy_eps, op, y, config, seed=0)
    b = sample(toy_eps, op, y, config, seed=0)
    c = sample(toy_eps, op, y, config, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_explicit_noise_reproduces_seeded_draw_order(rng: np.random.Generator) -> None:
    """seed = a generator drawing x_T's noise first, then one tensor per step."""
    op, y, _ = _problem("sr", rng)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=6)
    shape = op.image_shape(y.shape)
    g = torch.Generator().manual_seed(5)
    z_T = torch.randn(shape, generator=g, dtype=y.dtype)
    noise = [torch.randn(shape, generator=g, dtype=y.dtype) for _ in range(config.num_model_calls)]
    x_T = initial_state(op, y, config, z_T, linear_schedule())
    assert torch.equal(sample(toy_eps, op, y, config, x_T=x_T, noise=noise), sample(toy_eps, op, y, config, seed=5))


def test_zeta_zero_ignores_step_noise(rng: np.random.Generator) -> None:
    op, y, _ = _problem("deblur", rng)
    config = DiffPIRConfig(lam=7.0, zeta=0.0, sigma_n=0.05, steps=5)
    x_T = torch.randn(y.shape, dtype=y.dtype)
    n1 = [torch.randn(y.shape, dtype=y.dtype) for _ in range(4)]
    n2 = [torch.randn(y.shape, dtype=y.dtype) for _ in range(4)]
    assert torch.equal(sample(toy_eps, op, y, config, x_T=x_T, noise=n1), sample(toy_eps, op, y, config, x_T=x_T, noise=n2))


def test_zeta_one_ignores_the_effective_eps(rng: np.random.Generator) -> None:
    """With zeta = 1 the next state is sqrt(a') x0 + sqrt(1 - a') z: x_t enters only via x0."""
    op, y, _ = _problem("inpaint", rng)
    config = DiffPIRConfig(lam=1.0, zeta=1.0, sigma_n=0.0, steps=3)
    zero_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731  x0 = clamp(x / sqrt(a_t))
    x_T = torch.full(y.shape, 0.5, dtype=y.dtype)
    noise = [torch.zeros(y.shape, dtype=y.dtype) for _ in range(2)]
    got = sample(zero_eps, op, y, config, x_T=x_T, noise=noise)
    a = linear_schedule().alpha_bar
    t0, t1, t2 = config.timesteps()
    m = op.mask
    rho = linear_schedule().rho(1.0, 0.0)
    x0 = np.clip(0.5 / math.sqrt(a[t0]), -1, 1)
    x0 = (m * (2 * y - 1) + rho[t0] * x0) / (m + rho[t0])
    x = math.sqrt(a[t1]) * x0
    x0 = ((x / math.sqrt(a[t1])).clamp(-1, 1) * rho[t1] + m * (2 * y - 1)) / (m + rho[t1])
    x = math.sqrt(a[t2]) * x0
    assert torch.allclose(got, (x / 2 + 0.5).clamp(0, 1), atol=1e-12)


def test_per_sample_batch_equals_separate_runs(rng: np.random.Generator) -> None:
    k1, k2 = _gaussian(5, 1.0), _gaussian(5, 2.0)
    y = torch.from_numpy(rng.random((2, 3, 12, 12)))
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=6)
    x_T = torch.from_numpy(rng.standard_normal((2, 3, 12, 12)))
    noise = torch.from_numpy(rng.standard_normal((5, 2, 3, 12, 12)))
    batched = sample(toy_eps, Deblur(np.stack([k1, k2])), y, config, x_T=x_T, noise=noise)
    for b, k in enumerate((k1, k2)):
        single = sample(toy_eps, Deblur(k), y[b : b + 1], config, x_T=x_T[b : b + 1], noise=noise[:, b : b + 1])
        assert torch.equal(batched[b : b + 1], single)


@pytest.mark.parametrize("skip, steps, calls", [("quad", 20, 19), ("uniform", 20, 20), ("quad", 5, 4)])
def test_final_model_call_is_skipped(skip: str, steps: int, calls: int, rng: np.random.Generator) -> None:
    op, y, _ = _problem("denoise", rng)
    model = CountingModel()
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=steps, skip=skip)
    sample(model, op, y, config, seed=0)
    assert [t[0] for _, t in model.calls] == timesteps(steps, skip)[:-1]
    assert len(model.calls) == calls == config.num_model_calls


def test_t_start_skips_early_entries(rng: np.random.Generator) -> None:
    op, y, _ = _problem("deblur", rng)
    model = CountingModel()
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=20, t_start=500)
    sample(model, op, y, config, seed=0)
    assert [t[0] for _, t in model.calls] == [487, 438, 393, 351, 311, 274, 239, 205, 172, 141, 111, 82, 54, 26]


@pytest.mark.parametrize("task, size", [("deblur", (13, 11)), ("inpaint", (9, 17))])
def test_any_size_pads_for_the_model_and_crops_back(task: str, size: tuple[int, int]) -> None:
    y = torch.rand(1, 3, *size, dtype=torch.float64)
    op = Deblur(_gaussian(5, 1.0)) if task == "deblur" else Inpaint(np.ones(size))
    model = CountingModel(size_multiple=8)
    out = sample(model, op, y, DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=3), seed=0)
    assert out.shape == y.shape
    assert all(s[-2] % 8 == 0 and s[-1] % 8 == 0 for s, _ in model.calls)


def test_initial_state_formula() -> None:
    """x_T = sqrt(a_T/a_ty)(2y - 1) + sqrt((1 - a_T) - (a_T/a_ty)(1 - a_ty)) z with t_y = 26 (docs/algorithm.md §5)."""
    a = linear_schedule().alpha_bar
    y = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    z = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=5)
    got = initial_state(Denoise(), y, config, z, linear_schedule())
    expected = math.sqrt(a[999] / a[26]) * (2 * y - 1) + math.sqrt((1 - a[999]) - a[999] / a[26] * (1 - a[26])) * z
    assert torch.allclose(got, expected, atol=1e-14)


def test_unbatched_input_and_output_range(rng: np.random.Generator) -> None:
    op, y, _ = _problem("deblur", rng)
    out = sample(toy_eps, op, y[0], DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=4), seed=3)
    assert out.shape == y.shape[1:] and out.min() >= 0 and out.max() <= 1


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"zeta": 1.5}, "zeta: expected a number in"),
        ({"lam": 0.0}, "lam: expected a number > 0"),
        ({"sigma_n": -0.1}, "sigma_n: expected a number in"),
        ({"steps": 1}, "steps: expected an integer in \\[2, 1000\\]"),
        ({"skip": "cubic"}, "skip: expected one of"),
        ({"t_start": 1000}, "t_start: expected an integer in"),
        ({"t_start": 0}, "leaves fewer than 2"),
        ({"lam": float("nan")}, "lam: expected a number > 0"),
    ],
)
def test_bad_config(kwargs: dict, message: str) -> None:
    base = {"lam": 7.0, "zeta": 0.3, "sigma_n": 0.05, "steps": 5}
    with pytest.raises(DiffPIRError, match=message):
        DiffPIRConfig(**{**base, **kwargs})


def test_wrong_noise_count_and_shapes() -> None:
    y = torch.rand(1, 3, 8, 8)
    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=5)
    with pytest.raises(DiffPIRError, match="noise: expected 4 tensors"):
        sample(toy_eps, Denoise(), y, config, noise=[torch.zeros_like(y)] * 3)
    with pytest.raises(DiffPIRError, match=r"x_T: expected shape \(1, 3, 8, 8\)"):
        sample(toy_eps, Denoise(), y, config, x_T=torch.zeros(1, 3, 4, 4))
    with pytest.raises(DiffPIRError, match="eps_model: returned shape"):
        sample(lambda x, t: x[:, :1], Denoise(), y, config, seed=0)
