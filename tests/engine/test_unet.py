"""UNetModel against guided-diffusion's key tables and brute-force references for its math."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from diffpir_rt.engine import ARCH_PRESETS, DiffPIRError, UNetConfig, UNetModel, build_unet
from diffpir_rt.engine.unet import GroupNorm32, legacy_qkv_attention, timestep_embedding

# preset -> (TSV from instantiating GD's UNetModel, parameters, state-dict tensors); docs/algorithm.md §10.
GD_TABLES = {
    "ffhq_10m": ("unet-keys-ffhq_10m.tsv", 93_563_910, 362),
    "imagenet256_uncond": ("unet-keys-256x256_diffusion_uncond.tsv", 552_814_086, 566),
}


def read_key_table(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """[(key, shape)] in file order from a `key<TAB>(d0, d1, ...)` table."""
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        dims = shape.strip().strip("()").split(",")
        rows.append((key, tuple(int(d) for d in dims if d.strip())))
    return rows


def tiny_unet(seed: int = 0, **overrides: object) -> UNetModel:
    """The tiny preset (optionally modified) with seeded random weights, in eval mode."""
    config = ARCH_PRESETS["tiny"]
    if overrides:
        config = UNetConfig(**{**config.as_dict(), **overrides})
    with torch.random.fork_rng():  # module init draws from the global RNG; don't leak the seed
        torch.manual_seed(seed)
        return UNetModel(config).eval()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class DtypeRecorder(TorchFunctionMode):
    """Records the input dtype of every group_norm and softmax call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, torch.dtype]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.group_norm, torch.softmax, torch.Tensor.softmax, F.softmax):
            self.calls.append((func.__name__, args[0].dtype))
        return func(*args, **(kwargs or {}))


# --- architecture vs guided-diffusion's state dict -------------------------------------------


@pytest.mark.parametrize("arch", sorted(GD_TABLES))
def test_preset_keys_and_shapes_match_guided_diffusion(arch: str, data_dir: Path) -> None:
    table, num_params, num_tensors = GD_TABLES[arch]
    expected = read_key_table(data_dir / "spec" / table)
    with torch.device("meta"):  # no memory, no init: 2.2 GB for imagenet otherwise
        unet = build_unet(arch)
    got = [(key, tuple(value.shape)) for key, value in unet.state_dict().items()]
    assert got == expected  # same keys, same shapes, same order
    assert len(got) == num_tensors
    assert sum(p.numel() for p in unet.parameters()) == num_params
    assert unet.size_multiple == 32


def test_resample_variants_use_guided_diffusion_keys() -> None:
    """resblock_updown=False builds GD's Downsample.op / Upsample.conv; no scale-shift halves emb."""
    unet = tiny_unet(resblock_updown=False, use_scale_shift_norm=False)
    keys = unet.state_dict()
    assert keys["input_blocks.2.0.op.weight"].shape == (32, 32, 3, 3)  # stride-2 conv
    # last block of level 1 (64 ch): ResBlock, AttentionBlock (ds 2), then Upsample's conv.
    assert keys["output_blocks.1.2.conv.weight"].shape == (64, 64, 3, 3)
    assert keys["input_blocks.1.0.emb_layers.1.weight"].shape == (32, 128)  # out_channels, not 2x
    x = randn(1, 3, 16, 16)
    assert unet(x, torch.tensor([7])).shape == (1, 6, 16, 16)


def test_size_multiple_is_one_halving_per_level() -> None:
    assert build_unet("tiny").size_multiple == 2
    assert ARCH_PRESETS["ffhq_10m"].size_multiple == 32


def test_config_round_trips_through_its_dict() -> None:
    for config in ARCH_PRESETS.values():
        assert UNetConfig(**config.as_dict()) == config
    assert ARCH_PRESETS["ffhq_10m"].out_channels == 6


# --- math vs independent references ---------------------------------------------------------


@pytest.mark.parametrize("dim", [32, 128])
def test_timestep_embedding_matches_numpy_formula(dim: int) -> None:
    """Spec §11.2: [cos(t f_k), sin(t f_k)], f_k = 10000^(-k/half), raw integer t."""
    t = np.array([0, 1, 17, 500, 999])
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / half)
    args = t[:, None].astype(np.float64) * freqs[None]
    expected = np.concatenate([np.cos(args), np.sin(args)], axis=1)

    got = timestep_embedding(torch.from_numpy(t), dim)

    assert got.dtype == torch.float32 and got.shape == (5, dim)
    # float32 arguments up to 999 carry ~1e-4 absolute phase error.
    np.testing.assert_allclose(got.numpy(), expected, atol=3e-4, rtol=0)
    np.testing.assert_array_equal(got[0].numpy(), np.r_[np.ones(half), np.zeros(half)])  # cos first


def brute_force_legacy_attention(qkv: np.ndarray, num_heads: int) -> np.ndarray:
    """Loops over batch, head, query: the 3C channels are [q_0, k_0, v_0, q_1, k_1, v_1, ...]."""
    batch, width, length = qkv.shape
    c = width // (3 * num_heads)
    out = np.zeros((batch, num_heads * c, length))
    for b in range(batch):
        for h in range(num_heads):
            q = qkv[b, 3 * c * h : 3 * c * h + c]
            k = qkv[b, 3 * c * h + c : 3 * c * h + 2 * c]
            v = qkv[b, 3 * c * h + 2 * c : 3 * c * (h + 1)]
            for query in range(length):
                logits = np.array([q[:, query] @ k[:, key] for key in range(length)]) / math.sqrt(c)
                weights = np.exp(logits - logits.max())
                weights /= weights.sum()
                out[b, c * h : c * (h + 1), query] = v @ weights
    return out


def test_legacy_attention_matches_brute_force(rng: np.random.Generator) -> None:
    num_heads, head_channels = 3, 4
    qkv = rng.standard_normal((2, 3 * num_heads * head_channels, 5))
    expected = brute_force_legacy_attention(qkv, num_heads)

    got = legacy_qkv_attention(torch.from_numpy(qkv), num_heads, head_channels)

    assert got.shape == (2, num_heads * head_channels, 5)
    # Softmax runs in float32 even for float64 input, as in GD.
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=1e-6)


def test_group_norm32_fp16_input_computes_in_fp32(rng: np.random.Generator) -> None:
    """Offset 300, spread 1: squares overflow fp16's 65504 range, fp32 statistics don't."""
    channels = 64
    norm = GroupNorm32(32, channels).to(torch.float16)
    with torch.no_grad():
        norm.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, channels)))
        norm.bias.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, channels)))
    x = torch.from_numpy(300 + rng.standard_normal((2, channels, 4, 4))).to(torch.float16)

    with DtypeRecorder() as recorder, torch.no_grad():
        y = norm(x)

    assert y.dtype == torch.float16
    assert recorder.calls == [("group_norm", torch.float32)]
    # float64 reference from the fp16-rounded input and parameters.
    xg = x.double().numpy().reshape(2, 32, -1)
    ref = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)
    weight, bias = (p.detach().double().numpy()[:, None, None] for p in (norm.weight, norm.bias))
    ref = ref.reshape(x.shape) * weight + bias
    np.testing.assert_allclose(y.double().numpy(), ref, atol=2e-3, rtol=2e-3)  # ~1 fp16 ulp


# --- forward behaviour ------------------------------------------------------------------------


def test_tiny_forward_shape_determinism_and_batch_independence() -> None:
    unet = tiny_unet()
    x = randn(2, 3, 16, 16)
    t = torch.tensor([3, 999])
    with torch.no_grad():
        out = unet(x, t)
        again = unet(x, t)
        singles = torch.cat([unet(x[i : i + 1], t[i : i + 1]) for i in range(2)])
        other_t = unet(x, torch.tensor([500, 500]))
        larger = unet(randn(1, 3, 24, 32, seed=1), torch.tensor([1]))

    assert out.shape == (2, 6, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, again)
    torch.testing.assert_close(singles, out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(other_t, out, atol=1e-3)  # the timestep is used
    assert larger.shape == (1, 6, 24, 32)  # any multiple of size_multiple


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.bfloat16, 0.05), (torch.float16, 0.02)])
def test_reduced_precision_module_keeps_norms_and_softmax_in_fp32(
    dtype: torch.dtype, tolerance: float
) -> None:
    """The whole module cast to bf16/fp16. Relative L2 error vs fp32 on tiny random weights
    measured 1.5% (bf16) and 0.6% (fp16); the tolerances leave ~3x margin."""
    unet = tiny_unet()
    x = randn(2, 3, 16, 16)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        reference = unet(x, t)
        unet = unet.to(dtype)
        with DtypeRecorder() as recorder:
            out = unet(x, t)

    assert out.dtype == torch.float32  # cast back to the input's dtype
    assert recorder.calls and {d for _, d in recorder.calls} == {torch.float32}
    assert {name for name, _ in recorder.calls} == {"group_norm", "softmax"}
    rel = (out - reference).norm() / reference.norm()
    assert rel < tolerance, f"{dtype}: relative L2 error {rel:.3g} vs fp32"


def test_dropout_sits_at_out_layers_index_2_and_is_inactive_in_eval() -> None:
    unet = tiny_unet(dropout=0.5)
    block = unet.input_blocks[1][0]
    assert isinstance(block.out_layers[2], torch.nn.Dropout)
    x, t = randn(1, 3, 16, 16), torch.tensor([5])
    with torch.no_grad():
        assert torch.equal(unet(x, t), unet(x, t))


# --- user errors ------------------------------------------------------------------------------


def test_unknown_arch_lists_known_ones() -> None:
    with pytest.raises(DiffPIRError, match="unknown UNet arch 'ffhq'.*'ffhq_10m'.*'imagenet256_uncond'"):
        build_unet("ffhq")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_resolutions": (4,)}, r"attention_resolutions: \[4\] are not downsample factors"),
        ({"model_channels": 40}, "multiples of 32 for GroupNorm32"),
        ({"num_head_channels": 24}, "not divisible by num_head_channels=24"),
        ({"channel_mult": ()}, "channel_mult: expected positive ints"),
        ({"image_size": 15}, "image_size: 15 is not a multiple of 2"),
        ({"dropout": 1.0}, "dropout: expected 0 <= dropout < 1"),
    ],
)
def test_invalid_config_raises(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(DiffPIRError, match=message):
        UNetConfig(**{**ARCH_PRESETS["tiny"].as_dict(), **overrides})


def test_group_norm_of_a_single_value_per_group_is_its_bias() -> None:
    """A 1x1 feature map with one channel per group: (x - mean) is exactly zero, so the output is
    the bias (what the definition gives and ONNX Runtime computes), not torch's shape refusal."""
    norm = GroupNorm32(32, 32)
    with torch.no_grad():
        norm.bias.copy_(torch.linspace(-1.0, 1.0, 32))
        norm.weight.fill_(3.0)
    x = torch.randn(2, 32, 1, 1)
    torch.testing.assert_close(norm(x), norm.bias.view(1, -1, 1, 1).expand(2, -1, -1, -1), rtol=0, atol=0)
    # Two values per group take the ordinary path: mean zero per group before the affine part.
    y = norm(torch.randn(1, 32, 1, 2)) - norm.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(y.sum(dim=(-2, -1)), torch.zeros(1, 32), rtol=0, atol=1e-5)
