from .errors import DiffPIRError
from .unet import UNetModel, UNetConfig, ARCH_PRESETS, build_unet
from .denoiser import UNetDenoiser, load_unet, load_state_dict_file
from .operators import Deblur, Denoise, Inpaint, SuperResolution
from .sampler import DiffPIRConfig, sample
