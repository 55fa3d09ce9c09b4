"""The torch Denoiser: `(x_t, t) -> eps` from a guided-diffusion UNet (docs/algorithm.md §3, §11).

The only place that knows the UNet returns 2·C channels (eps, then the learned
variance, which DiffPIR never uses) and takes an int64 timestep. Checkpoints load
without pickle: safetensors, or `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import operator
import os
import pickle
import re
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from diffpir_rt.errors import DiffPIRError
from .archs import ARCH_PRESETS, DEFAULT_CHECKPOINT_ARCH, UNetConfig, resolve_arch
from .unet import UNetModel, build_unet

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)
#: Top-level keys under which training scripts nest the weights, tried in this order.
WRAPPER_KEYS = ("state_dict", "model", "ema")
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
#: How many missing / unexpected keys a mismatch message quotes.
KEYS_SHOWN = 5


def _is_tracing() -> bool:
    """True under torch.jit / ONNX / dynamo tracing, where Python-side checks would bake in shapes."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class UNetDenoiser(nn.Module):
    """eps = UNet(x_t, t)[:, :C]: the Denoiser contract over a guided-diffusion UNet.

    Attributes:
        unet: the wrapped `UNetModel`.
        arch: preset name, or None for a custom config.
        config: the UNet's `UNetConfig`.
        size_multiple: H and W of x_t must be multiples of this.
    """

    def __init__(self, unet: UNetModel, arch: str | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.arch = arch
        self.config: UNetConfig = unet.config
        self.size_multiple: int = unet.size_multiple

    def forward(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """Predict the noise in x_t.

        Args:
            x_t: (B, C, H, W) noisy image in model range [-1, 1].
            t: integer timestep(s) 0..T-1: an int64 (B,) tensor, or a python int
                or 0-d / (1,) tensor shared by the batch.

        Returns:
            eps: (B, C, H, W), in x_t's dtype.

        Raises:
            DiffPIRError: wrong x_t shape, or t not integer / not broadcastable.
        """
        return self.unet(x_t, self._timesteps(x_t, t))[:, : self.config.in_channels]

    def _timesteps(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """t as the UNet's int64 (B,) input, after checking x_t and t (skipped while tracing)."""
        if not isinstance(t, Tensor):
            try:
                t = torch.tensor(operator.index(t), dtype=torch.int64, device=x_t.device)
            except TypeError:
                raise DiffPIRError(f"t: expected an integer timestep, got {t!r}") from None
        if not _is_tracing():
            self._check_inputs(x_t, t)
        # Reshape + Expand: a no-op for (B,), a broadcast for one shared t; ONNX-friendly.
        return t.to(device=x_t.device, dtype=torch.int64).reshape(-1).expand(x_t.shape[0])

    def eps_and_variance(self, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """eps and the learned-variance interpolation v from one UNet call (learn_sigma UNets).

        v is the output's second half, in [-1, 1] for a trained model: the sampler's
        log-variance is frac * log(beta_t) + (1 - frac) * log(posterior variance_t) with
        frac = (v + 1) / 2 (guided-diffusion's "learned_range").

        Args:
            x_t, t: as in `forward`.

        Returns:
            (eps, v), each (B, C, H, W) in x_t's dtype.

        Raises:
            DiffPIRError: a UNet built without learn_sigma (it predicts eps only), or
                bad inputs as in `forward`.
        """
        if not self.config.learn_sigma:
            raise DiffPIRError(
                "eps_and_variance: this UNet was built without learn_sigma and predicts eps only; "
                "use a fixed variance ('fixed_small' or 'fixed_large')"
            )
        out = self.unet(x_t, self._timesteps(x_t, t))
        channels = self.config.in_channels
        return out[:, :channels], out[:, channels : 2 * channels]

    def _check_inputs(self, x_t: Tensor, t: Tensor) -> None:
        channels, multiple = self.config.in_channels, self.size_multiple
        if x_t.ndim != 4 or x_t.shape[1] != channels:
            raise DiffPIRError(f"x_t: expected shape (B, {channels}, H, W), got {tuple(x_t.shape)}")
        if x_t.shape[2] % multiple or x_t.shape[3] % multiple:
            raise DiffPIRError(
                f"x_t: H and W must be multiples of {multiple} for this UNet, got {tuple(x_t.shape[2:])}"
            )
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise DiffPIRError(f"t: expected an integer timestep tensor, got dtype {t.dtype}")
        if t.numel() not in (1, x_t.shape[0]) or t.ndim > 1:
            raise DiffPIRError(
                f"t: expected shape ({x_t.shape[0]},) or a single timestep, got {tuple(t.shape)}"
            )


def _unpickling_problem(exc: Exception, zipped: bool, pickled: bool = False) -> str:
    """One true line out of torch.load's multi-paragraph errors (no opcode numbers, no internals)."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return (
            f"holds pickled Python objects ({found.group(1)[:60]}), which are never loaded; "
            "re-save it as a plain state_dict or as .safetensors"
        )
    if zipped:
        return "is a corrupt or truncated PyTorch checkpoint (a damaged zip archive)"
    if pickled:
        return "is a pickle, but not of a plain state_dict that loads safely; it was not loaded (re-save it as .safetensors)"
    return "is not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from .safetensors or a torch file, without executing pickled code.

    A top-level {'state_dict' | 'model' | 'ema': {...}} wrapper is unwrapped and a
    DataParallel 'module.' prefix stripped. Tensors keep their stored dtype, on CPU.

    Raises:
        DiffPIRError: missing, unreadable or non-tensor file, or unsupported suffix.
    """
    from .paths import check_input_file, shown

    if not isinstance(path, (str, os.PathLike)):
        raise DiffPIRError(f"checkpoint: expected a file path, got {type(path).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise DiffPIRError(
            f"checkpoint {shown(path)}: unsupported suffix {suffix!r}; expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    check_input_file(path, "checkpoint")  # a folder, FIFO or device says so, and is never opened
    label = shown(path)

    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path), device="cpu")
        except Exception as exc:  # a parser fed arbitrary bytes can fail in many ways
            detail = _first_line(exc).removeprefix("Error while deserializing header: ")
            if not re.search(r"[A-Za-z]{3}", detail):  # a bare number or code says nothing to a user
                detail = "corrupt header"
            raise DiffPIRError(f"checkpoint {label}: is not a readable safetensors file ({detail[:80]})") from None
    else:
        with open(path, "rb") as f:
            head = f.read(4)
        zipped, pickled = head == b"PK\x03\x04", head[:1] == b"\x80"  # zip (torch.save), PROTO opcode
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols before it fails
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise DiffPIRError(f"checkpoint {label}: {_unpickling_problem(exc, zipped, pickled)}") from None
        except MemoryError:
            raise DiffPIRError(f"checkpoint {label}: too large to load in the memory available") from None
        except Exception as exc:  # zip, pickle-opcode and I/O errors of arbitrary bytes
            raise DiffPIRError(f"checkpoint {label}: {_unpickling_problem(exc, zipped, pickled)}") from None

    for key in WRAPPER_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise DiffPIRError(f"checkpoint {label}: expected a dict of tensors, got {type(obj).__name__}")
    if not obj:
        raise DiffPIRError(f"checkpoint {label}: holds no tensors")
    state_dict: dict[str, Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise DiffPIRError(f"checkpoint {label}: a key is a {type(key).__name__}, not a name; expected a plain state_dict")
        if not isinstance(value, Tensor):
            raise DiffPIRError(
                f"checkpoint {label}: entry {key[:60]!r} is a {type(value).__name__}, not a tensor; "
                "expected a plain state_dict"
            )
        state_dict[key.removeprefix("module.")] = value
    not_float = [(k, v.dtype) for k, v in state_dict.items() if not v.is_floating_point()]
    if not_float:
        key, dtype = not_float[0]
        raise DiffPIRError(
            f"checkpoint {label}: {len(not_float)} of {len(state_dict)} tensors are not floating point "
            f"(e.g. {key[:60]!r}: {str(dtype).removeprefix('torch.')}); expected float weights"
        )
    return state_dict


@lru_cache(maxsize=None)
def _expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a UNet built from config, on the meta device (no memory, no init)."""
    with torch.device("meta"):
        unet = UNetModel(config)
    return {key: tuple(value.shape) for key, value in unet.state_dict().items()}


def _mismatch_message(
    path: Path, arch_label: str, expected: dict[str, tuple[int, ...]], state_dict: dict[str, Tensor]
) -> str | None:
    """One-line description of how state_dict differs from expected, or None if it fits."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if not (missing or unexpected or wrong_shape):
        return None
    # One short line whatever the checkpoint: counts, one example, and the arch that fits.
    counts = ", ".join(
        f"{what}: {len(keys)}"
        for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if keys
    )
    from .paths import shown

    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    matches = [name for name, config in ARCH_PRESETS.items() if _expected_shapes(config) == shapes]
    if matches:
        return f"checkpoint {shown(path)} does not fit arch {arch_label} ({counts}); it matches arch {matches[0]!r}: use --arch {matches[0]}"
    if wrong_shape:
        key = wrong_shape[0]
        example = f"{key[:40]!r} is {tuple(state_dict[key].shape)}, expected {expected[key]}"
    else:
        example = f"e.g. {(missing or unexpected)[0][:40]!r}"
    return f"checkpoint {shown(path)} does not fit arch {arch_label} ({counts}; {example}); it matches no known arch"


def load_unet(
    path: str | os.PathLike[str],
    arch: str | UNetConfig = DEFAULT_CHECKPOINT_ARCH,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UNetDenoiser:
    """Load a guided-diffusion checkpoint into a frozen `UNetDenoiser` (eval, no grad).

    Keys must match the arch exactly (strict); stored fp16/fp32 tensors are cast
    to `dtype`. The module is built on the meta device and takes the loaded
    tensors, so no time or memory goes to a random init.

    Args:
        path: .safetensors, or .pt/.pth/.ckpt/.bin read with weights_only=True.
        arch: a name in `ARCH_PRESETS` or an explicit `UNetConfig`.
        device: where the module lives.
        dtype: compute dtype of the weights (GroupNorm and softmax stay fp32).

    Raises:
        DiffPIRError: unknown arch, unsupported dtype, unreadable file, or a
            checkpoint whose keys or shapes don't fit the arch.
    """
    name, config = resolve_arch(arch)  # checked before reading anything heavy
    if dtype not in SUPPORTED_DTYPES:
        raise DiffPIRError(f"dtype: expected one of {[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")
    if not isinstance(path, (str, os.PathLike)):
        raise DiffPIRError(f"checkpoint: expected a file path, got {type(path).__name__}")
    path = Path(path)
    state_dict = load_state_dict_file(path)
    arch_label = repr(name) if name is not None else "(custom UNetConfig)"
    message = _mismatch_message(path, arch_label, _expected_shapes(config), state_dict)
    if message is not None:
        raise DiffPIRError(message)
    broken = [k for k, v in state_dict.items() if not bool(torch.isfinite(v).all())]
    if broken:  # refused here, not found later as a NaN image (or a failed export parity check)
        from .paths import shown

        raise DiffPIRError(
            f"checkpoint {shown(path)}: {len(broken)} tensor(s) hold NaN or Inf (e.g. {broken[0][:60]!r}); the weights are broken"
        )

    with torch.device("meta"):
        unet = build_unet(config)
    unet.load_state_dict(state_dict, strict=True, assign=True)
    unet = unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    logger.info("loaded UNet %s from %s (%s, %s)", arch_label, path, device, dtype)
    return UNetDenoiser(unet, arch=name).eval().requires_grad_(False)
