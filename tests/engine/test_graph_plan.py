"""Graph planning in pure Python: steps, coefficients and buffers follow engine.sample's loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.graph_plan import operator_family, plan_graph
from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution
from diffpir_rt.engine.sampler import DiffPIRConfig
from diffpir_rt.engine.schedule import linear_schedule
from diffpir_rt.engine.step import StepCoefficients

CONFIG = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=20)
BLUR = np.ones((5, 5)) / 25


def test_steps_are_the_samplers_timesteps_coefficients_and_rho() -> None:
    plan = plan_graph(Deblur(BLUR), (1, 3, 64, 64), CONFIG)
    ts = CONFIG.timesteps()
    assert [(s.t, s.t_next) for s in plan.steps] == list(zip(ts[:-1], ts[1:]))
    assert [s.index for s in plan.steps] == list(range(19))  # 20 timesteps, 19 model calls
    rho = linear_schedule().rho(CONFIG.lam, CONFIG.sigma_n)
    for s in plan.steps:
        assert s.coefficients == StepCoefficients.at(linear_schedule(), s.t, s.t_next, CONFIG.zeta)
        assert s.rho == float(rho[s.t])


@pytest.mark.parametrize(
    "operator, y_shape, family, sf, image_shape",
    [
        (Deblur(BLUR), (2, 3, 64, 64), "fourier", 1, (2, 3, 64, 64)),
        (SuperResolution(4, np.ones((9, 9)) / 81), (2, 3, 16, 16), "fourier", 4, (2, 3, 64, 64)),
        (Inpaint(np.ones((64, 64))), (2, 3, 64, 64), "elementwise", 1, (2, 3, 64, 64)),
        (Denoise(), (2, 3, 64, 64), "elementwise", 1, (2, 3, 64, 64)),
        (Inpaint(np.ones((1, 3, 64, 64))), (2, 3, 64, 64), "elementwise", 1, (2, 3, 64, 64)),
    ],
)
def test_buffers_per_family(operator, y_shape, family, sf, image_shape) -> None:
    plan = plan_graph(operator, y_shape, CONFIG)
    assert (plan.family, plan.sf, plan.image_shape, plan.y_shape) == (family, sf, image_shape, y_shape)
    shapes = {spec.name: (spec.shape, spec.dtype) for spec in plan.buffers}
    n = len(plan.steps)
    assert shapes["x_T"] == (image_shape, torch.float32)
    assert shapes["noise"] == ((n, *image_shape), torch.float32)
    assert shapes["timesteps"] == ((n, image_shape[0]), torch.int64)
    b, c, h, w = image_shape
    if family == "fourier":
        assert shapes["otf"] == ((b, 1, h, w), torch.complex64)
        assert shapes["otf_abs2_folded"] == ((b, 1, h // sf, w // sf), torch.float32)
        assert shapes["y_spectrum"] == (y_shape, torch.complex64)
    else:
        assert shapes["mask"] == ((b, operator.mask.shape[1], h, w), torch.float32)
        assert shapes["y"] == (y_shape, torch.float32)
    assert plan.nbytes == sum(s.nbytes for s in plan.buffers)
    assert plan.buffer("noise").nbytes == n * b * c * h * w * 4


def test_key_ignores_the_kernel_but_not_shape_steps_task_or_backend() -> None:
    base = plan_graph(Deblur(BLUR), (1, 3, 64, 64), CONFIG)
    other_kernel = plan_graph(Deblur(np.eye(5) / 5), (1, 3, 64, 64), CONFIG)
    assert base.key("cupy") == other_kernel.key("cupy")
    assert base.key("cupy") != base.key("torch")
    assert base.key() != plan_graph(Deblur(BLUR), (2, 3, 64, 64), CONFIG).key()
    assert base.key() != plan_graph(Deblur(BLUR), (1, 3, 64, 64), DiffPIRConfig(7.0, 0.3, 0.05, steps=10)).key()
    inpaint = plan_graph(Inpaint(np.ones((64, 64))), (1, 3, 64, 64), CONFIG)
    assert base.key() != inpaint.key()
    assert inpaint.key() != plan_graph(Inpaint(np.ones((1, 3, 64, 64))), (1, 3, 64, 64), CONFIG).key()  # mask layout


def test_summary_is_json_friendly() -> None:
    import json

    summary = plan_graph(Deblur(BLUR), (1, 3, 64, 64), CONFIG).summary()
    assert json.loads(json.dumps(summary))["timesteps"] == CONFIG.timesteps()


def test_unsupported_operator_and_bad_shapes() -> None:
    class Custom:
        pad_mode = "reflect"

    with pytest.raises(DiffPIRError, match="operator: the graph runtime supports Deblur, SuperResolution, Inpaint and Denoise, got Custom"):
        operator_family(Custom())
    with pytest.raises(DiffPIRError, match=r"y: expected shape \(B, C, h, w\), got \(3, 64, 64\)"):
        plan_graph(Deblur(BLUR), (3, 64, 64), CONFIG)
    with pytest.raises(DiffPIRError, match="config: expected a DiffPIRConfig, got dict"):
        plan_graph(Deblur(BLUR), (1, 3, 64, 64), {"lam": 7})
