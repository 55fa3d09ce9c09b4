"""What a task is: the one object that owns everything task-specific.

A task (deblurring, super-resolution, inpainting, denoising) knows the inputs it takes
besides the measurement, how to make its operator from a user's files or from arrays,
the official-protocol measurement of a clean image, its named protocol variants, its
boundary models for real photos, the classical baselines it is compared with, its default
noise level and its metric border. Every surface (CLI, service, eval, batch jobs,
benchmarks, the Python API) asks the task; none branches on a task's name.

A new task is one module beside these plus one registry line (engine/tasks/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import AUTO, Param

from ..paths import InputFile


@dataclass(frozen=True)
class TaskInputs:
    """A user's task inputs besides the measurement: files (paths or uploads) and values.

    Attributes:
        kernel: a blur kernel file (.npy, .png, .mat), or None.
        kernel_index: which kernel of a .mat cell array.
        mask: an inpainting mask image (nonzero = observed), or None.
        scale: the SR factor, or None (the task's default).
    """

    kernel: Optional[InputFile] = None
    kernel_index: Optional[int] = None
    mask: Optional[InputFile] = None
    scale: Optional[int] = None

    def given(self) -> dict[str, Any]:
        """name -> value of what was given (files and values alike)."""
        return {name: value for name, value in vars(self).items() if value is not None}


#: Every input a task may declare, with its help: one spelling for the flag, the form
#: field and the batch option. A task lists which of these it takes in `Task.inputs`.
INPUT_PARAMS: dict[str, Param] = {
    "kernel": Param(f"blur kernel file (.npy, .png, .mat), or {AUTO}: estimated from the image with the method "
                    "that estimates it", str, words=(AUTO,)),
    "kernel_index": Param("which kernel of a .mat cell array (0-based)", int, 0),
    "mask": Param("inpainting mask image, nonzero = observed", str),
    "scale": Param("super-resolution factor", int, choices=(2, 3, 4)),
}
#: The inputs that are files (read through the engine's one reader for paths and uploads).
FILE_INPUTS = ("kernel", "mask")
#: A kernel of 32x32 or more whose peak is below this multiple of its mean is a picture, not a blur:
#: a 61x61 Gaussian of std 6 peaks at 16x its mean, a motion kernel far higher, a photo at 2-4x.
FLAT_KERNEL_RATIO = 4.0


@dataclass(frozen=True, eq=False)
class Degradation:
    """An official-protocol measurement y = H(x) + n and what made it.

    Attributes:
        y: (h, w, C) float64 in [0, 1] plus noise, unclipped.
        operator: the operator that inverts it.
        kernel: the blur kernel used (deblur), else None; mask: (H, W) 1 = observed, else None.
    """

    y: np.ndarray
    operator: Any
    kernel: Optional[np.ndarray]
    mask: Optional[np.ndarray]


class Task:
    """Base of the four tasks; subclasses set the class attributes and the operator hooks.

    Attributes:
        name: the task's one name on every surface.
        description: one line for --help, /v1/info and the web page.
        family: the operator family its data step belongs to: "fourier" (blur, decimation)
            or "mask" (pixel masks); methods say which families they can run on.
        operator_type: the class name of its operator (engine.operators), so an operator a
            Python user built is known as this task's (`task_of`).
        inputs: the names (of INPUT_PARAMS) it takes besides the measurement.
        required: the inputs it cannot do without.
        per_image_input: the file a batch list pairs with each image ("kernel", "mask"), or None.
        default_sigma_n: the measurement noise assumed when the user gives none and the
            model has no tuned value.
        boundaries: the boundary models it has for real photos, the first the default
            for user images; () for a task without a boundary model (pixelwise masks).
        variants: the named measurements of the official protocol (eval's deblur/gaussian, sr/x4, ...).
        protocol_variants: those the paper reports (eval's default scenarios); None = all variants.
        baselines: the classical methods eval compares it with (names of benchmarks.baselines),
            the one shown in the image grids first.
        needs_noise: a measurement without noise is no task (denoising).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    family: ClassVar[str] = ""
    operator_type: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    per_image_input: ClassVar[Optional[str]] = None
    default_sigma_n: ClassVar[float] = 0.05
    boundaries: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[tuple[str, ...]] = ()
    protocol_variants: ClassVar[Optional[tuple[str, ...]]] = None
    baselines: ClassVar[tuple[str, ...]] = ()
    needs_noise: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ inputs

    def input_params(self) -> dict[str, Param]:
        return {name: INPUT_PARAMS[name] for name in self.inputs}

    def check_inputs(self, **given: Any) -> None:
        """Refuse an input this task does not take (never ignore it silently), and a missing required one."""
        stray = [name for name, value in given.items() if value is not None and name not in self.inputs]
        if stray:
            uses = ", ".join(f"--{n.replace('_', '-')}" for n in self.inputs) or "no extra input"
            raise DiffPIRError(f"--{stray[0].replace('_', '-')}: does not apply to --task {self.name} (it takes {uses})")
        if given.get("kernel_index") is not None and given.get("kernel") is None:
            raise DiffPIRError("--kernel-index: applies to a --kernel file")

    def check_required(self, **given: Any) -> None:
        for name in self.required:
            if given.get(name) is None:
                raise DiffPIRError(f"--task {self.name} needs --{name} ({INPUT_PARAMS[name].help})")

    def check_fit(self, operator: Any, image_shape: Any) -> None:
        """Refuse, before any work, a user's kernel that cannot be one for this image: larger than half
        the image's side (a quarter of its area), or an ordinary picture passed as --kernel by mistake
        (a large kernel whose weight is spread flat, nothing like a blur's concentrated mass)."""
        kernel = getattr(operator, "kernel", None)
        if kernel is None:
            return
        height, width = (int(n) for n in operator.image_shape((1, *image_shape))[-2:])  # the restored image's grid
        kh, kw = int(kernel.shape[-2]), int(kernel.shape[-1])
        if 2 * kh > height or 2 * kw > width:
            raise DiffPIRError(f"kernel: {kw}x{kh} is larger than half the {width}x{height} image's side; a blur kernel "
                               "is a small array (e.g. 25x25), not a picture")  # fmt: skip
        flat = float(kernel.max()) / float(kernel.mean()) if float(kernel.mean()) > 0 else 0.0
        if kh * kw >= 32 * 32 and flat < FLAT_KERNEL_RATIO:
            raise DiffPIRError(f"kernel: {kw}x{kh} with its weight spread almost evenly (peak {flat:.1f}x the mean): this "
                               "looks like a picture, not a blur kernel; pass the blur's point-spread function")  # fmt: skip

    def operator_from(self, inputs: TaskInputs) -> Any:
        """The operator from a user's files (paths or uploads, one reader for both) and values."""
        self.check_inputs(**inputs.given())
        self.check_required(**inputs.given())
        from ..degrade import load_kernel
        from ..imageio import read_mask

        kernel = None if inputs.kernel is None else load_kernel(inputs.kernel, inputs.kernel_index)
        mask = None if inputs.mask is None else read_mask(inputs.mask)[0].numpy()
        return self.operator(kernel=kernel, mask=mask, scale=inputs.scale)

    def operator(self, kernel: Optional[np.ndarray] = None, mask: Optional[np.ndarray] = None,
                 scale: Optional[int] = None) -> Any:  # fmt: skip
        """The operator from arrays: a (kh, kw) kernel, an (H, W) mask (1 = observed), an SR scale."""
        self.check_inputs(kernel=kernel, mask=mask, scale=scale)
        self.check_required(kernel=kernel, mask=mask, scale=scale)
        return self._operator(kernel=kernel, mask=mask, scale=scale)

    def _operator(self, kernel: Any, mask: Any, scale: Optional[int]) -> Any:
        """The task's operator from checked inputs: every task (engine/tasks/*.py) defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines no operator")

    # ------------------------------------------------------------------ the official protocol

    def measure(self, x: np.ndarray, *, sigma_n: float, noise_seed: int, **options: Any) -> Degradation:
        """The official measurement of a clean (H, W, C) float64 image in [0, 1]: the task's
        degradation (`_degrade`, with `options` of `protocol_options`), then additive
        N(0, sigma_n^2) noise seeded by `noise_seed`."""
        from .. import degrade

        y, operator, kernel, mask = self._degrade(np.asarray(x, dtype=np.float64), options)
        y = degrade.add_noise(np.asarray(y, dtype=np.float64), sigma_n, seed=noise_seed)
        return Degradation(y, operator, kernel, mask)

    def _degrade(self, x: np.ndarray, options: dict[str, Any]) -> tuple[np.ndarray, Any, Any, Any]:
        """(noiseless y, operator, kernel or None, mask or None): every task defines it."""
        raise NotImplementedError(f"{type(self).__name__} defines no official measurement")

    def variant_options(self, variant: Optional[str]) -> dict[str, Any]:
        """The `measure` options of a named protocol variant (e.g. {"kernel": "motion"})."""
        if variant is None and not self.variants:
            return {}
        if variant not in self.variants:
            expected = ", ".join(f"{self.name}/{v}" for v in self.variants) or self.name
            raise DiffPIRError(f"task {self.name}/{variant}: expected one of {expected}")
        return self._variant_options(variant)

    def _variant_options(self, variant: str) -> dict[str, Any]:
        return {}

    def default_variant(self) -> Optional[str]:
        return self.variants[0] if self.variants else None

    # ------------------------------------------------------------------ results

    def shave(self, operator: Any) -> int:
        """Pixels shaved off each side before metrics (SR: its scale, as the official scripts do)."""
        return 0

    def record(self, operator: Any) -> dict[str, Any]:
        """The task's own fields of a run record (e.g. the SR scale)."""
        return {}

    def display(self, y: np.ndarray, operator: Any) -> np.ndarray:
        """y (h, w, C) for looking at beside results of the output's size."""
        return np.clip(y, 0.0, 1.0)

    def synthetic_operator(self, height: int, width: int) -> Any:
        """A seeded operator for an (height, width) output: benchmarks and size sweeps (every task defines it)."""
        raise NotImplementedError(f"{type(self).__name__} defines no synthetic operator")

    # ------------------------------------------------------------------ boundaries

    def resolve_boundary(self, boundary: str, capabilities: Any, method: str) -> Optional[str]:
        """The boundary model that runs (engine.boundary_models): "extend", "taper", "circular", or None
        for a task without one.

        auto: the first of the task's `boundaries` the method's capabilities allow (`runnable`);
        an explicit model the task or the method cannot take is refused.

        Args:
            boundary: "auto" or a model's name (engine.BOUNDARIES).
            capabilities: the method's declared Capabilities (engine.methods.base).
            method: its name, for messages.
        """
        from ..boundary_models import BOUNDARIES, BOUNDARY_MODELS, runnable

        if boundary not in BOUNDARIES:
            raise DiffPIRError(f"--boundary {boundary!r}: expected one of {', '.join(BOUNDARIES)}")
        if not self.boundaries:
            if boundary not in (AUTO, "circular"):
                raise DiffPIRError(f"--boundary {boundary}: --task {self.name} has no boundary model (its data step is pixelwise)")
            return None
        if boundary == AUTO:
            return next((model for model in self.boundaries if runnable(model, capabilities)), self.boundaries[-1])
        if boundary not in self.boundaries:
            raise DiffPIRError(f"--boundary {boundary}: --task {self.name} has {', '.join(self.boundaries)}")
        if not runnable(boundary, capabilities):
            fallback = next((m for m in self.boundaries if runnable(m, capabilities) and BOUNDARY_MODELS[m].real_photo), "circular")
            raise DiffPIRError(f"method {method}: cannot run on --boundary {boundary} ({BOUNDARY_MODELS[boundary].lacks}); "
                               f"use --boundary {fallback} (auto picks it)")  # fmt: skip
        return boundary

    def boundary_note(self, boundary: str, resolved: Optional[str], method: str) -> Optional[str]:
        """One line when `auto` could not give the method this task's best boundary model (the first of
        `boundaries`): which model it cannot run and why, and what ran instead. Said once on stderr and
        kept in the run record; None when auto got the best model, or the model was asked for by name."""
        from ..boundary_models import BOUNDARY_MODELS

        if boundary != AUTO or resolved is None or not self.boundaries or resolved == self.boundaries[0]:
            return None
        best = BOUNDARY_MODELS[self.boundaries[0]]
        why = f" ({best.lacks})" if best.lacks else ""
        if BOUNDARY_MODELS[resolved].real_photo:
            effect = f"an approximation of {best.name}: with a wide blur kernel its border strips restore less well, docs/algorithm.md §11"
        else:
            effect = "expect artefacts at the borders"
        return (f"method {method} cannot run on --boundary {best.name} of --task {self.name}{why}: the image's edges "
                f"are restored with --boundary {resolved} ({effect})")  # fmt: skip

    def apply_boundary(self, operator: Any, boundary: Optional[str], multiple: int = 1) -> Any:
        """`operator` under a resolved boundary model (engine.boundary_models.boundary_operator)."""
        from ..boundary_models import boundary_operator

        return boundary_operator(operator, boundary, multiple)
