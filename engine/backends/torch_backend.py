"""The torch backend: a UNetDenoiser prepared by `fast_unet.prepare_unet`, with a description.

One precision preparation for every entry point: `diffpir restore --dtype X`, the runtime's
fast paths and `diffpir bench` all build their torch model here, so what the benchmark
measures is what a user runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

from .base import Backend

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

    from ..denoiser import UNetDenoiser

torch = lazy_module("torch")


def parse_dtype(dtype: str) -> torch.dtype:
    from ..fast_unet import DTYPES  # the UNet's modules load with the model, not with the declaration

    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise DiffPIRError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}") from None


class TorchDenoiser:
    """eps from the torch UNet, returned in x_t's dtype whatever the compute dtype.

    Args:
        denoiser: a loaded fp32 `UNetDenoiser`; converted in place (no copy is kept).
        dtype: "fp32", "fp16" or "bf16" (weights and activations; norms/softmax fp32).
        channels_last: NHWC convolutions (faster on CPUs and with cuDNN); results equal
            up to summation order.
        attention: "legacy" (the reference's einsum) or "sdpa" (fused, same math).
        source: where the weights came from, for `describe()`.
    """

    name = "torch"

    def __init__(
        self,
        denoiser: UNetDenoiser,
        dtype: str = "fp32",
        channels_last: bool = False,
        attention: str = "legacy",
        source: Optional[str] = None,
    ) -> None:
        self.dtype = dtype
        self.channels_last = channels_last
        self.attention = attention
        self.source = source
        from ..fast_unet import prepare_unet

        self.denoiser = prepare_unet(denoiser, parse_dtype(dtype), channels_last=channels_last, attention=attention, copy=False)
        self.size_multiple: int = denoiser.size_multiple
        self.device = next(self.denoiser.parameters()).device

    def __call__(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """eps for x_t. Differentiable with respect to x_t when autograd is enabled (DPS);
        the samplers run it under torch.no_grad otherwise, so no graph is kept."""
        x = x_t.contiguous(memory_format=torch.channels_last) if self.channels_last else x_t
        # UNetModel casts x_t to its weights' dtype and eps back to x_t's dtype.
        return self.denoiser(x, t).contiguous()

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
            "attention": self.attention,
            "arch": self.denoiser.arch,
            "weights": self.source,
            "torch": torch.__version__,
        }


def load(source: Any, device: Any = "cpu", precision: str = "fp32", threads: Optional[int] = None,
         channels_last: bool = False, attention: str = "legacy", **_: Any) -> TorchDenoiser:  # fmt: skip
    """The torch UNet of a bundled, checkpoint or random source, prepared in `precision`."""
    return TorchDenoiser(source.load_torch(device=device), dtype=precision, channels_last=channels_last,
                         attention=attention, source=source.label())  # fmt: skip


BACKEND = Backend(
    name="torch",
    description="the PyTorch UNet (fp32 reference; channels-last and fused attention on the fast paths)",
    file_kind="checkpoint",
    file_flag="--checkpoint",
    file_help="guided-diffusion UNet weights (.pt/.safetensors); default: the bundled prior",
    runs_kinds=("bundled", "checkpoint", "random"),
    devices=("cpu", "cuda"),
    precisions=("fp32", "fp16", "bf16"),
    tolerance="fp32: 1e-4 on the restored image (channels-last + SDPA vs the plain UNet); bf16/fp16: see docs/runtime.md",
    load=load,
    auto_rank={"cuda": 0, "cpu": 1},
    path_name="torch-fast",
    gives_variance=True,
    gives_gradients=True,
    graph_capture=True,
)
