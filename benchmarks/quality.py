"""Quality benchmark: the method family and classical baselines on the official degradations.

`diffpir eval` restores the official-protocol measurements (benchmarks/protocol.py) of test
images with every requested method that applies to each scenario, and scores them (PSNR /
SSIM on uint8, optional LPIPS / FID), one image at a time with the image's own seed:

* the diffusion and plug-and-play family (DiffPIR, DDRM, DDNM, DPS, DMPS, DPIR, RePaint,
  ILVR), all through one runtime `Restorer` (diffpir_rt.runtime): the same prior, the same
  measurements, the same seeds, the path `diffpir restore` would take on this machine. Each
  method starts from the model's defaults for the task (`Restorer.config`: DiffPIR the
  model card's tuned values, the others their official ones), then the run's overrides;
  sigma_n is always the measurement's. A method that does not apply to a scenario is
  skipped with a note;
* classical baselines (benchmarks/baselines.py).

It writes results.json first, then per_image.csv, summary.md (the layout of the DiffPIR
paper's Table 1: method and NFE, PSNR / SSIM per scenario, seconds per image) and one
before/after grid per scenario with a column per method; with --ablation, DiffPIR's
steps and λ x ζ sweeps with a plot. Output goes to ./eval-results/<timestamp>/ unless --out.
Examples: see EXAMPLES (`diffpir eval --help`).
"""

from __future__ import annotations

from diffpir_rt.lazy import lazy_module

import argparse
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

import diffpir_rt
from diffpir_rt.engine import (
    DEFAULT_METHOD,
    STEPS,
    DiffPIRError,
    ModelSource,
    config_class,
    family_names,
    generation_names,
    method_names,
    method_params,
    tool_versions,
)
from diffpir_rt import cliargs
from diffpir_rt.runtime import Restorer, add_runtime_flags, runtime_options

from . import baselines, harness, metrics
from . import quality_report as report
from .protocol import (
    NOISE_LEVELS,
    scenario_names,
    TESTSETS,
    Measurement,
    Scenario,
    TestImage,
    load_images,
    make_measurement,
    task_matrix,
)

torch = lazy_module("torch")

logger = logging.getLogger(__name__)

SCHEMA = "diffpir-rt.quality/2"
#: The default output folder's parent, under the current directory (never the source tree).
RESULTS_FOLDER = "eval-results"
#: Where --dataset names are looked up: $DIFFPIR_TESTSETS, else the project's shared/data/testsets.
TESTSETS_ENV = "DIFFPIR_TESTSETS"
CLASSICAL = tuple(name for name in baselines.BASELINES if name != "datastep" and name not in baselines.TUNED)
#: The fixed-setting baselines (the recorded history); the tuned ones are opt-in (`tuned`).
FIXED_BASELINES = tuple(name for name in baselines.BASELINES if name not in baselines.TUNED)


def method_aliases() -> dict[str, tuple[str, ...]]:
    """The --methods groups; the family is every method whose config declares `family` (engine registry)."""
    return {"classical": CLASSICAL, "tuned": tuple(baselines.TUNED), "baselines": FIXED_BASELINES,
            "family": family_names(), "all": (*baselines.BASELINES, *family_names())}  # fmt: skip


def default_methods() -> tuple[str, ...]:
    """Without --methods: the fixed baselines and the default method (the family's others are
    opt-in: some cost hundreds to thousands of UNet calls per image; so are the tuned baselines)."""
    return (*FIXED_BASELINES, DEFAULT_METHOD)


def report_order() -> tuple[str, ...]:
    return (*baselines.BASELINES, *family_names())
ABLATION_STEPS = (5, 10, 20, 50, 100)
ABLATION_LAM = (1.0, 4.0, 7.0, 13.0)
ABLATION_ZETA = (0.1, 0.3, 0.6, 1.0)
ABLATION_TASKS = ("deblur/gaussian", "sr/x4")

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
    "at the schedule's last t > 0 (the sampler's last data step), with DiffPIR's λ and steps of the run.",
    **baselines.TUNED_NOTES,
}


def family_notes() -> dict[str, str]:
    """Each family method's one-line description and where its defaults come from (its config's declarations)."""
    return {n: f"{config_class(n).description}; defaults: {config_class(n).defaults_source}." for n in family_names()}


# ----------------------------------------------------------------------------- methods


def method_problem(name: str, spec: Scenario) -> Optional[str]:
    """Why family method `name` does not apply to `spec` (its config's `for_task` says), or None."""
    try:
        config_class(name).for_task(spec.task, spec.sigma_n, spec.scale_or_none)
    except DiffPIRError as e:
        return str(e)
    return None


def plan_methods(spec: Scenario, requested: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(methods to run for `spec`, in report order; the family methods skipped, with why).

    Baselines run only on the tasks they are made for (no note); a family method whose
    official config has no setting for the scenario is skipped with its reason.
    """
    run: list[str] = []
    skipped: list[dict[str, Any]] = []
    for name in report_order():
        if name not in requested:
            continue
        if name in baselines.BASELINES:
            if baselines.applies(name, spec.task):
                reason = baselines.unavailable(name)
                if reason is None:
                    run.append(name)
                else:  # an optional package is missing: say so instead of failing the run
                    skipped.append({"method": name, "key": spec.key, "scenario": spec.label, "sigma_n": spec.sigma_n, "reason": reason})
            continue
        reason = method_problem(name, spec)
        if reason is None:
            run.append(name)
        else:
            skipped.append({"method": name, "key": spec.key, "scenario": spec.label, "sigma_n": spec.sigma_n, "reason": reason})
    return run, skipped


def method_config(restorer: Restorer, spec: Scenario, method: str, overrides: Optional[dict[str, Any]] = None) -> Any:
    """The config of `method` for `spec`: the Restorer's defaults for the task (the measurement's
    sigma_n, the SR scale), then `overrides` (engine.configure, as `diffpir restore` builds it)."""
    try:
        return restorer.configure(spec.task, method, scale=spec.scale_or_none, **{**(overrides or {}), "sigma_n": spec.sigma_n}).config
    except DiffPIRError as e:
        raise DiffPIRError(f"method {method}, task {spec.key}: {e}") from None


def model_calls(config: Any) -> int:
    """NFE: the UNet calls of a config's loop (the steps that call the model)."""
    return config.model_calls()


def runs_on(restorer: Restorer, config: Any) -> str:
    """The path a method's restorations take: the Restorer's, or torch when the prepared path
    cannot serve it (the learned variance, gradients through the UNet); the Restorer decides."""
    path = restorer.path_for(config)
    why = f": {'; '.join(path.fallbacks)}" if path.fallbacks else ""
    return f"{path.name} ({path.backend}, {path.precision}){why}"


def config_changes(config: Any, default: Any) -> dict[str, tuple[Any, Any]]:
    """field -> (value, default) where `config` differs from `default`."""
    a, b = config.to_dict(), default.to_dict()
    return {k: (a[k], b.get(k)) for k in a if k != "method" and a[k] != b.get(k)}


# ----------------------------------------------------------------------------- evaluate


@dataclass
class ImageResult:
    """One image's scores and seconds per method; with keep_outputs, also its uint8 images for grids and FID."""

    dataset: str
    image: str
    index: int
    spec: Scenario
    seed: int
    metrics: dict[str, dict[str, Optional[float]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    outputs: Optional[dict[str, np.ndarray]] = None
    gt: Optional[np.ndarray] = None
    measurement: Optional[np.ndarray] = None

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """Flat per-(image, method) rows, JSON-safe."""
        head = {"dataset": self.dataset, "image": self.image, "index": self.index, "task": self.spec.task,
                "scenario": self.spec.label, "sigma_n": self.spec.sigma_n}  # fmt: skip
        return [
            {**head, "method": method, **extra, **{k: report.clean_number(v) for k, v in scores.items()},
             "seconds": round(self.seconds[method], 4)}  # fmt: skip
            for method, scores in self.metrics.items()
        ]


def score(gt_uint8: np.ndarray, out_uint8: np.ndarray, border: int, lpips: Optional[metrics.LpipsFn] = None) -> dict[str, Optional[float]]:
    """PSNR, SSIM (and LPIPS) of one uint8 output against its uint8 ground truth."""
    scores: dict[str, Optional[float]] = {
        "psnr": metrics.psnr(gt_uint8, out_uint8, border),
        "ssim": metrics.ssim(gt_uint8, out_uint8, border),
    }
    if lpips is not None:
        scores["lpips"] = lpips(metrics.shave(gt_uint8, border), metrics.shave(out_uint8, border))
    return scores


def restore(name: str, m: Measurement, restorer: Optional[Restorer], configs: dict[str, Any]) -> np.ndarray:
    """One method's restoration of one measurement: (H, W, 3) float64 (baselines: unclipped)."""
    if name in baselines.BASELINES:
        return baselines.BASELINES[name](m, configs.get("datastep"))
    if restorer is None:
        raise DiffPIRError(f"method {name}: needs a model (a checkpoint, the bundled prior or --random-weights)")
    x = restorer.restore(m.y_tensor(restorer.device), m.operator, configs[name], seed=m.seed, boundary="circular")  # the official protocol
    return x[0].permute(1, 2, 0).to("cpu", torch.float64).numpy()


def evaluate(
    restorer: Optional[Restorer],
    spec: Scenario,
    images: Sequence[TestImage],
    configs: dict[str, Any],
    *,
    methods: Sequence[str],
    seed: int = 0,
    lpips: Optional[metrics.LpipsFn] = None,
    keep_outputs: bool = False,
    progress: Optional[Callable[[ImageResult, str], None]] = None,
) -> list[ImageResult]:
    """Restore and score each image for one scenario; no number depends on the other images.

    Restoration and scoring are separate passes per image: every method's output is
    quantised to uint8 first, then scored against the uint8 ground truth.

    Args:
        restorer: the runtime session of the family methods (None: baselines only).
        spec: the scenario (task, kernel/mask, noise level).
        images: test images; each keeps its own index (kernel, mask and seeds come from it).
        configs: method -> its config for this scenario (`method_config`); "datastep" -> the
            DiffPIR config whose λ and steps the datastep baseline uses.
        methods: what to run, from `plan_methods` (they all apply to the scenario).
        seed: run seed; image i uses seed + index (every method the same).
        lpips: an LPIPS scorer (metrics.load_lpips), or None.
        keep_outputs: keep uint8 ground truth and outputs, and the measurement, per image.
        progress: called after each (image, method) with the result so far and the method.

    Returns:
        One ImageResult per image, in input order, with metrics[method] = {psnr, ssim[, lpips]}
        and seconds[method] (the restoration's wall time).
    """
    results = []
    for image in images:
        m = make_measurement(spec, image, seed)
        gt = metrics.to_uint8(m.gt)
        result = ImageResult(image.dataset, image.name, image.index, spec, m.seed)
        outputs: dict[str, np.ndarray] = {}
        for name in methods:
            if name == "measurement" and m.y.shape != m.gt.shape:
                continue
            start = time.perf_counter()
            x = restore(name, m, restorer, configs)
            result.seconds[name] = time.perf_counter() - start
            outputs[name] = metrics.to_uint8(x)
            result.metrics[name] = score(gt, outputs[name], m.border, lpips)
            if progress is not None:
                progress(result, name)
        if keep_outputs:
            result.outputs, result.gt, result.measurement = outputs, gt, m.display()
        results.append(result)
    return results


# ----------------------------------------------------------------------------- provenance


def versions() -> dict[str, Optional[str]]:
    """The versions behind a quality number (None: not installed)."""
    return {"diffpir_rt": diffpir_rt.__version__,
            **tool_versions("torch", "numpy", "scipy", "scikit-image", "pillow", "onnxruntime", "lpips", "pytorch-fid")}  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict[str, Any]:
    """The machine the seconds were measured on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_average_start"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _json_safe(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
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


_noise = cliargs.unit_float
_positive_int = cliargs.positive_int
_steps = cliargs.num_steps
_lam = cliargs.positive_float
_zeta = cliargs.unit_float


def _single(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return wrapped


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `diffpir eval` options."""
    data = p.add_argument_group("data")
    data.add_argument("--dataset", action="append", choices=TESTSETS, help="a project test set, repeatable (default: set3c unless --data)")
    data.add_argument("--data", action="append", type=Path, metavar="DIR", help="a folder of test images, repeatable")
    data.add_argument("--testsets-root", type=Path, help=f"where --dataset folders live (default: ${TESTSETS_ENV}, else ./testsets)")
    data.add_argument("--crop", type=_positive_int, help="centre crop to CROP x CROP (e.g. 256); default: full size, mod-cropped to 8")
    data.add_argument("--max-images", type=_positive_int, help="first N images of each set, sorted by name (each keeps its index and seeds)")

    tasks = p.add_argument_group("tasks")
    tasks.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                       help=f"scenarios ({', '.join(scenario_names())}; sr/x2, sr/x3 too), task names (deblur = both kernels, "
                       f"inpaint = both masks) or 'all'; NAME@SIGMA pins that one's noise level (default: all; ablation: "
                       f"{' '.join(ABLATION_TASKS)})")  # fmt: skip
    tasks.add_argument("--noise", type=_csv(_noise), default=None,
                       help="comma list of σ_n in [0,1] units for --tasks items without @SIGMA (default: 0,0.05; ablation: 0.05)")
    tasks.add_argument("--kernel-size", type=_positive_int, default=61, help="Gaussian kernel size (default: 61, official)")
    tasks.add_argument("--box", type=_positive_int, default=128, help="inpainting box side (default: 128, official on 256² images)")
    tasks.add_argument("--box-margin", type=cliargs.non_negative_int, default=16, help="inpainting box margin (default: 16)")

    methods = p.add_argument_group("methods")
    methods.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                         help=f"restoration methods ({', '.join(family_names())}) and baselines ({', '.join(baselines.BASELINES)}), "
                         "space- or comma-separated, or the groups family, classical, tuned (per-image oracle-tuned Wiener/TV/NL-means "
                         "and BM3D: slow), baselines (classical + datastep), all (default: the baselines and diffpir)")  # fmt: skip
    methods.add_argument("--method-steps", nargs="+", default=[], metavar="METHOD=N",
                         help="the iteration budget of one method instead of its default, e.g. dps=200 dmps=200 (`diffpir "
                         "restore --help --method NAME` says what a method's steps count)")  # fmt: skip
    methods.add_argument("--method-preset", nargs="+", default=[], metavar="METHOD=PRESET",
                         help="a preset a method declares, e.g. repaint=fast (t_T 100, r 5: 460 UNet calls)")
    methods.add_argument("--method-param", action="append", default=[], metavar="METHOD.NAME=VALUE",
                         help="any parameter of one family method, e.g. dps.zeta=0.5 or ddnm.travel_length=10, repeatable")
    methods.add_argument("--seed", type=cliargs.seed32, default=0, help="run seed; image i uses seed + i (default: 0)")
    hyper = p.add_argument_group("hyperparameters: each applies to every method of the run that takes it (unset: the "
                                 "model's default for the task and method; sigma_n is always the measurement's)")  # fmt: skip
    cliargs.add_param_flags(hyper, {k: v for k, v in method_params(family_names()).items() if k != "sigma_n"})

    model = p.add_argument_group("model")
    model.add_argument("--random-weights", action="store_true", help="random UNet (smoke tests only: meaningless quality; default arch tiny)")
    add_runtime_flags(p)

    extra = p.add_argument_group("perceptual metrics (local weights only; nothing is downloaded)")
    extra.add_argument("--lpips-weights", type=Path, help="torchvision VGG16 state_dict for LPIPS(vgg) (needs the lpips package)")
    extra.add_argument("--fid-weights", type=Path, help="pytorch-fid Inception weights pt_inception-2015-12-05-*.pth (needs pytorch-fid)")

    ablation = p.add_argument_group("ablation (--ablation: DiffPIR only, no baselines)")
    ablation.add_argument("--ablation", action="store_true", help="sweep steps, then λ x ζ (at --steps or the task's steps)")
    ablation.add_argument("--ablation-steps", type=_csv(_steps), default=list(ABLATION_STEPS), help="default: 5,10,20,50,100")
    ablation.add_argument("--ablation-lam", type=_csv(_lam), default=list(ABLATION_LAM), help="default: 1,4,7,13")
    ablation.add_argument("--ablation-zeta", type=_csv(_zeta), default=list(ABLATION_ZETA), help="default: 0.1,0.3,0.6,1")

    output = p.add_argument_group("output")
    output.add_argument("--out", type=Path, help=f"output folder (default: ./{RESULTS_FOLDER}/<timestamp>/ in the current directory)")
    output.add_argument("--grid-images", type=cliargs.non_negative_int, default=3, help="images per before/after grid (default: 3; 0: none)")
    output.add_argument("--note", action="append", default=[], metavar="TEXT", help="a line for the report's notes, repeatable")
    output.add_argument("--quiet", action="store_true", help="no progress lines, no summary print")


EXAMPLES = """examples:
  diffpir eval --dataset set3c --crop 64 --random-weights --steps 5 --backend torch   # smoke test
  diffpir eval --dataset CBSD68 --crop 256 --noise 0.05 --methods classical           # classical baselines only
  diffpir eval --dataset CBSD68 --max-images 3 --crop 128 --noise 0.05 --tasks deblur sr/x4 inpaint/box \\
      inpaint/random@0 denoise --box 64 --box-margin 8 --methods family classical \\
      --method-steps dps=200 dmps=200 --method-preset repaint=fast                     # the method table
  diffpir eval --dataset McMaster --checkpoint ffhq_10m.pt --arch ffhq_10m --device cuda --tasks sr/x4
  diffpir eval --ablation --dataset set3c --tasks deblur/gaussian --device cuda       # steps, then lambda x zeta
"""


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        description="Restore the official-protocol measurements of test images with the diffusion methods (through the "
        "runtime, as `diffpir restore`) and classical baselines; score PSNR/SSIM on uint8. Writes results.json, "
        "per_image.csv, summary.md (method, NFE, PSNR / SSIM per task, seconds per image) and grids/*.png "
        "(or ablation.json/md/png with --ablation) into --out (default ./eval-results/<timestamp>/).",
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
    return Path("testsets")


def _split(values: Optional[Sequence[str]]) -> Optional[list[str]]:
    """Space- and comma-separated items of an nargs='+' option, in order."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _parse_methods(values: Optional[list[str]]) -> list[str]:
    names: list[str] = []
    family = family_names()
    valid = [*family, *baselines.BASELINES]
    aliases = method_aliases()
    for value in _split(values) or list(default_methods()):
        if value in generation_names():
            raise DiffPIRError(f"--methods: {value} generates images unconditionally; it restores nothing (try `diffpir generate`)")
        if value in method_names() and value not in family:
            raise DiffPIRError(f"--methods: {value} is not in the comparison family (its config does not declare family)")
        for name in aliases.get(value, (value,)):
            if name not in valid:
                raise DiffPIRError(f"--methods: unknown method {name!r}; expected {', '.join(valid)}, or family, classical, tuned, baselines, all")
            if name not in names:
                names.append(name)
    return names


def _parse_overrides(args: argparse.Namespace, methods: Sequence[str]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """(method -> config overrides, method -> field -> the flag that set it), from --method-preset,
    --method-steps, --method-param (per method) and the hyperparameter flags (every method of the
    run that takes the parameter; `steps` is every method's budget). A value given twice is refused."""
    overrides: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    family = family_names()
    # the datastep baseline reads the default method's config
    in_run = [m for m in methods if m in family] + ([DEFAULT_METHOD] if "datastep" in methods and DEFAULT_METHOD not in methods else [])

    def put(flag: str, method: str, name: str, value: Any) -> None:
        if method not in family:
            raise DiffPIRError(f"{flag}: unknown method {method!r}; expected one of {', '.join(family)}")
        if method not in in_run:
            raise DiffPIRError(f"{flag}: {method} is not among the methods of this run")
        if name == "sigma_n":
            raise DiffPIRError(f"{flag}: sigma_n is always the measurement's noise level (set it with --noise or --tasks NAME@SIGMA)")
        fields = config_class(method).field_names()
        if name == "steps":  # every method's budget, whatever its field is called
            name = config_class(method).budget
        if name not in fields:
            raise DiffPIRError(f"{flag}: method {method} has no parameter {name!r} (it takes {', '.join(fields)})")
        if name in sources.get(method, {}):
            raise DiffPIRError(f"{flag}: {method}'s {name} is also set by {sources[method][name]}; give it once")
        overrides.setdefault(method, {})[name] = value
        sources.setdefault(method, {})[name] = flag

    def pairs(flag: str, items: Sequence[str], example: str) -> list[tuple[str, str]]:
        out = []
        for item in items:
            left, sep, right = item.partition("=")
            if not sep or not left.strip():
                raise DiffPIRError(f"{flag} {item!r}: expected {example}")
            out.append((left.strip(), right.strip()))
        return out

    for method, text in pairs("--method-steps", _split(args.method_steps) or [], "METHOD=N, e.g. dps=200"):
        try:
            put("--method-steps", method, "steps", cliargs.param_type(STEPS)(text))
        except argparse.ArgumentTypeError as e:
            raise DiffPIRError(f"--method-steps {method}={text}: {e}") from None
    for target, text in pairs("--method-param", args.method_param, "METHOD.NAME=VALUE, e.g. dps.zeta=0.5"):
        method, dot, name = target.partition(".")
        name = name.strip().replace("-", "_")
        if not dot or not name:
            raise DiffPIRError(f"--method-param {target}={text}: expected METHOD.NAME=VALUE, e.g. dps.zeta=0.5")
        spec = (config_class(method).params().get(name) if method in family else None) or STEPS
        try:
            value = spec.parse(text)
        except ValueError as e:
            raise DiffPIRError(f"--method-param {target}={text}: {e}") from None
        put("--method-param", method, name, value)
    # a preset fills in what the flags above left unset
    for method, preset in pairs("--method-preset", _split(args.method_preset) or [], "METHOD=PRESET, e.g. repaint=fast"):
        presets = config_class(method).PRESETS if method in family else {}
        if preset not in presets:
            raise DiffPIRError(f"--method-preset {method}={preset}: expected one of {', '.join(presets) or 'none (it has no presets)'}")
        for name, value in presets[preset].items():
            if name not in sources.get(method, {}):
                put(f"--method-preset {method}={preset}", method, name, value)
    for name, value in cliargs.given(args, tuple(n for n in method_params(family) if n != "sigma_n")).items():
        takers = [m for m in in_run if name == "steps" or name in config_class(m).field_names()]
        if not takers:
            raise DiffPIRError(f"{cliargs.flag_name(name)}: no method of this run takes it ({', '.join(in_run) or 'none'})")
        for method in takers:
            if name not in sources.get(method, {}):
                put(cliargs.flag_name(name), method, name, value)
    return overrides, sources


@dataclass
class _Plan:
    datasets: list[tuple[str, Path]]
    tasks: list[Scenario]
    methods: list[str]
    overrides: dict[str, dict[str, Any]]
    override_flags: dict[str, dict[str, str]]
    source: Optional[ModelSource]
    out: Path
    runtime: Any = None


def _plan(args: argparse.Namespace) -> _Plan:
    """Check every argument before anything heavy is loaded."""
    names = _split(args.tasks) or list(ABLATION_TASKS if args.ablation else ["all"])
    noise = args.noise if args.noise is not None else ([0.05] if args.ablation else list(NOISE_LEVELS))
    tasks = task_matrix(names, noise, kernel_size=args.kernel_size, box=args.box, box_margin=args.box_margin)
    if not tasks:
        raise DiffPIRError("--tasks/--noise: nothing to run (denoise needs a noise level > 0)")
    if args.ablation:
        if args.methods is not None and _parse_methods(args.methods) != [DEFAULT_METHOD]:
            raise DiffPIRError(f"--ablation: sweeps {DEFAULT_METHOD} only; drop --methods")
        methods = [DEFAULT_METHOD]
    else:
        methods = _parse_methods(args.methods)
    overrides, override_flags = _parse_overrides(args, methods)
    if not any(plan_methods(spec, methods)[0] for spec in tasks):
        raise DiffPIRError("--methods/--tasks: no requested method applies to any requested task")

    wants_model = any(m in family_names() or m == "datastep" for m in methods)
    if args.random_weights and args.arch is None:
        args.arch = "tiny"
    runtime = runtime_options(args)
    source = runtime.model
    if wants_model and source.kind == "bundled":
        from diffpir_rt.engine import bundled_card

        if bundled_card() is None:
            raise DiffPIRError(
                "no model for the diffusion methods (and datastep's λ): this installation ships no bundled prior; pass "
                "--checkpoint PATH --arch ARCH, --random-weights (smoke test), or --methods classical"
            )
    if not wants_model:
        source = None
    for flag, path, module, package in (("--lpips-weights", args.lpips_weights, "lpips", "lpips"), ("--fid-weights", args.fid_weights, "pytorch_fid", "pytorch-fid")):
        if path is not None:
            if not path.is_file():
                raise DiffPIRError(f"{flag} {path}: no such file")
            if not metrics.package_available(module):
                raise DiffPIRError(f"{flag}: needs the '{package}' package (pip install {package}), which is not installed here")

    datasets: list[tuple[str, Path]] = []
    root = _testsets_root(args)
    for name in args.dataset or ([] if args.data else ["set3c"]):
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

    out = args.out or Path.cwd() / RESULTS_FOLDER / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    check_writable_folder(out)
    return _Plan(datasets, tasks, methods, overrides, override_flags, source, out, runtime)


def check_writable_folder(out: Path) -> None:
    """Refuse an output folder that cannot be written, before a run of minutes to hours
    (nothing is left behind: a probe folder is made in the nearest existing parent and removed)."""
    import tempfile

    if out.exists() and not out.is_dir():
        raise DiffPIRError(f"--out {out}: exists and is not a folder")
    existing = out.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DiffPIRError(f"--out {out}: {existing} is a file, not a folder")
    try:
        Path(tempfile.mkdtemp(prefix=".diffpir-eval-probe-", dir=existing)).rmdir()
    except OSError as e:
        raise DiffPIRError(f"--out {out}: cannot write into {existing} ({e.strerror or type(e).__name__})") from None


class _Progress:
    """One line per restoration on stderr (terminal or pipe), unless quiet."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled

    def __call__(self, result: ImageResult, method: str) -> None:
        self.done += 1
        if self.enabled:
            psnr = result.metrics[method]["psnr"]
            print(f"[eval {self.done}/{self.total}] {result.dataset} {result.spec.key} {result.image} {method}: "
                  f"{result.seconds[method]:.1f} s, PSNR {psnr:.2f} dB", file=sys.stderr, flush=True)  # fmt: skip


def _protocol_notes(args: argparse.Namespace, tasks: Sequence[Scenario]) -> list[str]:
    """Where the run's measurements leave the official protocol's sizes."""
    notes = []
    if args.kernel_size != 61 and any(t.variant == "gaussian" for t in tasks):
        notes.append(f"Gaussian blur kernel {args.kernel_size}x{args.kernel_size} (official 61x61)")
    if (args.box, args.box_margin) != (128, 16) and any(t.variant == "box" for t in tasks):
        notes.append(f"inpainting box {args.box}x{args.box}, margin {args.box_margin} (official 128x128, margin 16, on 256² images)")
    if args.crop:
        notes.append(f"centre crops {args.crop}x{args.crop} (the paper: full 256² images)")
    return notes


def _configs(restorer: Optional[Restorer], plan: _Plan) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Every config of the run, before the first restoration (a bad override fails now): per
    scenario key the methods that run, their configs, and the methods skipped with why."""
    task_plans: dict[str, list[str]] = {}
    configs: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []
    for spec in plan.tasks:
        names, skips = plan_methods(spec, plan.methods)
        task_plans[spec.key], configs[spec.key] = names, {}
        skipped += skips
        assert restorer is not None or not any(n in family_names() or n == "datastep" for n in names)
        for name in names:
            if name in family_names():
                configs[spec.key][name] = method_config(restorer, spec, name, plan.overrides.get(name))
        if "datastep" in names:  # the default method's data step alone, with its lambda and steps
            configs[spec.key]["datastep"] = method_config(restorer, spec, DEFAULT_METHOD, plan.overrides.get(DEFAULT_METHOD))
    return task_plans, configs, skipped


def _record(args: argparse.Namespace, plan: _Plan, images: dict[str, Any], restorer: Optional[Restorer],
            notices: list[str], configs: dict[str, dict[str, Any]], skipped: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """results.json before the results: the run's configuration, machine, versions and notes."""
    method_info, deviations = _method_info(restorer, plan, configs)
    device = restorer.device if restorer is not None else torch.device("cpu")
    return {
        "schema": SCHEMA,
        "kind": "ablation" if args.ablation else "table",
        "config": {
            "args": {k: _json_safe(v) for k, v in vars(args).items() if not callable(v)},
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": harness.git_commit(),
            "versions": versions(),
            "machine": machine(device),
            "device": str(device),
            "seed": args.seed,
            "crop": args.crop,
            "max_images": args.max_images,
            "model": {**restorer.source.to_dict(), "sha256": restorer.source.sha256()} if restorer is not None else None,
            "runtime": {**restorer.describe(), "notices": notices} if restorer is not None else None,
            "metrics_note": "PSNR and SSIM (scikit-image) on uint8 RGB after clip and round, border shave = sf for SR; "
            "SSIM: 11×11 Gaussian window σ 1.5, mean over channels. "
            f"LPIPS: {_metric_status('--lpips-weights', args.lpips_weights, 'lpips', 'lpips')}. "
            f"FID: {_metric_status('--fid-weights', args.fid_weights, 'pytorch-fid', 'pytorch_fid')}.",
            "timing_note": "seconds: wall time of one image's restoration (baselines: their numpy/skimage call), "
            "single image per call, on the machine above, as measured (no warm-up, other processes not excluded).",
            "baseline_parameters": baselines.parameters(),
            "method_notes": {**BASELINE_NOTES, **family_notes()},
        },
        "datasets": [
            {"name": name, "path": str(folder), "images": [im.name for im in images[name]]} for name, folder in plan.datasets
        ],
        "tasks": [spec.to_dict() for spec in plan.tasks],
        "method_info": method_info,
        "skipped": skipped,
        "deviations": _protocol_notes(args, plan.tasks) + deviations,
        "notes": list(args.note),
    }


def _write_results(args: argparse.Namespace, plan: _Plan, record: dict[str, Any]) -> None:
    """results.json (or ablation.json), then the reports, which derive from the JSON alone."""
    from diffpir_rt.engine import write_text

    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    results = write_text(plan.out / ("ablation.json" if args.ablation else "results.json"), text)
    written = report.write_reports(json.loads(text), plan.out)
    if not args.quiet:
        print((plan.out / ("ablation.md" if args.ablation else "summary.md")).read_text())
        grids = f", {len(record.get('grids', []))} grids" if record.get("grids") else ""
        print(f"wrote {results}, " + ", ".join(str(p.name) for p in written) + grids)


def run(args: argparse.Namespace) -> int:
    """`diffpir eval`: plan -> images and measurements -> Restorer -> configs -> evaluate -> results.json -> reports."""
    plan = _plan(args)
    images = {name: load_images(folder, args.crop, args.max_images, dataset=name) for name, folder in plan.datasets}
    # Measure every scenario on each image size once up front: size errors surface before the model loads.
    for spec in plan.tasks:
        for name in images:
            for image in {im.pixels.shape: im for im in images[name]}.values():
                make_measurement(spec, image, args.seed)

    notices: list[str] = []

    def notify(line: str) -> None:
        notices.append(line)
        if not args.quiet:
            print(f"[diffpir] {line}", file=sys.stderr, flush=True)

    restorer = Restorer.from_options(plan.runtime, notify=notify) if plan.source is not None else None
    lpips_device = restorer.device if restorer is not None else torch.device("cpu")
    lpips = metrics.load_lpips(args.lpips_weights, lpips_device) if args.lpips_weights else None
    fid = metrics.FidFeatures(args.fid_weights, lpips_device) if args.fid_weights else None
    task_plans, configs, skipped = _configs(restorer, plan)
    if not args.quiet:
        for s in skipped:
            print(f"[eval] {s['method']} skipped for {s['key']}: {s['reason']}", file=sys.stderr)

    record = _record(args, plan, images, restorer, notices, configs, skipped)
    if args.ablation:
        _run_ablation(args, plan, images, restorer, lpips, record)
    else:
        _run_table(args, plan, images, restorer, task_plans, configs, lpips, fid, record)
    if restorer is not None:
        record["config"]["runtime"]["path_after"] = restorer.path.to_dict()  # fallbacks taken during the run
        if hasattr(os, "getloadavg"):
            record["config"]["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    _write_results(args, plan, record)
    return 0


def _method_info(restorer: Optional[Restorer], plan: _Plan, configs: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """Per method: kind, NFE and config per scenario, the path it runs on; and the deviations
    of the run's configs from the defaults `diffpir restore --method M` would use."""
    info: dict[str, Any] = {}
    deviations: list[str] = []
    by_key = {spec.key: spec for spec in plan.tasks}
    for name in report_order():
        if name not in plan.methods:
            continue
        if name in baselines.BASELINES:
            info[name] = {"kind": "baseline", "nfe": 0}
            continue
        entry: dict[str, Any] = {"kind": "diffusion", "nfe": {}, "configs": {}, "overrides": plan.overrides.get(name, {})}
        # (field, value) -> default -> task keys: one line per changed field
        changed: dict[tuple[str, str], dict[str, list[str]]] = {}
        card_lines: list[str] = []
        for key, per_method in configs.items():
            config = per_method.get(name)
            if config is None:
                continue
            assert restorer is not None
            entry["nfe"][key] = model_calls(config)
            entry["configs"][key] = config.to_dict()
            entry.setdefault("runs_on", runs_on(restorer, config))
            default = method_config(restorer, by_key[key], name)
            for field_name, (value, was) in config_changes(config, default).items():
                changed.setdefault((field_name, repr(value)), {}).setdefault(repr(was), []).append(key)
            spec = by_key[key]
            tuned = restorer.tuned_defaults(name, spec.task)
            if tuned:
                entry.setdefault("defaults", {})[spec.task] = tuned.get("source", "the model's tuned defaults")
                official = config_class(name).for_task(spec.task, spec.sigma_n, spec.scale_or_none).field_values()
                differ = {k: v for k, v in tuned.items() if k in official and k != "sigma_n" and official[k] != v}
                line = (f"{name} {spec.task}: the model's tuned " + ", ".join(f"{k} {v}" for k, v in differ.items()) +
                        " (official: " + ", ".join(f"{k} {official[k]}" for k in differ) + ")")  # fmt: skip
                if differ and line not in card_lines:
                    card_lines.append(line)
        if not entry["nfe"]:
            continue
        for (field_name, value), defaults in changed.items():
            flag = plan.override_flags.get(name, {}).get(field_name)
            if len(defaults) == 1:
                was = f"the default {next(iter(defaults))}"
            else:
                was = "the defaults " + "; ".join(f"{d} ({', '.join(keys)})" for d, keys in defaults.items())
            deviations.append(f"{name}: {field_name} {value} instead of {was}" + (f", by {flag}" if flag else ""))
        deviations += card_lines
        entry.setdefault("defaults", "official: the config's for_task")
        info[name] = entry
    return info, deviations


def _run_table(args, plan: _Plan, images, restorer, task_plans, configs, lpips, fid, record: dict[str, Any]) -> None:
    total = sum(len(v) for v in images.values()) * sum(len(task_plans[spec.key]) for spec in plan.tasks)
    progress = _Progress(total, not args.quiet)
    rows: list[dict[str, Any]] = []
    grids: list[str] = []
    fid_rows: list[dict[str, Any]] = []
    methods_seen: list[str] = []
    for dataset, test_images in images.items():
        for spec in plan.tasks:
            keep = args.grid_images > 0 or fid is not None
            results = evaluate(
                restorer, spec, test_images, configs[spec.key], methods=task_plans[spec.key], seed=args.seed,
                lpips=lpips, keep_outputs=keep, progress=progress,
            )  # fmt: skip
            for r in results:
                rows += r.rows()
                methods_seen += [m for m in r.metrics if m not in methods_seen]
            if args.grid_images > 0:
                grids.append(_write_task_grid(plan.out, dataset, spec, results[: args.grid_images], record["method_info"]))
            if fid is not None:
                fid_rows += _fid_rows(fid, dataset, spec, results)
            for r in results:  # free the images once used
                r.outputs = r.gt = r.measurement = None
    record["methods"] = [m for m in report_order() if m in methods_seen]
    record["per_image"] = rows
    record["summary"] = report.summarize(rows, ("dataset", "scenario", "sigma_n", "method"))
    if fid_rows:
        record["fid"] = fid_rows
    record["grids"] = grids


def _write_task_grid(out: Path, dataset: str, spec: Scenario, results: Sequence[ImageResult], info: dict[str, Any]) -> str:
    """Ground truth, measurement, then one column per method that ran; one row per image."""
    available = list(results[0].outputs or {})
    columns = ["ground truth", "measurement"]
    for name in available:
        nfe = info.get(name, {}).get("nfe")
        nfe = nfe.get(spec.key) if isinstance(nfe, dict) else None
        columns.append(f"{name} ({nfe})" if nfe else name)
    rows = []
    for r in results:
        assert r.outputs is not None and r.gt is not None and r.measurement is not None
        rows.append([r.gt / 255.0, r.measurement, *(r.outputs[name] / 255.0 for name in available)])
    path = out / "grids" / f"{dataset}_{spec.slug}.png"
    report.write_grid(path, rows, columns)
    return str(path.relative_to(out))


def _fid_rows(fid: metrics.FidFeatures, dataset: str, spec: Scenario, results: Sequence[ImageResult]) -> list[dict[str, Any]]:
    if len(results) < 2:
        logger.warning("FID of %s %s: needs at least 2 images, got %d; skipped", dataset, spec.key, len(results))
        return []
    real = np.stack([fid(r.gt) for r in results if r.gt is not None])
    rows = []
    for method in results[0].outputs or {}:
        fake = np.stack([fid(r.outputs[method]) for r in results if r.outputs is not None])
        rows.append({"dataset": dataset, "scenario": spec.label, "sigma_n": spec.sigma_n, "method": method, "n": len(fake),
                     "fid": report.clean_number(metrics.frechet_distance(fake, real))})  # fmt: skip
    return rows


def _run_ablation(args, plan: _Plan, images, restorer: Restorer, lpips, record: dict[str, Any]) -> None:
    """The default method's steps sweep, then its lam x zeta grid (at its steps for the task)."""
    method = DEFAULT_METHOD
    if not {"lam", "zeta"} <= set(config_class(method).field_names()):
        raise DiffPIRError(f"--ablation: sweeps lam and zeta, which method {method} does not have")
    base = plan.overrides.get(method, {})
    sweeps: list[tuple[str, Scenario, Any]] = []
    for spec in plan.tasks:
        sweeps += [("steps", spec, method_config(restorer, spec, method, {**base, "steps": n})) for n in args.ablation_steps]
        sweeps += [("lam_zeta", spec, method_config(restorer, spec, method, {**base, "lam": lam, "zeta": zeta}))
                   for lam in args.ablation_lam for zeta in args.ablation_zeta]  # fmt: skip
    total = sum(len(v) for v in images.values()) * len(sweeps)
    progress = _Progress(total, not args.quiet)
    rows: list[dict[str, Any]] = []
    for dataset, test_images in images.items():
        for sweep, spec, config in sweeps:
            results = evaluate(restorer, spec, test_images, {method: config}, methods=[method], seed=args.seed,
                               lpips=lpips, progress=progress)  # fmt: skip
            for r in results:
                rows += r.rows(sweep=sweep, steps=getattr(config, config_class(method).budget), lam=config.lam, zeta=config.zeta)
    record["methods"] = [method]
    record["per_image"] = rows
    record["ablation"] = report.summarize(rows, ("dataset", "scenario", "sigma_n", "sweep", "steps", "lam", "zeta"))
