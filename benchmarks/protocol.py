"""The quality benchmark's measurement protocol: scenarios, test images, seeds (docs/algorithm.md §7).

A scenario is one of the engine's tasks (deblur, sr, inpaint, denoise: the task registry
of engine/tasks/, the one vocabulary) with the named kernel or mask of the official
protocol: deblur/gaussian, deblur/motion, sr/x4, inpaint/box, inpaint/random, denoise.
Measurements come from the registry's `make_measurement` (the same as `diffpir degrade`):
Gaussian/motion kernels seeded by image index (seed 10*index), truncating uint8 circular
blur, MATLAB bicubic downsampling, DPS box/random masks, then Gaussian noise. Every
random draw of an image depends on its index in the sorted file list and the run seed
only, so no number depends on which other images (or methods, or scenarios) are in the run.

Seeds of image `index` with run seed `s`:
  kernel   RandomState(10*index)               (official, engine.degrade)
  mask     RandomState(index)                  (the official single-image script uses 0 for
                                                every image; index 0 gets exactly that mask)
  noise    RandomState(NOISE_SEED_OFFSET + s + index)
  sampler  torch.Generator seeded s + index    (every method's x_T and per-step noise)
"""

from __future__ import annotations

from diffpir_rt.lazy import lazy_module

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from diffpir_rt.engine import TASKS, DiffPIRError, get_task, read_image

torch = lazy_module("torch")

# engine.degrade (scipy.io, scipy.ndimage, h5py: ~0.5 s) is imported where used, so that
# registering `diffpir eval` costs nothing for the other sub-commands.



def scenario_names() -> tuple[str, ...]:
    """The benchmark's default scenarios, in report order: every task's protocol variants (the
    paper's x4 for SR), from the task registry."""
    names: list[str] = []
    for task in TASKS.values():
        variants = task.protocol_variants if task.protocol_variants is not None else task.variants
        names += [f"{task.name}/{v}" for v in variants] if variants else [task.name]
    return tuple(names)


NOISE_LEVELS = (0.0, 0.05)
TESTSETS = ("CBSD68", "McMaster", "set3c")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: The official scripts mod-crop every test image to a multiple of 8 (docs/algorithm.md §7).
MOD_CROP = 8
#: Offset of the measurement-noise seeds, so they never equal a kernel (10*index) or mask (index) seed.
NOISE_SEED_OFFSET = 2**20


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: an engine task, its protocol variant, noise level and sizes.

    Args:
        task: a task name (engine.TASKS).
        sigma_n: measurement noise std in [0, 1] units (0.05 = 12.75/255).
        variant: one of the task's named variants (engine.Task.variants: deblur's kernels,
            SR's scales x2..x4, inpainting's masks), None for a task without variants.
        kernel_size: Gaussian kernel size (official 61; smaller only for tests or small crops).
        motion_kernel_size: motion kernel size (official 61, >= 54).
        box: inpainting box side (official 128 on 256 images); box_margin: its least distance
            from the border (16).
        random_p: missing fraction of the random mask (official 0.5).
    """

    task: str
    sigma_n: float
    variant: Optional[str] = None
    kernel_size: int = 61
    motion_kernel_size: int = 61
    box: int = 128
    box_margin: int = 16
    random_p: float = 0.5

    def __post_init__(self) -> None:
        task = get_task(self.task)
        task.variant_options(self.variant)  # an unknown variant says which exist
        if isinstance(self.sigma_n, bool) or not isinstance(self.sigma_n, (int, float)) or not (
            math.isfinite(self.sigma_n) and 0.0 <= self.sigma_n <= 1.0
        ):
            raise DiffPIRError(f"task {self.label}: sigma_n {self.sigma_n}; expected a number in [0, 1]")
        if task.needs_noise and self.sigma_n == 0:
            raise DiffPIRError(f"task {self.task}: sigma_n 0 makes y = x; expected sigma_n > 0")
        for name in ("kernel_size", "motion_kernel_size", "box"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DiffPIRError(f"task {self.label}: {name} {value!r}; expected a positive integer")
        if isinstance(self.box_margin, bool) or not isinstance(self.box_margin, int) or self.box_margin < 0:
            raise DiffPIRError(f"task {self.label}: box_margin {self.box_margin!r}; expected an integer >= 0")
        from diffpir_rt.engine import degrade

        if self.motion_kernel_size < degrade.MOTION_MIN_SIZE:
            raise DiffPIRError(
                f"task {self.label}: motion_kernel_size {self.motion_kernel_size}; expected >= {degrade.MOTION_MIN_SIZE}"
            )
        if not 0.0 < self.random_p < 1.0:
            raise DiffPIRError(f"task {self.label}: random_p {self.random_p}; expected a fraction in (0, 1)")

    @classmethod
    def named(cls, name: str, sigma_n: float, **options: Any) -> "Scenario":
        """The scenario `name` ("deblur/gaussian", "sr/x4", "denoise", ...) at noise level sigma_n."""
        task, _, variant = name.partition("/")
        if task not in TASKS:
            raise DiffPIRError(f"task {name!r}: expected one of {', '.join(all_scenario_names())}")
        if not variant and TASKS[task].variants:
            variant = TASKS[task].default_variant()
        return cls(task, float(sigma_n), variant or None, **options)

    @property
    def label(self) -> str:
        """The scenario's name: task/variant (deblur/gaussian, sr/x4, inpaint/box, denoise)."""
        return f"{self.task}/{self.variant}" if self.variant else self.task

    def options(self) -> dict[str, Any]:
        """The task's measurement options of this scenario (its variant's, and the protocol's sizes)."""
        return {**get_task(self.task).variant_options(self.variant), "kernel_size": self.kernel_size,
                "motion_kernel_size": self.motion_kernel_size, "box": self.box, "box_margin": self.box_margin,
                "random_p": self.random_p}  # fmt: skip

    @property
    def scale(self) -> Optional[int]:
        """The SR factor of the scenario's variant, None for a task without one."""
        return self.scale_or_none

    @property
    def scale_or_none(self) -> Optional[int]:
        """The SR factor of the scenario's variant, None for a task without one."""
        return get_task(self.task).variant_options(self.variant).get("scale")

    @property
    def key(self) -> str:
        """label@sigma_n: one column group of the tables, one --tasks item."""
        return f"{self.label}@{self.sigma_n:g}"

    @property
    def slug(self) -> str:
        """The key as a file-name part (deblur-gaussian_sigma0.05)."""
        return f"{self.label.replace('/', '-')}_sigma{self.sigma_n:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, **asdict(self)}


def all_scenario_names() -> tuple[str, ...]:
    """Every task/variant pair (sr/x2 and sr/x3 too)."""
    return tuple(f"{t.name}/{v}" for t in TASKS.values() for v in t.variants) + tuple(t.name for t in TASKS.values() if not t.variants)


def expand_task_names(name: str) -> list[str]:
    """A --tasks item without noise: a scenario name, or a task name for all its scenarios."""
    if name == "all":
        return list(scenario_names())
    if name in TASKS:
        return [s for s in scenario_names() if s.partition("/")[0] == name]
    Scenario.named(name, 0.05)  # raises the one-line "expected one of" for unknown names
    return [name]


def task_matrix(names: Sequence[str], noise_levels: Sequence[float], **options: Any) -> list[Scenario]:
    """Every (scenario, noise level) pair, except noiseless denoising (y = x).

    An item "name@sigma" pins that scenario's noise level; other items take every level of
    `noise_levels`. Task names expand to their scenarios ("deblur": gaussian and motion).
    Duplicates are dropped, first seen first.
    """
    out: list[Scenario] = []
    for item in names:
        name, at, sigma_text = item.partition("@")
        if at:
            try:
                levels = [float(sigma_text)]
            except ValueError:
                raise DiffPIRError(f"--tasks {item!r}: expected NAME@SIGMA with SIGMA a number in [0, 1]") from None
        else:
            levels = [float(s) for s in noise_levels]
        for scenario_name in expand_task_names(name):
            for sigma in levels:
                if get_task(scenario_name.partition("/")[0]).needs_noise and sigma == 0 and not at:
                    continue
                spec = Scenario.named(scenario_name, sigma, **options)
                if spec not in out:
                    out.append(spec)
    return out


@dataclass(frozen=True, eq=False)
class TestImage:
    """A ground-truth image: (H, W, 3) float64 in [0, 1], and its index in its folder's sorted list."""

    __test__ = False  # not a pytest class

    dataset: str
    name: str
    index: int
    pixels: np.ndarray


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DiffPIRError(f"test set {folder}: no such folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DiffPIRError(f"test set {folder}: no images (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return files


def centre_crop(x: np.ndarray, size: int, name: str) -> np.ndarray:
    height, width = x.shape[:2]
    if height < size or width < size:
        raise DiffPIRError(f"--crop {size}: image {name} is {width}x{height}, smaller than the {size}x{size} crop")
    top, left = (height - size) // 2, (width - size) // 2
    return x[top : top + size, left : left + size]


def load_images(
    folder: Path, crop: Optional[int] = None, limit: Optional[int] = None, dataset: Optional[str] = None
) -> list[TestImage]:
    """The images of `folder` in sorted order: centre-cropped to crop x crop, mod-cropped to 8.

    `limit` keeps the first images; each keeps its index in the full sorted list,
    so its kernel, mask and seeds do not depend on `limit`.
    """
    from diffpir_rt.engine import degrade

    folder = Path(folder)
    files = list_images(folder)[:limit]
    images = []
    for index, path in enumerate(files):
        x = read_image(path).permute(1, 2, 0).numpy().astype(np.float64)
        if crop is not None:
            x = centre_crop(x, crop, path.name)
        height, width = x.shape[:2]
        if height < MOD_CROP or width < MOD_CROP:
            raise DiffPIRError(
                f"test image {path.name}: {width}x{height}; expected at least {MOD_CROP}x{MOD_CROP} "
                f"(images are mod-cropped to a multiple of {MOD_CROP})"
            )
        images.append(TestImage(dataset or folder.name, path.name, index, np.ascontiguousarray(degrade.mod_crop(x, MOD_CROP))))
    return images


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True, eq=False)
class Measurement:
    """y = H(x) + n for one image and scenario, with the operator the restorers use.

    Attributes:
        gt: (H, W, 3) ground truth in [0, 1].
        y: measurement, (H, W, 3) or (H/sf, W/sf, 3) for SR, float64 in [0, 1] plus noise, unclipped.
        operator: the engine operator (from the task registry).
        kernel: blur kernel (deblur), else None; mask: (H, W) 1 = observed (inpaint), else None.
        seed: the image's seed (run seed + index): every method's sampler and any stochastic baseline.
    """

    spec: Scenario
    gt: np.ndarray
    y: np.ndarray
    operator: Any
    kernel: Optional[np.ndarray]
    mask: Optional[np.ndarray]
    seed: int

    def y_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """y as a (1, 3, h, w) float32 tensor."""
        return torch.from_numpy(np.ascontiguousarray(self.y.transpose(2, 0, 1), dtype=np.float32))[None].to(device)

    def display(self) -> np.ndarray:
        """y for looking at, at the ground truth's size (the task's display)."""
        return get_task(self.spec.task).display(self.y, self.operator)

    @property
    def border(self) -> int:
        """Pixels shaved off each side before metrics (the task's: sf for SR, docs/algorithm.md §9)."""
        return get_task(self.spec.task).shave(self.operator)


def image_seed(index: int, seed: int = 0) -> int:
    return int(seed) + int(index)


def make_measurement(spec: Scenario, image: TestImage, seed: int = 0) -> Measurement:
    """The official-protocol measurement of one image (the task's `measure`); seeds: see the module docstring."""
    options = {**spec.options(), "kernel_index": image.index, "mask_seed": image.index}
    try:
        made = get_task(spec.task).measure(image.pixels, sigma_n=spec.sigma_n,
                                           noise_seed=NOISE_SEED_OFFSET + image_seed(image.index, seed), **options)  # fmt: skip
    except DiffPIRError as e:
        raise DiffPIRError(f"task {spec.label}, image {image.name}: {e}; use a larger --crop, or a smaller "
                           "--kernel-size / --box / --box-margin") from None  # fmt: skip
    return Measurement(spec, image.pixels, made.y, made.operator, made.kernel, made.mask, image_seed(image.index, seed))
