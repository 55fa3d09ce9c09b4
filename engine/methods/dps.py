"""DPS, diffusion posterior sampling (Chung et al., ICLR 2023), as the official code runs it.

Per respaced step i, from x_t (docs/methods.md, section 6):

    x0_hat  = clamp(sqrt(1/abar) x_t - sqrt(1/abar - 1) eps(x_t), -1, 1)
    x'      = DDPM p_sample(x_t)                                   # learned variance by default
    x_{t-1} = x' - zeta grad_{x_t} ||y_m - A x0_hat(x_t)||_2      # the norm, not squared

The gradient goes through the UNet and the clamp; the DDPM mean and variance are not
differentiated. y_m = 2 y - A 1 is the measurement in model units, so the residual is
y_m - A x0_hat = 2 (y - A (x0_hat + 1)/2) with the engine's [0, 1]-unit operator. The norm is
taken per sample (the official code takes it over its batch of one), so a batch restores
each image as it would alone. Needs a differentiable model: the torch backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module
from diffpir_rt.params import param

from ..imageio import from_model
from ..operators import DataStep
from ..schedule import NUM_TRAIN_TIMESTEPS
from .base import Capabilities, MethodConfig, Step
from .ddpm import (
    AncestralMethod,
    RespacedSchedule,
    check_steps,
    clip_param,
    spacing_param,
    steps_param,
    variance_param,
    ddpm_from_x0,
    predict_x0,
    split_output,
)

if TYPE_CHECKING:  # annotations only: torch loads when the math first runs
    from torch import Tensor

torch = lazy_module("torch")

#: zeta per task: the official configs' `conditioning.params.scale` (configs/
#: super_resolution_config.yaml, gaussian_deblur_config.yaml, motion_deblur_config.yaml: 0.3;
#: inpainting_config.yaml: 0.5). DPS has no denoising config; denoising (A = I) takes the
#: value of the other linear tasks, 0.3 (our choice).
DPS_ZETA = {"deblur": 0.3, "sr": 0.3, "inpaint": 0.5, "denoise": 0.3}


@dataclass(frozen=True)
class DPSConfig(RespacedSchedule, MethodConfig):
    """DPS hyperparameters (official defaults: configs/diffusion_config.yaml and the task configs).

    Args:
        zeta: the step size on the gradient of the residual norm (`scale`), > 0. Default 0.3,
            the super-resolution and deblurring configs; `for_task` gives 0.5 for inpainting.
        steps: kept timesteps, NFE (default 1000: `timestep_respacing: 1000`); fewer steps
            respace the chain as guided-diffusion does (see `spacing`).
        variance: "learned" (default: the official `learned_range` with a learn_sigma UNet;
            the model must provide eps_and_variance), "fixed_small" or "fixed_large".
        clip_denoised: clamp x0 to [-1, 1] before the DDPM step and the residual (official True).
        spacing: "even" (guided-diffusion "N") or "ddim" ("ddimN").
    """

    method: ClassVar[str] = "dps"
    description: ClassVar[str] = (
        "DPS (Chung et al. 2023): DDPM step minus zeta times the gradient of ||y - A x0|| through the UNet (torch only)"
    )
    tasks: ClassVar[tuple[str, ...]] = ("deblur", "sr", "inpaint", "denoise")
    family: ClassVar[bool] = True
    capabilities: ClassVar[Capabilities] = Capabilities(gradients=True, extended_boundary=True, graph_capture=False)
    min_useful_steps: ClassVar[int] = 500
    defaults_source: ClassVar[str] = "official DPS: configs/diffusion_config.yaml and the task configs"

    zeta: float = param(0.3, help="step size on the gradient of the residual norm (DPS's scale)", low=0.0, low_open=True)
    steps: int = steps_param(NUM_TRAIN_TIMESTEPS)
    variance: str = variance_param("learned")
    clip_denoised: bool = clip_param()
    spacing: str = spacing_param()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_steps(self)

    @classmethod
    def task_defaults(cls, task: str, sigma_n: float, scale: Optional[int]) -> dict[str, Any]:
        """The official scale for the task; DPS never uses sigma_n (it enters only through y)."""
        return {"zeta": DPS_ZETA[task]}


class DPS(AncestralMethod):
    """DPS on the torch backend: each step differentiates the residual norm through the UNet."""

    config_class = DPSConfig

    def update(self, x: Tensor, eps: Any, step: Step, data: Optional[DataStep], z: Optional[Tensor]) -> Tensor:
        eps, v = split_output(eps, self.config.variance)
        if not (x.requires_grad and eps.requires_grad):
            raise DiffPIRError(
                "dps: the model's eps is not differentiable with respect to x_t (an ONNX Runtime or TensorRT "
                "backend, or a model run without autograd); DPS needs the torch backend"
            )
        x0 = predict_x0(x, eps, step, self.config.clip_denoised)
        residual = 2.0 * (data.measurement() - data.forward(from_model(x0)))  # y_m - A x0, model units
        norm = torch.linalg.vector_norm(residual.flatten(1), dim=1)  # one norm per sample
        (grad,) = torch.autograd.grad(norm.sum(), x)
        with torch.no_grad():
            x_prime = ddpm_from_x0(x.detach(), x0.detach(), None if v is None else v.detach(), step, z[0], self.config.variance)
            return x_prime - self.config.zeta * grad

