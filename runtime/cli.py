"""`diffpir restore`, `diffpir degrade` and `diffpir generate`.

Each handler is thin: parse -> check every argument and every path (before loading anything
heavy) -> a `Restorer` -> write atomically. The flags are generated from the declarations:
the tasks' inputs (engine.TASKS), every method's hyperparameters (engine.method_params), the
request and runtime options (runtime.options) and the backends' model files (engine.BACKENDS),
so a new method, task, backend or parameter appears here without an edit. User errors
(DiffPIRError) print one line on stderr and exit with code 2 (diffpir_rt.cli).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError

EXAMPLES_RESTORE = """examples:
  diffpir restore --task deblur --input blurry.png --kernel kernel.npy --output restored.png
  diffpir restore --task deblur --input photo.jpg --kernel auto --kernel-size 31 --output sharp.png --save-kernel k.npy
  diffpir restore --task denoise --sigma-n auto --input noisy.png --output clean.png
  diffpir restore --task sr --scale 4 --input small.png --output large.png --steps 20
  diffpir restore --task inpaint --input holes.png --mask mask.png --output filled.png --method ddnm
  diffpir restore --task denoise --sigma-n 0.1 --input photos/ --output restored/ --suffix _clean
  diffpir restore --task denoise --sigma-n 0.1 --input noisy.png --output clean.png \\
      --checkpoint ffhq_10m.pt --arch ffhq_10m --device cuda
  diffpir restore --help --method ddnm          # DDNM's parameters and defaults per task
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
#: Image and array suffixes a restore writes.
OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".npy")
#: Files a folder --input contributes.
INPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".npy")


# ----------------------------------------------------------------------------- shared flags


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    """Model files (one flag per backend's file kind), --arch, and the runtime options: the same
    flags for every command that restores (restore, generate, serve, batch)."""
    from diffpir_rt.engine import BACKENDS

    from .options import RuntimeOptions, arch_param, backend_choices

    g = p.add_argument_group("model and runtime")
    for backend in BACKENDS.values():
        if backend.file_flag:
            g.add_argument(backend.file_flag, type=Path, default=None, dest=f"model_{backend.file_kind}", metavar="PATH",
                           help=backend.file_help)  # fmt: skip
    arch = arch_param()
    g.add_argument("--arch", type=cliargs.param_type(arch), default=None, metavar="{" + ",".join(arch.choices or ()) + "}",
                   help=cliargs.param_help(arch))  # fmt: skip
    params = dict(RuntimeOptions.params())
    params["backend"] = cliargs.Param(params["backend"].help, str, choices=backend_choices())
    defaults = {name: getattr(RuntimeOptions(), name) for name in params}
    cliargs.add_param_flags(g, params, defaults=defaults)


def model_files(args: argparse.Namespace) -> dict[str, Optional[Path]]:
    """A backend's model-file kind -> the path given for it (or None)."""
    from diffpir_rt.engine import BACKENDS

    return {b.file_kind: getattr(args, f"model_{b.file_kind}", None) for b in BACKENDS.values() if b.file_flag}


def runtime_options(args: argparse.Namespace) -> Any:
    """RuntimeOptions of the runtime flags (add_runtime_flags); the model files are checked first."""
    from diffpir_rt.engine import InputFile, ModelSource

    from .options import RuntimeOptions

    files = model_files(args)
    model = ModelSource.from_files(files, args.arch, getattr(args, "random_weights", False))  # one source, a known arch
    flags = _file_flags()
    for kind, path in files.items():
        if path is not None:
            InputFile.from_path(path, flags[kind])
    return RuntimeOptions(model=model, **cliargs.given(args, RuntimeOptions.params()))


def _file_flags() -> dict[str, str]:
    from diffpir_rt.engine import BACKENDS

    return {b.file_kind: b.file_flag for b in BACKENDS.values() if b.file_flag}


def add_task_flags(p: Any, files_as_paths: bool = True, required: bool = True) -> None:
    """--task and the tasks' inputs (--kernel, --mask, --scale, --kernel-index), from engine.TASKS."""
    from diffpir_rt.engine import TASKS
    from diffpir_rt.engine.tasks import FILE_INPUTS, INPUT_PARAMS

    p.add_argument("--task", required=required, choices=tuple(TASKS), help="degradation to invert: " +
                   "; ".join(f"{t.name}: {t.description}" for t in TASKS.values()))  # fmt: skip
    for name, spec in INPUT_PARAMS.items():
        users = [t.name for t in TASKS.values() if name in t.inputs]
        text = f"{spec.help} ({', '.join(users)})"
        if name in FILE_INPUTS and files_as_paths:
            p.add_argument(cliargs.flag_name(name), type=Path, default=None, help=text)
        else:
            p.add_argument(cliargs.flag_name(name), type=cliargs.param_type(spec), default=None, help=f"{text}; {spec.expected()}")


def task_values(args: argparse.Namespace) -> dict[str, Any]:
    from diffpir_rt.engine.tasks import INPUT_PARAMS

    return {name: getattr(args, name, None) for name in INPUT_PARAMS}


def add_method_flags(p: argparse.ArgumentParser, method: Optional[str] = None) -> list[str]:
    """--method and every restoration method's hyperparameters (engine.method_params), unset = the defaults."""
    from diffpir_rt.engine import DEFAULT_METHOD, config_class, method_params, restoration_names

    names = restoration_names()
    p.add_argument("--method", choices=names, default=None, help=f"restoration method (default: {DEFAULT_METHOD}): " +
                   "; ".join(f"{n}: {config_class(n).description}" for n in names))  # fmt: skip
    h = p.add_argument_group("hyperparameters (unset: the model's default for the task and method; `--help --method NAME` "
                             "shows a method's)")  # fmt: skip
    return cliargs.add_param_flags(h, method_params(names))


def method_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from diffpir_rt.engine import method_params, restoration_names

    return cliargs.given(args, tuple(method_params(restoration_names())))


def add_request_flags(p: Any) -> None:
    from .options import RequestOptions

    params = RequestOptions.params()
    cliargs.add_param_flags(p, params, defaults={name: getattr(RequestOptions(), name) for name in params})


def request_options(args: argparse.Namespace) -> Any:
    from .options import RequestOptions

    return RequestOptions(**cliargs.given(args, tuple(RequestOptions.params())))


def method_defaults_text(method: Optional[str] = None) -> str:
    """For --help: the method's parameters and its defaults per task with the bundled prior."""
    from diffpir_rt.engine import DEFAULT_METHOD, ModelSource, config_class, configure, get_task

    method = method or DEFAULT_METHOD
    cls = config_class(method)
    source = ModelSource()
    try:
        source.card()
    except DiffPIRError:
        source = None  # type: ignore[assignment]
    lines = [f"method {method}: {cls.description}", f"  --steps sets {cls.budget}: {cls.budget_note}; "
             f"useful from {cls.min_useful_steps}", f"  defaults: {cls.defaults_source}", "  per task, with the bundled prior:"]  # fmt: skip
    for task in cls.tasks:
        sigma_n = source.default_sigma_n(task) if source is not None else get_task(task).default_sigma_n
        tuned = source.tuned_defaults(method, task) if source is not None else {}
        try:
            configured = configure(method, task, sigma_n=sigma_n, tuned=tuned)
        except DiffPIRError as e:
            lines.append(f"    {task:8s} ({e})")
            continue
        values = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in configured.config.field_values().items())
        lines.append(f"    {task:8s} {values}; {configured.config.model_calls()} UNet calls")
    if not cls.uses_sigma_n():
        lines.append("  it has no noise model: --sigma-n is accepted and recorded, but not used")
    return "\n".join(lines)


def check_request(task: str, method: Optional[str], boundary: str, **inputs: Any) -> None:
    """The cheapest checks first, before any file is looked at: the method restores the task, the
    task takes these inputs, the boundary model can run (runtime.check_request)."""
    from .jobs import check_request as check

    check(task, method, boundary, **inputs)


def check_paths(flags: dict[str, Optional[Path]]) -> None:
    """Every named input file exists and is readable (one line naming the flag otherwise)."""
    from diffpir_rt.engine import InputFile

    for flag, path in flags.items():
        if path is not None:
            InputFile.from_path(path, flag)


def write_output(path: Path, x: Any, bit_depth: int, protect: Sequence[Path]) -> None:
    """Write an image, or a float32 .npy (unclipped, for exact measurements), atomically."""
    from diffpir_rt.engine.imageio import write_image, write_npy

    if path.suffix.lower() == ".npy":
        write_npy(path, x, protect=protect)
    else:
        write_image(path, x, bit_depth=bit_depth, protect=protect)


# ----------------------------------------------------------------------------- restore


def add_restore_parser(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    method = _help_method(argv)
    p = subparsers.add_parser(
        "restore",
        description="Restore measurements y = H(x) + n with a diffusion prior. Unset hyperparameters take the "
        "model's defaults for the task and method.\n\n" + _safe(method_defaults_text, method),
        epilog=EXAMPLES_RESTORE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_task_flags(p)
    p.add_argument("--input", required=True, type=Path, nargs="+",
                   help="measurement(s) y: PNG/JPEG/TIFF/WebP (8/16-bit) or .npy (C,H,W) in [0,1]; several files or a folder")  # fmt: skip
    p.add_argument("--output", required=True, type=cliargs.output_path,
                   help="restored image (.png/.jpg/.tif/.webp or .npy), or a folder for several inputs; "
                   "<output>.json records each run")  # fmt: skip
    p.add_argument("--suffix", default=None, help="with a folder --output: appended to each input's name (default: none)")
    p.add_argument("--save-kernel", type=cliargs.output_path, default=None,
                   help="with --kernel auto: also write the estimated kernel (.npy, float32 (N, N), sum 1; one input)")  # fmt: skip
    add_method_flags(p, method)
    add_request_flags(p.add_argument_group("request"))
    add_runtime_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress, no summary line")
    p.set_defaults(handler=run_restore)


def _help_method(argv: Sequence[str]) -> Optional[str]:
    """The --method of a `restore --help --method NAME` command line, to show that method's defaults."""
    argv = list(argv)
    if not ({"-h", "--help"} & set(argv)):
        return None
    for i, word in enumerate(argv):
        if word == "--method" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--method="):
            return word.split("=", 1)[1]
    return None


def _safe(fn: Any, *args: Any) -> str:
    """Help text that must not stop --help from printing (an unknown --method, no bundled prior)."""
    try:
        return fn(*args)
    except DiffPIRError as e:
        return f"({e})"


def _is_dir(path: Path) -> bool:
    """A folder is there (False for a name the file system cannot even look up: the output plan says why)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def restore_jobs(inputs: Sequence[Path], output: Path, suffix: Optional[str]) -> list[tuple[Path, Path]]:
    """(input, output) pairs: one file to one file, or files and folders to a folder of outputs.

    --output is a folder when there are several inputs (or a folder of them), or when it names an
    existing folder whose name is not an image file's (`out/`, never a folder called `o.png`).
    """
    files: list[Path] = []
    for path in inputs:
        if _is_dir(path):
            found = sorted(q for q in path.iterdir() if q.is_file() and q.suffix.lower() in INPUT_SUFFIXES)
            if not found:
                raise DiffPIRError(f"--input {path}: a folder without images ({', '.join(INPUT_SUFFIXES)})")
            files += found
        else:
            files.append(path)
    single = len(inputs) == 1 and not _is_dir(inputs[0])
    into_folder = _is_dir(output) and output.suffix.lower() not in OUTPUT_SUFFIXES
    if single and not into_folder:
        if suffix is not None:
            raise DiffPIRError("--suffix: applies to a folder --output (several inputs)")
        return [(files[0], output)]
    if output.exists() and not _is_dir(output):
        raise DiffPIRError(f"--output {output}: several inputs need a folder, and this is a file")
    pairs, seen = [], set()
    for path in files:
        target = output / f"{path.stem}{suffix or ''}{'.npy' if path.suffix.lower() == '.npy' else '.png'}"
        if target in seen:
            raise DiffPIRError(f"--input: two inputs would both be written to {target}")
        seen.add(target)
        pairs.append((path, target))
    return pairs


def run_restore(args: argparse.Namespace) -> int:
    from diffpir_rt.engine import InputFile, TaskInputs
    from diffpir_rt.engine.paths import OutputPlan

    # 1. Everything cheap first: flags the task does not take, paths, task inputs, hyperparameters, device.
    from .jobs import is_auto, task_file

    values = task_values(args)
    blind = is_auto(str(args.kernel)) if args.kernel is not None else False
    if blind:
        values["kernel"] = args.kernel = str(args.kernel)
        from diffpir_rt.engine import estimating_method

        args.method = estimating_method("kernel", args.task, args.method)
    elif args.save_kernel is not None:
        raise DiffPIRError("--save-kernel: writes the kernel --kernel auto estimates; give --kernel auto")
    check_request(args.task, args.method, request_options(args).boundary, **values)
    jobs = restore_jobs(args.input, args.output, args.suffix)
    if args.save_kernel is not None and len(jobs) > 1:
        raise DiffPIRError("--save-kernel: one input only (each run record holds its kernel as kernel_estimate)")
    check_paths({"--kernel": None if blind else args.kernel, "--mask": args.mask})
    inputs = TaskInputs(kernel=task_file(args.kernel, "--kernel"), kernel_index=values["kernel_index"],
                        mask=task_file(args.mask, "--mask"), scale=values["scale"])  # fmt: skip
    options = request_options(args)
    overrides = method_overrides(args)
    runtime = runtime_options(args)
    plan = OutputPlan([*(src for src, _ in jobs), None if blind else args.kernel, args.mask, *(p for p in model_files(args).values())])
    for src, out in jobs:
        plan.add(out, "--output", suffixes=OUTPUT_SUFFIXES)
        plan.add(out.with_name(out.name + ".json"), "the run record")
    if args.save_kernel is not None:
        plan.add(args.save_kernel, "--save-kernel", suffixes=(".npy",))

    from .jobs import build_request

    requests = []
    for src, out in jobs:
        image = InputFile.from_path(src, "--input")
        request = build_request(args.task, image, inputs, args.method, overrides, options)
        if request.photo is not None and request.photo.alpha is not None and out.suffix.lower() in (".jpg", ".jpeg"):
            raise DiffPIRError(f"output {out}: JPEG cannot store the input's alpha channel; write a .png or .tif")
        requests.append((request, out))

    # 2. The runtime, the config, the restoration (a folder runs image by image on one Restorer).
    from .jobs import run_requests
    from .progress import Progress
    from .restorer import Restorer

    restorer = Restorer.from_options(runtime)
    configured = requests[0][0].configure(restorer)
    for note in configured.notes:
        if not args.quiet:  # said once, before the work; the run record keeps them either way
            print(f"[diffpir] {note}", file=sys.stderr)
    boundary_note = requests[0][0].boundary_note()
    if boundary_note:  # a warning about the result, said even with --quiet (as the Restorer's other notices), once
        restorer.say(boundary_note)
    calls = configured.config.model_calls() * len(requests)
    with Progress(calls, f"{args.task} ({configured.config.method})", unit="UNet call", enabled=not args.quiet) as progress:
        for request, out in requests:
            ((x, record),) = run_requests(restorer, [request], callback=progress.callback)
            _write_result(request, x, record, out, options.bit_depth, plan, args.save_kernel)
            if not args.quiet:
                path = record["runtime"]["path"]
                fallbacks = f"; {len(path['fallbacks'])} fallback(s)" if path["fallbacks"] else ""
                progress.write(f"restored {request.sources['input']} -> {out} ({record['model_calls']} UNet calls, "
                               f"{record['seconds']:.2f} s, {path['name']}{fallbacks})")  # fmt: skip
    return 0


def _write_result(request: Any, x: Any, record: dict[str, Any], out: Path, bit_depth: Optional[int], plan: Any,
                  save_kernel: Optional[Path] = None) -> None:  # fmt: skip
    from diffpir_rt.engine.imageio import write_npy, write_text

    from .jobs import output_image

    depth = bit_depth or request.bit_depth
    if out.suffix.lower() in (".jpg", ".jpeg", ".webp"):
        depth = 8
    record["bit_depth"] = depth
    record["grayscale"] = bool(request.photo.grayscale) if request.photo is not None else False
    record["alpha"] = request.photo is not None and request.photo.alpha is not None
    raw = out.suffix.lower() == ".npy"  # the restorer's own (3, H, W) values, unquantised
    with plan.transaction():
        write_output(out, x.cpu() if raw else output_image(request, x.cpu()), depth, plan.inputs)
        write_text(out.with_name(out.name + ".json"), json.dumps(record, indent=2) + "\n", protect=plan.inputs)
        if save_kernel is not None:
            import torch

            write_npy(save_kernel, torch.tensor(record["kernel_estimate"], dtype=torch.float64), protect=plan.inputs)


# ----------------------------------------------------------------------------- degrade


def add_degrade_parser(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    from diffpir_rt.engine import TASKS

    p = subparsers.add_parser(
        "degrade",
        description="Make y = H(x) + n as the official DiffPIR scripts do: Gaussian kernels with std "
        "3(1 + 2u) seeded by image index, motion kernels, circular blur of the 8-bit image (truncated), "
        "MATLAB bicubic downsampling for SR, box/random masks, additive Gaussian noise. Save to .npy to "
        "keep the noisy measurement unclipped and unquantised.",
        epilog=EXAMPLES_DEGRADE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--task", required=True, choices=tuple(TASKS), help="the degradation to apply")
    p.add_argument("--input", required=True, type=Path, help="clean image x")
    p.add_argument("--output", required=True, type=cliargs.output_path, help="measurement y (.png/.tif/.jpg/.webp or .npy)")
    variants = "; ".join(f"{t.name}: {', '.join(t.variants)}" for t in TASKS.values() if t.variants)
    p.add_argument("--kernel", default=None, help=f"a named kernel or a kernel file ({variants}; default: the first)")
    p.add_argument("--kernel-index", type=cliargs.non_negative_int, default=None, help="which kernel of a .mat file")
    p.add_argument("--index", type=cliargs.non_negative_int, default=0,
                   help="image index seeding the kernel draw (seed 10*index; default: %(default)s)")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None, help="sr: factor (default: 4)")
    p.add_argument("--mask", default=None, help="a named mask or a mask image (default: the first named)")
    p.add_argument("--mask-seed", type=cliargs.seed32, default=0, help="numpy seed of the mask draw (default: %(default)s, as the official script)")
    p.add_argument("--sigma-n", type=cliargs.unit_float, default=None, help="noise std in [0,1] units (default: the task's)")
    p.add_argument("--noise-seed", type=cliargs.seed32, default=0, help="numpy seed of the noise (default: %(default)s, as the official script)")
    p.add_argument("--save-kernel", type=cliargs.output_path, help="also write the kernel used (.npy)")
    p.add_argument("--save-mask", type=cliargs.output_path, help="also write the mask used (.png, 255 = observed)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="output bit depth for images (default: %(default)s)")
    p.set_defaults(handler=run_degrade)


def run_degrade(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from diffpir_rt.engine import degrade, get_task
    from diffpir_rt.engine.imageio import read_image, read_mask, write_image, write_npy
    from diffpir_rt.engine.paths import OutputPlan, check_input_file

    task = get_task(args.task)
    named = set(task.variants)
    task.check_inputs(kernel=args.kernel, mask=args.mask, scale=args.scale)
    check_input_file(args.input, "--input")
    kernel_file = mask_file = None
    if args.kernel is not None and args.kernel not in named:
        kernel_file = check_input_file(Path(args.kernel), "--kernel")
    if args.mask is not None and args.mask not in named:
        mask_file = check_input_file(Path(args.mask), "--mask")
    plan = OutputPlan([args.input, kernel_file, mask_file])
    plan.add(args.output, "--output", suffixes=OUTPUT_SUFFIXES)
    sigma_n = args.sigma_n if args.sigma_n is not None else task.default_sigma_n
    x = read_image(args.input).permute(1, 2, 0).numpy().astype(np.float64)  # (H, W, C) in [0, 1]
    options: dict[str, Any] = {"kernel_index": args.index, "mask_seed": args.mask_seed}
    if args.scale is not None:
        options["scale"] = args.scale
    if args.kernel is not None:
        options["kernel"] = degrade.load_kernel(kernel_file, args.kernel_index) if kernel_file else args.kernel
    if args.mask is not None:
        options["mask"] = read_mask(mask_file)[0].numpy().astype(np.float64) if mask_file else args.mask
    result = task.measure(x, sigma_n=sigma_n, noise_seed=args.noise_seed, **options)
    if args.save_kernel is not None and result.kernel is None:
        raise DiffPIRError(f"--save-kernel: --task {task.name} uses no kernel")
    if args.save_mask is not None and result.mask is None:
        raise DiffPIRError(f"--save-mask: --task {task.name} uses no mask")
    if args.save_kernel is not None:
        plan.add(args.save_kernel, "--save-kernel", suffixes=(".npy",))
    if args.save_mask is not None:
        plan.add(args.save_mask, "--save-mask", suffixes=(".png",))
    y_chw = torch.from_numpy(np.ascontiguousarray(result.y.transpose(2, 0, 1), dtype=np.float32))
    # Every path was checked above; the writes are atomic, so an error leaves nothing behind.
    with plan.transaction():
        write_output(args.output, y_chw, args.bit_depth, plan.inputs)
        if args.save_kernel is not None:
            write_npy(args.save_kernel, torch.from_numpy(np.asarray(result.kernel)), protect=plan.inputs)
        if args.save_mask is not None:
            write_image(args.save_mask, torch.from_numpy(np.asarray(result.mask, dtype=np.float32))[None], protect=plan.inputs)
    print(f"degraded {args.input} -> {args.output} ({task.name}, sigma_n {sigma_n:g})")
    return 0


# ----------------------------------------------------------------------------- generate


def add_generate_parser(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    from diffpir_rt.engine import DEFAULT_SAMPLER, config_class, generation_names, method_params

    names = generation_names()
    p = subparsers.add_parser(
        "generate",
        description="Unconditional samples of the diffusion prior, written as one grid image. Methods: " +
        "; ".join(f"{n}: {config_class(n).description}" for n in names),
        epilog=EXAMPLES_GENERATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--method", choices=names, default=DEFAULT_SAMPLER, help="sampler (default: %(default)s)")
    h = p.add_argument_group("sampler parameters (unset: the method's defaults)")
    cliargs.add_param_flags(h, {k: v for k, v in method_params(names).items() if k != "sigma_n"})
    p.add_argument("--num", type=cliargs.positive_int, default=16, help="how many images (default: %(default)s)")
    p.add_argument("--size", type=cliargs.positive_int, default=None, help="image side in pixels (default: the model's training size)")
    p.add_argument("--seed", type=cliargs.seed, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--output", required=True, type=cliargs.output_path, help="grid image (.png/.jpg/.tif/.webp)")
    add_runtime_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(handler=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from diffpir_rt.engine import config_class, generation_names, method_params
    from diffpir_rt.engine.imageio import write_image, write_text
    from diffpir_rt.engine.paths import MAX_NPY_ELEMENTS, OutputPlan

    runtime = runtime_options(args)
    plan = OutputPlan(list(model_files(args).values()))
    plan.add(args.output, "--output", suffixes=(".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"))
    record_path = plan.add(args.output.with_name(args.output.name + ".json"), "the run record")
    if args.size is not None and args.num * 3 * args.size**2 > MAX_NPY_ELEMENTS:  # refused before the model loads
        raise DiffPIRError(
            f"--num {args.num} --size {args.size}: {args.num * 3 * args.size**2:,} values; "
            f"at most {MAX_NPY_ELEMENTS:,} are generated at once"
        )
    cls = config_class(args.method)
    given = cliargs.given(args, tuple(method_params(generation_names())))
    unknown = sorted(set(given) - set(cls.field_names()) - {"steps"})
    if unknown:
        raise DiffPIRError(f"--{unknown[0].replace('_', '-')}: method {args.method} has no such parameter")
    if "steps" in given:
        given[cls.budget] = given.pop("steps")
    config = cls(**given)

    from .progress import Progress
    from .restorer import Restorer

    restorer = Restorer.from_options(runtime)
    size = args.size or restorer.denoiser_size()
    start = time.perf_counter()
    with Progress(config.model_calls(), f"generate ({args.method})", unit="UNet call", enabled=not args.quiet) as progress:
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


def image_grid(images: Any, columns: Optional[int] = None, gap: int = 2) -> Any:
    """(B, C, H, W) in [0, 1] -> one (C, rows*H, columns*W) grid with white gaps."""
    import math

    import torch

    batch, channels, height, width = images.shape
    columns = columns or int(math.ceil(math.sqrt(batch)))
    rows = -(-batch // columns)
    grid = torch.ones(channels, rows * (height + gap) - gap, columns * (width + gap) - gap)
    for i in range(batch):
        r, c = divmod(i, columns)
        grid[:, r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = images[i]
    return grid


# ----------------------------------------------------------------------------- registration


def add_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    """Register `restore`, `degrade` and `generate` (called by diffpir_rt.cli)."""
    add_restore_parser(subparsers, argv)
    add_degrade_parser(subparsers, argv)
    add_generate_parser(subparsers, argv)
