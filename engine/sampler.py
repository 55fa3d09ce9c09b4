"""The reference sampler: any method's loop, run eagerly in the precision of its inputs.

`sample` restores a measurement, `generate` draws images unconditionally. Both know
neither the network nor the hardware: they ask an eps-model ``eps_model(x_t, t) -> eps``
(t an int64 tensor of shape (B,)) for the prior and an Operator for the data. Randomness
is injected: an explicit initial state ``x_T`` and the noise tensors the steps consume
make a run reproducible; ``seed`` covers the everyday case (x_T's noise drawn first, then
each step's, in loop order). The fast runtimes run this same loop (engine.methods.loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module, no_grad

from .methods import Method, build_method
from .methods.diffpir import DiffPIRConfig
from .methods.loop import (
    Callback,
    DrawnInputs,
    EpsModel,
    NoiseStream,
    Seed,
    check_given_noise,
    check_model_output,
    check_output,
    check_seed,
    check_state,
    pad_model,
    run_steps,
)
from .operators import DataStep, ElementwiseDataStep, FourierDataStep, Operator, check_image_batch
from .paths import MAX_NPY_ELEMENTS

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

Noise = Union[Sequence["Tensor"], "Tensor"]

__all__ = ["DiffPIRConfig", "family_of", "generate", "operator_output", "prepare", "sample"]


def family_of(data: Optional[DataStep]) -> str:
    """The operator family a bound operator belongs to: "fourier", "mask" or "none"."""
    if data is None:
        return "none"
    if isinstance(data, FourierDataStep):
        return "fourier"
    if isinstance(data, ElementwiseDataStep):
        return "mask"
    family = getattr(type(data), "family", None)  # a data step that states its own (engine.boundary)
    if family in ("fourier", "mask"):
        return family
    raise DiffPIRError(f"operator: no known family for {type(data).__name__}")


def check_applicable(method: Method, data: Optional[DataStep], name: str) -> None:
    """Refuse a method on an operator family it cannot restore, or on a data step whose
    required capability (engine.boundary's masked step: extended_boundary) it lacks."""
    family = family_of(data)
    families = method.families
    if family == "none" and families:
        raise DiffPIRError(f"method {name}: restores a measurement; use sample(), not generate()")
    if family != "none" and family not in families:
        tasks = ", ".join(type(method.config).tasks) or "no measurement (use generate())"
        raise DiffPIRError(f"method {name}: applies to {tasks}, not to this operator ({type(data).__name__})")
    required = getattr(type(data), "requires", None)  # a data step only some methods can run on says which capability
    if required is not None and not getattr(type(method.config).capabilities, required):
        raise DiffPIRError(data.refusal(name))


def operator_output(operator: Any, x: Tensor, y_shape: Sequence[int]) -> Tensor:
    """The loop's result as the operator's image: `operator.output(x, y_shape)` when the operator
    restores on a domain other than its image's (engine.boundary.ExtendedDeblur crops its
    extension back to the frame), else x. Called once after the loop by every runtime."""
    hook = getattr(operator, "output", None)
    return x if hook is None else hook(x, y_shape)


class CheckedModel:
    """An eps-model whose every answer is checked before the loop uses it: a real floating
    tensor of the state's shape, on the state's device (methods.loop.check_model_output), and
    finite. Non-finite values are counted on the device, without a sync per step, and reported
    once after the loop (`raise_if_nonfinite`): a model that returns NaN or Inf is the model's
    fault, not a clamped image, nor a broken output file."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.nonfinite: Optional[Tensor] = None
        inner = getattr(model, "eps_and_variance", None)
        if inner is not None:

            def eps_and_variance(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
                out = inner(x_t, t)
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise DiffPIRError(f"eps_model.eps_and_variance: returned {type(out).__name__}, expected (eps, variance)")
                return self._count(check_model_output(out[0], x_t)), self._count(check_model_output(out[1], x_t, "eps_model variance"))

            self.eps_and_variance = eps_and_variance

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self._count(check_model_output(self.model(x_t, t), x_t))

    def _count(self, out: Tensor) -> Tensor:
        bad = (~torch.isfinite(out.detach())).sum()
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite + bad
        return out

    def raise_if_nonfinite(self) -> None:
        """One sync after the loop: DiffPIRError if any answer held NaN or Inf."""
        if self.nonfinite is not None and int(self.nonfinite):
            raise DiffPIRError(
                f"eps_model: returned {int(self.nonfinite)} NaN or Inf value(s) during sampling (a broken checkpoint, "
                "or a reduced precision that overflows: try --dtype fp32)"
            )


def _check_callables(eps_model: Any, callback: Any) -> None:
    if not callable(eps_model):
        raise DiffPIRError(f"eps_model: expected a callable (x_t, t) -> eps, got {type(eps_model).__name__}")
    if callback is not None and not callable(callback):
        raise DiffPIRError(f"callback: expected a callable or None, got {type(callback).__name__}")


def prepare(
    method: Method,
    operator: Optional[Operator],
    y: Optional[Tensor],
    data: Optional[DataStep],
    shape: torch.Size,
    like: Tensor,
    x_T: Optional[Tensor],
    noise: Optional[Noise],
    seed: Seed,
) -> tuple[Tensor, NoiseStream]:
    """The loop's start state and the stream its steps draw from: the one place randomness
    is set up for every runtime. x_T's noise (when x_T is not given) comes first."""
    check_given_noise(method, noise)
    given = list(noise) if noise is not None else None
    stream = NoiseStream(shape, like, seed=seed if (x_T is None or given is None) else None, given=None)
    if x_T is None:
        init = [stream.next() for _ in range(method.init_noise())]
        x = method.initial_state(operator, y, data, init)
    else:
        x = check_state("x_T", x_T, shape, like)
    if given is not None:
        stream = NoiseStream(shape, like, given=given)
    return x, stream


@no_grad
def sample(
    eps_model: EpsModel,
    operator: Operator,
    y: Tensor,
    config: Any,
    x_T: Optional[Tensor] = None,
    noise: Optional[Noise] = None,
    seed: Seed = None,
    callback: Optional[Callback] = None,
) -> Tensor:
    """Restore y with the method of `config` (e.g. DiffPIRConfig). Returns the image in [0, 1].

    Args:
        eps_model: (x_t (B, C, H, W) in model units, t int64 (B,)) -> eps. If it has a
            ``size_multiple`` attribute, images are padded to it (operator.pad_mode).
        operator: the degradation (Deblur, SuperResolution, Inpaint, Denoise).
        y: measurement in [0, 1], (B, C, h, w) or (C, h, w); not clipped.
        config: the method's hyperparameters.
        x_T: initial state in model units, (B, C, H, W); default: the method's own
            (DiffPIR: y-informed) with noise from `seed`.
        noise: the N(0, I) tensors the steps consume, in order, each (B, C, H, W);
            default: drawn from `seed`.
        seed: an integer (one generator for the batch), one integer per sample, or None
            (a fresh seed).
        callback: called after every step with {i, t, x}.

    Returns:
        (B, C, H, W) (or (C, H, W) for an unbatched y) image in [0, 1].
    """
    method = build_method(config)
    _check_callables(eps_model, callback)
    unbatched = isinstance(y, torch.Tensor) and y.ndim == 3
    if unbatched:
        y = y[None]
    check_image_batch(y)
    if isinstance(operator, type) or operator is None or not hasattr(operator, "data_step"):
        got = f"the class {operator.__name__}; pass an instance" if isinstance(operator, type) else type(operator).__name__
        raise DiffPIRError(f"operator: expected an Operator (Deblur, SuperResolution, Inpaint, Denoise), got {got}")
    check_seed(seed, y.shape[0])  # a bad seed is refused even when x_T and noise make it unused
    data = operator.data_step(y)  # validates sizes and precomputes spectra once
    check_applicable(method, data, config.method)
    shape = operator.image_shape(y.shape)
    x, stream = prepare(method, operator, y, data, shape, y, x_T, noise, seed)
    model = CheckedModel(pad_model(eps_model, operator.pad_mode))
    inputs = DrawnInputs(stream, shape[0], y.device)
    image = run_steps(method, model, data, x, inputs, method.steps(), callback)
    model.raise_if_nonfinite()
    out = check_output(operator_output(operator, image, y.shape))
    return out[0] if unbatched else out


@no_grad
def generate(
    eps_model: EpsModel,
    shape: Sequence[int],
    config: Any,
    x_T: Optional[Tensor] = None,
    noise: Optional[Noise] = None,
    seed: Seed = None,
    device: Union[str, torch.device] = "cpu",
    callback: Optional[Callback] = None,
) -> Tensor:
    """Draw images from the prior alone (DDIMConfig, DDPMConfig). Returns (B, C, H, W) in [0, 1].

    Args:
        shape: (B, C, H, W) of the images.
        x_T, noise, seed, callback: as in `sample` (x_T defaults to N(0, I) from `seed`).
        device: where to sample (x_T's device when it is given).
    """
    from .device import resolve_device

    method = build_method(config)
    check_applicable(method, None, config.method)
    _check_callables(eps_model, callback)
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) != 4
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
    ):
        raise DiffPIRError(f"shape: expected (B, C, H, W) of positive integers, got {shape!r:.80}")
    batch, channels, height, width = shape
    if batch * channels * height * width > MAX_NPY_ELEMENTS:
        raise DiffPIRError(
            f"shape: {batch} x {channels} x {width}x{height} is {batch * channels * height * width:,} values; "
            f"at most {MAX_NPY_ELEMENTS:,} are generated at once"
        )
    check_seed(seed, batch)
    like = torch.empty((), device=x_T.device if isinstance(x_T, torch.Tensor) else resolve_device(device))
    x, stream = prepare(method, None, None, None, torch.Size(shape), like, x_T, noise, seed)
    model = CheckedModel(pad_model(eps_model, "reflect"))
    inputs = DrawnInputs(stream, shape[0], like.device)
    image = run_steps(method, model, None, x, inputs, method.steps(), callback)
    model.raise_if_nonfinite()
    return check_output(image)
