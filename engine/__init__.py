"""The DiffPIR engine, the public API: schedule, operators, methods and their one loop,
the UNet and its loader, the backends, the CUDA-graph runtime, image io and the task
registry. Other rooms import from here, not from the engine's modules.

Names load on first use (engine.degrade alone pulls in scipy and h5py, the UNet torch): a
command that only reads declarations (--help, argument errors) answers without them.
"""

from diffpir_rt._rooms import require_qualified_name
from diffpir_rt.lazy import lazy_exports

require_qualified_name(__name__, "engine")

#: module -> the names it exports (a module's own name exports the module).
API: dict[str, str] = {
    "diffpir_rt.errors": "DiffPIRError",
    ".archs": "ARCH_PRESETS DEFAULT_CHECKPOINT_ARCH UNetConfig resolve_arch",
    ".artifacts": "read_sidecar sha256_file sha256_files tool_versions",
    ".backends": "BACKENDS Backend get_backend make_denoiser_from register_backend",
    ".backends.onnxruntime_backend": "onnxruntime_problem physical_cores",
    ".boundary": "BOUNDARIES ExtendedDeblur MaskedFourierDataStep",
    ".boundary_models": "BOUNDARY_MODELS boundary_help",
    ".boundary_sr": "ExtendedSuperResolution",
    ".boundary_taper": "Tapered",
    ".degrade": "degrade load_kernel",
    ".denoiser": "UNetDenoiser load_state_dict_file load_unet",
    ".device": "cpu_flags cpu_native_bf16 resolve_device",
    ".estimate": (
        "ESTIMATORS CoarseToFine KernelFit estimate_kernel estimate_kernel_on_window "
        "estimate_sigma_n fit_kernel kernel_error"
    ),
    ".fast_unet": "check_capturable prepare_unet DTYPES",
    ".fused": "fused",
    ".graph_runtime": "GraphRuntime GraphSampler capture_cuda_graph",
    ".imageio": "imageio from_model read_image read_measurement to_model write_image write_text",
    ".methods": (
        "AUTO DEFAULT_METHOD DEFAULT_SAMPLER METHODS SIGMA_N SIGMA_N_INPUT STEPS Capabilities Configured Method "
        "MethodConfig build_method config_class configure estimable_inputs estimating_method family_names generation_names "
        "method_names method_params register_method restoration_names"
    ),
    ".methods.blind_diffpir": "BlindDiffPIR BlindDiffPIRConfig BlindKernel blind_operator kernel_estimate prepare_blind",
    ".methods.diffpir": "DiffPIRConfig",
    ".methods.loop": "pad_model",
    ".model_source": "ModelSource arch_names",
    ".operators": "Deblur Denoise Inpaint Operator SuperResolution",
    ".paths": "paths MAX_PIXELS InputFile OutputPlan check_input_file read_npy",
    ".prior": "bundled_card load_bundled_prior",
    ".sampler": "generate sample",
    ".schedule": "BETA_END BETA_START NUM_TRAIN_TIMESTEPS linear_schedule timesteps",
    ".step": "StepCoefficients",
    ".tasks": (
        "FILE_INPUTS INPUT_PARAMS TASKS Task TaskInputs build_operator get_task make_measurement "
        "register_task task_names task_of"
    ),
    ".tiling": "DEFAULT_TILE_BATCH TiledDenoiser",
    ".unet": "AttentionBlock ResBlock UNetModel build_unet",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, API)
