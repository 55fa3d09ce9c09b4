"""The DiffPIR engine, the public API: schedule, operators, methods and their one loop,
the UNet and its loader, the backends, the CUDA-graph runtime, image io and the task
registry. Other rooms import from here, not from the engine's modules.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "engine")

from diffpir_rt.errors import DiffPIRError  # noqa: E402

from . import argtypes, fused, imageio, paths  # noqa: E402
from .artifacts import read_sidecar, sha256_file, sha256_files, tool_versions  # noqa: E402
from .denoiser import UNetDenoiser, load_state_dict_file, load_unet  # noqa: E402
from .device import resolve_device  # noqa: E402
from .backends import make_denoiser_from  # noqa: E402
from .boundary import BOUNDARIES, ExtendedDeblur, MaskedFourierDataStep, apply_boundary, resolve_boundary  # noqa: E402
from .fast_unet import check_capturable, prepare_unet  # noqa: E402
from .graph_runtime import GraphRuntime, GraphSampler, capture_cuda_graph  # noqa: E402
from .imageio import from_model, read_image, to_model, write_image, write_text  # noqa: E402
from .backends.onnxruntime_backend import onnxruntime_problem, physical_cores  # noqa: E402
from .fast_unet import DTYPES  # noqa: E402
from .methods import METHODS, Method, MethodConfig, build_method, method_names  # noqa: E402
from .methods.loop import pad_model  # noqa: E402
from .methods.diffpir import DiffPIRConfig  # noqa: E402
from .model_source import DEFAULT_CHECKPOINT_ARCH, ModelSource, arch_names  # noqa: E402
from .operators import Deblur, Denoise, Inpaint, Operator, SuperResolution  # noqa: E402
from .paths import MAX_PIXELS, OutputPlan, check_input_file, read_npy  # noqa: E402
from .prior import bundled_card, load_bundled_prior  # noqa: E402
from .sampler import generate, sample  # noqa: E402
from .schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, linear_schedule, timesteps  # noqa: E402
from .step import StepCoefficients  # noqa: E402
from .tiling import DEFAULT_TILE_BATCH, TiledDenoiser  # noqa: E402
from .tasks import OFFICIAL_DEFAULTS, TASKS, TaskDefaults, build_operator, check_inputs, defaults_for, make_measurement, operator_from_files  # noqa: E402
from .unet import ARCH_PRESETS, AttentionBlock, ResBlock, UNetConfig, UNetModel, build_unet, resolve_arch  # noqa: E402

__all__ = [
    "ARCH_PRESETS", "AttentionBlock", "BOUNDARIES", "DEFAULT_CHECKPOINT_ARCH", "Deblur", "ExtendedDeblur",
    "MaskedFourierDataStep", "apply_boundary", "resolve_boundary", "Denoise", "DiffPIRConfig",
    "DiffPIRError", "GraphRuntime", "GraphSampler", "Inpaint", "METHODS", "Method", "MethodConfig",
    "BETA_END", "BETA_START", "DTYPES", "NUM_TRAIN_TIMESTEPS", "StepCoefficients", "TiledDenoiser", "DEFAULT_TILE_BATCH", "fused", "onnxruntime_problem", "physical_cores",
    "read_sidecar", "sha256_file", "sha256_files", "tool_versions", "write_text", "paths", "check_inputs",
    "MAX_PIXELS", "OutputPlan", "check_input_file", "read_npy",
    "ModelSource", "check_capturable", "make_denoiser_from", "pad_model", "OFFICIAL_DEFAULTS", "Operator", "ResBlock", "SuperResolution", "TASKS", "TaskDefaults",
    "UNetConfig", "UNetDenoiser", "UNetModel", "arch_names", "argtypes", "build_method", "build_operator",
    "build_unet", "bundled_card", "capture_cuda_graph", "defaults_for", "degrade", "from_model", "generate",
    "imageio", "linear_schedule", "load_bundled_prior", "load_state_dict_file", "load_unet",
    "make_measurement", "method_names", "operator_from_files", "prepare_unet", "read_image",
    "resolve_arch", "resolve_device", "sample", "timesteps", "to_model", "write_image",
]  # fmt: skip


def __getattr__(name: str):
    # engine.degrade pulls in scipy and h5py (~0.5 s): loaded on first use only.
    if name == "degrade":
        import importlib

        return importlib.import_module(".degrade", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
