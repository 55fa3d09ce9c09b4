"""guided-diffusion's UNetModel, re-implemented as one plain module (docs/algorithm.md §10).

Module and attribute names follow guided-diffusion (GD) `unet.py`, so its
checkpoints load with `strict=True` (tests/data/spec/unet-keys-*.tsv lists their keys).
Differences from GD, all invisible in the state dict:

* unconditional only (no `label_emb`), 2-D only;
* a plain module: no custom gradient-checkpoint autograd function, so
  `torch.onnx.export` and `torch.compile` see ordinary ops;
* the whole module may be cast to fp16/bf16; GroupNorm then still computes in
  float32 (GD `nn.py` GroupNorm32), softmax too;
* default PyTorch initialisation, not GD's zero-initialised output convs: weights
  come from checkpoints, and zero outputs would make tiny-model tests vacuous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffpir_rt.errors import DiffPIRError

from .archs import NORM_EPS, NORM_GROUPS, UNetConfig, resolve_arch


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [cos(t·f_k), sin(t·f_k)], f_k = max_period^(-k/half) (docs/algorithm.md §10).

    Cos first, raw integer t as float (no rescaling). Computed in float32 with
    GD's operation order, so results match bit for bit.

    Args:
        timesteps: (B,) integer timesteps.
        dim: embedding width (even).

    Returns:
        (B, dim) float32.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = timesteps[:, None].to(torch.float32) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back, so fp16/bf16 models keep fp32 statistics."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        if not torch.jit.is_tracing() and x.shape[1] // self.num_groups * x.shape[2:].numel() == 1:
            # One value per group (a 1x1 feature map): normalised it is exactly zero, as ONNX Runtime
            # computes it, but torch's group_norm refuses the shape; the affine part is then the bias.
            # (An exported graph's GroupNorm handles it itself, so the trace keeps the plain call.)
            zero = torch.zeros_like(x, dtype=torch.float32)
            return (zero if bias is None else zero + bias.view(1, -1, 1, 1)).to(x.dtype)
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(NORM_GROUPS, channels, eps=NORM_EPS)


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv (GD `Upsample`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # scale_factor (not a computed size) keeps H and W dynamic under ONNX export.
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Halve H and W: 2x2 average pool, or a stride-2 3x3 conv (GD `Downsample`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the time embedding, optionally resampling (docs/algorithm.md §10).

    Args:
        channels: input channels.
        emb_channels: time-embedding width (4·mc).
        dropout: dropout before the second conv.
        out_channels: output channels (default: channels); a 1x1 conv skip if different.
        use_scale_shift_norm: h = GN(h)·(1 + scale) + shift instead of h + emb.
        up, down: resample h and the skip path inside the block.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.updown = up or down

        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        if up:
            self.h_upd: nn.Module = Upsample(channels, use_conv=False)
            self.x_upd: nn.Module = Upsample(channels, use_conv=False)
        elif down:
            self.h_upd = Downsample(channels, use_conv=False)
            self.x_upd = Downsample(channels, use_conv=False)
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, channels, H, W), emb: (B, emb_channels) -> (B, out_channels, H', W')."""
        in_norm, in_act, in_conv = self.in_layers
        # Resample between the activation and the conv, as GD does.
        h = self.h_upd(in_act(in_norm(x)))
        x = self.x_upd(x)
        h = in_conv(h)

        emb_out = self.emb_layers(emb)[:, :, None, None]
        out_norm, out_act, out_dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = out_norm(h) * (1 + scale) + shift
        else:
            h = out_norm(h + emb_out)
        h = out_conv(out_dropout(out_act(h)))
        return self.skip_connection(x) + h


def legacy_qkv_attention(qkv: Tensor, num_heads: int, head_channels: int) -> Tensor:
    """GD's QKVAttentionLegacy: the 3C channels are grouped per head as [q_h, k_h, v_h].

    q and k are each scaled by c^(-1/4) (c = head_channels) before the product, so
    fp16 logits don't overflow; softmax runs in float32. Channel sizes are passed
    in, not read from qkv.shape, so tracing keeps them static and B, L dynamic.

    Args:
        qkv: (B, 3·C, L) with C = num_heads·head_channels.

    Returns:
        (B, C, L).
    """
    q, k, v = qkv.unflatten(1, (num_heads, 3 * head_channels)).split(head_channels, dim=2)  # (B, H, c, L)
    scale = 1 / math.sqrt(math.sqrt(head_channels))  # GD's expression, bit for bit
    weight = (q * scale).transpose(-1, -2) @ (k * scale)  # (B, H, L_query, L_key)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    out = v @ weight.transpose(-1, -2)  # (B, H, c, L_query)
    return out.flatten(1, 2)


def sdpa_qkv_attention(qkv: Tensor, num_heads: int, head_channels: int) -> Tensor:
    """`legacy_qkv_attention`'s math through F.scaled_dot_product_attention (fused kernels on GPU).

    Same channel grouping; SDPA's default scale 1/sqrt(c) equals GD's c^(-1/4) on q and
    on k, and its fused kernels keep the logits and softmax in float32. Only the
    rounding differs from the legacy path.

    q, k and v are handed over as contiguous (B, H, L, c) tensors: the fused kernels (flash,
    memory-efficient, cuDNN; the CPU flash kernel too) need the head dimension innermost
    (stride 1), and a transposed view of the (B, H, c, L) channels sends SDPA to its math
    fallback, which builds the L x L matrix. One copy of qkv makes all three.

    Args:
        qkv: (B, 3·C, L) with C = num_heads·head_channels.

    Returns:
        (B, C, L).
    """
    # (B, H, [q k v], c, L) -> (3, B, H, L, c), one contiguous copy; unbind gives contiguous views.
    # Channel sizes come in as arguments (as in the legacy path), so B and L stay dynamic in traces.
    q, k, v = qkv.unflatten(1, (num_heads, 3, head_channels)).permute(2, 0, 1, 4, 3).contiguous().unbind(0)
    out = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, c)
    return out.transpose(-1, -2).flatten(1, 2)  # (B, H, c, L) -> (B, C, L)


#: Attention implementations by name; "legacy" is the default everywhere.
ATTENTION_IMPLS = {"legacy": legacy_qkv_attention, "sdpa": sdpa_qkv_attention}


def set_attention_impl(module: nn.Module, impl: str) -> nn.Module:
    """Switch every AttentionBlock in `module` to `impl` ("legacy" or "sdpa"); returns module.

    A plain attribute, not a buffer: the state dict does not change.
    """
    if impl not in ATTENTION_IMPLS:
        raise DiffPIRError(f"attention impl: expected one of {sorted(ATTENTION_IMPLS)}, got {impl!r}")
    for block in module.modules():
        if isinstance(block, AttentionBlock):
            block.attention_impl = impl
    return module


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, residual (GD `AttentionBlock`, legacy order).

    Args:
        channels: C.
        num_heads: used when num_head_channels == -1.
        num_head_channels: channels per head; heads = C / num_head_channels.
    """

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1) -> None:
        super().__init__()
        self.channels = channels
        self.num_heads = num_heads if num_head_channels == -1 else channels // num_head_channels
        self.head_channels = channels // self.num_heads
        #: "legacy" (GD's explicit softmax) or "sdpa" (fused); see `set_attention_impl`.
        self.attention_impl = "legacy"
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        h = x.flatten(2)  # (B, C, L)
        qkv = self.qkv(self.norm(h))
        attention = sdpa_qkv_attention if self.attention_impl == "sdpa" else legacy_qkv_attention
        h = self.proj_out(attention(qkv, self.num_heads, self.head_channels))
        return x + h.reshape_as(x)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the time embedding to the ResBlocks among its children."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNetModel(nn.Module):
    """guided-diffusion's unconditional UNetModel (docs/algorithm.md §10), state-dict compatible.

    Build it with `build_unet`; `forward(x, timesteps)` returns the raw network
    output (eps and, with learn_sigma, the variance channels). Use
    `denoiser.UNetDenoiser` for the `(x_t, t) -> eps` contract.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        mc = config.model_channels
        emb_ch = 4 * mc
        res_kwargs = dict(
            emb_channels=emb_ch, dropout=config.dropout, use_scale_shift_norm=config.use_scale_shift_norm
        )

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads=config.num_heads, num_head_channels=config.num_head_channels)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        ch = mc * config.channel_mult[0]
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(config.in_channels, ch, 3, padding=1))]
        )
        skip_chans = [ch]  # channels of each input block's output, consumed by the decoder
        ds = 1
        last_level = len(config.channel_mult) - 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, out_channels=mc * mult, **res_kwargs)]
                ch = mc * mult
                if ds in config.attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_chans.append(ch)
            if level != last_level:
                down = (
                    ResBlock(ch, out_channels=ch, down=True, **res_kwargs)
                    if config.resblock_updown
                    else Downsample(ch, config.conv_resample)
                )
                self.input_blocks.append(TimestepEmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, **res_kwargs), attention(ch), ResBlock(ch, **res_kwargs)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_chans.pop(), out_channels=mc * mult, **res_kwargs)]
                ch = mc * mult
                if ds in config.attention_resolutions:
                    layers.append(attention(ch))
                if level and i == config.num_res_blocks:
                    up = (
                        ResBlock(ch, out_channels=ch, up=True, **res_kwargs)
                        if config.resblock_updown
                        else Upsample(ch, config.conv_resample)
                    )
                    layers.append(up)
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(), nn.Conv2d(ch, config.out_channels, 3, padding=1)
        )

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return self.config.size_multiple

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: that of the weights (GroupNorm and softmax still run in fp32)."""
        return self.time_embed[0].weight.dtype

    def forward(self, x: Tensor, timesteps: Tensor) -> Tensor:
        """Run the network.

        Args:
            x: (B, in_channels, H, W) in model range [-1, 1]; H, W multiples of
                `size_multiple`. Cast to the weights' dtype inside.
            timesteps: (B,) integer timesteps 0..T-1 (int64), used raw.

        Returns:
            (B, out_channels, H, W) in x's dtype: channels [:in_channels] are eps,
            the rest (learn_sigma) the variance interpolation v in [-1, 1].
        """
        dtype = self.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)  # current features first, skip second
        return self.out(h).to(x.dtype)


def build_unet(arch: str | UNetConfig) -> UNetModel:
    """A UNet for a preset name (see `ARCH_PRESETS`) or an explicit config.

    Weights get PyTorch's default init; build under `torch.device("meta")` to skip it.

    Raises:
        DiffPIRError: unknown preset name.
    """
    _, config = resolve_arch(arch)
    return UNetModel(config)
