"""Blind DiffPIR: deblurring with an unknown kernel, estimated inside the DiffPIR loop (docs/blind.md §2).

An expectation-maximisation scheme on the one loop, in the spirit of Fast Diffusion EM
(Laroche, Almansa, Coupeté, WACV 2024), with DiffPIR's closed-form data step as the E-step's
measurement consistency. Per step t -> t':

1. x0 from eps, clamped (docs/algorithm.md §3): the prior's estimate of the sharp image.
2. M-step (steps with t <= kernel_t_max): the kernel that best explains y from x0's gradients,
   a fixed number of conjugate-gradient iterations warm started from the current kernel,
   projected onto blur kernels (engine.estimate.kernel.fit_kernel).
3. The data step with the current kernel and rho_t (the circular closed form, or the masked
   PCG of engine/boundary.py on a real photo's extended domain).
4. Re-noising to t' with zeta, as DiffPIR.

The kernel's support N (`kernel_size`) is fixed by the operator the loop is given: a `Deblur`
(or `ExtendedDeblur`) of the N x N initial guess, `engine.methods.blind_diffpir.blind_operator`.
Everything is tensor work with a fixed iteration count, so the loop stays capturable in a CUDA
graph: the kernel is state carried from step to step, reset to the initial guess at the
first step, and copied into a buffer the operator exposes after the run (`BlindKernel`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional


from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module
from diffpir_rt.params import param

from ..boundary import ExtendedDeblur, MaskedFourierDataStep, edgetaper_extend
from ..estimate.kernel import KernelFit, fit_kernel, initial_kernel
from ..estimate.sparse import CoarseToFine, estimate_kernel, estimate_kernel_on_window
from ..imageio import from_model, to_model
from ..operators import Deblur, FourierDataStep, Operator, psf2otf
from ..schedule import linear_schedule
from ..step import StepCoefficients, predict_x0, renoise
from .base import Capabilities, MethodBase, Step, check_config
from .diffpir import DiffPIRConfig, initial_state


if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

__all__ = ["BlindDiffPIR", "BlindDiffPIRConfig", "BlindKernel", "blind_operator", "check_blind_size", "kernel_estimate", "prepare_blind"]

#: The largest kernel support relative to the image: beyond a quarter of its shorter side the
#: measurement holds too few independent edges per kernel entry for the fit to be determined.
MAX_KERNEL_FRACTION = 4
DEFAULT_KERNEL_SIZE = 31
#: `--kernel auto` on a photo larger than this estimates the kernel on its busiest window of this side
#: (docs/blind.md §2.5): the cost of one window, whatever the photo's size.
ESTIMATE_WINDOW = 512


@dataclass(frozen=True)
class BlindDiffPIRConfig(DiffPIRConfig):
    """DiffPIR's hyperparameters plus the kernel estimate's (docs/blind.md §2).

    Args:
        kernel_size: N, the largest kernel support considered (odd).
        kernel_t_max: the kernel is re-estimated at the steps whose timestep is at or below this.
        kernel_sigma_max: ... and only when sigma_n is at most this: the M-step reads x0's fine edges,
            which noisier measurements do not determine (measured: docs/blind.md §2.4).
        kernel_alpha, kernel_beta: weights of ‖k‖² and ‖∇k‖², relative to the gradient energy of x0.
        kernel_iters: conjugate-gradient iterations per kernel update.
        kernel_threshold: kernel entries below this fraction of the peak are set to zero.
        kernel_trust: κ of the proximal term κ · 2σ_n² · n ‖k − k_prev‖² (n the gradient samples
            compared): at high noise the data pay for less movement (docs/blind.md §2.3).
        sigma_floor: rho_t uses max(sigma_n, sigma_floor): with an estimated kernel the data term's
            residual holds the kernel's error besides the noise, and the near-inverse filter of the
            first steps amplifies it (docs/blind.md §2.3).

    The initial kernel is the operator's (`blind_operator`): the loop starts from it.
    """

    method: ClassVar[str] = "blind_diffpir"
    description: ClassVar[str] = (
        "Blind DiffPIR: deblurring with an unknown kernel, estimated jointly with the image by an EM "
        "kernel update inside the DiffPIR loop"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur",)
    family: ClassVar[bool] = False
    estimates: ClassVar[tuple[str, ...]] = ("kernel",)
    capabilities: ClassVar[Capabilities] = Capabilities(extended_boundary=True)
    defaults_source: ClassVar[str] = "tuned for the bundled prior on McMaster crops (docs/blind.md §2.4)"
    OFFICIAL: ClassVar[dict[str, dict[str, Any]]] = {"deblur": {"lam": 2.0, "zeta": 1.0, "steps": 20}}

    kernel_size: int = param(DEFAULT_KERNEL_SIZE, help="the largest blur-kernel support considered (odd, px)", kind=int,
                             low=3, high=255)  # fmt: skip
    kernel_t_max: int = param(150, help="re-estimate the kernel at steps whose timestep is at or below this (0: never)", kind=int,
                              low=0, high=999, group="advanced")  # fmt: skip
    kernel_sigma_max: float = param(0.02, help="re-estimate the kernel in the loop only if sigma_n is at most this", low=0.0,
                                    high=1.0, group="advanced")  # fmt: skip
    kernel_alpha: float = param(0.05, help="weight of |k|^2 in the kernel fit, relative to the image's gradient energy",
                                low=0.0, group="advanced")  # fmt: skip
    kernel_beta: float = param(0.05, help="weight of |grad k|^2 in the kernel fit, relative likewise", low=0.0, group="advanced")
    kernel_iters: int = param(20, help="conjugate-gradient iterations per kernel update", kind=int, low=1, high=200,
                              group="advanced")  # fmt: skip
    kernel_threshold: float = param(0.05, help="kernel entries below this fraction of the peak are set to zero", low=0.0,
                                    high=0.5, group="advanced")  # fmt: skip
    kernel_trust: float = param(4.0, help="keeps each kernel update near the previous kernel, in proportion to the noise "
                                "variance (0: a plain least-squares update)", low=0.0, group="advanced")  # fmt: skip
    sigma_floor: float = param(0.03, help="the data term assumes at least this noise level: a kernel estimate's error "
                               "acts as noise", low=0.0, high=1.0, group="advanced")  # fmt: skip

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size % 2 == 0:
            raise DiffPIRError(f"kernel_size: expected an odd size (the kernel has a centre pixel), got {self.kernel_size}")

    @classmethod
    def task_defaults(cls, task: str, sigma_n: float, scale: Optional[int]) -> dict[str, Any]:
        return dict(cls.OFFICIAL[task])

    @property
    def sigma_data(self) -> float:
        """The noise level the data term weighs by: max(sigma_n, sigma_floor)."""
        return max(self.sigma_n, self.sigma_floor)

    def kernel_fit(self) -> KernelFit:
        return KernelFit(alpha=self.kernel_alpha, beta=self.kernel_beta, iters=self.kernel_iters, threshold=self.kernel_threshold)

    @classmethod
    def estimate_operator(cls, y: Any, *, sigma_n: float, boundary: Optional[str], overrides: Any, multiple: int = 16) -> Operator:
        """`--kernel auto`: the coarse-to-fine kernel of y as the loop's first kernel (`prepare_blind`), on
        a circular Deblur that the runtime puts under the resolved boundary model; the estimate itself
        models a real photo's edges unless the boundary is circular."""
        size = overrides.get("kernel_size")
        size = DEFAULT_KERNEL_SIZE if size is None else size
        if isinstance(size, bool) or not isinstance(size, int) or size < 3 or size % 2 == 0:
            raise DiffPIRError(f"--kernel-size {size!r}: expected an odd integer >= 3")
        check_blind_size(size, *y.shape[-2:])
        photo = boundary not in (None, "circular")
        if photo and max(y.shape[-2:]) > ESTIMATE_WINDOW:  # one kernel for the photo: estimated once, on its busiest window
            kernel, _ = estimate_kernel_on_window(y, size, ESTIMATE_WINDOW, CoarseToFine(), "extend", sigma_n)
        else:
            kernel = estimate_kernel(y, size, CoarseToFine(), "extend" if photo else "circular", sigma_n)
        return blind_operator(size, "circular", init=kernel, multiple=multiple)


def check_blind_size(kernel_size: int, height: int, width: int) -> None:
    """Refuse a kernel support the image cannot determine: more than a quarter of its shorter side."""
    if MAX_KERNEL_FRACTION * kernel_size > min(height, width):
        raise DiffPIRError(
            f"--kernel-size {kernel_size}: larger than a quarter of the {width}x{height} image "
            f"(at most {min(height, width) // MAX_KERNEL_FRACTION}); use a smaller --kernel-size"
        )


class BlindKernel:
    """Where a blind restoration leaves its kernel estimate: the operator a caller keeps.

    `blind_operator` returns a Deblur / ExtendedDeblur of the initial guess with one of these as
    its `estimate` attribute; the method binds its kernel buffer to it when the loop starts, and
    after the restoration `operator.estimate.kernel()` is the (B, N, N) kernel of each sample.
    """

    def __init__(self) -> None:
        self._buffer: Optional[Tensor] = None

    def bind(self, buffer: Tensor) -> None:
        self._buffer = buffer

    def kernel(self) -> Tensor:
        """The last restoration's estimated kernels, (B, N, N) float64 on the CPU."""
        if self._buffer is None:
            raise DiffPIRError("kernel estimate: no blind restoration has run with this operator yet")
        return self._buffer.detach().to("cpu", torch.float64).clone()


def kernel_estimate(operator: Any) -> Optional[BlindKernel]:
    """The `BlindKernel` an operator carries, itself or under a boundary model (its `inner`), or None."""
    for candidate in (operator, getattr(operator, "inner", None)):
        estimate = getattr(candidate, "estimate", None)
        if isinstance(estimate, BlindKernel):
            return estimate
    return None


def blind_operator(kernel_size: int = DEFAULT_KERNEL_SIZE, boundary: str = "circular", init: Optional[Tensor] = None,
                   multiple: int = 16) -> Operator:
    """The operator of a blind deblurring: the N x N initial kernel as a Deblur (circular) or an
    ExtendedDeblur ("extend", a real photo), carrying a `BlindKernel` as `.estimate`.

    Args:
        init: the loop's first kernel, (N, N) or per sample (B, N, N) (e.g. engine.estimate's
            coarse-to-fine `estimate_kernel`); default a Gaussian of std 1 px.
    """
    if boundary not in ("circular", "extend"):
        raise DiffPIRError(f"--boundary {boundary!r}: expected circular or extend for blind deblurring")
    k = initial_kernel(kernel_size, 1.0) if init is None else init.detach().to("cpu", torch.float64)
    if k.shape[-1] != kernel_size or k.shape[-2] != kernel_size:
        raise DiffPIRError(f"init: expected a {kernel_size}x{kernel_size} kernel, got shape {tuple(k.shape)}")
    op: Any = Deblur(k.numpy())
    if boundary == "extend":
        op = ExtendedDeblur(op, multiple=multiple)
    op.estimate = BlindKernel()
    return op


def prepare_blind(y: Tensor, kernel_size: int = DEFAULT_KERNEL_SIZE, boundary: str = "circular",
                  sigma_n: Optional[Any] = None, prior: Optional[CoarseToFine] = None, multiple: int = 16) -> Operator:
    """The operator for `--kernel auto`: the coarse-to-fine estimate of y's kernel (engine.estimate.sparse)
    as the blind loop's first kernel, one per sample.

    Args:
        y: the measurement, (B, C, H, W) in [0, 1].
        kernel_size: N, the largest support considered (odd, at most a quarter of the image's shorter side).
        boundary: "circular" (a circularly blurred measurement) or "extend" (a photo).
        sigma_n: y's noise level (a float, or one per sample); None = engine.estimate_sigma_n's estimate.
        prior: the coarse-to-fine settings (default: CoarseToFine()).
        multiple: the UNet's size multiple (the extended domain's size is a multiple of it).
    Raises:
        DiffPIRError: an even size, a size larger than a quarter of the image, an unknown boundary.
    """
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        raise DiffPIRError(f"y: expected a (B, C, H, W) tensor, got {getattr(y, 'shape', type(y).__name__)}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
        raise DiffPIRError(f"--kernel-size {kernel_size!r}: expected an odd integer >= 3")
    check_blind_size(kernel_size, *y.shape[-2:])
    if boundary not in ("circular", "extend"):
        raise DiffPIRError(f"--boundary {boundary!r}: expected circular or extend for blind deblurring")
    kernel = estimate_kernel(y, kernel_size, prior or CoarseToFine(), boundary, sigma_n)
    return blind_operator(kernel_size, boundary, init=kernel, multiple=multiple)


class BlindDiffPIR(MethodBase):
    """The blind DiffPIR loop for one config (module docstring)."""

    def __init__(self, config: BlindDiffPIRConfig, impl: str = "torch") -> None:
        check_config(config, BlindDiffPIRConfig)
        self.config = config
        self.impl = impl
        self.schedule = linear_schedule()
        self.fit = config.kernel_fit()
        self._kernel: Optional[Tensor] = None  # the state carried between steps
        self.n = config.kernel_size  # the support; initial_state takes the operator's
        self.buffer: Optional[Tensor] = None  # the last step's kernel, kept for the caller (BlindKernel)

    def steps(self) -> tuple[Step, ...]:
        rho = self.schedule.rho(self.config.lam, self.config.sigma_data)
        ts = self.config.timesteps()
        refine = self.config.sigma_n <= self.config.kernel_sigma_max
        fits = [float(refine and t <= self.config.kernel_t_max) for t in ts[:-1]]
        # "own": no step so far has re-estimated the kernel, so the operator's own data step applies as it is
        own = [float(not any(fits[: i + 1])) for i in range(len(fits))]
        return tuple(
            Step(i, t, t_next, values={"c": StepCoefficients.at(self.schedule, t, t_next, self.config.zeta), "rho": float(rho[t]),
                                       "fit": fits[i], "own": own[i]})  # fmt: skip
            for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:]))
        )

    def init_noise(self) -> int:
        return 1

    def initial_state(self, operator: Optional[Operator], y: Optional[Tensor], data: Optional[Any], z: list[Tensor]) -> Tensor:
        if getattr(operator, "sf", 1) != 1:
            raise DiffPIRError("method blind_diffpir: estimates a blur kernel for deblurring, not for super-resolution")
        kernel = getattr(operator, "kernel", None)
        # the support N is the operator's (blind_operator / prepare_blind made it N x N); kernel_size is
        # the support `--kernel auto` estimates with
        if kernel is None or kernel.shape[-1] != kernel.shape[-2] or kernel.shape[-1] % 2 == 0:
            got = "no kernel" if kernel is None else f"a {kernel.shape[-1]}x{kernel.shape[-2]} kernel"
            raise DiffPIRError(f"method blind_diffpir: expected the operator of a square, odd-sized initial kernel "
                               f"(blind_operator), got {got}")  # fmt: skip
        self.n = int(kernel.shape[-1])
        height, width = y.shape[-2:]
        check_blind_size(self.n, height, width)
        batch = y.shape[0]
        if self.buffer is None or self.buffer.shape != (batch, self.n, self.n) or self.buffer.device != y.device:
            self.buffer = torch.zeros(batch, self.n, self.n, device=y.device, dtype=y.dtype)
        estimate = kernel_estimate(operator)
        if estimate is not None:
            estimate.bind(self.buffer)
        return initial_state(operator, y, dataclasses.replace(self.config, sigma_n=self.config.sigma_data), z[0], self.schedule)

    # ------------------------------------------------------------------ the data term with the current kernel

    def _measurement_on_grid(self, data: Any, like: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        """y on x0's grid and where it is observed (None: everywhere, circular)."""
        if isinstance(data, FourierDataStep):
            if data.sf != 1:
                raise DiffPIRError("method blind_diffpir: applies to deblurring, not to super-resolution")
            return torch.fft.ifft2(data.y_spectrum).real, None
        if isinstance(data, MaskedFourierDataStep):
            height, width = data.mask.shape[-2:]
            h, w = data.y.shape[-2:]
            y = F.pad(data.y, (data.left, width - w - data.left, data.top, height - h - data.top))
            return y, data.mask
        raise DiffPIRError(f"method blind_diffpir: no kernel update for {type(data).__name__}")

    def _observed(self, mask: Tensor) -> int:
        """How many pixels a (1, 1, H, W) frame mask observes: static for a layout, counted once (no sync per step)."""
        key = tuple(mask.shape)
        if getattr(self, "_observed_key", None) != key:
            self._observed_key, self._observed_count = key, int(mask.sum())
        return self._observed_count

    def _kernel_of(self, data: Any, like: Tensor) -> Tensor:
        """The bound operator's own kernel, (B, N, N), read back from its OTF (tensor work only, so the
        graph runtime's reloaded operator buffers carry each restoration's initial kernel)."""
        n = self.n
        if isinstance(data, FourierDataStep):
            psf = torch.fft.ifft2(data.otf).real
        else:
            psf = torch.fft.irfft2(data.otf, s=data.mask.shape[-2:])
        psf = torch.roll(psf, shifts=(n // 2, n // 2), dims=(-2, -1))[:, 0, :n, :n]
        return psf.to(like.dtype).expand(like.shape[0], -1, -1).contiguous()

    def _data_step(self, data: Any, kernel: Tensor) -> Any:
        """The bound data step of `data`'s measurement with `kernel` (B, N, N) instead of its own."""
        if isinstance(data, FourierDataStep):
            otf = psf2otf(kernel, *data.y_spectrum.shape[-2:]).to(data.otf.dtype)
            return FourierDataStep(otf, otf.abs().pow(2), data.y_spectrum, 1)
        height, width = data.mask.shape[-2:]
        h, w = data.y.shape[-2:]
        columns = width // 2 + 1
        otf = psf2otf(kernel, height, width)[..., :columns].to(data.otf.dtype)
        pads = (data.top, height - h - data.top, data.left, width - w - data.left)
        y_ext = edgetaper_extend(data.y, pads, otf)
        return dataclasses.replace(
            data, otf=otf, otf_abs2=otf.abs().pow(2), y_ext_spectrum=torch.fft.rfft2(y_ext),
            kt_my_spectrum=otf.conj() * torch.fft.rfft2(data.mask * y_ext),
        )  # fmt: skip

    # ------------------------------------------------------------------ the step

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[Any], z: Optional[Tensor]) -> Tensor:
        c, rho, noise = step["c"], step["rho"], z[0]
        x0 = predict_x0(x, eps.contiguous(), c)  # 1. the prior's estimate, model units
        x0_01 = from_model(x0)
        if step.index == 0:  # the state starts from the operator's kernel in every run (and in the recorded graph)
            self._kernel = self._kernel_of(data, x)
        kernel = self._kernel
        if step["fit"]:  # 2. M-step
            y_grid, mask = self._measurement_on_grid(data, x)
            # the trust region's weight: the noise power of the gradients the fit compares, per sample
            samples = 2 * y_grid.shape[1] * (y_grid[0, 0].numel() if mask is None else float(self._observed(mask)))
            proximal = self.config.kernel_trust * 2.0 * self.config.sigma_n**2 * samples
            kernel = fit_kernel(x0_01, y_grid, kernel, self.fit, mask, proximal=proximal)
        self._kernel = kernel
        if self.buffer is not None:
            self.buffer.copy_(kernel)
        step_data = data if step["own"] else self._data_step(data, kernel)
        x0_hat = step_data(x0_01, rho)  # 3. the data step with the current kernel
        return renoise(x, to_model(x0_hat), noise, c)  # 4.

    def finish(self, x: Tensor) -> Tensor:
        return from_model(x).clamp(0.0, 1.0)
