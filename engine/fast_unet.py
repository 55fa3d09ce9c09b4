"""A reduced-precision copy of a UNetDenoiser for the fast path: fp16/bf16, channels_last, SDPA.

Only the UNet runs in reduced precision (design.md, precision policy): its output is cast
back to the input's dtype inside UNetModel.forward, so the data step and the DiffPIR step
stay fp32. GroupNorm and the attention softmax keep fp32 statistics either way.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch

from .denoiser import UNetDenoiser
from diffpir_rt.errors import DiffPIRError
from .unet import ATTENTION_IMPLS, set_attention_impl

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def prepare_unet(
    denoiser: UNetDenoiser,
    dtype: torch.dtype = torch.float16,
    *,
    device: Optional[torch.device | str] = None,
    channels_last: bool = True,
    attention: str = "sdpa",
    compile_mode: Optional[str] = None,
) -> UNetDenoiser:
    """A frozen copy of `denoiser` set up for speed; the original is left untouched.

    Args:
        denoiser: the fp32 reference denoiser.
        dtype: weights' compute dtype (fp16, bf16, or fp32).
        device: where the copy lives (default: the original's device).
        channels_last: NHWC conv weights, which tensor cores want.
        attention: "sdpa" (fused, the same math) or "legacy".
        compile_mode: None, or a torch.compile mode for the UNet (e.g. "default",
            "max-autotune-no-cudagraphs"; with our own CUDA graph, not "reduce-overhead").

    Raises:
        DiffPIRError: an unsupported dtype or attention name.
    """
    if dtype not in DTYPES.values():
        raise DiffPIRError(f"dtype: expected one of {list(DTYPES)}, got {dtype}")
    if attention not in ATTENTION_IMPLS:
        raise DiffPIRError(f"attention: expected one of {sorted(ATTENTION_IMPLS)}, got {attention!r}")
    fast = copy.deepcopy(denoiser)
    if device is not None:
        fast = fast.to(device)
    fast = fast.to(dtype=dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    set_attention_impl(fast, attention)
    fast = fast.eval().requires_grad_(False)
    if compile_mode is not None:
        # Compile the UNet, not the wrapper: UNetDenoiser keeps its checks and attributes.
        fast.unet = torch.compile(fast.unet, mode=compile_mode, dynamic=False)
    return fast
