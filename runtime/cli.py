"""`diffpir`: restore and degrade images from the command line.

Each handler is thin: parse -> check every argument (before loading anything
heavy) -> public API -> write atomically. User errors (DiffPIRError) print one line
on stderr and exit with code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from diffpir_rt.engine.backends import BACKENDS, check_backend_arguments
from diffpir_rt.engine import argtypes
from diffpir_rt.engine.device import resolve_device
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.engine.tasks import TASKS, defaults_for

logger = logging.getLogger(__name__)

EXAMPLES_RESTORE = """examples:
  diffpir restore --task deblur --input blurry.png --kernel kernel.npy --output restored.png
  diffpir restore --task sr --scale 4 --input small.png --output large.png --steps 20
  diffpir restore --task inpaint --input holes.png --mask mask.png --output filled.png
  diffpir restore --task denoise --sigma-n 0.1 --input noisy.png --output clean.png \\
      --checkpoint ffhq_10m.pt --arch ffhq_10m --device cuda
  diffpir restore --task deblur --input blurry.png --kernel kernel.npy --output restored.png \\
      --backend onnxruntime --onnx unet.onnx     # from `diffpir export onnx --dynamic-size`
"""
EXAMPLES_DEGRADE = """examples:
  diffpir degrade --task deblur --kernel gaussian --index 0 --input clean.png --output y.png --save-kernel k.npy
  diffpir degrade --task sr --scale 4 --input clean.png --output y.npy
  diffpir degrade --task inpaint --mask random --input clean.png --output y.png --save-mask mask.png
"""


# ----------------------------------------------------------------------------- argument types


_positive_float = argtypes.positive_float
_unit_float = argtypes.unit_float
_steps = argtypes.num_steps
_timestep = argtypes.timestep


# ----------------------------------------------------------------------------- shared helpers


def read_measurement(path: Path) -> torch.Tensor:
    """A [0, 1] (C, H, W) measurement: an image file, or .npy (C, H, W) float kept unclipped."""
    from diffpir_rt.engine.imageio import check_finite, read_image

    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DiffPIRError(f"input {path}: cannot read .npy ({e})") from e
        if array.ndim == 2:
            array = np.repeat(array[None], 3, axis=0)
        if array.ndim != 3 or array.shape[0] not in (1, 3):
            raise DiffPIRError(f"input {path}: expected a (C, H, W) array with C in {{1, 3}}, got shape {array.shape}")
        if array.shape[0] == 1:
            array = np.repeat(array, 3, axis=0)
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    else:
        x = read_image(path)
    check_finite(x, f"input {path}")
    return x


def write_output(path: Path, x: torch.Tensor, bit_depth: int, protect: Sequence[Path]) -> None:
    """Write an image, or a float32 .npy (unclipped, for exact measurements), atomically."""
    from diffpir_rt.engine.imageio import write_image, write_npy

    if path.suffix.lower() == ".npy":
        write_npy(path, x, protect=protect)
    else:
        write_image(path, x, bit_depth=bit_depth, protect=protect)


def _check_output_path(output: Path, inputs: Sequence[Optional[Path]]) -> None:
    from diffpir_rt.engine.imageio import WRITE_FORMATS

    suffix = output.suffix.lower()
    if suffix not in (*WRITE_FORMATS, ".npy"):
        raise DiffPIRError(f"--output {output}: unsupported suffix {suffix!r}; expected one of {', '.join((*WRITE_FORMATS, '.npy'))}")
    for p in inputs:
        if p is not None and p.resolve() == output.resolve():
            raise DiffPIRError(f"--output {output}: is the input {p}; refusing to overwrite an input")


def _progress(total: int, enabled: bool, desc: str) -> tuple[Callable[[dict[str, Any]], None], Callable[[], None]]:
    """A tqdm progress bar over steps, as a sampler callback, plus its close function."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False, file=sys.stderr)
    return (lambda info: bar.update(1)), bar.close


# ----------------------------------------------------------------------------- restore


def add_restore_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore a degraded image with DiffPIR",
        description="Restore a measurement y = H(x) + n with DiffPIR (Zhu et al. 2023). "
        "Unset --lam/--zeta/--steps/--sigma-n take the task's defaults (the bundled prior's tuned "
        "values, or the official ones with --checkpoint).",
        epilog=EXAMPLES_RESTORE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=TASKS, help="degradation to invert")
    p.add_argument("--input", required=True, type=Path, help="measurement y: PNG/JPEG/TIFF (8/16-bit) or .npy (C,H,W) in [0,1]")
    p.add_argument("--output", required=True, type=Path, help="restored image: .png/.jpg/.tif or .npy")
    p.add_argument("--kernel", type=Path, help="blur kernel (.npy, .png, .mat); deblur: required, sr: default bicubic")
    p.add_argument("--kernel-index", type=int, default=None, help="which kernel of a .mat cell array (default 0)")
    p.add_argument("--mask", type=Path, help="inpainting mask image, nonzero = observed (required for inpaint)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=4, help="SR factor (default: 4)")
    p.add_argument("--sigma-n", type=_unit_float, help="measurement noise std in [0,1] units (0.05 = 12.75/255)")
    p.add_argument("--lam", type=_positive_float, help="lambda: data-term weight")
    p.add_argument("--zeta", type=_unit_float, help="zeta in [0,1]: fresh-noise share of each step")
    p.add_argument("--steps", type=_steps, help="number of timesteps N (N-1 UNet calls with 'quad')")
    p.add_argument("--skip", choices=("quad", "uniform"), default="quad", help="step spacing (default: quad)")
    p.add_argument("--t-start", type=_timestep, default=999, help="start timestep (default: 999)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--checkpoint", type=Path, help="UNet weights (.pt/.safetensors); default: the bundled prior")
    p.add_argument("--arch", default=None, help="UNet architecture of --checkpoint (default: ffhq_10m)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--backend", choices=BACKENDS, default="torch",
                   help="what runs the UNet: torch (--checkpoint or the bundled prior), onnxruntime (--onnx), "
                   "tensorrt (--engine) (default: torch)")
    p.add_argument("--onnx", type=Path, help="ONNX graph from `diffpir export onnx` (--backend onnxruntime)")
    p.add_argument("--engine", type=Path, help="TensorRT plan from `diffpir export trt` (--backend tensorrt)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32",
                   help="torch backend compute dtype; norms and softmax stay fp32 (default: fp32)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: physical cores)")
    p.add_argument("--channels-last", action="store_true",
                   help="torch backend: NHWC convolutions (faster on CPU and with cuDNN; same math, "
                   "rounding-level differences from the fp32 reference)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="output bit depth (default: 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_restore)


def _load_kernel_arg(path: Path, index: Optional[int]) -> np.ndarray:
    from diffpir_rt.engine.degrade import load_kernel

    return load_kernel(path, index)


def build_operator(task: str, kernel: Optional[Path], kernel_index: Optional[int], mask: Optional[Path], scale: int):
    """The operator for a CLI task, from files (checked, small)."""
    from diffpir_rt.engine.imageio import read_mask
    from diffpir_rt.engine.operators import Deblur, Denoise, Inpaint, SuperResolution

    if task == "deblur":
        if kernel is None:
            raise DiffPIRError("--task deblur needs --kernel (a .npy, .png or .mat blur kernel)")
        return Deblur(_load_kernel_arg(kernel, kernel_index))
    if task == "sr":
        return SuperResolution(scale, None if kernel is None else _load_kernel_arg(kernel, kernel_index))
    if task == "inpaint":
        if mask is None:
            raise DiffPIRError("--task inpaint needs --mask (an image, nonzero = observed)")
        return Inpaint(read_mask(mask)[0])
    return Denoise()


def _load_model(args: argparse.Namespace, device: torch.device):
    from diffpir_rt.engine.backends import make_denoiser

    return make_denoiser(
        args.backend,
        checkpoint=args.checkpoint,
        arch=args.arch,
        onnx=args.onnx,
        engine=args.engine,
        device=device,
        dtype=args.dtype,
        threads=args.threads,
        channels_last=args.channels_last,
    )


def _artifact_card(args: argparse.Namespace) -> Optional[dict[str, Any]]:
    """The bundled prior's card if the --onnx/--engine artifact was exported from it (its sidecar says)."""
    from diffpir_rt.engine.prior import bundled_card

    card = bundled_card()
    artifact = args.engine if args.backend == "tensorrt" else args.onnx
    sidecar = artifact.with_name(artifact.name + ".json") if artifact is not None else None
    if card is None or sidecar is None or not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    sha = (record.get("onnx_metadata") or record.get("metadata") or {}).get("checkpoint_sha256")
    return card if sha == card.get("sha256") else None


def _checkpoint_label(args: argparse.Namespace, card: Optional[dict[str, Any]]) -> str:
    if args.checkpoint is not None:
        return str(args.checkpoint)
    if args.backend == "torch":
        return f"bundled:{card['weights']}" if card else "bundled"
    return f"{args.backend}:{args.onnx if args.backend == 'onnxruntime' else args.engine}"


def run_restore(args: argparse.Namespace) -> int:
    from diffpir_rt.engine.prior import bundled_card
    from diffpir_rt.engine.sampler import DiffPIRConfig, sample

    # 1. Check everything cheap first: paths, task options, hyperparameters, device.
    for flag in ("input", "kernel", "mask", "checkpoint", "onnx", "engine"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise DiffPIRError(f"--{flag} {path}: no such file")
    _check_output_path(args.output, [args.input, args.kernel, args.mask, args.checkpoint, args.onnx, args.engine])
    check_backend_arguments(
        args.backend, checkpoint=args.checkpoint, arch=args.arch, onnx=args.onnx, engine=args.engine,
        dtype=args.dtype, threads=args.threads, channels_last=args.channels_last,
    )
    if args.arch is not None and args.checkpoint is None:
        raise DiffPIRError("--arch applies to --checkpoint; the bundled prior knows its own arch")
    if args.arch is not None:
        from diffpir_rt.engine.unet import resolve_arch

        resolve_arch(args.arch)
    if args.backend == "torch":
        card = bundled_card() if args.checkpoint is None else None
        if args.checkpoint is None and card is None:
            from diffpir_rt.engine.prior import bundled_weights_path

            bundled_weights_path()  # raises the "no checkpoint" message
    else:
        card = _artifact_card(args)
    defaults = defaults_for(args.task, card.get("task_defaults") if card else None)
    config = DiffPIRConfig(
        lam=args.lam if args.lam is not None else defaults.lam,
        zeta=args.zeta if args.zeta is not None else defaults.zeta,
        sigma_n=args.sigma_n if args.sigma_n is not None else defaults.sigma_n,
        steps=args.steps if args.steps is not None else defaults.steps,
        skip=args.skip,
        t_start=args.t_start,
    )
    device = resolve_device(args.device)
    y = read_measurement(args.input)
    operator = build_operator(args.task, args.kernel, args.kernel_index, args.mask, args.scale)
    operator.data_step(y[None])  # size checks (kernel vs image, mask vs image) before the model loads

    # 2. Load the model and restore.
    model = _load_model(args, device)
    callback, close = _progress(config.num_model_calls, not args.quiet and sys.stderr.isatty(), f"{args.task}")
    start = time.perf_counter()
    try:
        x = sample(model, operator, y.to(device)[None], config, seed=args.seed, callback=callback)
    finally:
        close()
    seconds = time.perf_counter() - start

    # 3. Write the image and, beside it, the resolved configuration.
    write_output(args.output, x[0].cpu(), args.bit_depth, [args.input])
    record = {
        "task": args.task,
        "input": str(args.input),
        "config": config.to_dict(),
        "defaults_source": defaults.source,
        "checkpoint": _checkpoint_label(args, card),
        "arch": args.arch or (card["arch"] if card else model.describe().get("arch", "ffhq_10m")),
        "backend": model.describe(),
        "kernel": str(args.kernel) if args.kernel else None,
        "mask": str(args.mask) if args.mask else None,
        "scale": args.scale if args.task == "sr" else None,
        "seed": args.seed,
        "device": str(device),
        "seconds": round(seconds, 3),
    }
    from diffpir_rt.engine.imageio import write_text

    write_text(args.output.with_name(args.output.name + ".json"), json.dumps(record, indent=2) + "\n")
    if not args.quiet:
        print(f"restored {args.input} -> {args.output} ({config.num_model_calls} UNet calls, {seconds:.2f} s)")
    return 0


# ----------------------------------------------------------------------------- degrade


def add_degrade_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "degrade",
        help="synthesise a measurement by the official DiffPIR protocol",
        description="Make y = H(x) + n as the official DiffPIR scripts do (spec §7): Gaussian kernels "
        "with std 3(1 + 2u) seeded by image index, motion kernels, circular blur of the 8-bit image "
        "(truncated), MATLAB bicubic downsampling for SR, box/random masks, additive Gaussian noise. "
        "Save to .npy to keep the noisy measurement unclipped and unquantised.",
        epilog=EXAMPLES_DEGRADE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--input", required=True, type=Path, help="clean image x")
    p.add_argument("--output", required=True, type=Path, help="measurement y (.png/.tif/.jpg or .npy)")
    p.add_argument("--kernel", default="gaussian", help="deblur: 'gaussian', 'motion' or a kernel file (default: gaussian)")
    p.add_argument("--kernel-index", type=int, default=None, help="which kernel of a .mat file")
    p.add_argument("--index", type=int, default=0, help="image index seeding the kernel draw (seed 10*index; default 0)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=4, help="SR factor (default: 4)")
    p.add_argument("--mask", default="random", help="inpaint: 'box', 'random' or a mask image (default: random)")
    p.add_argument("--mask-seed", type=int, default=0, help="numpy seed of the mask draw (default: 0, as the official script)")
    p.add_argument("--sigma-n", type=_unit_float, default=None, help="noise std in [0,1] units (default: the task's)")
    p.add_argument("--noise-seed", type=int, default=0, help="numpy seed of the noise (default: 0, as the official script)")
    p.add_argument("--save-kernel", type=Path, help="also write the kernel (.npy) used")
    p.add_argument("--save-mask", type=Path, help="also write the mask (.png, 255 = observed) used")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8)
    p.set_defaults(handler=run_degrade)


def run_degrade(args: argparse.Namespace) -> int:
    from diffpir_rt.engine import degrade
    from diffpir_rt.engine.imageio import read_image, read_mask, write_image, write_npy

    if not args.input.is_file():
        raise DiffPIRError(f"--input {args.input}: no such file")
    _check_output_path(args.output, [args.input])
    for extra in (args.save_kernel, args.save_mask):
        if extra is not None and extra.resolve() == args.input.resolve():
            raise DiffPIRError(f"{extra}: is the input; refusing to overwrite an input")
    sigma_n = args.sigma_n if args.sigma_n is not None else defaults_for(args.task).sigma_n
    x = read_image(args.input)  # (C, H, W) in [0, 1]
    image = x.permute(1, 2, 0).numpy().astype(np.float64)  # (H, W, C)

    kernel = mask = None
    if args.task == "deblur":
        if args.kernel == "gaussian":
            kernel = degrade.gaussian_kernel(args.index)
        elif args.kernel == "motion":
            kernel = degrade.motion_kernel(args.index)
        else:
            kernel = degrade.load_kernel(_existing_file_or_error(args.kernel, "--kernel"), args.kernel_index)
        y = degrade.blur_image(image, kernel)
    elif args.task == "sr":
        h, w = image.shape[:2]
        if h % args.scale or w % args.scale:
            raise DiffPIRError(
                f"--input {args.input}: size {h}x{w} is not divisible by the scale {args.scale}; "
                f"crop it to {h - h % args.scale}x{w - w % args.scale} first"
            )
        y = degrade.bicubic_downsample(image, args.scale)
    elif args.task == "inpaint":
        h, w = image.shape[:2]
        if args.mask == "box":
            mask = degrade.box_mask(h, w, seed=args.mask_seed)
        elif args.mask == "random":
            mask = degrade.random_mask(h, w, seed=args.mask_seed)
        else:
            mask = read_mask(_existing_file_or_error(args.mask, "--mask"))[0].numpy()
            if mask.shape != (h, w):
                raise DiffPIRError(f"--mask {args.mask}: size {mask.shape[0]}x{mask.shape[1]} does not match the {h}x{w} image")
        y = image * mask[..., None]
    else:
        y = image
    y = degrade.add_noise(y, sigma_n, seed=args.noise_seed)
    y_chw = torch.from_numpy(np.ascontiguousarray(y.transpose(2, 0, 1), dtype=np.float32))

    write_output(args.output, y_chw, args.bit_depth, [args.input])
    if kernel is not None and args.save_kernel is not None:
        write_npy(args.save_kernel, torch.from_numpy(np.asarray(kernel, dtype=np.float32)), protect=[args.input])
    if mask is not None and args.save_mask is not None:
        write_image(args.save_mask, torch.from_numpy(np.asarray(mask, dtype=np.float32))[None], protect=[args.input])
    print(f"degraded {args.input} -> {args.output} ({args.task}, sigma_n {sigma_n})")
    return 0


def _existing_file_or_error(text: str, flag: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise DiffPIRError(f"{flag} {text}: no such file (or use one of the named choices)")
    return path


# ----------------------------------------------------------------------------- registration


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `restore` and `degrade` (called by diffpir_rt.cli)."""
    add_restore_parser(subparsers)
    add_degrade_parser(subparsers)
