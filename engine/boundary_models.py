"""The boundary models of real photos, declared once: names, help, what each needs, how each wraps.

A photo is a window onto a larger scene; the Fourier data step (§6.2, §6.3) assumes the
blur wraps around it. Three models answer that (docs/algorithm.md §11):

- **extend**: restore a larger image of which only the frame was observed: the masked data
  term on an extended grid, solved by PCG (engine/boundary.py for deblurring,
  engine/boundary_sr.py for super-resolution). Best at the border, but the data step has no
  closed form, so only methods that use just its prox, or A and Aᵀ, run on it (the
  `extended_boundary` capability).
- **taper**: the measurement edgetaper-extended onto the extended grid, the task's circular
  operator there, the result cropped (engine/boundary_taper.py). Every closed form stays exact,
  so every method runs on it.
- **circular**: the operator as it is (the official protocol's synthetic measurements).

A task lists the models it has in `Task.boundaries`, best first; `auto` picks the first one
the method's declared capabilities allow (`Task.resolve_boundary`). Nothing here names a task
or a method: a model says which capability it needs, a method says which it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.params import AUTO

__all__ = ["AUTO", "BOUNDARIES", "BOUNDARY_MODELS", "BoundaryModel", "boundary_help", "boundary_operator", "runnable"]


@dataclass(frozen=True)
class BoundaryModel:
    """One way to model an image's edges.

    Attributes:
        name: its `--boundary` value and run-record entry.
        help: one phrase for --help and the service's form.
        real_photo: whether it treats the image as a window onto a larger scene (a photo);
            auto falling back to one that does not is said once on stderr and in the record.
        requires: the method capability (engine.methods.Capabilities field) it needs, or None.
        lacks: what a method without that capability misses in it (its refusal says so).
    """

    name: str
    help: str
    real_photo: bool
    requires: Optional[str] = None
    lacks: str = ""


#: The models, in the order --help lists them.
BOUNDARY_MODELS: dict[str, BoundaryModel] = {
    model.name: model
    for model in (
        BoundaryModel("extend", "restore a larger image of which only the frame was observed (masked data term; "
                      "methods that use only the data step's prox or A and A^T)", True, "extended_boundary",
                      "its data step has no closed form: no pseudo-inverse, singular values, range filters or "
                      "(A A^T + mu)^-1"),  # fmt: skip
        BoundaryModel("taper", "restore a larger image whose border is the measurement edgetaper-extended, then crop "
                      "(every method: the closed forms stay exact)", True),  # fmt: skip
        BoundaryModel("circular", "the blur wraps around the image (the official protocol's synthetic data)", False),
    )
}
#: `--boundary` choices.
BOUNDARIES = (AUTO, *BOUNDARY_MODELS)


def boundary_help() -> str:
    """The --boundary help: every model, and what auto does."""
    models = "; ".join(f"{m.name} = {m.help}" for m in BOUNDARY_MODELS.values())
    photo = ", else ".join(m.name for m in BOUNDARY_MODELS.values() if m.real_photo)
    others = ", ".join(m.name for m in BOUNDARY_MODELS.values() if not m.real_photo)
    return (f"image edges: {models}; {AUTO} = the task's best real-photo model the method can run ({photo}), "
            f"{others} only when asked for; tasks with a pixelwise data step have no edges to model")


def runnable(model: str, capabilities: Any) -> bool:
    """Whether a method with these capabilities (engine.methods.Capabilities) runs on `model`."""
    required = BOUNDARY_MODELS[model].requires
    return required is None or bool(getattr(capabilities, required, False))


def boundary_operator(operator: Any, model: Optional[str], multiple: int = 1) -> Any:
    """`operator` (Deblur or SuperResolution) under a resolved boundary model: the extended domain for
    "extend", the tapered extension for "taper", itself for "circular" or None.

    multiple: the UNet's size multiple; extended grids are multiples of it (no model padding).
    """
    if model is None or model == "circular":
        return operator
    from .operators import Deblur, SuperResolution

    if model == "extend":
        if isinstance(operator, Deblur):
            from .boundary import ExtendedDeblur

            return ExtendedDeblur(operator, multiple=multiple)
        if isinstance(operator, SuperResolution):
            from .boundary_sr import ExtendedSuperResolution

            return ExtendedSuperResolution(operator, multiple=multiple)
    elif model == "taper":
        from .boundary_taper import Tapered

        return Tapered(operator, multiple=multiple)
    else:
        raise DiffPIRError(f"--boundary {model!r}: expected one of {', '.join(BOUNDARIES)}")
    raise DiffPIRError(f"--boundary {model}: applies to deblurring and super-resolution, not to {type(operator).__name__}")
