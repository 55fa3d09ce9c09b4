"""The bf16 CPU path's tolerance against the fp32 path, with the bundled prior's real weights
(random weights amplify rounding in ways a trained UNet does not; the tiny random UNet's
bound is tests/engine/test_graph_runtime.py's).

Measured on 2026-12-08 (Xeon with AMX-BF16, torch 2.13.0), PSNR of the bf16 restoration
against the fp32 one: at 32-64 px with 10 steps 64.3-66.1 dB and 100 % of 8-bit pixels within
1 level (20 steps: 66.9-69.7 dB); on CBSD68 crops of 256² with 20 steps 57.6-61.1 dB and
>= 99.977 % within 1 level (benchmarks/results/precision_cpu). With only 4 steps, far below any
default, 1-2.5 % of the pixels move by up to 20 levels (50-58 dB): the big early steps carry
bf16 rounding further, so the test runs 10. The bounds leave a margin for other CPUs' bf16
kernels (oneDNN's AMX, AVX512-BF16 or emulated paths round differently).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpir_rt.engine import Deblur, Inpaint, ModelSource, bundled_card
from diffpir_rt.runtime import Restorer

#: bf16 vs fp32 on the whole restoration, bundled prior: PSNR (dB) and 8-bit pixels within 1 level.
BF16_MIN_PSNR_DB = 55.0
BF16_MIN_WITHIN_1_LEVEL = 0.999


@pytest.fixture(scope="module")
def restorers() -> tuple[Restorer, Restorer]:
    if bundled_card() is None:
        pytest.skip("this build ships no bundled prior")
    fp32 = Restorer(ModelSource(), device="cpu", backend="torch", precision="fp32")
    bf16 = Restorer(ModelSource(), device="cpu", backend="torch", precision="bf16")
    return fp32, bf16


def gaussian(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


def smooth_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A natural-ish test image: bicubic upsampling of coarse noise, in [0, 1]."""
    coarse = torch.rand(1, 3, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize(("task", "size"), [("deblur", (32, 32)), ("inpaint", (48, 32))])
def test_bf16_restoration_is_within_its_tolerance_of_fp32(restorers: tuple[Restorer, Restorer], task: str, size: tuple[int, int]) -> None:
    fp32, bf16 = restorers
    assert bf16.path.precision == "bf16" and fp32.path.precision == "fp32"
    clean = smooth_image(*size, seed=3)
    if task == "deblur":
        operator = Deblur(gaussian(7, 1.5))
    else:
        operator = Inpaint((torch.rand(*size, generator=torch.Generator().manual_seed(4)) > 0.5).double())
    y = (operator.forward(clean.double()) + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(5),
                                                                 dtype=torch.float64)).float()  # fmt: skip
    config = fp32.config(task, steps=10)
    a = fp32.restore(y, operator, config, seed=0)
    b = bf16.restore(y, operator, config, seed=0)
    assert not torch.equal(a, b)  # the bf16 path really computed in bf16
    mse = float((a.double() - b.double()).pow(2).mean())
    assert 10 * np.log10(1.0 / mse) >= BF16_MIN_PSNR_DB
    levels = (a.clamp(0, 1) * 255).round() - (b.clamp(0, 1) * 255).round()
    assert float((levels.abs() <= 1).float().mean()) >= BF16_MIN_WITHIN_1_LEVEL
