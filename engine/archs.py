"""The UNet's architectures: its constructor hyperparameters and the named presets.

Apart from the module (engine/unet.py) so that the command line can list and check
architectures without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from diffpir_rt.errors import DiffPIRError

#: GroupNorm32 settings (GD `nn.py` normalization).
NORM_GROUPS = 32
NORM_EPS = 1e-5


@dataclass(frozen=True)
class UNetConfig:
    """Constructor hyperparameters of a guided-diffusion UNet (docs/algorithm.md §10).

    Attributes:
        image_size: training resolution; informational (the network runs at any
            size that is a multiple of `size_multiple`).
        in_channels: image channels (3).
        model_channels: base width mc; time embedding width is 4·mc.
        num_res_blocks: ResBlocks per level in the encoder (decoder has one more).
        attention_resolutions: downsample factors ds (1, 2, 4, ...) whose levels
            get attention; GD's "16" at 256 px is ds 16.
        channel_mult: width multiplier per level; len - 1 downsamplings.
        num_heads: attention heads, used only when num_head_channels == -1.
        num_head_channels: channels per head (heads = C / this), or -1.
        use_scale_shift_norm: FiLM-style emb conditioning (scale, shift) instead of
            adding emb.
        resblock_updown: resample inside ResBlocks (True) or with Up/Downsample.
        conv_resample: Up/Downsample use convs; only read when not resblock_updown.
        dropout: dropout in ResBlocks; inactive in eval mode, kept so keys line up.
        learn_sigma: output 2·in_channels (eps, then variance interpolation v).
    """

    image_size: int
    model_channels: int
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    channel_mult: tuple[int, ...]
    in_channels: int = 3
    num_heads: int = 4
    num_head_channels: int = 64
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    dropout: float = 0.0
    learn_sigma: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        for name in ("image_size", "model_channels", "num_res_blocks", "in_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise DiffPIRError(f"UNetConfig.{name}: expected a positive int, got {value!r}")
        if not self.channel_mult or any(not isinstance(m, int) or m < 1 for m in self.channel_mult):
            raise DiffPIRError(f"UNetConfig.channel_mult: expected positive ints, got {self.channel_mult!r}")
        widths = [self.model_channels * m for m in self.channel_mult]
        if any(w % NORM_GROUPS for w in widths):
            raise DiffPIRError(
                f"UNetConfig: level widths {widths} (model_channels x channel_mult) must be "
                f"multiples of {NORM_GROUPS} for GroupNorm32"
            )
        levels = [2**level for level in range(len(self.channel_mult))]
        unused = sorted(set(self.attention_resolutions) - set(levels))
        if unused:
            # GD silently ignores these; a typo here would silently drop attention.
            raise DiffPIRError(
                f"UNetConfig.attention_resolutions: {unused} are not downsample factors of "
                f"any level; expected a subset of {levels}"
            )
        if self.num_head_channels != -1 and self.num_head_channels < 1:
            raise DiffPIRError(
                f"UNetConfig.num_head_channels: expected -1 or a positive int, got {self.num_head_channels!r}"
            )
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise DiffPIRError(f"UNetConfig.num_heads: expected a positive int, got {self.num_heads!r}")
        # The middle block always has attention, at the deepest width.
        attention_widths = {widths[i] for i, ds in enumerate(levels) if ds in self.attention_resolutions}
        for width in sorted(attention_widths | {widths[-1]}):
            divisor = self.num_head_channels if self.num_head_channels != -1 else self.num_heads
            if width % divisor:
                raise DiffPIRError(
                    f"UNetConfig: attention width {width} is not divisible by "
                    f"{'num_head_channels' if self.num_head_channels != -1 else 'num_heads'}={divisor}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise DiffPIRError(f"UNetConfig.dropout: expected 0 <= dropout < 1, got {self.dropout!r}")
        if self.image_size % self.size_multiple:
            raise DiffPIRError(
                f"UNetConfig.image_size: {self.image_size} is not a multiple of {self.size_multiple}"
            )

    @property
    def out_channels(self) -> int:
        """eps, then (learn_sigma) the variance interpolation v: 2·in_channels or in_channels."""
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per level)."""
        return 2 ** (len(self.channel_mult) - 1)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ARCH_PRESETS: dict[str, UNetConfig] = {
    # DiffPIR's FFHQ model, ffhq_10m.pt (docs/algorithm.md §10).
    "ffhq_10m": UNetConfig(
        image_size=256,
        model_channels=128,
        num_res_blocks=1,
        attention_resolutions=(16,),
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_heads=4,
        num_head_channels=64,
        dropout=0.1,
    ),
    # OpenAI's 256x256_diffusion_uncond.pt (docs/algorithm.md §10).
    "imagenet256_uncond": UNetConfig(
        image_size=256,
        model_channels=256,
        num_res_blocks=2,
        attention_resolutions=(32, 16, 8),
        channel_mult=(1, 1, 2, 2, 4, 4),
        num_heads=4,
        num_head_channels=64,
        dropout=0.1,
    ),
    # The bundled prior (engine/weights/, trained by training/train.py): 3.1 M params, 18 GFLOP
    # per 256x256 call. mc 32 is GroupNorm32's minimum width; parameter-free resampling
    # (resblock_updown=False, conv_resample=False, both guided-diffusion options) keeps the
    # full-resolution levels cheap (resampling ResBlocks would cost 2.5x); five levels and
    # attention at ds 8 and 16 give a wide receptive field for SR and inpainting.
    "compact_fast": UNetConfig(
        image_size=64,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(8, 16),
        channel_mult=(1, 1, 2, 2, 4),
        num_heads=4,
        num_head_channels=32,
        resblock_updown=False,
        conv_resample=False,
    ),
    # Test preset: every block type, a 16x16 forward in milliseconds on CPU.
    "tiny": UNetConfig(
        image_size=16,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(2,),
        channel_mult=(1, 2),
        num_heads=4,
        num_head_channels=16,
    ),
}


#: The arch of a checkpoint given without one: the official DiffPIR face model's.
DEFAULT_CHECKPOINT_ARCH = "ffhq_10m"


def resolve_arch(arch: str | UNetConfig) -> tuple[str | None, UNetConfig]:
    """(preset name or None, config) for a preset name or an explicit config."""
    if isinstance(arch, UNetConfig):
        return None, arch
    try:
        return arch, ARCH_PRESETS[arch]
    except (KeyError, TypeError):
        raise DiffPIRError(f"unknown UNet arch {arch!r}; expected one of {sorted(ARCH_PRESETS)}") from None
