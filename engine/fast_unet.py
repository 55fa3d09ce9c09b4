"""A reduced-precision copy of a UNetDenoiser for the fast path: fp16/bf16, channels_last, SDPA.

Only the UNet runs in reduced precision (docs/runtime.md, "Precision"): its output is cast
back to the input's dtype inside UNetModel.forward, so the data step and the DiffPIR step
stay fp32. GroupNorm and the attention softmax keep fp32 statistics either way.
"""

from __future__ import annotations

import copy as copy_module
from typing import Any, Optional

import torch
from torch import nn

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
    copy: bool = True,
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
        copy: work on a copy (default); False converts `denoiser` itself, for a caller
            that has no further use for the fp32 original (saves its memory).

    Raises:
        DiffPIRError: an unsupported dtype or attention name.
    """
    if dtype not in DTYPES.values():
        raise DiffPIRError(f"dtype: expected one of {list(DTYPES)}, got {dtype}")
    if attention not in ATTENTION_IMPLS:
        raise DiffPIRError(f"attention: expected one of {sorted(ATTENTION_IMPLS)}, got {attention!r}")
    fast = copy_module.deepcopy(denoiser) if copy else denoiser
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


#: torch.compile settings that make the compiled code record and replay its own CUDA graphs.
_CUDAGRAPH_HINT = 'mode "reduce-overhead" or "max-autotune" (inductor option triton.cudagraphs=True)'


def check_capturable(model: Any) -> None:
    """Raise DiffPIRError if `model` holds torch.compile'd code that makes its own CUDA graphs.

    torch.compile with mode "reduce-overhead" or "max-autotune" (inductor's
    triton.cudagraphs), or with backend "cudagraphs", records CUDA graphs (cudagraph
    trees) on its first calls; inside the graph runtime's manual capture that fails. Modes
    "default" and "max-autotune-no-cudagraphs" are fine. The graph runtime calls this before
    it captures.

    Looks at `model` itself, its `unet` / `model` / `denoiser` / `inner` (a TiledDenoiser's) attributes, and every
    submodule of those that are nn.Modules (a compiled UNet inside a UNetDenoiser is
    found). A compiled module (torch._dynamo OptimizedModule) carries its compile context;
    a compiled function carries it in its closure. Settings that cannot be read (another
    torch version) are not reported.
    """
    for where, compiled in _compiled_parts(model):
        reason = _cudagraph_setting(_dynamo_context(compiled))
        if reason is not None:
            raise DiffPIRError(
                f"{where}: compiled with torch.compile {reason}, which records its own CUDA graphs; "
                "they fail inside the graph runtime's CUDA-graph capture. Compile with mode \"default\" "
                "or \"max-autotune-no-cudagraphs\", or restore without the graph runtime"
            )


def _compiled_parts(model: Any) -> list[tuple[str, Any]]:
    """(name, object) for each torch.compile'd module or function reachable from `model`."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def visit(obj: Any, name: str) -> None:
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        if _is_compiled(obj):
            found.append((name, obj))
        if isinstance(obj, nn.Module):
            for sub_name, sub in obj.named_modules():
                if sub is not obj and id(sub) not in seen:
                    seen.add(id(sub))
                    if _is_compiled(sub):
                        found.append((f"{name}.{sub_name}", sub))
        for attr in ("unet", "model", "denoiser", "inner"):
            try:
                child = getattr(obj, attr, None)
            except Exception:  # an odd property must not break the check
                child = None
            if child is not None and not isinstance(child, (str, bytes, int, float)):
                visit(child, f"{name}.{attr}")

    visit(model, type(model).__name__)
    return found


def _is_compiled(obj: Any) -> bool:
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        return False
    return isinstance(obj, OptimizedModule) or (callable(obj) and hasattr(obj, "_torchdynamo_orig_callable"))


def _dynamo_context(compiled: Any) -> Any:
    """The torch._dynamo context of a compiled module (.dynamo_ctx) or function (in its closure)."""
    context = getattr(compiled, "dynamo_ctx", None)
    if context is not None:
        return context
    for cell in getattr(compiled, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if hasattr(value, "callback") and hasattr(value, "compiler_config"):
            return value
    return None


def _cudagraph_setting(context: Any) -> Optional[str]:
    """What in a dynamo context makes CUDA graphs, or None."""
    if context is None:
        return None
    config = getattr(context, "compiler_config", None)  # inductor's whole config, mode applied
    if isinstance(config, dict) and config.get("triton.cudagraphs"):
        return _CUDAGRAPH_HINT
    backend = getattr(context, "callback", None)  # the wrapped backend chain, down to the compiler
    for _ in range(8):
        if backend is None:
            break
        name = getattr(backend, "compiler_name", None) or getattr(backend, "_compiler_name", None)
        if name == "cudagraphs":
            return 'backend "cudagraphs"'
        options = getattr(backend, "config", None)
        if isinstance(options, dict) and options.get("triton.cudagraphs"):
            return _CUDAGRAPH_HINT
        backend = getattr(backend, "_torchdynamo_orig_backend", None) or getattr(
            backend, "_torchdynamo_orig_callable", None
        )
    return None
