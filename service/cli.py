"""`diffpir serve`, `diffpir request` and `diffpir batch`, plugged into `diffpir` by diffpir_rt/cli.py.

Ray is imported inside the handlers only, so `diffpir --help` and every other command
work without it; `diffpir serve`/`batch` without it say which extra to install.
"""

from __future__ import annotations


import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from diffpir_rt.engine import DEFAULT_METHOD
from diffpir_rt import cliargs
from diffpir_rt.errors import DiffPIRError

EXAMPLES_SERVE = """examples:
  diffpir serve                                   # the bundled prior on 127.0.0.1:8000, this machine's Ray
  diffpir serve --checkpoint ffhq_10m.pt --arch ffhq_10m --device cuda --replicas 4 --gpus-per-replica 1
  diffpir serve --autoscale 1:8 --target-queue 8 --token-file token.txt --host 0.0.0.0
  diffpir serve --checkpoint ffhq_10m.pt --gpus-per-replica 1 --replicas 8 --print-config > serve.yaml
      # then, on a cluster: ray start --head ... ; serve deploy serve.yaml
"""
EXAMPLES_REQUEST = """examples:
  diffpir request --task deblur --input blurry.png --kernel k.npy --output restored.png --seed 3
  diffpir request --url http://gpu-box:8000 --token-file token.txt --task sr --scale 4 --input small.png --output big.png
  diffpir request --info
"""
EXAMPLES_BATCH = """examples:
  diffpir batch --task deblur --kernel k.npy --input blurry/ --output restored/
  diffpir batch --task inpaint --input list.txt --output filled/     # list: one 'image<TAB>mask' per line
  diffpir batch --task sr --scale 4 --input small/ --output big/ --address auto --workers 8 --gpus-per-worker 1
"""


def byte_size(text: str) -> int:
    """An argparse type: a byte count with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    t = text.strip().lower().rstrip("b").rstrip("i")
    factor = units.get(t[-1:], 1) if t else 1
    number = t[:-1] if t[-1:] in units else t
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 32M or 1048576, got {text!r}") from None
    if value < 1024:
        raise argparse.ArgumentTypeError(f"expected at least 1K, got {text!r}")
    return value


def replicas_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        pair = (int(low), int(high)) if sep else (1, int(low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX, got {text!r}") from None
    if pair[0] < 0 or pair[1] < max(1, pair[0]):
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return pair


non_negative_float = cliargs.in_range(float, 0.0, float("inf"))


def _restore_flags(p: argparse.ArgumentParser) -> None:
    """The restore command's task, method, hyperparameter and request flags (generated from the
    declarations, as `diffpir restore` and the service's form fields)."""
    from diffpir_rt.runtime import add_method_flags, add_request_flags, add_task_flags

    add_task_flags(p)
    add_method_flags(p)
    add_request_flags(p.add_argument_group("request"))


# ----------------------------------------------------------------------------- serve


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    from diffpir_rt.runtime import add_runtime_flags

    from .settings import ServeSettings

    d = ServeSettings()
    p = subparsers.add_parser(
        "serve",
        description="Serve restorations over HTTP with Ray Serve: POST /v1/restore (multipart form: image, task, "
        "kernel, mask, scale, method, seed and each method's parameters, as the flags of `diffpir restore`), GET /v1/info "
        "(tasks, methods, parameters and defaults), GET /healthz. Requests that "
        "can share a batch are batched; replicas spread over GPUs and machines. Needs the serve extra "
        '(pip install "diffpir-rt[serve]"). docs/service.md has the API and the multi-node recipe.',
        epilog=EXAMPLES_SERVE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_runtime_flags(p)
    n = p.add_argument_group("network and cluster")
    n.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s, this machine only)")
    n.add_argument("--port", type=cliargs.in_range(int, 1, 65535), default=d.port, help="HTTP port (default: %(default)s)")
    n.add_argument("--address", default=None, help="an existing Ray cluster (e.g. auto, or HOST:6379); default: start a local Ray of its own")
    n.add_argument("--num-cpus", type=cliargs.positive_int, default=None, help="CPUs of the local Ray instance (default: all)")
    n.add_argument("--metrics-port", type=cliargs.in_range(int, 1, 65535), default=None,
                   help="Prometheus metrics port of the local Ray instance (default: none; on a cluster, Ray's own)")
    n.add_argument("--token-file", type=Path, default=None,
                   help="require 'Authorization: Bearer <token>' with the token in this file (or $DIFFPIR_SERVE_TOKEN)")
    s = p.add_argument_group("scale")
    s.add_argument("--replicas", type=cliargs.positive_int, default=d.replicas, help="restorer replicas (default: %(default)s)")
    s.add_argument("--autoscale", type=replicas_range, default=None, metavar="MIN:MAX",
                   help="autoscale restorer replicas between MIN and MAX on queue length (instead of --replicas)")
    s.add_argument("--target-queue", type=cliargs.positive_float, default=d.target_queue,
                   help="autoscaling: requests per replica to aim for (default: %(default)s)")
    s.add_argument("--gpus-per-replica", type=non_negative_float, default=None,
                   help="GPUs per restorer replica (default: 1 with --device cuda or a local GPU, else 0)")
    s.add_argument("--cpus-per-replica", type=cliargs.positive_float, default=None,
                   help="CPUs reserved per restorer replica (default: 1 with GPUs, else this machine's CPUs / replicas)")
    s.add_argument("--ingress-replicas", type=cliargs.positive_int, default=d.ingress_replicas,
                   help="HTTP ingress replicas (parsing, no model; default: %(default)s)")
    b = p.add_argument_group("batching")
    b.add_argument("--max-batch-size", type=cliargs.positive_int, default=d.max_batch_size,
                   help="most requests per batch (default: %(default)s)")
    b.add_argument("--batch-wait-ms", type=non_negative_float, default=d.batch_wait_ms,
                   help="how long a batch waits to fill (default: %(default)s ms)")
    b.add_argument("--pad-batches", choices=("auto", "on", "off"), default=d.pad_batches,
                   help="pad batches to the captured CUDA-graph sizes 1, 2, 4, ... (auto: on CUDA; default: %(default)s)")
    lim = p.add_argument_group("limits (per request)")
    lim.add_argument("--max-pixels", type=cliargs.positive_int, default=d.max_pixels,
                     help="largest restored image in pixels (default: %(default)s)")
    lim.add_argument("--max-body-bytes", type=byte_size, default=d.max_body_bytes,
                     help="largest request body, e.g. 32M (default: %(default)s)")
    lim.add_argument("--max-steps", type=cliargs.num_steps, default=d.max_steps, help="most steps a request may ask (default: %(default)s)")
    lim.add_argument("--max-queued", type=cliargs.positive_int, default=d.max_queued,
                     help="requests queued per replica before 429 (default: %(default)s)")
    lim.add_argument("--request-timeout", type=cliargs.positive_float, default=d.request_timeout_s,
                     help="seconds a request may take before 504 (default: %(default)s)")
    lim.add_argument("--read-timeout", type=cliargs.positive_float, default=d.read_timeout_s,
                     help="seconds a request's body may take to arrive before 408 (default: %(default)s)")
    lim.add_argument("--drain-timeout", type=non_negative_float, default=d.drain_timeout_s,
                     help="seconds in-flight requests get to finish on SIGINT/SIGTERM (default: %(default)s)")
    p.add_argument("--print-config", action="store_true",
                   help="print a Ray Serve config (YAML) for `serve deploy` on a cluster, and exit")
    p.set_defaults(handler=run_serve)


def settings_from_args(args: argparse.Namespace) -> Any:
    """ServeSettings from `diffpir serve` flags, with the cheap checks of `diffpir restore`."""
    from diffpir_rt.runtime import runtime_options

    from .settings import ServeSettings, hash_token, options_dict, read_token

    runtime = runtime_options(args)  # the model files checked, one source, a known arch
    device = runtime.device
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if device.startswith("cuda") or (device == "auto" and _local_gpu()) else 0.0
    if gpus > 0 and device == "cpu":
        raise DiffPIRError("--gpus-per-replica: does not apply to --device cpu")
    if device.startswith("cuda") and gpus == 0 and args.address is not None:
        raise DiffPIRError(f"--device {device} on a cluster: give --gpus-per-replica so Ray places replicas on GPUs")
    most = args.autoscale[1] if args.autoscale else args.replicas
    cpus = args.cpus_per_replica
    if cpus is None:
        cpus = 1.0 if gpus > 0 else max(0.5, (args.num_cpus or os.cpu_count() or 1) // most or 0.5)
    model = options_dict(runtime)
    if model.get("threads") is None and gpus == 0 and most > 1 and args.address is None:
        from diffpir_rt.engine import physical_cores

        model["threads"] = max(1, physical_cores() // most)  # replicas on one machine share its cores
    token = read_token(args.token_file)
    return ServeSettings(
        model=model,
        max_pixels=args.max_pixels, max_body_bytes=args.max_body_bytes, max_steps=args.max_steps,
        max_queued=max(args.max_queued, args.max_batch_size), request_timeout_s=args.request_timeout,
        read_timeout_s=args.read_timeout,
        max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, pad_batches=args.pad_batches,
        replicas=args.replicas, autoscale_min=args.autoscale[0] if args.autoscale else None,
        autoscale_max=args.autoscale[1] if args.autoscale else None, target_queue=args.target_queue,
        gpus_per_replica=gpus, cpus_per_replica=cpus, ingress_replicas=args.ingress_replicas,
        host=args.host, port=args.port, token_sha256=hash_token(token) if token else None,
        drain_timeout_s=args.drain_timeout,
    )  # fmt: skip


def _local_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.print_config:
        from .settings import serve_config

        text = _yaml(serve_config(settings))
        sys.stdout.write(text)
        return 0
    from .server import Server

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    return Server(settings, address=args.address, num_cpus=args.num_cpus, metrics_port=args.metrics_port, say=say).run()


def _yaml(data: Any) -> str:
    try:
        import yaml
    except ImportError:  # JSON is YAML too
        return json.dumps(data, indent=2) + "\n"
    header = "# Ray Serve config from `diffpir serve --print-config`; deploy with `serve deploy serve.yaml`.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------- request


def add_request_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "request",
        description="Call a DiffPIR-RT server: restore one image (the flags of `diffpir restore`; the output is the "
        "server's PNG and <output>.json its run record), or print its --info / --health.",
        epilog=EXAMPLES_REQUEST,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--url", default=None, help="the server (default: $DIFFPIR_SERVER, else http://127.0.0.1:8000)")
    p.add_argument("--token-file", type=Path, default=None, help="bearer token file (default: $DIFFPIR_SERVE_TOKEN)")
    p.add_argument("--timeout", type=cliargs.positive_float, default=600.0, help="seconds to wait (default: %(default)s)")
    p.add_argument("--retries", type=cliargs.non_negative_int, default=3,
                   help="retries on 429/503 or a dropped connection, with backoff (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--info", action="store_true", help="print GET /v1/info and exit")
    mode.add_argument("--health", action="store_true", help="print GET /healthz and exit")
    p.add_argument("--input", type=Path, default=None, help="measurement y (PNG/JPEG/TIFF/WebP or .npy)")
    p.add_argument("--output", type=Path, default=None, help="restored image (.png); <output>.json records the run")
    from diffpir_rt.runtime import add_method_flags, add_request_flags, add_task_flags

    add_task_flags(p, required=False)  # --task: not needed with --info / --health (checked in run_request)
    add_method_flags(p)
    add_request_flags(p.add_argument_group("request"))
    p.add_argument("--quiet", action="store_true", help="no progress while waiting")
    p.set_defaults(handler=run_request)


def _token(token_file: Optional[Path]) -> Optional[str]:
    if token_file is None:
        return None
    from .settings import read_token

    return read_token(token_file)


def run_request(args: argparse.Namespace) -> int:
    from diffpir_rt.client import Client, wait_printer

    client = Client(args.url, token=_token(args.token_file), timeout=args.timeout, retries=args.retries,
                    on_wait=None if args.quiet else wait_printer(sys.stderr))  # fmt: skip
    if args.info or args.health:
        print(json.dumps(client.info() if args.info else client.health(), indent=2))
        return 0
    missing = [flag for flag, value in (("--task", args.task), ("--input", args.input), ("--output", args.output)) if value is None]
    if missing:
        raise DiffPIRError(f"{', '.join(missing)}: required to restore (or use --info / --health)")
    from diffpir_rt.engine import paths
    from diffpir_rt.runtime import check_paths, method_overrides, task_values

    from diffpir_rt.runtime import is_auto

    kernel = "auto" if args.kernel is not None and is_auto(str(args.kernel)) else args.kernel  # --kernel auto: a text field
    check_paths({"--input": args.input, "--kernel": None if isinstance(kernel, str) else kernel, "--mask": args.mask})
    plan = paths.OutputPlan([args.input, None if isinstance(kernel, str) else kernel, args.mask])
    plan.add(args.output, "--output", suffixes=(".png",))
    record_path = plan.add(args.output.with_name(args.output.name + ".json"), "the run record")
    # the form's fields are the flags' names (generated from the same declarations)
    values = {k: v for k, v in task_values(args).items() if k not in ("kernel", "mask")}
    fields = {**values, "method": args.method, **method_overrides(args), **cliargs.given(args, ("seed", "boundary", "bit_depth"))}
    result = client.restore(args.input, args.task, kernel=kernel, mask=args.mask, **fields)
    from diffpir_rt.engine import write_text

    from .batch import write_atomic

    with plan.transaction():
        write_atomic(args.output, result.image)
        write_text(record_path, json.dumps(result.record, indent=2) + "\n", protect=plan.inputs)
    path = result.record.get("runtime", {}).get("path", {}).get("name", "?")
    print(f"restored {args.input} -> {args.output} (batch of {result.record.get('batch_size')}, "
          f"{result.record.get('seconds')} s, {path}, request {result.request_id})")  # fmt: skip
    return 0


# ----------------------------------------------------------------------------- batch


def add_batch_parser(subparsers: argparse._SubParsersAction) -> None:
    from diffpir_rt.runtime import add_runtime_flags

    p = subparsers.add_parser(
        "batch",
        description="Restore every image of a folder (recursively) or of a list file with Ray Data: map_batches over "
        "Restorer actors, one per GPU or CPU slot. Outputs are <output>/<relative name>.png with a .json run record; "
        "a rerun skips what is done; a file that fails is listed with its reason and never stops the job. "
        'Needs the serve extra (pip install "diffpir-rt[serve]").',
        epilog=EXAMPLES_BATCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input", required=True, type=Path, help="a folder, or a list file (one 'image[<TAB>kernel-or-mask]' per line)")
    p.add_argument("--output", required=True, type=Path, help="output folder")
    _restore_flags(p)  # --kernel / --mask: one file for every image (a list file pairs its own per image)
    p.add_argument("--format", choices=tuple(OUTPUT_FORMATS_CHOICES), default="png", help="output format (default: %(default)s)")
    add_runtime_flags(p)
    r = p.add_argument_group("Ray")
    r.add_argument("--address", default=None, help="an existing Ray cluster (auto, or HOST:6379); default: a local Ray for this job")
    r.add_argument("--workers", type=cliargs.positive_int, default=None,
                   help="Restorer actors (default: one per GPU, else 1)")
    r.add_argument("--gpus-per-worker", type=non_negative_float, default=None, help="default: 1 with GPUs, else 0")
    r.add_argument("--cpus-per-worker", type=cliargs.positive_float, default=1.0, help="default: %(default)s")
    r.add_argument("--batch-size", type=cliargs.positive_int, default=8, help="images per map_batches call (default: %(default)s)")
    r.add_argument("--num-cpus", type=cliargs.positive_int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress, only the summary")
    p.set_defaults(handler=run_batch)


OUTPUT_FORMATS_CHOICES = ("png", "tif", "jpg")


def run_batch(args: argparse.Namespace) -> int:
    from diffpir_rt.runtime import check_paths, method_overrides, request_options, resolve_boundary, runtime_options

    from diffpir_rt.engine import AUTO, estimating_method
    from diffpir_rt.runtime import is_auto

    from .batch import SUMMARY_NAME, list_jobs, run_batch_job, write_atomic
    from .settings import options_dict

    blind = args.kernel is not None and is_auto(str(args.kernel))  # --kernel auto: estimated per image
    if blind:
        args.method = estimating_method("kernel", args.task, args.method)
    check_paths({"--kernel": None if blind else args.kernel, "--mask": args.mask})
    runtime = runtime_options(args)
    options = request_options(args)
    resolve_boundary(args.task, options.boundary, args.method or DEFAULT_METHOD)
    if args.format == "jpg" and args.bit_depth == 16:
        raise DiffPIRError("--bit-depth 16: JPEG holds 8 bits; use --format png or tif")
    jobs = list_jobs(args.input, args.output, args.format)
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if runtime.device.startswith("cuda") or (runtime.device == "auto" and _local_gpu()) else 0.0
    workers = args.workers
    if workers is None:
        workers = max(1, _gpu_count()) if gpus > 0 else 1
    model = options_dict(runtime)
    if gpus > 0 and runtime.device == "auto":
        model["device"] = "cuda"
    task = {"task": args.task, "method": args.method or DEFAULT_METHOD, "overrides": method_overrides(args),
            "seed": options.seed, "boundary": options.boundary,
            "kernel": AUTO if blind else str(args.kernel.resolve()) if args.kernel else None, "kernel_index": args.kernel_index,
            "mask": str(args.mask.resolve()) if args.mask else None, "scale": args.scale,
            "bit_depth": options.bit_depth, "format": args.format}  # fmt: skip
    summary = run_batch_job(jobs, model, task, address=args.address, workers=workers, cpus_per_worker=args.cpus_per_worker,
                            gpus_per_worker=gpus, batch_size=args.batch_size, num_cpus=args.num_cpus,
                            progress=not args.quiet)  # fmt: skip
    failed = summary["failed"]
    rate = f" ({summary['images_per_s']:.3g} images/s once Ray was up)" if summary["restored"] else ""
    print(f"diffpir batch: {summary['restored']} restored, {summary['skipped']} skipped (done before), "
          f"{len(failed)} failed of {summary['inputs']} in {summary['seconds']:.1f} s{rate} -> {args.output}")  # fmt: skip
    for entry in failed:
        print(f"  failed: {entry['input']}: {entry['reason']}")
    if summary["restored"] or failed:
        args.output.mkdir(parents=True, exist_ok=True)
        write_atomic(args.output / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return 1 if failed else 0


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


# ----------------------------------------------------------------------------- registration


def add_parsers(subparsers: argparse._SubParsersAction, argv: Sequence[str] = ()) -> None:
    """Register `serve`, `request` and `batch` (called by diffpir_rt.cli)."""
    add_serve_parser(subparsers)
    add_request_parser(subparsers)
    add_batch_parser(subparsers)
