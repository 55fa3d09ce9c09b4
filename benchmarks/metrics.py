"""Image-quality metrics on 8-bit images, computed apart from restoration (docs/algorithm.md §9).

PSNR and SSIM come from scikit-image (`skimage.metrics`), on uint8 RGB after
clamp to [0, 1] and rounding, like the official single-image scripts; SR shaves
`sf` pixels off every side. LPIPS (VGG) and FID (pytorch-fid's Inception) need
their packages *and* local backbone weights: nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Callable

import numpy as np

from diffpir_rt.errors import DiffPIRError
from diffpir_rt.lazy import lazy_module

torch = lazy_module("torch")

PathLike = str | os.PathLike

#: SSIM as Wang et al. 2004 (and KAIR's calculate_ssim): 11x11 Gaussian window, sigma 1.5,
#: population covariance; skimage's defaults (7x7 box window, sample covariance) differ.
SSIM_OPTIONS = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """(H, W, C) [0, 1] floats -> uint8 as round(clip(x, 0, 1) * 255) (numpy rounds half to even, as the official code)."""
    x = np.asarray(x01, dtype=np.float64)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def shave(image: np.ndarray, border: int) -> np.ndarray:
    """Drop `border` pixels on every side of an (H, W, ...) image (docs/algorithm.md §9: sf for SR, 0 otherwise)."""
    return image[border:-border, border:-border] if border > 0 else image


def _check_pair(gt: np.ndarray, out: np.ndarray) -> None:
    if gt.dtype != np.uint8 or out.dtype != np.uint8:
        raise DiffPIRError(f"metrics: expected uint8 images, got {gt.dtype} and {out.dtype}")
    if gt.shape != out.shape:
        raise DiffPIRError(f"metrics: ground truth {gt.shape} and output {out.shape} differ in shape")


def psnr(gt_uint8: np.ndarray, out_uint8: np.ndarray, border: int = 0) -> float:
    """10 log10(255^2 / MSE) over all pixels and channels; inf for identical images."""
    from skimage.metrics import peak_signal_noise_ratio

    _check_pair(gt_uint8, out_uint8)
    return float(peak_signal_noise_ratio(shave(gt_uint8, border), shave(out_uint8, border), data_range=255))


def ssim(gt_uint8: np.ndarray, out_uint8: np.ndarray, border: int = 0) -> float:
    """Mean SSIM over channels (`SSIM_OPTIONS`), data range 255."""
    from skimage.metrics import structural_similarity

    _check_pair(gt_uint8, out_uint8)
    return float(
        structural_similarity(
            shave(gt_uint8, border), shave(out_uint8, border), channel_axis=-1, data_range=255, **SSIM_OPTIONS
        )
    )


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DiffPIRError(f"{what} {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable / pickled objects: one line for the user
        raise DiffPIRError(f"{what} {path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(state, dict):
        raise DiffPIRError(f"{what} {path}: expected a state_dict, got {type(state).__name__}")
    return state


# ----------------------------------------------------------------------------- LPIPS

LpipsFn = Callable[[np.ndarray, np.ndarray], float]


def load_lpips(weights: PathLike, device: torch.device | str = "cpu") -> LpipsFn:
    """LPIPS (VGG, v0.1, as DiffPIR: `lpips.LPIPS(net='vgg')`) with a local VGG16 backbone.

    The linear heads ship inside the `lpips` package; the backbone normally comes
    from torchvision's download, so it is built random (`pnet_rand=True`) and
    filled from `weights`: torchvision's vgg16 state_dict (keys `features.N.*`)
    or its `features` part alone (keys `N.*`). Inputs are the uint8 images
    mapped to [-1, 1] (the official code feeds the unquantised output).
    """
    if not package_available("lpips"):
        raise DiffPIRError(
            "--lpips-weights: LPIPS needs the 'lpips' package (pip install lpips; it brings torchvision), "
            "which is not installed here"
        )
    import lpips

    state = _load_state_dict(Path(weights), "--lpips-weights")
    features = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    with torch.no_grad():
        for slice_ in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
            for index, module in slice_.named_children():  # children keep torchvision's feature indices
                for name, param in module.named_parameters(recurse=False):
                    key = f"{index}.{name}"
                    if key not in features or features[key].shape != param.shape:
                        raise DiffPIRError(
                            f"--lpips-weights {weights}: missing or mis-shaped VGG16 tensor 'features.{key}'; "
                            "expected torchvision's vgg16 state_dict"
                        )
                    param.copy_(features[key])
    model = model.to(device).eval()

    def score(gt_uint8: np.ndarray, out_uint8: np.ndarray) -> float:
        def as_tensor(img: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None].to(device)

        with torch.no_grad():
            return float(model(as_tensor(gt_uint8), as_tensor(out_uint8)).item())

    return score


# ----------------------------------------------------------------------------- FID


class FidFeatures:
    """pytorch-fid's Inception-v3 pool3 features (2048-d) with weights from a local file.

    FID compares two folders' feature statistics (docs/algorithm.md §9: 100 vs 100 images, strongly
    biased upward at that size); here: the restored set vs the ground-truth set of one
    (dataset, task, noise level).
    """

    def __init__(self, weights: PathLike, device: torch.device | str = "cpu") -> None:
        if not package_available("pytorch_fid"):
            raise DiffPIRError(
                "--fid-weights: FID needs the 'pytorch-fid' package (pip install pytorch-fid), which is not installed here"
            )
        from pytorch_fid import inception

        state = _load_state_dict(Path(weights), "--fid-weights")
        # pytorch-fid only loads its weights from a URL; hand it the local state_dict instead.
        original = inception.load_state_dict_from_url
        inception.load_state_dict_from_url = lambda *args, **kwargs: state
        try:
            self.model = inception.InceptionV3([inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
        finally:
            inception.load_state_dict_from_url = original
        self.device = device

    def __call__(self, image_uint8: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(image_uint8.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(self.device)
        with torch.no_grad():
            return self.model(x)[0].reshape(-1).cpu().numpy().astype(np.float64)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two (N, D) feature sets, pytorch-fid's formula; needs N >= 2 on both sides."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    if len(features_a) < 2 or len(features_b) < 2:
        raise DiffPIRError(f"FID: needs at least 2 images per set, got {len(features_a)} and {len(features_b)}")
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    return float(calculate_frechet_distance(mu_a, cov_a, mu_b, cov_b))
