"""The torch backend: `UNetDenoiser` in fp32, fp16 or bf16, optionally channels-last."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from ..denoiser import UNetDenoiser, load_unet
from diffpir_rt.errors import DiffPIRError

logger = logging.getLogger(__name__)

#: Compute dtypes by name; GroupNorm and softmax stay fp32 in all of them (engine/unet.py).
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise DiffPIRError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}") from None


class TorchDenoiser:
    """eps from the torch UNet, returned in x_t's dtype whatever the compute dtype.

    Args:
        denoiser: a loaded `UNetDenoiser`; cast to `dtype` and moved to its device.
        dtype: "fp32", "fp16" or "bf16" (weights and activations; norms/softmax fp32).
        channels_last: NHWC memory format for the convolutions (faster with cuDNN
            in fp16/bf16); results are unchanged up to summation order.
        source: where the weights came from, for `describe()`.
    """

    name = "torch"

    def __init__(
        self,
        denoiser: UNetDenoiser,
        dtype: str = "fp32",
        channels_last: bool = False,
        source: str | None = None,
    ) -> None:
        torch_dtype = parse_dtype(dtype)
        self.dtype = dtype
        self.channels_last = channels_last
        self.source = source
        self.denoiser = denoiser.to(dtype=torch_dtype).eval().requires_grad_(False)
        if channels_last:
            self.denoiser = self.denoiser.to(memory_format=torch.channels_last)
        self.size_multiple: int = denoiser.size_multiple
        self.device = next(denoiser.parameters()).device

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike[str] | None,
        arch: str | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "fp32",
        channels_last: bool = False,
    ) -> "TorchDenoiser":
        """Load `checkpoint` (None: the bundled prior) as a torch backend.

        Raises:
            DiffPIRError: bad dtype or checkpoint, no bundled prior, or --arch without a checkpoint.
        """
        torch_dtype = parse_dtype(dtype)
        if checkpoint is None:
            if arch is not None:
                raise DiffPIRError("--arch applies to --checkpoint; the bundled prior knows its own arch")
            from ..prior import bundled_card, load_bundled_prior

            denoiser = load_bundled_prior(device=device, dtype=torch_dtype)
            card = bundled_card()
            source = f"bundled:{card['weights']}" if card else "bundled"
        else:
            denoiser = load_unet(checkpoint, arch or "ffhq_10m", device=device, dtype=torch_dtype)
            source = str(checkpoint)
        return cls(denoiser, dtype=dtype, channels_last=channels_last, source=source)

    def __call__(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """eps for x_t. Differentiable with respect to x_t when autograd is enabled (DPS);
        the samplers run it under torch.no_grad otherwise, so no graph is kept."""
        x = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        # UNetModel casts x_t to its weights' dtype and eps back to x_t's dtype.
        eps = self.denoiser(x, t)
        return eps.contiguous()

    def eps_and_variance(self, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """(eps, v) from one UNet call: v, the learned-variance interpolation of a
        learn_sigma UNet (UNetDenoiser.eps_and_variance); differentiable like __call__."""
        x = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        eps, variance = self.denoiser.eps_and_variance(x, t)
        return eps.contiguous(), variance.contiguous()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": str(self.device),
            "precision": self.dtype,
            "channels_last": self.channels_last,
            "arch": self.denoiser.arch,
            "weights": self.source,
            "torch": torch.__version__,
        }
