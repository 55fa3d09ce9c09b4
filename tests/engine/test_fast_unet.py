"""check_capturable: a model compiled to make its own CUDA graphs is refused before a capture (CPU only:
torch.compile is lazy, so nothing is compiled here)."""

from __future__ import annotations

import pytest
import torch

from diffpir_rt.engine.denoiser import UNetDenoiser
from diffpir_rt.engine.fast_unet import check_capturable, prepare_unet
from diffpir_rt.engine.unet import build_unet
from diffpir_rt.errors import DiffPIRError


@pytest.fixture(scope="module")
def tiny() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny")).eval().requires_grad_(False)


def _compiled_denoiser(tiny: UNetDenoiser, **compile_kwargs) -> UNetDenoiser:
    fast = prepare_unet(tiny, torch.float32, channels_last=False)
    fast.unet = torch.compile(fast.unet, **compile_kwargs)
    return fast


@pytest.mark.parametrize(
    "compile_kwargs, match",
    [
        ({"mode": "reduce-overhead"}, 'mode "reduce-overhead"'),
        ({"mode": "max-autotune"}, 'mode "reduce-overhead" or "max-autotune"'),
        ({"options": {"triton.cudagraphs": True}}, "triton.cudagraphs=True"),
        ({"backend": "cudagraphs"}, 'backend "cudagraphs"'),
    ],
)
def test_models_that_make_their_own_cuda_graphs_are_refused(tiny, compile_kwargs, match) -> None:
    model = _compiled_denoiser(tiny, **compile_kwargs)
    with pytest.raises(DiffPIRError, match=rf"^UNetDenoiser\.unet: compiled with torch\.compile .*{match}.*"
                                             r"fail inside the graph runtime's CUDA-graph capture"):  # fmt: skip
        check_capturable(model)
    # the compiled module alone, and as prepare_unet builds it
    with pytest.raises(DiffPIRError, match="^OptimizedModule: compiled with torch.compile"):
        check_capturable(model.unet)
    if "mode" in compile_kwargs:
        with pytest.raises(DiffPIRError, match="records its own CUDA graphs"):
            check_capturable(prepare_unet(tiny, torch.float32, compile_mode=compile_kwargs["mode"]))


def test_a_compiled_function_is_checked_too(tiny) -> None:
    with pytest.raises(DiffPIRError, match="compiled with torch.compile"):
        check_capturable(torch.compile(lambda x, t: tiny(x, t), mode="reduce-overhead"))
    check_capturable(torch.compile(lambda x, t: tiny(x, t), mode="default"))


@pytest.mark.parametrize("mode", [None, "default", "max-autotune-no-cudagraphs"])
def test_capturable_models_pass(tiny, mode) -> None:
    check_capturable(tiny)
    check_capturable(prepare_unet(tiny, torch.float32, channels_last=False))
    check_capturable(_compiled_denoiser(tiny, mode=mode))
    check_capturable(_compiled_denoiser(tiny, backend="eager"))
    check_capturable(lambda x, t: x)
