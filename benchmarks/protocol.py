"""The quality benchmark's measurement protocol: scenarios, test images, seeds (docs/algorithm.md §7).

A scenario is one of the engine's tasks (deblur, sr, inpaint, denoise: the task registry
of engine/tasks.py, the one vocabulary) with the named kernel or mask of the official
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

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from diffpir_rt.engine import TASKS, DiffPIRError, make_measurement as registry_measurement, read_image

# engine.degrade (scipy.io, scipy.ndimage, h5py: ~0.5 s) is imported where used, so that
# registering `diffpir eval` costs nothing for the other sub-commands.

#: The named variants of each task: the deblur kernel, the inpainting mask. SR's variant is
#: its scale (sr/x2, sr/x3, sr/x4); denoising has none.
VARIANTS: dict[str, tuple[str, ...]] = {"deblur": ("gaussian", "motion"), "inpaint": ("box", "random")}
SR_SCALES = (2, 3, 4)
#: The benchmark's scenarios, in report order (the paper's x4 for SR).
SCENARIO_NAMES = ("deblur/gaussian", "deblur/motion", "sr/x4", "inpaint/box", "inpaint/random", "denoise")
NOISE_LEVELS = (0.0, 0.05)
TESTSETS = ("CBSD68", "McMaster", "set3c")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: The official scripts mod-crop every test image to a multiple of 8 (docs/algorithm.md §7).
MOD_CROP = 8
#: Offset of the measurement-noise seeds, so they never equal a kernel (10*index) or mask (index) seed.
NOISE_SEED_OFFSET = 2**20


@dataclass(frozen=True)
class Scenario:
    """One benchmark scenario: an engine task, its kernel/mask variant, noise level and sizes.

    Args:
        task: deblur, sr, inpaint or denoise (engine.TASKS).
        sigma_n: measurement noise std in [0, 1] units (0.05 = 12.75/255).
        variant: deblur: "gaussian" (61x61, std 3(1 + 2u) per image) or "motion" (61x61,
            intensity 0.5); inpaint: "box" (box x box hole) or "random" (random_p missing);
            None for sr and denoise.
        kernel_size: Gaussian kernel size (official 61; smaller only for tests or small crops).
        motion_kernel_size: motion kernel size (official 61, >= 54).
        box: inpainting box side (official 128 on 256 images); box_margin: its least distance
            from the border (16).
        random_p: missing fraction of the random mask (official 0.5).
        scale: SR factor (the paper's x4).
    """

    task: str
    sigma_n: float
    variant: Optional[str] = None
    kernel_size: int = 61
    motion_kernel_size: int = 61
    box: int = 128
    box_margin: int = 16
    random_p: float = 0.5
    scale: int = 4

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DiffPIRError(f"task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        allowed = VARIANTS.get(self.task, ())
        if allowed and self.variant not in allowed:
            raise DiffPIRError(f"task {self.task}: variant {self.variant!r}; expected one of {', '.join(allowed)}")
        if not allowed and self.variant is not None:
            raise DiffPIRError(f"task {self.task}: has no variant (got {self.variant!r})")
        if isinstance(self.sigma_n, bool) or not isinstance(self.sigma_n, (int, float)) or not (
            math.isfinite(self.sigma_n) and 0.0 <= self.sigma_n <= 1.0
        ):
            raise DiffPIRError(f"task {self.label}: sigma_n {self.sigma_n}; expected a number in [0, 1]")
        if self.task == "denoise" and self.sigma_n == 0:
            raise DiffPIRError("task denoise: sigma_n 0 makes y = x; expected sigma_n > 0")
        for name in ("kernel_size", "motion_kernel_size", "box", "scale"):
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
        if self.scale not in SR_SCALES:
            raise DiffPIRError(f"task {self.label}: scale {self.scale}; expected 2, 3 or 4")
        if not 0.0 < self.random_p < 1.0:
            raise DiffPIRError(f"task {self.label}: random_p {self.random_p}; expected a fraction in (0, 1)")

    @classmethod
    def named(cls, name: str, sigma_n: float, **options: Any) -> "Scenario":
        """The scenario `name` ("deblur/gaussian", "sr/x4", "denoise", ...) at noise level sigma_n."""
        task, _, variant = name.partition("/")
        if task == "sr" and variant:
            scales = {f"x{s}": s for s in SR_SCALES}
            if variant not in scales:
                raise DiffPIRError(f"task {name!r}: expected sr/x2, sr/x3 or sr/x4")
            options = {**options, "scale": scales[variant]}
            variant = ""
        if task not in TASKS or (task in VARIANTS) != bool(variant) or (variant and variant not in VARIANTS[task]):
            raise DiffPIRError(f"task {name!r}: expected one of {', '.join(scenario_names())}")
        return cls(task, float(sigma_n), variant or None, **options)

    @property
    def label(self) -> str:
        """The scenario's name: task/variant (deblur/gaussian, sr/x4, inpaint/box, denoise)."""
        if self.task == "sr":
            return f"sr/x{self.scale}"
        return f"{self.task}/{self.variant}" if self.variant else self.task

    @property
    def border(self) -> int:
        """Pixels shaved off each side before metrics: sf for SR, 0 otherwise (docs/algorithm.md §7)."""
        return self.scale if self.task == "sr" else 0

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


def scenario_names() -> tuple[str, ...]:
    return SCENARIO_NAMES


def expand_task_names(name: str) -> list[str]:
    """A --tasks item without noise: a scenario name, or a task name for all its scenarios."""
    if name == "all":
        return list(SCENARIO_NAMES)
    if name in TASKS:
        return [s for s in SCENARIO_NAMES if s.partition("/")[0] == name]
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
                if scenario_name == "denoise" and sigma == 0 and not at:
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
        """y for looking at: clipped, SR nearest-upsampled to the ground truth's size."""
        y = np.clip(self.y, 0.0, 1.0)
        if self.spec.task == "sr":
            y = y.repeat(self.spec.scale, axis=0).repeat(self.spec.scale, axis=1)
        return y


def image_seed(index: int, seed: int = 0) -> int:
    return int(seed) + int(index)


def make_measurement(spec: Scenario, image: TestImage, seed: int = 0) -> Measurement:
    """The official-protocol measurement of one image (the task registry's); seeds: see the module docstring."""
    options: dict[str, Any] = {}
    if spec.task == "deblur":
        options = {"kernel": spec.variant, "kernel_index": image.index,
                   "kernel_size": spec.kernel_size if spec.variant == "gaussian" else spec.motion_kernel_size}  # fmt: skip
    elif spec.task == "sr":
        options = {"scale": spec.scale}
    elif spec.task == "inpaint":
        options = {"mask": spec.variant, "mask_seed": image.index, "box": spec.box, "box_margin": spec.box_margin,
                   "random_p": spec.random_p}  # fmt: skip
    try:
        made = registry_measurement(spec.task, image.pixels, sigma_n=spec.sigma_n,
                                    noise_seed=NOISE_SEED_OFFSET + image_seed(image.index, seed), **options)  # fmt: skip
    except DiffPIRError as e:
        hint = {"deblur/gaussian": "; use a larger --crop or a smaller --kernel-size",
                "deblur/motion": f"; motion kernels are {spec.motion_kernel_size}x{spec.motion_kernel_size}: use a larger --crop",
                "inpaint/box": "; use a larger --crop or a smaller --box / --box-margin"}  # fmt: skip
        raise DiffPIRError(f"task {spec.label}, image {image.name}: {e}{hint.get(spec.label, '')}") from None
    return Measurement(spec, image.pixels, made.y, made.operator, made.kernel, made.mask, image_seed(image.index, seed))
