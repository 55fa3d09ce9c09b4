"""The DiffPIR engine, the public API: schedule, operators, methods and their one loop,
the UNet and its loader, the backends, the CUDA-graph runtime, image io and the task
registry. Other rooms import from here, not from the engine's modules.
"""

from diffpir_rt._rooms import require_qualified_name

require_qualified_name(__name__, "engine")

from diffpir_rt.errors import DiffPIRError  # noqa: E402

from . import fused, imageio, paths  # noqa: E402
from .artifacts import read_sidecar, sha256_file, sha256_files, tool_versions  # noqa: E402
from .denoiser import UNetDenoiser, load_state_dict_file, load_unet  # noqa: E402
from .device import cpu_flags, cpu_native_bf16, resolve_device  # noqa: E402
from .backends import BACKENDS, Backend, get_backend, make_denoiser_from, register_backend  # noqa: E402
from .boundary import BOUNDARIES, ExtendedDeblur, MaskedFourierDataStep  # noqa: E402
from .estimate import ESTIMATORS, CoarseToFine, KernelFit, estimate_kernel, estimate_kernel_on_window, estimate_sigma_n, fit_kernel, kernel_error  # noqa: E402
from .methods.blind_diffpir import BlindDiffPIR, BlindDiffPIRConfig, BlindKernel, blind_operator, prepare_blind  # noqa: E402
from .fast_unet import check_capturable, prepare_unet  # noqa: E402
from .graph_runtime import GraphRuntime, GraphSampler, capture_cuda_graph  # noqa: E402
from .imageio import from_model, read_image, read_measurement, to_model, write_image, write_text  # noqa: E402
from .backends.onnxruntime_backend import onnxruntime_problem, physical_cores  # noqa: E402
from .fast_unet import DTYPES  # noqa: E402
from .methods import (  # noqa: E402
    DEFAULT_METHOD, DEFAULT_SAMPLER, METHODS, SIGMA_N, STEPS, Capabilities, Configured, Method, MethodConfig, build_method, config_class, configure,
    family_names, generation_names, method_names, method_params, register_method, restoration_names,
)
from .methods.loop import pad_model  # noqa: E402
from .methods.diffpir import DiffPIRConfig  # noqa: E402
from .model_source import DEFAULT_CHECKPOINT_ARCH, ModelSource, arch_names  # noqa: E402
from .operators import Deblur, Denoise, Inpaint, Operator, SuperResolution  # noqa: E402
from .paths import MAX_PIXELS, InputFile, OutputPlan, check_input_file, read_npy  # noqa: E402
from .prior import bundled_card, load_bundled_prior  # noqa: E402
from .sampler import generate, sample  # noqa: E402
from .schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS, linear_schedule, timesteps  # noqa: E402
from .step import StepCoefficients  # noqa: E402
from .tiling import DEFAULT_TILE_BATCH, TiledDenoiser  # noqa: E402
from .tasks import FILE_INPUTS, INPUT_PARAMS, TASKS, Task, TaskInputs, build_operator, get_task, make_measurement, register_task, task_names  # noqa: E402
from .unet import ARCH_PRESETS, AttentionBlock, ResBlock, UNetConfig, UNetModel, build_unet, resolve_arch  # noqa: E402

__all__ = [
    "ARCH_PRESETS", "AttentionBlock", "BACKENDS", "Backend", "get_backend", "register_backend", "BETA_END", "BETA_START", "BOUNDARIES", "Capabilities", "Configured",
    "DEFAULT_CHECKPOINT_ARCH", "DEFAULT_METHOD", "DEFAULT_SAMPLER", "SIGMA_N", "STEPS", "DEFAULT_TILE_BATCH", "DTYPES", "Deblur", "Denoise", "DiffPIRConfig",
    "BlindDiffPIR", "BlindDiffPIRConfig", "BlindKernel", "CoarseToFine", "ESTIMATORS", "KernelFit", "blind_operator",
    "estimate_kernel", "estimate_kernel_on_window", "estimate_sigma_n", "fit_kernel", "kernel_error", "prepare_blind",
    "DiffPIRError", "ExtendedDeblur", "FILE_INPUTS", "INPUT_PARAMS", "GraphRuntime", "GraphSampler", "Inpaint", "InputFile", "MAX_PIXELS", "METHODS",
    "MaskedFourierDataStep", "Method", "MethodConfig", "ModelSource", "NUM_TRAIN_TIMESTEPS", "Operator", "OutputPlan",
    "ResBlock", "StepCoefficients", "SuperResolution", "TASKS", "Task", "TaskInputs", "TiledDenoiser", "UNetConfig",
    "UNetDenoiser", "UNetModel", "arch_names", "build_method", "build_operator", "build_unet", "bundled_card",
    "capture_cuda_graph", "check_capturable", "check_input_file", "config_class", "configure", "cpu_flags",
    "cpu_native_bf16", "degrade",
    "family_names", "from_model", "fused", "generate", "generation_names", "get_task", "imageio", "linear_schedule",
    "load_bundled_prior", "load_state_dict_file", "load_unet", "make_denoiser_from", "make_measurement",
    "method_names", "method_params", "onnxruntime_problem", "pad_model", "paths", "physical_cores", "prepare_unet",
    "read_image", "read_measurement", "read_npy", "read_sidecar", "register_method", "register_task",
    "resolve_arch", "resolve_device", "restoration_names", "sample", "sha256_file", "sha256_files", "task_names",
    "timesteps", "to_model", "tool_versions", "write_image", "write_text",
]  # fmt: skip


def __getattr__(name: str):
    # engine.degrade pulls in scipy and h5py (~0.5 s): loaded on first use only.
    if name == "degrade":
        import importlib

        return importlib.import_module(".degrade", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
