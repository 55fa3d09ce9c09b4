"""Quality benchmark: DiffPIR against classical baselines on the official degradations (docs/algorithm.md §7, §9).

`evaluate` restores a list of test images for one task with DiffPIR and/or baselines
and scores them (PSNR/SSIM on uint8, optional LPIPS), one image at a time with the
image's own seed. `diffpir eval` (= `python -m diffpir_rt.benchmarks.quality`) runs it over test
sets x tasks x noise levels and writes results.json first, then per_image.csv,
summary.md, image grids, or with --ablation the steps and λ x ζ sweeps with a plot.
Examples: see EXAMPLES (`diffpir eval --help`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

import diffpir_rt
from diffpir_rt.engine import DiffPIRConfig, DiffPIRError, UNetDenoiser, build_unet, load_unet, sample
from diffpir_rt.engine import argtypes
from diffpir_rt.engine import defaults_for, resolve_device

from . import baselines, metrics
from . import quality_report as report
from .protocol import (
    NOISE_LEVELS,
    TASK_LABELS,
    TESTSETS,
    Measurement,
    TaskSpec,
    TestImage,
    load_images,
    make_measurement,
    task_matrix,
)

logger = logging.getLogger(__name__)

SCHEMA = "diffpir-rt.quality/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ROOT = Path(__file__).resolve().parent / "results" / "quality"
#: Where --dataset names are looked up: $DIFFPIR_TESTSETS, else the project's shared/data/testsets.
TESTSETS_ENV = "DIFFPIR_TESTSETS"
METHOD_ALIASES = {"baselines": tuple(baselines.BASELINES), "all": (*baselines.BASELINES, "diffpir")}
ABLATION_STEPS = (5, 10, 20, 50, 100)
ABLATION_LAM = (1.0, 4.0, 7.0, 13.0)
ABLATION_ZETA = (0.1, 0.3, 0.6, 1.0)
ABLATION_TASKS = ("gaussian_deblur", "sr4")

BASELINE_NOTES = {
    "measurement": "y itself (same-size tasks), clipped and rounded.",
    "wiener": "skimage.restoration.wiener per channel, Laplacian regulariser, balance = 50 (σ_n² + σ_q²), σ_q = 1/(255√12); "
    "skimage's FFT transfer function equals the official circular blur.",
    "unsupervised_wiener": "skimage.restoration.unsupervised_wiener per channel (self-tuned), rng = image seed.",
    "bicubic": "MATLAB-style bicubic ×sf upsampling (engine.degrade.imresize).",
    "biharmonic": "skimage.restoration.inpaint_biharmonic of the missing pixels.",
    "tv": "skimage denoise_tv_chambolle, weight 0.8 σ_n.",
    "nlmeans": "skimage denoise_nl_means, h = 0.8 σ_n, 5×5 patches, 13×13 search, fast mode.",
    "datastep": "DiffPIR's data step with no prior: operator.prox(init_estimate(y), y, ρ) with ρ = λ max(σ_n, 0.001)² / σ̄_t² "
    "at the schedule's last t > 0 (the sampler's last data step), same λ/steps as DiffPIR.",
    "diffpir": "DiffPIR (engine.sample), seed = run seed + image index.",
}


# ----------------------------------------------------------------------------- evaluate


@dataclass
class ImageResult:
    """One image's scores per method; with keep_outputs, also its uint8 images for grids and FID."""

    dataset: str
    image: str
    index: int
    task: str
    sigma_n: float
    seed: int
    metrics: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)
    outputs: Optional[dict[str, np.ndarray]] = None
    gt: Optional[np.ndarray] = None
    measurement: Optional[np.ndarray] = None

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """Flat per-(image, method) rows, JSON-safe."""
        head = {"dataset": self.dataset, "image": self.image, "index": self.index, "task": self.task, "sigma_n": self.sigma_n}
        return [
            {**head, "method": method, **extra, **{k: report.clean_number(v) for k, v in scores.items()}}
            for method, scores in self.metrics.items()
        ]


def applicable_methods(task: TaskSpec, requested: Optional[Sequence[str]], with_model: bool) -> list[str]:
    """Methods to run for `task`, in report order: the requested ones that apply to it."""
    names = list(requested) if requested is not None else [*baselines.BASELINES, *(["diffpir"] if with_model else [])]
    for name in names:
        if name != "diffpir" and name not in baselines.BASELINES:
            raise DiffPIRError(f"method {name!r}: expected one of {[*baselines.BASELINES, 'diffpir']}")
    order = [*baselines.BASELINES, "diffpir"]
    return [n for n in order if n in names and (n == "diffpir" or baselines.applies(n, task.task))]


def restore_diffpir(model: Callable, m: Measurement, config: DiffPIRConfig, device: torch.device | str = "cpu") -> np.ndarray:
    """DiffPIR restoration of one measurement: (H, W, 3) float64 in [0, 1]."""
    x = sample(model, m.operator, m.y_tensor(device), config, seed=m.seed)
    return x[0].permute(1, 2, 0).to("cpu", torch.float64).numpy()


def score(gt_uint8: np.ndarray, out_uint8: np.ndarray, border: int, lpips: Optional[metrics.LpipsFn] = None) -> dict[str, Optional[float]]:
    """PSNR, SSIM (and LPIPS) of one uint8 output against its uint8 ground truth."""
    scores: dict[str, Optional[float]] = {
        "psnr": metrics.psnr(gt_uint8, out_uint8, border),
        "ssim": metrics.ssim(gt_uint8, out_uint8, border),
    }
    if lpips is not None:
        scores["lpips"] = lpips(metrics.shave(gt_uint8, border), metrics.shave(out_uint8, border))
    return scores


def evaluate(
    model: Optional[Callable],
    task: TaskSpec,
    images: Sequence[TestImage],
    config: Optional[DiffPIRConfig],
    *,
    methods: Optional[Sequence[str]] = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    lpips: Optional[metrics.LpipsFn] = None,
    keep_outputs: bool = False,
    progress: Optional[Callable[[], None]] = None,
) -> list[ImageResult]:
    """Restore and score each image for one task; no number depends on the other images.

    Restoration and scoring are separate passes per image: every method's output is
    quantised to uint8 first, then scored against the uint8 ground truth.

    Args:
        model: an eps-model (x_t, t) -> eps for DiffPIR, or None to run baselines only.
        task: the degradation and noise level.
        images: test images; each keeps its own index (kernel, mask and seeds come from it).
        config: DiffPIR hyperparameters (also the datastep baseline's λ and steps); its
            sigma_n should be task.sigma_n (see `hyperparameters`).
        methods: names from baselines.BASELINES and "diffpir"; those that do not apply to
            the task are skipped; default: all that apply (diffpir if model is given).
        seed: run seed; image i uses seed + index.
        lpips: an LPIPS scorer (metrics.load_lpips), or None.
        keep_outputs: keep uint8 ground truth and outputs, and the measurement, per image.
        progress: called once per image.

    Returns:
        One ImageResult per image, in input order, with metrics[method] = {psnr, ssim[, lpips]}.
    """
    names = applicable_methods(task, methods, model is not None)
    if "diffpir" in names and model is None:
        raise DiffPIRError("method diffpir: needs a model (a checkpoint, the bundled prior or --random-weights)")
    if config is None and ("diffpir" in names or "datastep" in names):
        raise DiffPIRError("evaluate: methods diffpir and datastep need a DiffPIRConfig")
    if config is not None and config.sigma_n != task.sigma_n:
        logger.warning("config sigma_n %g differs from the measurement's %g (task %s)", config.sigma_n, task.sigma_n, task.label)
    results = []
    for image in images:
        m = make_measurement(task, image, seed)
        gt = metrics.to_uint8(m.gt)
        outputs: dict[str, np.ndarray] = {}
        for name in names:  # 1. restore
            if name == "measurement" and m.y.shape != m.gt.shape:
                continue
            x = restore_diffpir(model, m, config, device) if name == "diffpir" else baselines.BASELINES[name][1](m, config)
            outputs[name] = metrics.to_uint8(x)
        result = ImageResult(image.dataset, image.name, image.index, task.label, task.sigma_n, m.seed)
        for name, out in outputs.items():  # 2. score
            result.metrics[name] = score(gt, out, task.border, lpips)
        if keep_outputs:
            result.outputs, result.gt, result.measurement = outputs, gt, m.display()
        results.append(result)
        if progress is not None:
            progress()
    return results


def hyperparameters(
    task: TaskSpec,
    tuned: Optional[dict[str, dict[str, Any]]] = None,
    steps: Optional[int] = None,
    lam: Optional[float] = None,
    zeta: Optional[float] = None,
    skip: str = "quad",
) -> tuple[DiffPIRConfig, str]:
    """DiffPIRConfig for a task: overrides, else the task defaults (a model card's tuned table first).

    sigma_n is always the measurement's, so the sampler's rho_t matches the protocol.
    """
    defaults = defaults_for(task.task, tuned)
    config = DiffPIRConfig(
        lam=defaults.lam if lam is None else lam,
        zeta=defaults.zeta if zeta is None else zeta,
        sigma_n=task.sigma_n,
        steps=defaults.steps if steps is None else steps,
        skip=skip,
    )
    return config, defaults.source


# ----------------------------------------------------------------------------- model


def load_model(
    checkpoint: Optional[Path], arch: Optional[str], random_weights: bool, device: torch.device, seed: int = 0
) -> tuple[UNetDenoiser, dict[str, Any], Optional[dict[str, dict[str, Any]]]]:
    """(denoiser, what it is, its tuned task defaults or None): checkpoint, random weights, or the bundled prior."""
    from diffpir_rt.engine import prior

    if checkpoint is not None:
        name = arch or "ffhq_10m"
        model = load_unet(checkpoint, name, device=device)
        return model, {"source": "checkpoint", "path": str(checkpoint), "arch": name, "sha256": prior.sha256_file(checkpoint)}, None
    if random_weights:
        name = arch or "tiny"
        with torch.random.fork_rng(devices=[]):  # reproducible weights without touching the caller's RNG
            torch.manual_seed(seed)
            unet = build_unet(name)
        model = UNetDenoiser(unet.to(device).eval().requires_grad_(False), arch=name).eval()
        return model, {"source": "random", "path": None, "arch": name, "sha256": None, "seed": seed}, None
    card = prior.bundled_card()
    model = prior.load_bundled_prior(device=device)
    assert card is not None  # load_bundled_prior raised otherwise
    info = {"source": "bundled", "path": f"bundled:{card['weights']}", "arch": card["arch"], "sha256": card["sha256"]}
    return model, info, card.get("task_defaults")


# ----------------------------------------------------------------------------- provenance


def _git(*args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def versions() -> dict[str, Optional[str]]:
    import PIL
    import scipy
    import skimage

    found = {
        "python": platform.python_version(),
        "diffpir_rt": diffpir_rt.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
        "pillow": PIL.__version__,
    }
    for package, module in (("lpips", "lpips"), ("pytorch-fid", "pytorch_fid")):
        if metrics.package_available(module):
            from importlib.metadata import PackageNotFoundError, version

            try:
                found[package] = version(package)
            except PackageNotFoundError:
                found[package] = "unknown"
        else:
            found[package] = None
    return found


def _json_safe(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _metric_status(flag: str, path: Optional[Path], package: str, module: str) -> str:
    if path is not None:
        return f"computed with local weights {path}"
    installed = "installed" if metrics.package_available(module) else "NOT installed"
    return f"not computed: no {flag} given (package {package}: {installed}; nothing is downloaded at run time)"


# ----------------------------------------------------------------------------- CLI


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return values

    return parse


_noise = argtypes.unit_float
_positive_int = argtypes.positive_int
_steps = argtypes.num_steps
_lam = argtypes.positive_float
_zeta = argtypes.unit_float


def _single(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return wrapped


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `diffpir eval` options (also `python -m diffpir_rt.benchmarks.quality`)."""
    data = p.add_argument_group("data")
    data.add_argument("--dataset", action="append", choices=TESTSETS, help="a project test set, repeatable (default: set3c unless --data)")
    data.add_argument("--data", action="append", type=Path, metavar="DIR", help="a folder of test images, repeatable")
    data.add_argument("--testsets-root", type=Path, help=f"where --dataset folders live (default: ${TESTSETS_ENV} or ../shared/data/testsets)")
    data.add_argument("--crop", type=_positive_int, help="centre crop to CROP x CROP (e.g. 256); default: full size, mod-cropped to 8")
    data.add_argument("--max-images", type=_positive_int, help="first N images of each set (each keeps its index and seeds)")

    tasks = p.add_argument_group("tasks")
    tasks.add_argument("--tasks", default=None,
                       help=f"comma list of {', '.join(TASK_LABELS)} or 'all' (default: all; ablation: {','.join(ABLATION_TASKS)})")
    tasks.add_argument("--noise", type=_csv(_noise), default=None, help="comma list of σ_n in [0,1] units (default: 0,0.05; ablation: 0.05)")
    tasks.add_argument("--kernel-size", type=_positive_int, default=61, help="Gaussian kernel size (default: 61, official)")
    tasks.add_argument("--box", type=_positive_int, default=128, help="inpainting box side (default: 128)")
    tasks.add_argument("--box-margin", type=int, default=16, help="inpainting box margin (default: 16)")

    methods = p.add_argument_group("methods")
    methods.add_argument("--methods", type=_csv(str), default=None,
                         help=f"comma list of {', '.join([*baselines.BASELINES, 'diffpir'])}, or 'baselines' / 'all' (default: all)")
    methods.add_argument("--steps", type=_single(_steps), help="DiffPIR steps N (default: the task's)")
    methods.add_argument("--lam", type=_single(_lam), help="DiffPIR λ (default: the task's)")
    methods.add_argument("--zeta", type=_single(_zeta), help="DiffPIR ζ (default: the task's)")
    methods.add_argument("--skip", choices=("quad", "uniform"), default="quad", help="step spacing (default: quad)")
    methods.add_argument("--seed", type=int, default=0, help="run seed; image i uses seed + i (default: 0)")

    model = p.add_argument_group("model")
    model.add_argument("--checkpoint", type=Path, help="UNet weights (.pt/.safetensors); default: the bundled prior")
    model.add_argument("--arch", help="UNet arch of --checkpoint (default ffhq_10m) or of --random-weights (default tiny)")
    model.add_argument("--random-weights", action="store_true", help="random UNet (smoke tests only: meaningless quality)")
    model.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")

    extra = p.add_argument_group("perceptual metrics (local weights only; nothing is downloaded)")
    extra.add_argument("--lpips-weights", type=Path, help="torchvision VGG16 state_dict for LPIPS(vgg) (needs the lpips package)")
    extra.add_argument("--fid-weights", type=Path, help="pytorch-fid Inception weights pt_inception-2015-12-05-*.pth (needs pytorch-fid)")

    ablation = p.add_argument_group("ablation (--ablation: DiffPIR only, no baselines)")
    ablation.add_argument("--ablation", action="store_true", help="sweep steps, then λ x ζ (at --steps or the task's steps)")
    ablation.add_argument("--ablation-steps", type=_csv(_steps), default=list(ABLATION_STEPS), help="default: 5,10,20,50,100")
    ablation.add_argument("--ablation-lam", type=_csv(_lam), default=list(ABLATION_LAM), help="default: 1,4,7,13")
    ablation.add_argument("--ablation-zeta", type=_csv(_zeta), default=list(ABLATION_ZETA), help="default: 0.1,0.3,0.6,1")

    output = p.add_argument_group("output")
    output.add_argument("--out", type=Path, help="output folder (default: benchmarks/results/quality/<timestamp>/)")
    output.add_argument("--grid-images", type=int, default=3, help="images per before/after grid (default: 3; 0: none)")
    output.add_argument("--quiet", action="store_true", help="no progress bar, no summary print")


EXAMPLES = """examples:
  diffpir eval --dataset set3c --crop 64 --random-weights --arch tiny --steps 5     # smoke test
  diffpir eval --dataset CBSD68 --crop 256 --noise 0.05 --methods baselines        # classical baselines only
  diffpir eval --dataset McMaster --checkpoint ffhq_10m.pt --arch ffhq_10m --device cuda --tasks sr4
  diffpir eval --ablation --dataset set3c --tasks gaussian_deblur --device cuda     # steps, then lambda x zeta
"""


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="quality benchmark: DiffPIR vs baselines, PSNR/SSIM (+LPIPS/FID) tables, grids, ablation",
        description="Restore the official-protocol measurements (docs/algorithm.md §7) of test images with DiffPIR and "
        "classical baselines; score PSNR/SSIM on uint8 (docs/algorithm.md §9). Writes results.json, per_image.csv, "
        "summary.md and grids/*.png (or ablation.json/md/png with --ablation).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(handler=run)


def _testsets_root(args: argparse.Namespace) -> Path:
    if args.testsets_root is not None:
        return args.testsets_root
    if os.environ.get(TESTSETS_ENV):
        return Path(os.environ[TESTSETS_ENV])
    return REPO_ROOT.parent / "shared" / "data" / "testsets"


def _parse_tasks(text: Optional[str], ablation: bool) -> list[str]:
    if text is None:
        return list(ABLATION_TASKS if ablation else TASK_LABELS)
    if text == "all":
        return list(TASK_LABELS)
    labels = [part.strip() for part in text.split(",") if part.strip()]
    for label in labels:
        if label not in TASK_LABELS:
            raise DiffPIRError(f"--tasks: unknown task {label!r}; expected a comma list of {', '.join(TASK_LABELS)} or 'all'")
    return labels


def _parse_methods(values: Optional[list[str]]) -> Optional[list[str]]:
    if values is None:
        return None
    names: list[str] = []
    for value in values:
        for name in METHOD_ALIASES.get(value, (value,)):
            if name != "diffpir" and name not in baselines.BASELINES:
                raise DiffPIRError(f"--methods: unknown method {name!r}; expected {', '.join([*baselines.BASELINES, 'diffpir'])}, baselines or all")
            if name not in names:
                names.append(name)
    return names


@dataclass
class _Plan:
    datasets: list[tuple[str, Path]]
    tasks: list[TaskSpec]
    methods: Optional[list[str]]
    wants_model: bool
    device: torch.device
    out: Path


def _plan(args: argparse.Namespace) -> _Plan:
    """Check every argument before anything heavy is loaded."""
    labels = _parse_tasks(args.tasks, args.ablation)
    noise = args.noise if args.noise is not None else ([0.05] if args.ablation else list(NOISE_LEVELS))
    tasks = task_matrix(labels, noise, kernel_size=args.kernel_size, box=args.box, box_margin=args.box_margin)
    if not tasks:
        raise DiffPIRError("--tasks/--noise: nothing to run (denoise needs a noise level > 0)")
    methods = _parse_methods(args.methods)
    if args.ablation:
        if methods is not None and methods != ["diffpir"]:
            raise DiffPIRError("--ablation: sweeps DiffPIR only; drop --methods")
        methods = ["diffpir"]
    wants_model = methods is None or "diffpir" in methods
    if args.checkpoint is not None and args.random_weights:
        raise DiffPIRError("--random-weights: conflicts with --checkpoint; pass one of them")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise DiffPIRError(f"--checkpoint {args.checkpoint}: no such file")
    if args.arch is not None:
        if args.checkpoint is None and not args.random_weights:
            raise DiffPIRError("--arch applies to --checkpoint or --random-weights; the bundled prior knows its own arch")
        from diffpir_rt.engine import resolve_arch

        resolve_arch(args.arch)
    if wants_model and args.checkpoint is None and not args.random_weights:
        from diffpir_rt.engine import bundled_card

        if bundled_card() is None:
            if methods is None:  # the default "all": say what is missing instead of silently dropping DiffPIR
                raise DiffPIRError(
                    "no model for the DiffPIR column: this installation ships no bundled prior yet; pass --checkpoint PATH "
                    "--arch ARCH, --random-weights --arch tiny (smoke test), or --methods baselines"
                )
            raise DiffPIRError("method diffpir: no bundled prior in this installation; pass --checkpoint PATH or --random-weights")
    for flag, path, module, package in (("--lpips-weights", args.lpips_weights, "lpips", "lpips"), ("--fid-weights", args.fid_weights, "pytorch_fid", "pytorch-fid")):
        if path is not None:
            if not path.is_file():
                raise DiffPIRError(f"{flag} {path}: no such file")
            if not metrics.package_available(module):
                raise DiffPIRError(f"{flag}: needs the '{package}' package (pip install {package}), which is not installed here")
    if args.grid_images < 0:
        raise DiffPIRError(f"--grid-images: expected >= 0, got {args.grid_images}")

    datasets: list[tuple[str, Path]] = []
    names = args.dataset or ([] if args.data else ["set3c"])
    root = _testsets_root(args)
    for name in names:
        folder = root / name
        if not folder.is_dir():
            raise DiffPIRError(f"--dataset {name}: no folder {folder}; set --testsets-root or ${TESTSETS_ENV}")
        datasets.append((name, folder))
    for folder in args.data or []:
        if not folder.is_dir():
            raise DiffPIRError(f"--data {folder}: no such folder")
        datasets.append((folder.name, folder))
    seen = [name for name, _ in datasets]
    if len(set(seen)) != len(seen):
        raise DiffPIRError(f"datasets: two test sets share a name ({seen}); rename a --data folder")

    out = args.out or RESULTS_ROOT / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise DiffPIRError(f"--out {out}: exists and is not a folder")
    return _Plan(datasets, tasks, methods, wants_model, resolve_device(args.device), out)


def _progress(total: int, enabled: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="eval", unit="img", disable=not enabled, leave=False, file=sys.stderr)
    return (lambda: bar.update(1)), bar.close


def run(args: argparse.Namespace) -> int:
    """`diffpir eval`: plan -> load images and model -> evaluate -> results.json -> reports."""
    plan = _plan(args)
    images = {name: load_images(folder, args.crop, args.max_images, dataset=name) for name, folder in plan.datasets}
    # Measure every task on every image once up front: size errors surface before the model loads.
    for spec in plan.tasks:
        for name in images:
            make_measurement(spec, images[name][0], args.seed)

    model = info = tuned = None
    if plan.wants_model:
        model, info, tuned = load_model(args.checkpoint, args.arch, args.random_weights, plan.device, args.seed)
    lpips = metrics.load_lpips(args.lpips_weights, plan.device) if args.lpips_weights else None
    fid = metrics.FidFeatures(args.fid_weights, plan.device) if args.fid_weights else None

    task_records, configs = [], {}
    for spec in plan.tasks:
        config, source = hyperparameters(spec, tuned, args.steps, args.lam, args.zeta, args.skip)
        configs[spec.key] = config
        task_records.append({"key": spec.key, **spec.to_dict(), "task": spec.task, "hyperparameters": config.to_dict(), "defaults_source": source})

    record: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "ablation" if args.ablation else "table",
        "config": {
            "args": {k: _json_safe(v) for k, v in vars(args).items() if not callable(v)},
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain")),
            "versions": versions(),
            "device": str(plan.device),
            "seed": args.seed,
            "crop": args.crop,
            "max_images": args.max_images,
            "model": info,
            "metrics_note": "PSNR and SSIM (scikit-image) on uint8 RGB after clip and round, border shave = sf for SR; "
            "SSIM: 11×11 Gaussian window σ 1.5, mean over channels. "
            f"LPIPS: {_metric_status('--lpips-weights', args.lpips_weights, 'lpips', 'lpips')}. "
            f"FID: {_metric_status('--fid-weights', args.fid_weights, 'pytorch-fid', 'pytorch_fid')}.",
            "baseline_parameters": baselines.parameters(),
            "baseline_notes": BASELINE_NOTES,
        },
        "datasets": [
            {"name": name, "path": str(folder), "images": [im.name for im in images[name]]} for name, folder in plan.datasets
        ],
        "tasks": task_records,
    }
    if args.ablation:
        _run_ablation(args, plan, images, configs, model, lpips, record)
    else:
        _run_table(args, plan, images, configs, model, lpips, fid, record)

    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    from diffpir_rt.engine import write_text

    results = write_text(plan.out / ("ablation.json" if args.ablation else "results.json"), text)
    written = report.write_reports(json.loads(text), plan.out)  # reports derive from the JSON alone
    if not args.quiet:
        print((plan.out / ("ablation.md" if args.ablation else "summary.md")).read_text())
        print(f"wrote {results}, " + ", ".join(str(p.name) for p in written) + (f", {len(record.get('grids', []))} grids" if record.get("grids") else ""))
    return 0


def _run_table(args, plan: _Plan, images, configs, model, lpips, fid, record: dict[str, Any]) -> None:
    total = sum(len(v) for v in images.values()) * len(plan.tasks)
    tick, close = _progress(total, not args.quiet and sys.stderr.isatty())
    rows: list[dict[str, Any]] = []
    grids: list[str] = []
    fid_rows: list[dict[str, Any]] = []
    methods_seen: list[str] = []
    try:
        for dataset, test_images in images.items():
            for spec in plan.tasks:
                keep = args.grid_images > 0 or fid is not None
                results = evaluate(
                    model, spec, test_images, configs[spec.key], methods=plan.methods, seed=args.seed,
                    device=plan.device, lpips=lpips, keep_outputs=keep, progress=tick,
                )
                for r in results:
                    rows += r.rows()
                    methods_seen += [m for m in r.metrics if m not in methods_seen]
                if args.grid_images > 0:
                    grids.append(_write_task_grid(plan.out, dataset, spec, results[: args.grid_images]))
                if fid is not None:
                    fid_rows += _fid_rows(fid, dataset, spec, results)
                for r in results:  # free the images once used
                    r.outputs = r.gt = r.measurement = None
    finally:
        close()
    order = [*baselines.BASELINES, "diffpir"]
    record["methods"] = [m for m in order if m in methods_seen]
    record["per_image"] = rows
    record["summary"] = report.summarize(rows, ("dataset", "task", "sigma_n", "method"))
    if fid_rows:
        record["fid"] = fid_rows
    record["grids"] = grids


def _write_task_grid(out: Path, dataset: str, spec: TaskSpec, results: Sequence[ImageResult]) -> str:
    primary = baselines.PRIMARY[spec.task]
    available = results[0].outputs or {}
    columns = ["ground truth", "measurement"]
    if primary in available:
        columns.append(primary)
    if "diffpir" in available:
        columns.append("diffpir")
    rows = []
    for r in results:
        assert r.outputs is not None and r.gt is not None and r.measurement is not None
        row = [r.gt / 255.0, r.measurement]
        row += [r.outputs[c] / 255.0 for c in columns[2:]]
        rows.append(row)
    path = out / "grids" / f"{dataset}_{spec.label}_sigma{spec.sigma_n:g}.png"
    report.write_grid(path, rows, columns)
    return str(path.relative_to(out))


def _fid_rows(fid: metrics.FidFeatures, dataset: str, spec: TaskSpec, results: Sequence[ImageResult]) -> list[dict[str, Any]]:
    if len(results) < 2:
        logger.warning("FID of %s %s: needs at least 2 images, got %d; skipped", dataset, spec.key, len(results))
        return []
    real = np.stack([fid(r.gt) for r in results if r.gt is not None])
    rows = []
    for method in results[0].outputs or {}:
        fake = np.stack([fid(r.outputs[method]) for r in results if r.outputs is not None])
        rows.append({"dataset": dataset, "task": spec.label, "sigma_n": spec.sigma_n, "method": method, "n": len(fake),
                     "fid": report.clean_number(metrics.frechet_distance(fake, real))})
    return rows


def _run_ablation(args, plan: _Plan, images, configs, model, lpips, record: dict[str, Any]) -> None:
    sweeps: list[tuple[str, TaskSpec, DiffPIRConfig]] = []
    for spec in plan.tasks:
        base = configs[spec.key]
        sweeps += [("steps", spec, replace(base, steps=n)) for n in args.ablation_steps]
        sweeps += [("lam_zeta", spec, replace(base, lam=lam, zeta=zeta)) for lam in args.ablation_lam for zeta in args.ablation_zeta]
    total = sum(len(v) for v in images.values()) * len(sweeps)
    tick, close = _progress(total, not args.quiet and sys.stderr.isatty())
    rows: list[dict[str, Any]] = []
    try:
        for dataset, test_images in images.items():
            for sweep, spec, config in sweeps:
                results = evaluate(model, spec, test_images, config, methods=["diffpir"], seed=args.seed,
                                   device=plan.device, lpips=lpips, progress=tick)
                for r in results:
                    rows += r.rows(sweep=sweep, steps=config.steps, lam=config.lam, zeta=config.zeta)
    finally:
        close()
    record["methods"] = ["diffpir"]
    record["per_image"] = rows
    record["ablation"] = report.summarize(rows, ("dataset", "task", "sigma_n", "sweep", "steps", "lam", "zeta"))
