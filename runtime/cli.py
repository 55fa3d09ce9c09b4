"""`diffpir restore`, `diffpir degrade` and `diffpir generate`.

Each handler is thin: parse -> check every argument and every path (before loading
anything heavy) -> a `Restorer` -> write atomically. User errors (DiffPIRError) print one
line on stderr and exit with code 2 (diffpir_rt.cli); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from diffpir_rt.engine import BOUNDARIES, METHODS, TASKS, ModelSource, arch_names, argtypes, bundled_card, defaults_for, resolve_boundary
from diffpir_rt.errors import DiffPIRError

from .restorer import BACKENDS, PRECISIONS, Restorer

EXAMPLES_RESTORE = """examples:
  diffpir restore --task deblur --input blurry.png --kernel kernel.npy --output restored.png
  diffpir restore --task sr --scale 4 --input small.png --output large.png --steps 20
  diffpir restore --task inpaint --input holes.png --mask mask.png --output filled.png --method ddnm
  diffpir restore --task denoise --sigma-n 0.1 --input noisy.png --output clean.png \\
      --checkpoint ffhq_10m.pt --arch ffhq_10m --device cuda
  diffpir restore --task deblur --input blurry.png --kernel kernel.npy --output restored.png --reference
"""
EXAMPLES_DEGRADE = """examples:
  diffpir degrade --task deblur --kernel gaussian --index 0 --input clean.png --output y.png --save-kernel k.npy
  diffpir degrade --task sr --scale 4 --input clean.png --output y.npy
  diffpir degrade --task inpaint --mask random --input clean.png --output y.png --save-mask mask.png
"""
EXAMPLES_GENERATE = """examples:
  diffpir generate --method ddim --steps 20 --num 16 --output grid.png
  diffpir generate --method ddpm --steps 100 --num 4 --size 128 --output samples.png --seed 3
"""


# ----------------------------------------------------------------------------- shared helpers


def _defaults_table() -> str:
    """The bundled prior's per-task defaults, for --help (read from its model card, cheap)."""
    card = bundled_card()
    if card is None:
        return "defaults: the official DiffPIR values per task"
    rows = [f"  {task:8s} lam {d.lam:g}, zeta {d.zeta:g}, steps {d.steps}, sigma_n {d.sigma_n:g}"
            for task in TASKS for d in [defaults_for(task, card.get("task_defaults"))]]  # fmt: skip
    return "defaults of the bundled prior (diffpir method; other models: their card's, or the official values):\n" + "\n".join(rows)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Model source, backend, device and precision: the same flags for every command that restores."""
    g = p.add_argument_group("model and runtime")
    g.add_argument("--checkpoint", type=Path, help="guided-diffusion UNet weights (.pt/.safetensors); default: the bundled prior")
    g.add_argument("--arch", choices=arch_names(), default=None,
                   help="UNet architecture of --checkpoint (default for a checkpoint: ffhq_10m)")
    g.add_argument("--onnx", type=Path, help="an ONNX graph from `diffpir export onnx` instead of torch weights")
    g.add_argument("--engine", type=Path, help="a TensorRT plan from `diffpir export trt`")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    g.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="what runs the UNet; auto = the fastest tested path for the device (default: %(default)s)")
    g.add_argument("--dtype", choices=PRECISIONS, default="auto",
                   help="UNet precision; auto = fp16 on CUDA, fp32 on CPU (fp16 is refused on CPU) (default: %(default)s)")
    g.add_argument("--threads", type=argtypes.thread_count, default=None, help="CPU threads (default: torch's / the physical cores)")
    g.add_argument("--reference", action="store_true", help="run the exact fp32 eager reference loop (slow, for checking)")
    from .tiling import tile_argument

    g.add_argument("--tile", type=tile_argument, default="auto",
                   help="run the UNet on overlapping tiles: auto (images above ~640x640, tiles near the model's "
                        "training size), off, or a tile side in pixels (default: %(default)s)")
    g.add_argument("--overlap", type=argtypes.non_negative_int, default=None,
                   help="pixels neighbouring tiles share at least (default: tile/8, at least 16)")


def model_source(args: argparse.Namespace) -> ModelSource:
    return ModelSource.from_arguments(args.checkpoint, args.arch, args.onnx, args.engine)


def make_restorer(args: argparse.Namespace) -> Restorer:
    return Restorer(model_source(args), backend=args.backend, device=args.device, precision=args.dtype,
                    reference=args.reference, threads=args.threads, tile=args.tile, overlap=args.overlap)  # fmt: skip


def check_inputs_exist(args: argparse.Namespace, flags: Sequence[str]) -> None:
    from diffpir_rt.engine.paths import check_input_file

    for flag in flags:
        path = getattr(args, flag, None)
        if path is not None:
            check_input_file(path, f"--{flag.replace('_', '-')}")


def read_measurement(path: Path) -> Any:
    """The measurement as an engine.imageio.Photo: an image file (upright, grey and alpha remembered,
    bit depth kept), or a (C, H, W) .npy kept unclipped (16-bit output by default)."""
    from diffpir_rt.engine.imageio import Photo, check_finite, read_photo
    from diffpir_rt.engine.paths import read_npy

    if path.suffix.lower() == ".npy":
        array = read_npy(path, "input", ndim=(2, 3))
        if array.ndim == 2:
            array = array[None]
        if array.shape[0] not in (1, 3):
            raise DiffPIRError(f"input {path}: expected a (C, H, W) array with C in {{1, 3}}, got shape {array.shape}")
        if array.shape[0] == 1:
            array = np.repeat(array, 3, axis=0)
        photo = Photo(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), 16)
    else:
        photo = read_photo(path)
    check_finite(photo.rgb, f"input {path}")
    return photo


def write_output(path: Path, x: torch.Tensor, bit_depth: int, protect: Sequence[Path]) -> None:
    """Write an image, or a float32 .npy (unclipped, for exact measurements), atomically."""
    from diffpir_rt.engine.imageio import write_image, write_npy

    if path.suffix.lower() == ".npy":
        write_npy(path, x, protect=protect)
    else:
        write_image(path, x, bit_depth=bit_depth, protect=protect)


# ----------------------------------------------------------------------------- restore


def add_restore_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "restore",
        help="restore a degraded image (DiffPIR or another method of the family)",
        description="Restore a measurement y = H(x) + n with a diffusion prior. Unset hyperparameters take the "
        "model's defaults for the task.\n\n" + _defaults_table(),
        epilog=EXAMPLES_RESTORE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=TASKS, help="degradation to invert")
    p.add_argument("--input", required=True, type=Path, help="measurement y: PNG/JPEG/TIFF (8/16-bit) or .npy (C,H,W) in [0,1]")
    p.add_argument("--output", required=True, type=argtypes.output_path, help="restored image: .png/.jpg/.tif or .npy; <output>.json records the run")
    p.add_argument("--kernel", type=Path, help="blur kernel (.npy, .png, .mat); deblur: required, sr: default bicubic")
    p.add_argument("--kernel-index", type=argtypes.non_negative_int, default=None, help="which kernel of a .mat cell array (default: 0)")
    p.add_argument("--mask", type=Path, help="inpainting mask image, nonzero = observed (required for inpaint)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="SR factor (default: 4)")
    p.add_argument("--method", choices=tuple(METHODS), default="diffpir", help="restoration method (default: %(default)s)")
    p.add_argument("--boundary", choices=BOUNDARIES, default="auto",
                   help="image edges, deblur: extend = restore a larger image of which only the frame was observed "
                        "(real photos), circular = the blur wraps around (the official protocol's synthetic data); "
                        "auto = extend for deblurring with diffpir/dps/dpir, circular otherwise (default: %(default)s)")
    h = p.add_argument_group("hyperparameters (unset: the model's default for the task, see above)")
    h.add_argument("--sigma-n", type=argtypes.unit_float, help="measurement noise std in [0,1] units (0.05 = 12.75/255)")
    h.add_argument("--steps", type=argtypes.num_steps, help="number of timesteps")
    h.add_argument("--lam", type=argtypes.positive_float, help="diffpir: lambda, the data-term weight")
    h.add_argument("--zeta", type=argtypes.unit_float, help="diffpir: fresh-noise share of each step, in [0,1]")
    h.add_argument("--skip", choices=("quad", "uniform"), default=None, help="diffpir: step spacing (default: quad)")
    h.add_argument("--t-start", type=argtypes.timestep, default=None, help="diffpir: start timestep (default: 999)")
    h.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="any other parameter of the method's config (repeatable), e.g. --param eta=0.5")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default: %(default)s)")
    add_model_arguments(p)
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=None, help="output bit depth (default: the input's)")
    p.add_argument("--quiet", action="store_true", help="no progress, no summary line")
    p.set_defaults(handler=run_restore)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """--param NAME=VALUE pairs: numbers become numbers, true/false booleans, the rest strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise DiffPIRError(f"--param {pair!r}: expected NAME=VALUE")
        value: Any = text
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        else:
            for kind in (int, float):
                try:
                    value = kind(text)
                    break
                except ValueError:
                    continue
        out[name] = value
    return out


def run_restore(args: argparse.Namespace) -> int:
    from diffpir_rt.engine import operator_from_files
    from diffpir_rt.engine.paths import OutputPlan

    from diffpir_rt.engine.tasks import check_inputs

    # 1. Everything cheap first: flags the task does not take, paths, task inputs, hyperparameters, device.
    check_inputs(args.task, kernel=args.kernel, mask=args.mask, scale=args.scale)
    if args.kernel_index is not None and args.kernel is None:
        raise DiffPIRError("--kernel-index: applies to a --kernel file")
    resolve_boundary(args.task, args.boundary, args.method)  # a --boundary that cannot run, refused early
    check_inputs_exist(args, ("input", "kernel", "mask", "checkpoint", "onnx", "engine"))
    inputs = [args.input, args.kernel, args.mask, args.checkpoint, args.onnx, args.engine]
    plan = OutputPlan(inputs)
    plan.add(args.output, "--output", suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"))
    record_path = plan.add(args.output.with_name(args.output.name + ".json"), "the run record")
    operator = operator_from_files(args.task, args.kernel, args.kernel_index, args.mask, args.scale)
    photo = read_measurement(args.input)
    y, depth = photo.rgb, photo.bit_depth
    operator.data_step(y[None])  # size checks (kernel vs image, mask vs image) before the model loads
    overrides = {"lam": args.lam, "zeta": args.zeta, "sigma_n": args.sigma_n, "steps": args.steps,
                 "skip": args.skip, "t_start": args.t_start, **parse_params(args.param)}  # fmt: skip

    # 2. The runtime, the config, the restoration.
    from .jobs import RestoreRequest, model_calls, output_image, run_requests
    from .progress import Progress

    restorer = make_restorer(args)
    request = RestoreRequest(
        args.task, y, operator, args.method, overrides, args.seed, depth,
        sources={"input": str(args.input), "kernel": str(args.kernel) if args.kernel else None,
                 "mask": str(args.mask) if args.mask else None},
        boundary=args.boundary, photo=photo,
    )  # fmt: skip
    calls = model_calls(request.config(restorer))
    with Progress(calls, f"{args.task} ({args.method})", unit="UNet call", enabled=not args.quiet) as progress:
        ((x, record),) = run_requests(restorer, [request], callback=progress.callback)

    # 3. The image and, beside it, what ran.
    bit_depth = args.bit_depth or depth
    record["bit_depth"] = bit_depth
    record["grayscale"], record["alpha"] = photo.grayscale, photo.alpha is not None
    from diffpir_rt.engine.imageio import write_text

    raw = args.output.suffix.lower() == ".npy"  # the restorer's own (3, H, W) values, unquantised
    with plan.transaction():
        write_output(args.output, x.cpu() if raw else output_image(request, x.cpu()), bit_depth, plan.inputs)
        write_text(record_path, json.dumps(record, indent=2) + "\n", protect=plan.inputs)
    if not args.quiet:
        print(f"restored {args.input} -> {args.output} ({calls} UNet calls, {record['seconds']:.2f} s, {restorer.path.name})")
    return 0


# ----------------------------------------------------------------------------- degrade


def add_degrade_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "degrade",
        help="synthesise a measurement by the official DiffPIR protocol",
        description="Make y = H(x) + n as the official DiffPIR scripts do: Gaussian kernels with std "
        "3(1 + 2u) seeded by image index, motion kernels, circular blur of the 8-bit image (truncated), "
        "MATLAB bicubic downsampling for SR, box/random masks, additive Gaussian noise. Save to .npy to "
        "keep the noisy measurement unclipped and unquantised.",
        epilog=EXAMPLES_DEGRADE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=TASKS, help="the degradation to apply")
    p.add_argument("--input", required=True, type=Path, help="clean image x")
    p.add_argument("--output", required=True, type=argtypes.output_path, help="measurement y (.png/.tif/.jpg or .npy)")
    p.add_argument("--kernel", default=None, help="deblur: 'gaussian', 'motion' or a kernel file (default: gaussian)")
    p.add_argument("--kernel-index", type=argtypes.non_negative_int, default=None, help="which kernel of a .mat file")
    p.add_argument("--index", type=argtypes.non_negative_int, default=0,
                   help="image index seeding the kernel draw (seed 10*index; default: %(default)s)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="sr: factor (default: 4)")
    p.add_argument("--mask", default=None, help="inpaint: 'box', 'random' or a mask image (default: random)")
    p.add_argument("--mask-seed", type=argtypes.seed32, default=0, help="numpy seed of the mask draw (default: %(default)s, as the official script)")
    p.add_argument("--sigma-n", type=argtypes.unit_float, default=None, help="noise std in [0,1] units (default: the task's official)")
    p.add_argument("--noise-seed", type=argtypes.seed32, default=0, help="numpy seed of the noise (default: %(default)s, as the official script)")
    p.add_argument("--save-kernel", type=argtypes.output_path, help="deblur: also write the kernel used (.npy)")
    p.add_argument("--save-mask", type=argtypes.output_path, help="inpaint: also write the mask used (.png, 255 = observed)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="output bit depth for images (default: %(default)s)")
    p.set_defaults(handler=run_degrade)


def run_degrade(args: argparse.Namespace) -> int:
    from diffpir_rt.engine import degrade, make_measurement
    from diffpir_rt.engine.imageio import read_image, read_mask, write_image, write_npy
    from diffpir_rt.engine.paths import OutputPlan, check_input_file
    from diffpir_rt.engine.tasks import KERNEL_NAMES, MASK_NAMES, check_inputs

    check_inputs(args.task, kernel=args.kernel, mask=args.mask, scale=args.scale)
    if args.save_kernel is not None and args.task != "deblur":
        raise DiffPIRError(f"--save-kernel: applies to --task deblur, not {args.task}")
    if args.save_mask is not None and args.task != "inpaint":
        raise DiffPIRError(f"--save-mask: applies to --task inpaint, not {args.task}")
    check_input_file(args.input, "--input")
    kernel_file = mask_file = None
    if args.kernel is not None and args.kernel not in KERNEL_NAMES:
        kernel_file = check_input_file(Path(args.kernel), "--kernel")
    if args.mask is not None and args.mask not in MASK_NAMES:
        mask_file = check_input_file(Path(args.mask), "--mask")
    plan = OutputPlan([args.input, kernel_file, mask_file])
    plan.add(args.output, "--output", suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy"))
    if args.save_kernel is not None:
        plan.add(args.save_kernel, "--save-kernel", suffixes=(".npy",))
    if args.save_mask is not None:
        plan.add(args.save_mask, "--save-mask", suffixes=(".png",))

    sigma_n = args.sigma_n if args.sigma_n is not None else defaults_for(args.task).sigma_n
    x = read_image(args.input).permute(1, 2, 0).numpy().astype(np.float64)  # (H, W, C) in [0, 1]
    kernel: Any = "gaussian" if args.kernel is None else args.kernel
    if kernel_file is not None:
        kernel = degrade.load_kernel(kernel_file, args.kernel_index)
    mask: Any = "random" if args.mask is None else args.mask
    if mask_file is not None:
        mask = read_mask(mask_file)[0].numpy().astype(np.float64)
    result = make_measurement(
        args.task, x, sigma_n=sigma_n, noise_seed=args.noise_seed, kernel=kernel, kernel_index=args.index,
        scale=args.scale or 4, mask=mask, mask_seed=args.mask_seed,
    )  # fmt: skip
    y_chw = torch.from_numpy(np.ascontiguousarray(result.y.transpose(2, 0, 1), dtype=np.float32))
    # Every path was checked above; the writes are atomic, so an error leaves nothing behind.
    with plan.transaction():
        write_output(args.output, y_chw, args.bit_depth, plan.inputs)
        if args.save_kernel is not None:
            write_npy(args.save_kernel, torch.from_numpy(np.asarray(result.kernel)), protect=plan.inputs)
        if args.save_mask is not None:
            write_image(args.save_mask, torch.from_numpy(np.asarray(result.mask, dtype=np.float32))[None], protect=plan.inputs)
    print(f"degraded {args.input} -> {args.output} ({args.task}, sigma_n {sigma_n:g})")
    return 0


# ----------------------------------------------------------------------------- generate


def add_generate_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="draw images from the prior alone (DDIM, DDPM) into a grid",
        description="Unconditional samples of the diffusion prior, written as one grid image.",
        epilog=EXAMPLES_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", choices=("ddim", "ddpm"), default="ddim", help="sampler (default: %(default)s)")
    p.add_argument("--steps", type=argtypes.num_steps, default=20, help="sampling steps (default: %(default)s)")
    p.add_argument("--eta", type=argtypes.unit_float, default=None, help="ddim: eta (default: 0, deterministic)")
    p.add_argument("--num", type=argtypes.positive_int, default=16, help="how many images (default: %(default)s)")
    p.add_argument("--size", type=argtypes.positive_int, default=None, help="image side in pixels (default: the model's training size)")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--output", required=True, type=argtypes.output_path, help="grid image (.png/.jpg/.tif)")
    add_model_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from diffpir_rt.engine.imageio import write_image, write_text
    from diffpir_rt.engine.paths import OutputPlan

    check_inputs_exist(args, ("checkpoint", "onnx", "engine"))
    plan = OutputPlan([args.checkpoint, args.onnx, args.engine])
    plan.add(args.output, "--output", suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff"))
    record_path = plan.add(args.output.with_name(args.output.name + ".json"), "the run record")
    if args.size is not None:  # refused before the model loads (the engine checks it again)
        from diffpir_rt.engine.paths import MAX_NPY_ELEMENTS

        if args.num * 3 * args.size**2 > MAX_NPY_ELEMENTS:
            raise DiffPIRError(
                f"--num {args.num} --size {args.size}: {args.num * 3 * args.size**2:,} values; "
                f"at most {MAX_NPY_ELEMENTS:,} are generated at once"
            )
    restorer = make_restorer(args)
    config_class = METHODS[args.method][0]
    fields = {"steps": args.steps}
    if args.eta is not None:
        fields["eta"] = args.eta
    try:
        config = config_class(**fields)
    except TypeError as e:
        raise DiffPIRError(f"--method {args.method}: {e}") from None
    size = args.size or restorer.denoiser_size()
    from .progress import Progress

    from .jobs import model_calls

    start = time.perf_counter()
    with Progress(model_calls(config), f"generate ({args.method})", unit="UNet call", enabled=not args.quiet) as progress:
        images = restorer.generate((args.num, 3, size, size), config, seed=args.seed, callback=progress.callback)
    seconds = time.perf_counter() - start
    with plan.transaction():
        write_image(args.output, image_grid(images.cpu()), protect=plan.inputs)
        record = {"method": args.method, "config": config.to_dict(), "num": args.num, "size": size, "seed": args.seed,
                  "runtime": restorer.describe(), "seconds": round(seconds, 3)}  # fmt: skip
        write_text(record_path, json.dumps(record, indent=2) + "\n", protect=plan.inputs)
    if not args.quiet:
        print(f"generated {args.num} images -> {args.output} ({seconds:.2f} s)")
    return 0


def image_grid(images: torch.Tensor, columns: Optional[int] = None, gap: int = 2) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> one (C, rows*H, columns*W) grid with white gaps."""
    batch, channels, height, width = images.shape
    columns = columns or int(np.ceil(np.sqrt(batch)))
    rows = -(-batch // columns)
    grid = torch.ones(channels, rows * (height + gap) - gap, columns * (width + gap) - gap)
    for i in range(batch):
        r, c = divmod(i, columns)
        grid[:, r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = images[i]
    return grid


# ----------------------------------------------------------------------------- registration


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `restore`, `degrade` and `generate` (called by diffpir_rt.cli)."""
    add_restore_parser(subparsers)
    add_degrade_parser(subparsers)
    add_generate_parser(subparsers)
