"""The SDPA attention option is GD's legacy attention math; the default and state dict don't change."""

from __future__ import annotations

import pytest
import torch

from diffpir_rt.engine import DiffPIRError
from diffpir_rt.engine.archs import ARCH_PRESETS
from diffpir_rt.engine.unet import (
    AttentionBlock,
    UNetModel,
    legacy_qkv_attention,
    sdpa_qkv_attention,
    set_attention_impl,
)


def seeded_tiny() -> UNetModel:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return UNetModel(ARCH_PRESETS["tiny"]).eval()


@pytest.mark.parametrize("heads, head_channels, length", [(1, 8, 5), (4, 16, 64), (2, 64, 33)])
def test_sdpa_equals_legacy_attention(heads: int, head_channels: int, length: int) -> None:
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 3 * heads * head_channels, length, generator=g, dtype=torch.float64)
    expected = legacy_qkv_attention(qkv, heads, head_channels)
    got = sdpa_qkv_attention(qkv, heads, head_channels)
    # legacy rounds its softmax to float32 even for float64 inputs (GD's `.float()`)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # and in float32, the precision the model runs in on CPU
    torch.testing.assert_close(
        sdpa_qkv_attention(qkv.float(), heads, head_channels), expected.float(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("heads, head_channels, length", [(2, 32, 1024), (4, 16, 64)])
def test_sdpa_runs_the_fused_kernel(heads: int, head_channels: int, length: int) -> None:
    """q/k/v go in with the head dimension innermost: with only the (CPU) flash kernel allowed,
    a transposed view would fail with 'No available kernel' (it would fall back to the math path)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qkv = torch.randn(2, 3 * heads * head_channels, length, generator=torch.Generator().manual_seed(1))
    expected = legacy_qkv_attention(qkv, heads, head_channels)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        got = sdpa_qkv_attention(qkv, heads, head_channels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_unet_with_sdpa_matches_legacy_and_keeps_its_state_dict() -> None:
    model = seeded_tiny()
    assert all(b.attention_impl == "legacy" for b in model.modules() if isinstance(b, AttentionBlock))
    keys = list(model.state_dict())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    with torch.no_grad():
        legacy = model(x, t)
        set_attention_impl(model, "sdpa")
        fused = model(x, t)
    assert list(model.state_dict()) == keys
    assert sum(isinstance(b, AttentionBlock) and b.attention_impl == "sdpa" for b in model.modules()) >= 2
    torch.testing.assert_close(fused, legacy, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # channels_last weights and input: the same numbers
        model_cl = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model_cl(x.contiguous(memory_format=torch.channels_last), t), legacy,
                                   rtol=1e-5, atol=1e-5)  # fmt: skip


def test_unknown_attention_impl() -> None:
    with pytest.raises(DiffPIRError, match=r"attention impl: expected one of \['legacy', 'sdpa'\], got 'flash'"):
        set_attention_impl(seeded_tiny(), "flash")
