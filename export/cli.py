"""`diffpir export onnx | trt`: thin handlers over `export_onnx` and `build_engine`.

Registered by diffpir_rt/cli.py through `add_parsers`. Every argument is checked
before a model is loaded; DiffPIRErrors become one line on stderr and exit 2.
"""

from __future__ import annotations

from typing import Sequence

import argparse
import json
from pathlib import Path

from diffpir_rt.engine import DEFAULT_CHECKPOINT_ARCH, arch_names
from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError

EXAMPLES_ONNX = """examples:
  diffpir export onnx --checkpoint ffhq_10m.pt --arch ffhq_10m --output unet.onnx
  diffpir export onnx --checkpoint ffhq_10m.pt --arch ffhq_10m --output unet_fp16.onnx --dtype fp16
  diffpir export onnx --output unet_int8.onnx --dtype int8 --calibration photos/   # bundled prior, int8 for CPUs
  diffpir export onnx --arch ffhq_10m --random-weights --output bench.onnx   # benchmarks only
"""
EXAMPLES_TRT = """examples:
  diffpir export trt --onnx unet_fp16.onnx --output unet.plan --dtype fp16 --batch 1:1:4 --height 128:256:512 --width 128:256:512
  diffpir restore --task deblur --input y.png --kernel k.npy --output x.png --backend tensorrt --engine unet.plan --device cuda
"""


def add_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    from .options import CALIBRATION_METHODS, DEFAULT_OPSET, OPSETS

    export = subparsers.add_parser(
        "export",
        description="Deployment artifacts, each with a sidecar JSON (<artifact>.json) that records what it was made from.",
    )
    stages = export.add_subparsers(dest="stage", required=True, metavar="STAGE")

    p = stages.add_parser(
        "onnx",
        help="torch UNet -> ONNX denoiser graph (x_t, t) -> eps, parity-checked with ONNX Runtime",
        description="Export the UNet as an ONNX graph taking x_t (float32, B x C x H x W, [-1, 1]) and t "
        "(int64, B) and returning eps only. ONNX Runtime is checked against torch at two shapes before "
        "anything is written; the measured parity goes to <output>.json.",
        epilog=EXAMPLES_ONNX,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", required=True, type=cliargs.output_path, help="the .onnx file to write")
    p.add_argument("--checkpoint", type=Path, help="UNet weights (.pt/.safetensors); default: the bundled prior")
    p.add_argument("--arch", choices=arch_names(), default=None,
                   help=f"UNet preset of --checkpoint or --random-weights (default for those: {DEFAULT_CHECKPOINT_ARCH})")
    p.add_argument("--random-weights", action="store_true", help="export randomly initialised weights (benchmarks only)")
    p.add_argument("--seed", type=cliargs.seed, default=0, help="seed of --random-weights (default: 0)")
    p.add_argument("--opset", type=int, choices=list(OPSETS), default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--dtype", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="the graph's precision, as `diffpir restore --dtype`: fp32; fp16 (GroupNorm and softmax stay fp32, "
                   "I/O fp32); int8: ONNX Runtime static int8 (QDQ, per-channel weights) of the convolutions, calibrated "
                   "over the whole timestep range, parity-checked against the fp32 graph (default: %(default)s)")  # fmt: skip
    p.add_argument("--calibration", type=Path, nargs="+", default=None, metavar="PATH",
                   help="--dtype int8: calibration images or folders of them (default: images the model draws itself)")
    p.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default="minmax",
                   help="--dtype int8: how activation ranges are chosen (default: minmax)")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis to --batch (default: dynamic)")
    p.add_argument("--static-size", action="store_true",
                   help="fix H and W to --height x --width (default: dynamic, any multiple of the UNet's size multiple)")
    p.add_argument("--batch", type=cliargs.positive_int, default=1, help="traced batch (the fixed one with --static-batch; default: 1)")
    p.add_argument("--height", type=cliargs.positive_int, help="traced height (default: the arch's image_size)")
    p.add_argument("--width", type=cliargs.positive_int, help="traced width (default: the arch's image_size)")
    p.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                   help="weights in <output>.data beside the .onnx (auto: above ~1.8 GB, e.g. imagenet256_uncond)")
    p.set_defaults(handler=run_export_onnx)

    p = stages.add_parser(
        "trt",
        help="ONNX -> TensorRT engine plan (needs an NVIDIA GPU and tensorrt)",
        description="Build a TensorRT plan with one optimization profile. A plan whose sidecar key (ONNX hash, "
        "TensorRT version, GPU, precision, profile) matches is reused; otherwise it is rebuilt. Ranges are "
        "N (fixed) or MIN:OPT:MAX; sizes must be multiples of the UNet's size multiple.",
        epilog=EXAMPLES_TRT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--onnx", required=True, type=Path, help="graph from `diffpir export onnx`")
    p.add_argument("--output", required=True, type=cliargs.output_path, help="the .plan file to write")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp32",
                   help="the engine's precision, as `diffpir restore --dtype` (an fp16 ONNX is built fp16 regardless; default: %(default)s)")
    p.add_argument("--batch", help="batch range (default: the ONNX's fixed batch, else 1:1:4)")
    p.add_argument("--height", help="height range (default: the ONNX's fixed size, else opt/2:opt:2opt around the traced size)")
    p.add_argument("--width", help="width range (as --height)")
    p.add_argument("--timing-cache", type=Path, help="timing cache to read and update (default: beside the plan, per TensorRT version and GPU)")
    p.add_argument("--workspace", type=float, default=8.0, help="builder workspace in GiB (default: 8)")
    p.add_argument("--device", default="cuda", help="CUDA device to build for (default: cuda)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached plan matches")
    p.set_defaults(handler=run_export_trt)


def run_export_onnx(args: argparse.Namespace) -> int:
    from diffpir_rt.engine import resolve_arch

    from diffpir_rt.engine.artifacts import read_sidecar
    from .onnx_export import OnnxExportConfig, export_onnx, iter_parity_lines
    from .quantize import IMAGE_SUFFIXES, Int8Config, export_int8, iter_int8_lines

    from diffpir_rt.engine.paths import OutputPlan, check_input_file

    if args.checkpoint is not None and args.random_weights:
        raise DiffPIRError("--random-weights: conflicts with --checkpoint; pass one of them")
    int8 = args.dtype == "int8"
    if not int8 and (args.calibration is not None or args.calibration_method != "minmax"):
        raise DiffPIRError("--calibration/--calibration-method: apply to --dtype int8 only")
    if int8 and args.external_data == "always":
        raise DiffPIRError("--external-data always: an int8 graph keeps its weights inline")
    if args.checkpoint is not None:
        check_input_file(args.checkpoint, "--checkpoint")
    calibration = []
    for given in args.calibration or ():
        if given.is_dir():
            calibration += sorted(p for p in given.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            check_input_file(given, "--calibration")
            calibration.append(given)
    if args.calibration is not None and not calibration:
        raise DiffPIRError(f"--calibration {args.calibration[0]}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    # Every file the export writes, checked before the model is loaded; removed again if it fails.
    plan = OutputPlan([args.checkpoint, *calibration])
    plan.add(args.output, "--output", suffixes=(".onnx",))
    plan.add(args.output.with_name(args.output.name + ".json"), "the sidecar")
    plan.add(args.output.with_name(args.output.name + ".data"), "the external data file")
    if args.arch is not None:
        resolve_arch(args.arch)
    config = OnnxExportConfig(
        opset=args.opset,
        precision="fp16" if args.dtype == "fp16" else "fp32",
        dynamic_batch=not args.static_batch,
        dynamic_size=not args.static_size,
        batch=args.batch,
        height=args.height,
        width=args.width,
        external_data={"auto": None, "always": True, "never": False}[args.external_data],
    )
    with plan.transaction():
        if int8:
            path = export_int8(args.checkpoint, args.output, config, Int8Config(method=args.calibration_method), calibration, arch=args.arch,
                               random_weights=args.random_weights, seed=args.seed)  # fmt: skip
        else:
            path = export_onnx(args.checkpoint, args.output, config, arch=args.arch, random_weights=args.random_weights,
                               seed=args.seed)  # fmt: skip
    record = read_sidecar(path, "onnx")
    if int8:
        print(f"exported {record['arch']} (int8, from an fp32 export parity-checked against torch) -> {path}")
        for line in iter_int8_lines(record):
            print(line)
        print(f"sidecar: {path.name}.json (onnx sha256 {record['onnx_sha256'][:16]}...)")
        return 0
    print(f"exported {record['arch']} ({record['export']['precision']}, opset {record['export']['opset']}) -> {path}")
    for line in iter_parity_lines(record):
        print(line)
    print(f"sidecar: {path.name}.json (onnx sha256 {record['onnx_sha256'][:16]}...)")
    return 0


def run_export_trt(args: argparse.Namespace) -> int:
    from diffpir_rt.engine.artifacts import read_sidecar
    from .tensorrt_build import build_engine, parse_range

    from diffpir_rt.engine.paths import OutputPlan, check_input_file

    check_input_file(args.onnx, "--onnx")
    outputs = OutputPlan([args.onnx, args.onnx.with_name(args.onnx.name + ".json")])
    outputs.add(args.output, "--output")
    outputs.add(args.output.with_name(args.output.name + ".json"), "the sidecar")
    if not 0 < args.workspace < float("inf"):
        raise DiffPIRError(f"--workspace {args.workspace}: expected a positive number of GiB")
    ranges = {
        name: None if getattr(args, name) is None else parse_range(getattr(args, name), f"--{name}")
        for name in ("batch", "height", "width")
    }
    with outputs.transaction():
        plan = build_engine(
            args.onnx,
            args.output,
            fp16=args.dtype == "fp16",
            timing_cache=args.timing_cache,
            device=args.device,
            workspace_gib=args.workspace,
            force=args.force,
            **ranges,
        )
    record = read_sidecar(plan, "engine")
    key = record["key"]
    print(f"engine {plan}: {key['precision']} on {key['gpu_name']} (sm {key['compute_capability']}), TensorRT {key['tensorrt_version']}")
    print("profile: " + json.dumps(record["profile"]))
    return 0
