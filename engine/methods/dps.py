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
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from diffpir_rt.errors import DiffPIRError

from ..imageio import from_model
from ..operators import DataStep
from ..schedule import NUM_TRAIN_TIMESTEPS
from .base import MethodConfig, Step
from .ddpm import (
    AncestralMethod,
    RespacedSchedule,
    check_steps,
    check_variance,
    ddpm_from_x0,
    predict_x0,
    split_output,
)

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

    zeta: float = 0.3
    steps: int = NUM_TRAIN_TIMESTEPS
    variance: str = "learned"
    clip_denoised: bool = True
    spacing: str = "even"

    def __post_init__(self) -> None:
        self._check_finite("zeta")
        if self.zeta <= 0:
            raise DiffPIRError(f"zeta: expected > 0, got {self.zeta}")
        check_steps(self)
        check_variance(self)


    @classmethod
    def for_task(cls, task: str, sigma_n: float) -> "DPSConfig":
        """The official scale for the task; DPS never uses sigma_n (it enters only through y)."""
        if task not in DPS_ZETA:
            raise DiffPIRError(f"method {cls.method}: does not apply to task {task}")
        return cls(zeta=DPS_ZETA[task])


class DPS(AncestralMethod):
    """DPS on the torch backend: each step differentiates the residual norm through the UNet."""

    config_class = DPSConfig
    tasks = ("fourier", "mask")
    needs_grad = True

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

