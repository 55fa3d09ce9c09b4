"""Boundaries for every task and method (engine/boundary_models.py, boundary_sr.py, boundary_taper.py;
docs/algorithm.md §11): the extended SR operator and the tapered extension against dense linear algebra,
the crop, the auto policy read from the declarations, the one-line refusals and the boundary note."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from diffpir_rt.engine import (
    BOUNDARIES,
    BOUNDARY_MODELS,
    METHODS,
    TASKS,
    Deblur,
    DiffPIRConfig,
    DiffPIRError,
    ExtendedDeblur,
    ExtendedSuperResolution,
    GraphSampler,
    ModelSource,
    SuperResolution,
    Tapered,
    build_unet,
    get_task,
    restoration_names,
    sample,
)
from diffpir_rt.engine.boundary import good_size, pads_for
from diffpir_rt.engine.boundary_taper import measurement_pads
from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.graph_runtime import GraphRuntime
from diffpir_rt.engine.methods import build_method
from diffpir_rt.runtime import Restorer, resolve_boundary

CONFIG = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=4)


def random_kernel(size: int, seed: int) -> np.ndarray:
    """An asymmetric kernel, so K and Kᵀ differ."""
    k = np.random.default_rng(seed).random((size, size)) ** 3
    return k / k.sum()


def dense(f, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map f on float64 tensors of `shape` (columns = f of the basis images)."""
    n = math.prod(shape)
    return torch.stack([f(torch.eye(n, dtype=torch.float64)[i].reshape(shape)).flatten() for i in range(n)], dim=1)


def smooth(n: int) -> bool:
    for p in (2, 3, 5, 7):
        while n % p == 0:
            n //= p
    return n == 1


@pytest.fixture(scope="module")
def model() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- the extended grid


def test_measurement_pads_reach_the_kernel_and_make_a_fast_multiple() -> None:
    for sf in (1, 2, 3, 4):
        for multiple in (1, 8, 16):
            for h in (5, 17, 32):
                for radius in (3, 12, 30):
                    t, b, l, r = measurement_pads(h, h + 1, radius, sf, multiple)
                    reach = -(-radius // sf)
                    assert t == l == reach and b >= reach and r >= reach  # the kernel's reach, on the measurement grid
                    for n, frame in ((h + t + b, h), (h + 1 + l + r, h + 1)):
                        assert (sf * n) % multiple == 0 and smooth(n)  # the restored grid: no model padding, fast FFTs
                        assert n == good_size(frame + 2 * reach, math.lcm(sf, multiple) // sf)  # the smallest such size
    assert measurement_pads(256, 200, 30, 1, 16) == pads_for(256, 200, 30, 16)  # sf = 1 is deblurring's rule
    op = ExtendedSuperResolution(SuperResolution(4), multiple=16)  # 25x25 bicubic kernel: radius 12, 3 LR pixels
    assert op.pads((1, 3, 32, 32)) == (3, 5, 3, 5) and op.image_shape((1, 3, 32, 32)) == (1, 3, 160, 160)


def test_crop_returns_the_frame_of_the_restored_grid() -> None:
    for op in (Tapered(SuperResolution(3, random_kernel(7, 0)), multiple=4), ExtendedSuperResolution(SuperResolution(2), 8),
               Tapered(Deblur(random_kernel(5, 1)), multiple=8)):  # fmt: skip
        y_shape = (2, 3, 7, 9)
        shape = op.image_shape(y_shape)
        x = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
        t, b, l, r = op.pads(y_shape)
        sf = op.sf
        assert shape[-2:] == (sf * (7 + t + b), sf * (9 + l + r))
        out = op.output(x, y_shape)
        assert out.shape == (2, 3, 7 * sf, 9 * sf) and out.is_contiguous()
        assert torch.equal(out, x[..., sf * t : sf * t + 7 * sf, sf * l : sf * l + 9 * sf])


# ----------------------------------------------------------------------------- extend: the masked SR data step


def test_masked_sr_forward_and_adjoint_against_dense_matrices() -> None:
    sr = SuperResolution(2, random_kernel(7, 2))
    op = ExtendedSuperResolution(sr, multiple=4)
    y = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    data = op.data_step(y)
    shape = tuple(op.image_shape(y.shape))
    t, _, l, _ = op.pads(y.shape)
    A = dense(data.forward, shape)
    # A = S D K: the low-resolution frame of the circular SR operator on the extended grid.
    reference = dense(lambda x: sr.forward(x)[..., t : t + 5, l : l + 6], shape)
    assert torch.allclose(A, reference, atol=1e-12)
    assert torch.allclose(dense(data.adjoint, tuple(y.shape)), A.T, atol=1e-12)
    assert torch.equal(data.measurement(), y)
    r = torch.rand_like(y)
    for call in (lambda: data.pinv(r), lambda: data.singular_values(), lambda: data.gram_solve(r, 0.1),
                 lambda: data.range_filter(r, torch.ones(1))):  # fmt: skip
        with pytest.raises(DiffPIRError, match="--boundary taper"):
            call()


@pytest.mark.parametrize("sf", [2, 3])
def test_masked_sr_prox_is_the_dense_solution(sf: int) -> None:
    """Run to convergence, the PCG in the measurement's coordinates gives argmin ||y - A x||² + ρ||x - x0||²
    (dense normal equations), from any warm start; each call carries w = M y_ext + (1 - M) D K x."""
    sr = SuperResolution(sf, random_kernel(5, sf))
    y = torch.rand(1, 1, 4, 5, dtype=torch.float64)
    op = ExtendedSuperResolution(sr, multiple=2, iters=60, early_iters=60)
    data = op.data_step(y)
    shape = tuple(op.image_shape(y.shape))
    n = math.prod(shape)
    A = dense(data.forward, shape)
    x0 = torch.rand(shape, dtype=torch.float64)
    for rho in (1e-4, 1e-2, 1.0):
        exact = torch.linalg.solve(A.T @ A + rho * torch.eye(n, dtype=torch.float64), A.T @ y.flatten() + rho * x0.flatten())
        x = data(x0, rho)
        assert torch.allclose(x.flatten(), exact, atol=1e-8), rho
        w = torch.fft.ifft2(data.warm_spectrum).real
        y_ext = op.extend(y)
        assert torch.allclose(w, data.mask * y_ext + (1 - data.mask) * sr.forward(x), atol=1e-9)  # the carried warm start
    data.begin_loop()
    assert torch.equal(data.warm_spectrum, data.y_ext_spectrum)
    # Few iterations: not exact, but far closer than the circular closed form on y_ext (its warm start).
    few = ExtendedSuperResolution(sr, multiple=2, iters=3, early_iters=3, carry=False).data_step(y)
    exact = torch.linalg.solve(A.T @ A + 1e-2 * torch.eye(n, dtype=torch.float64), A.T @ y.flatten() + 1e-2 * x0.flatten())
    circular = sr.data_step(op.extend(y))(x0, 1e-2).flatten()
    assert (few(x0, 1e-2).flatten() - exact).norm() < 0.2 * (circular - exact).norm()


def test_masked_sr_per_sample_kernels_match_single_ones() -> None:
    k1, k2 = random_kernel(5, 3), random_kernel(5, 4)
    y = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    both = ExtendedSuperResolution(SuperResolution(2, np.stack([k1, k2])), multiple=4)
    x0 = torch.rand(both.image_shape(y.shape), dtype=torch.float64)
    batched = both.data_step(y)(x0, 0.01)
    for i, k in enumerate((k1, k2)):
        alone = ExtendedSuperResolution(SuperResolution(2, k), multiple=4).data_step(y[i : i + 1])(x0[i : i + 1], 0.01)
        assert torch.allclose(batched[i : i + 1], alone, atol=1e-12)


def test_extended_sr_through_sample_and_the_graph_runtime(model) -> None:
    op = ExtendedSuperResolution(SuperResolution(2), multiple=model.size_multiple)
    y = torch.rand(1, 3, 9, 11)
    shape = op.image_shape(y.shape)
    x_T = torch.randn(shape)
    noise = [torch.randn(shape) for _ in range(CONFIG.num_model_calls)]
    expected = sample(model, op, y, CONFIG, x_T=x_T, noise=noise)
    assert expected.shape == (1, 3, 18, 22) and torch.isfinite(expected).all()  # sf times the measurement
    runtime = GraphRuntime(model, build_method(CONFIG), op.data_step(y), tuple(y.shape), tuple(shape), op.pad_mode, "cpu")
    assert torch.equal(runtime.restore(op, y, x_T=x_T, noise=noise), expected)
    assert torch.equal(GraphSampler(model, "cpu", capture=False).sample(op, y, CONFIG, seed=2), sample(model, op, y, CONFIG, seed=2))


# ----------------------------------------------------------------------------- taper: exact closed forms on the extended grid


def test_tapered_sr_closed_forms_are_exact_on_the_extended_grid() -> None:
    sr = SuperResolution(2, random_kernel(5, 5))
    op = Tapered(sr, multiple=4)
    y = torch.rand(1, 1, 4, 5, dtype=torch.float64)
    data = op.data_step(y)
    y_ext = op.extend(y)
    t, _, l, _ = op.pads(y.shape)
    assert torch.allclose(data.measurement(), y_ext, atol=1e-12)
    assert torch.allclose(y_ext[..., t : t + 4, l : l + 5], y, atol=1e-12)  # the frame is the measurement itself
    shape = tuple(op.image_shape(y.shape))
    A = dense(sr.forward, shape)  # the circular SR operator on the extended grid
    U, s, Vh = torch.linalg.svd(A, full_matrices=False)
    assert torch.allclose(data.singular_values().flatten().sort().values, s.sort().values, atol=1e-10)
    keep = s > 3e-2
    r = torch.rand(y_ext.shape, dtype=torch.float64)
    pinv = Vh[keep].T @ torch.diag(1 / s[keep]) @ U[:, keep].T
    assert torch.allclose(data.pinv(r, 3e-2).flatten(), pinv @ r.flatten(), atol=1e-9)
    x = torch.rand(shape, dtype=torch.float64)
    filtered = Vh[keep].T @ torch.diag(s[keep] ** 2) @ Vh[keep] @ x.flatten()  # f(s) = s² over the range
    assert torch.allclose(data.range_filter(x, data.singular_values() ** 2, 3e-2).flatten(), filtered, atol=1e-9)
    gram = torch.linalg.solve(A @ A.T + 0.1 * torch.eye(A.shape[0], dtype=torch.float64), r.flatten())
    assert torch.allclose(data.gram_solve(r, 0.1).flatten(), gram, atol=1e-9)
    assert torch.allclose(op.init_estimate(y), sr.init_estimate(y_ext))


def test_tapered_deblur_extends_as_the_masked_model_does() -> None:
    k = random_kernel(7, 6)
    y = torch.rand(2, 3, 11, 13, dtype=torch.float64)
    tapered, masked = Tapered(Deblur(k), multiple=8), ExtendedDeblur(Deblur(k), multiple=8)
    assert tapered.pads(y.shape) == masked.pads(y.shape) and tapered.image_shape(y.shape) == masked.image_shape(y.shape)
    assert torch.allclose(tapered.extend(y), masked.extend(y), atol=1e-12)  # one extension for both models
    assert torch.allclose(tapered.data_step(y).measurement(), masked.extend(y), atol=1e-12)


def test_sr_taper_filter_wraps_as_a_measurement() -> None:
    """For SR the edgetaper blends towards A Aᵀ scaled to DC 1: a constant stays constant, and at the
    wrap seam (weight 0) the extension is that filter applied to the reflected measurement."""
    op = Tapered(SuperResolution(4), multiple=16)
    y = torch.full((1, 3, 8, 8), 0.3, dtype=torch.float64)
    assert torch.allclose(op.extend(y), torch.full_like(op.extend(y), 0.3), atol=1e-9)
    he, we = op.extended_shape(y.shape)
    assert abs(complex(op.taper_filter(he, we, y)[0, 0, 0, 0]) - 1) < 1e-12


# ----------------------------------------------------------------------------- the policy


def test_auto_gives_every_method_a_real_photo_model_read_from_its_declarations() -> None:
    for task_name, task in TASKS.items():
        for method in restoration_names(task_name):
            capabilities = METHODS[method][0].capabilities
            resolved = resolve_boundary(task_name, "auto", method)
            if not task.boundaries:
                assert resolved is None
                continue
            assert resolved in task.boundaries and BOUNDARY_MODELS[resolved].real_photo, (task_name, method)
            # the best model the capabilities allow: the masked extension exactly for the methods declaring it
            assert (resolved == "extend") == capabilities.extended_boundary, (task_name, method)
            # a note exactly when auto could not give the method the task's best model
            note = get_task(task_name).boundary_note("auto", resolved, method)
            assert (note is None) == (resolved == task.boundaries[0]), (task_name, method)
            if note is not None:
                assert note.startswith(f"method {method} cannot run on --boundary {task.boundaries[0]} of --task {task_name} (")
                assert f"restored with --boundary {resolved} (an approximation" in note and "\n" not in note
    assert set(BOUNDARIES) == {"auto", *BOUNDARY_MODELS}


def test_explicit_models_and_one_line_refusals() -> None:
    assert resolve_boundary("sr", "taper", "diffpir") == "taper" and resolve_boundary("deblur", "taper", "ddrm") == "taper"
    assert resolve_boundary("sr", "extend", "dps") == "extend" and resolve_boundary("sr", "circular", "ddnm") == "circular"
    assert resolve_boundary("denoise", "circular", "diffpir") is None
    for task, boundary, method, message in [
        ("sr", "extend", "ddrm", r"^method ddrm: cannot run on --boundary extend \(its data step has no closed form.*use --boundary taper"),
        ("deblur", "extend", "ilvr", r"^method ilvr: .*use --boundary taper"),
        ("inpaint", "taper", "diffpir", r"^--boundary taper: --task inpaint has no boundary model"),
        ("deblur", "wrap", "diffpir", r"^--boundary 'wrap': expected one of auto, extend, taper, circular$"),
    ]:
        with pytest.raises(DiffPIRError, match=message) as info:
            resolve_boundary(task, boundary, method)
        assert "\n" not in str(info.value)


def test_the_data_steps_refuse_a_method_without_the_capability(model) -> None:
    y = torch.rand(1, 3, 6, 6)
    config = METHODS["ddnm"][0].for_task("sr", 0.05, 2)
    with pytest.raises(DiffPIRError, match=r"^method ddnm: .*use --boundary taper") as info:
        sample(model, ExtendedSuperResolution(SuperResolution(2), multiple=model.size_multiple), y, config, seed=0)
    assert "\n" not in str(info.value)


def _few_steps(config):
    """The method's config with a budget of 3 (its declared budget field), still valid."""
    changes = {type(config).budget: 3}
    if "range_t" in type(config).field_names():
        changes["range_t"] = 0
    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize("task_name", ["deblur", "sr"])
def test_every_method_restores_a_photo_with_auto(model, task_name: str) -> None:
    """Each method on the model auto gives it: the output is the measurement's frame (sf times it), finite.
    (A method that estimates the operator itself, blind deblurring, starts from its own initial kernel.)"""
    task = get_task(task_name)
    operator = task.operator(kernel=random_kernel(5, 7)) if task_name == "deblur" else task.operator(scale=2)
    y = torch.rand(1, 3, 12, 10)
    for method in (m for m in restoration_names(task_name) if not METHODS[m][0].estimates):
        config = _few_steps(METHODS[method][0].for_task(task_name, 0.05, 2))
        resolved = resolve_boundary(task_name, "auto", method)
        op = task.apply_boundary(operator, resolved, math.lcm(model.size_multiple, config.size_multiple))  # as the Restorer
        assert getattr(op, "boundary", None) == resolved
        out = sample(model, op, y, config, seed=0)
        sf = operator.sf
        assert out.shape == (1, 3, 12 * sf, 10 * sf) and torch.isfinite(out).all(), method


def test_auto_below_the_best_model_says_so_once_and_records_it(tiny_checkpoint, monkeypatch) -> None:
    """auto giving a method less than the task's best model says so once on the notify channel and keeps
    the line in every run record: the taper for a method without the masked model's capability, and
    circular (with its warning) where the task had no other model the method could run."""
    deblur = get_task("deblur")
    taper_note = deblur.boundary_note("auto", "taper", "ddrm")
    assert taper_note == ("method ddrm cannot run on --boundary extend of --task deblur (its data step has no closed form: no "
                          "pseudo-inverse, singular values, range filters or (A A^T + mu)^-1): the image's edges are restored "
                          "with --boundary taper (an approximation of extend: with a wide blur kernel its border strips "
                          "restore less well, docs/algorithm.md §11)")  # fmt: skip
    assert deblur.boundary_note("taper", "taper", "ddrm") is None and deblur.boundary_note("auto", "extend", "dps") is None
    lines: list[str] = []
    restorer = Restorer(ModelSource("checkpoint", tiny_checkpoint, "tiny"), device="cpu", reference=True, notify=lines.append)
    y = torch.rand(1, 3, 16, 16)
    config = _few_steps(METHODS["ddrm"][0].for_task("deblur", 0.05))
    for _ in range(2):
        restorer.restore(y, Deblur(random_kernel(5, 8)), config, seed=0)
        assert restorer.last_record["boundary"] == "taper" and taper_note in restorer.last_record["notes"]
    assert lines.count(taper_note) == 1
    restorer.restore(y, Deblur(random_kernel(5, 8)), config, seed=0, boundary="taper")  # asked for: nothing said
    assert restorer.last_record["notes"] == [] and len(lines) == 1
    monkeypatch.setattr(type(deblur), "boundaries", ("extend", "circular"))
    note = deblur.boundary_note("auto", "circular", "ddrm")
    assert note is not None and note.endswith("restored with --boundary circular (expect artefacts at the borders)")
    restorer.restore(y, Deblur(random_kernel(5, 8)), config, seed=0)
    assert restorer.last_record["boundary"] == "circular" and note in restorer.last_record["notes"] and lines[-1] == note


def test_a_task_lists_only_declared_models() -> None:
    for task in TASKS.values():
        assert all(model in BOUNDARY_MODELS for model in task.boundaries), task.name
