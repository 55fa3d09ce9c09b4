"""The DiffPIR engine: schedule, operators, sampler, UNet and its loader (the public API)."""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "engine")


from .denoiser import UNetDenoiser, load_state_dict_file, load_unet
from diffpir_rt.errors import DiffPIRError
from .operators import Deblur, Denoise, Inpaint, SuperResolution
from .sampler import DiffPIRConfig, sample
from .unet import ARCH_PRESETS, UNetConfig, UNetModel, build_unet

__all__ = [
    "ARCH_PRESETS",
    "Deblur",
    "Denoise",
    "DiffPIRConfig",
    "DiffPIRError",
    "Inpaint",
    "SuperResolution",
    "UNetConfig",
    "UNetDenoiser",
    "UNetModel",
    "build_unet",
    "load_state_dict_file",
    "load_unet",
    "sample",
]
