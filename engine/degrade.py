"""Synthetic measurements made exactly as the official DiffPIR scripts make them (docs/algorithm.md §7).

Kernels, masks and noise are drawn from numpy's legacy `RandomState(seed)`,
whose streams equal the official `np.random.seed(seed)` + global draws, so the
same seed gives the official kernel or mask bit for bit; the global RNG is never
touched. Images here are numpy (H, W, C) arrays, [0, 1] floats unless the name
says uint8.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from diffpir_rt.errors import DiffPIRError, TooLargeError
from diffpir_rt.lazy import lazy_module

from .paths import InputFile, as_input, read_npy_array

# Loaded when first used (half a second together): reading a .npy or .png kernel needs neither.
h5py = lazy_module("h5py")
scipy_io = lazy_module("scipy.io")
ndimage = lazy_module("scipy.ndimage")

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: 25x25 bicubic-equivalent SR kernels for x2, x3, x4 (cell index sf - 2), see engine/data/README.md.
BICUBIC_KERNELS_FILE = Path(__file__).parent / "data" / "kernels_bicubicx234.mat"

# ----------------------------------------------------------------------------- blur kernels


def gaussian_kernel_std(std: float, size: int = 61) -> np.ndarray:
    """(size, size) float32 Gaussian: scipy gaussian_filter of a centred delta (truncate 4, reflect).

    Not renormalised, like the official code: scipy's truncated Gaussian weights
    sum to 1 and reflect mode keeps the mass, so the kernel sums to 1 already.
    """
    _check_size(size, "gaussian kernel size")
    if not (math.isfinite(std) and std > 0):
        raise DiffPIRError(f"gaussian kernel std: got {std}; expected a finite number > 0")
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    return ndimage.gaussian_filter(delta, sigma=std).astype(np.float32)


def gaussian_std(index: int) -> float:
    """The official per-image std: 3 * (1 + 2u), u = rand() after seed 10*index (docs/algorithm.md §7)."""
    return 3.0 * (1.0 + 2.0 * _rng_for_index(index).rand())


def gaussian_kernel(index: int, size: int = 61) -> np.ndarray:
    """The official Gaussian deblur kernel of image `index` (sorted order), std in [3, 9]."""
    return gaussian_kernel_std(gaussian_std(index), size)


def motion_kernel(index: int, size: int = 61, intensity: float = 0.5) -> np.ndarray:
    """The official motion deblur kernel of image `index`: (size, size) float32, sum 1.

    Seed 10*index; the official operator draws one kernel and discards it (its
    Blurkernel constructor), and blurs with the second draw (docs/algorithm.md §7).
    """
    _check_size(size, "motion kernel size")
    if size < MOTION_MIN_SIZE:
        raise DiffPIRError(
            f"motion kernel size: got {size}; expected >= {MOTION_MIN_SIZE} (the generator draws its "
            f"path {MOTION_MIN_SIZE - 1}px and smaller with line width 0, i.e. not at all)"
        )
    if not (0.0 <= intensity <= 1.0):
        raise DiffPIRError(f"motion kernel intensity: got {intensity}; expected a number in [0, 1]")
    rng = _rng_for_index(index)
    _draw_motion_kernel(size, intensity, rng)
    return _draw_motion_kernel(size, intensity, rng)


# Reproduces LeviBorodenko/motionblur (commit 57813788) Kernel, whose draws must come
# in its exact order: path length, step lengths, max angle, jitter, angles, rotation.
_MOTION_EPS = 0.1  # the generator's "tiny error" added to step scale and max angle
#: Line width is int(diagonal/150) of the 2x canvas: 0 (nothing drawn) below this size.
MOTION_MIN_SIZE = 54


def _draw_motion_kernel(size: int, intensity: float, rng: np.random.RandomState) -> np.ndarray:
    """One motion kernel: a random path drawn at 2x size, blurred, Lanczos-downsized, sum 1."""
    big = 2 * size  # drawn super-sized, then downsized for anti-aliasing
    diagonal = (big**2 + big**2) ** 0.5

    # 1. step lengths until the path reaches a random total length
    max_path_len = 0.75 * diagonal * (rng.uniform() + rng.uniform(0, intensity**2))
    steps: list[float] = []
    while sum(steps) < max_path_len:
        step = rng.beta(1, 30) * (1 - intensity + _MOTION_EPS) * diagonal
        if step < max_path_len:
            steps.append(step)

    # 2. one angle per step; "jitter" is the chance that the turn direction flips
    max_angle = rng.uniform(0, intensity * math.pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(low=-max_angle, high=max_angle)]
    while len(angles) < len(steps):
        angle = rng.triangular(0, intensity * max_angle, max_angle + _MOTION_EPS)
        flip = rng.uniform() < jitter
        angles.append(angle * (-np.sign(angles[-1]) if flip else np.sign(angles[-1])))

    # 3. path = cumulative sum of the increments, centred on its mean (python sum, summed
    #    in order, as the generator does), randomly rotated, moved to the image centre
    path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    path = path - sum(path) / len(steps)
    path = path * np.exp(1j * rng.uniform(0, math.pi)) + (big + 1j * big) / 2

    # 4. rasterise. The generator draws white on RGB and converts to L at the end; grey
    #    RGB -> L is exact in Pillow, so drawing 255 on L gives the same pixels.
    image = Image.new("L", (big, big))
    ImageDraw.Draw(image).line([(p.real, p.imag) for p in path], fill=255, width=int(diagonal / 150))
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    image = image.resize((size, size), resample=Image.LANCZOS)
    kernel = np.asarray(image, dtype=np.float32)
    if not kernel.any():  # not seen for size >= MOTION_MIN_SIZE; guard against a 0/0 kernel
        raise DiffPIRError(f"motion kernel: the drawn path missed the {big}x{big} canvas; try another index")
    return kernel / np.sum(kernel)


def _rng_for_index(index: int) -> np.random.RandomState:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= 10 * index < 2**32:
        raise DiffPIRError(f"kernel index: got {index!r}; expected an integer in [0, {(2**32 - 1) // 10}]")
    return np.random.RandomState(10 * int(index))


def _check_size(size: int, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DiffPIRError(f"{name}: got {size!r}; expected a positive integer")


# ----------------------------------------------------------------------------- blur


def blur_uint8(img_uint8: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Official deblur measurement: circular convolution of a uint8 (H, W, C) image, uint8 out.

    scipy computes in float64 and stores into the uint8 output by truncation (not
    rounding), exactly what the official `ndimage.convolve(img, k[..., None],
    mode='wrap')` on a uint8 image does (docs/algorithm.md §7).
    """
    img_uint8 = np.asarray(img_uint8)
    if img_uint8.dtype != np.uint8 or img_uint8.ndim != 3:
        raise DiffPIRError(
            f"blur_uint8 image: got dtype {img_uint8.dtype}, shape {img_uint8.shape}; expected uint8 (H, W, C)"
        )
    return ndimage.convolve(img_uint8, _check_kernel(kernel)[..., None], mode="wrap")


def blur_image(x01: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Official deblur measurement of a [0, 1] (H, W, C) image, as float64 in [0, 1].

    The image goes to uint8 as round(clip(x, 0, 1)*255) (exact for 8-bit inputs),
    through `blur_uint8` (truncating), then /255, as the official scripts do.
    """
    x01 = _check_float_image(x01, "blur_image image")
    if x01.ndim != 3:
        raise DiffPIRError(f"blur_image image: got shape {x01.shape}; expected (H, W, C)")
    img_uint8 = np.round(np.clip(x01.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    return blur_uint8(img_uint8, kernel) / 255.0


def blur(x01: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Circular convolution of a float (H, W) or (H, W, C) image, no quantisation.

    True convolution (kernel flipped), kernel centre at index size//2, result in
    the input's float dtype.
    """
    x01 = _check_float_image(x01, "blur image")
    k = _check_kernel(kernel)
    return ndimage.convolve(x01, k if x01.ndim == 2 else k[..., None], mode="wrap")


def _check_kernel(kernel: np.ndarray) -> np.ndarray:
    k = np.asarray(kernel)
    if k.ndim != 2 or k.size == 0 or not np.issubdtype(k.dtype, np.number) or not np.isfinite(k).all():
        raise DiffPIRError(f"blur kernel: got dtype {k.dtype}, shape {k.shape}; expected a finite 2-D array")
    return k


def _check_float_image(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating) or x.ndim not in (2, 3) or x.size == 0:
        raise DiffPIRError(f"{name}: got dtype {x.dtype}, shape {x.shape}; expected a float (H, W) or (H, W, C) array")
    return x


# ----------------------------------------------------------------------------- bicubic resize


def imresize(x: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB-style bicubic imresize with antialiasing (DiffPIR utils_image.imresize_np, docs/algorithm.md §6.3).

    Cubic kernel a = -0.5; when downscaling it is stretched to width 4/scale
    (antialiasing); boundaries are padded symmetrically (edge pixel repeated);
    output size ceil(H*scale) x ceil(W*scale). No rounding or clipping. Computed in float64 (the official code uses float32,
    so results differ at the 1e-7 level) and returned in the input's float dtype.

    Args:
        x: (H, W) or (H, W, C) float image.
        scale: output/input size ratio, e.g. 1/4.
    """
    x = _check_float_image(x, "imresize image")
    if not (math.isfinite(scale) and scale > 0):
        raise DiffPIRError(f"imresize scale: got {scale}; expected a finite number > 0")
    height, width = x.shape[:2]
    out_height, out_width = math.ceil(height * scale), math.ceil(width * scale)
    rows = _resize_matrix(height, out_height, scale)
    cols = _resize_matrix(width, out_width, scale)
    y = np.tensordot(rows, x.astype(np.float64), axes=(1, 0))  # (out_H, W, ...)
    y = np.moveaxis(np.tensordot(cols, y, axes=(1, 1)), 0, 1)  # (out_H, out_W, ...)
    return y.astype(x.dtype)


def _cubic(d: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's 'cubic')."""
    a = np.abs(d)
    near = (1.5 * a**3 - 2.5 * a**2 + 1) * (a <= 1)
    far = (-0.5 * a**3 + 2.5 * a**2 - 4 * a + 2) * ((a > 1) & (a <= 2))
    return near + far


def _resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """(out_len, in_len) weights of one axis, symmetric padding folded into the matrix."""
    antialias = scale < 1
    kernel_width = 4.0 / scale if antialias else 4.0
    # output pixel centre k (1-based) maps to input coordinate u (1-based), so that
    # pixel edges line up: 0.5 -> 0.5 and 0.5 + scale -> 1.5
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2  # one spare tap; its weight may be 0
    j = left[:, None] + np.arange(taps)[None, :]  # 1-based input positions
    d = u[:, None] - j
    weights = scale * _cubic(d * scale) if antialias else _cubic(d)
    weights /= weights.sum(axis=1, keepdims=True)
    source = _symmetric_index(j.astype(np.int64) - 1, in_len)
    matrix = np.zeros((out_len, in_len))
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), source.ravel()), weights.ravel())
    return matrix


def _symmetric_index(i: np.ndarray, n: int) -> np.ndarray:
    """0-based index into a signal extended by mirroring with the edge repeated (… 1 0 | 0 1 …)."""
    m = np.mod(i, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def mod_crop(x: np.ndarray, sf: int) -> np.ndarray:
    """Crop (H, W, ...) to the largest multiple of sf in H and W (bottom/right removed)."""
    height, width = x.shape[:2]
    return x[: height - height % sf, : width - width % sf]


def bicubic_downsample(x01: np.ndarray, sf: int) -> np.ndarray:
    """SR measurement before noise: mod-crop to a multiple of sf, then imresize by 1/sf (docs/algorithm.md §7)."""
    if isinstance(sf, bool) or not isinstance(sf, (int, np.integer)) or sf < 1:
        raise DiffPIRError(f"bicubic_downsample sf: got {sf!r}; expected a positive integer")
    x01 = _check_float_image(x01, "bicubic_downsample image")
    if x01.shape[0] < sf or x01.shape[1] < sf:
        raise DiffPIRError(f"bicubic_downsample image: shape {x01.shape} is smaller than sf = {sf}")
    return imresize(mod_crop(x01, sf), 1 / sf)


# ----------------------------------------------------------------------------- masks


def box_mask(h: int = 256, w: int = 256, seed: int = 0, box: int = 128, margin: int = 16) -> np.ndarray:
    """(h, w) float32 inpainting mask, 1 = observed, with one box x box hole set to 0.

    DPS's generator as DiffPIR uses it: box height and width from randint(box, box + 1)
    (always `box`, but the draws advance the RNG), then top and left from
    randint(margin, size - margin - box). Seed 0 on 256 x 256 gives rows 60-187,
    cols 63-190 (docs/algorithm.md §7).
    """
    _check_size(h, "box_mask h")
    _check_size(w, "box_mask w")
    _check_size(box, "box_mask box")
    if h - margin - box <= margin or w - margin - box <= margin or margin < 0:
        raise DiffPIRError(
            f"box_mask: a {box}x{box} box with margin {margin} does not fit in {w}x{h}; "
            f"expected h and w > box + 2*margin"
        )
    rng = _rng_for_seed(seed, "box_mask seed")
    box_h = rng.randint(box, box + 1)
    box_w = rng.randint(box, box + 1)
    top = rng.randint(margin, h - margin - box_h)
    left = rng.randint(margin, w - margin - box_w)
    mask = np.ones((h, w), dtype=np.float32)
    mask[top : top + box_h, left : left + box_w] = 0
    return mask


def random_mask(h: int = 256, w: int = 256, seed: int = 0, p: float = 0.5) -> np.ndarray:
    """(h, w) float32 mask with int(h*w*p) pixels missing (0), drawn without replacement.

    DPS's generator with the probability range [p, p]: one uniform(p, p) draw,
    then np.random.choice(h*w, int(h*w*p), replace=False) (docs/algorithm.md §7).
    """
    _check_size(h, "random_mask h")
    _check_size(w, "random_mask w")
    if not (0.0 <= p <= 1.0):
        raise DiffPIRError(f"random_mask p: got {p}; expected a fraction in [0, 1]")
    rng = _rng_for_seed(seed, "random_mask seed")
    total = h * w
    prob = rng.uniform(p, p)
    missing = rng.choice(total, int(total * prob), replace=False)
    mask = np.ones(total, dtype=np.float32)
    mask[missing] = 0
    return mask.reshape(h, w)


def _rng_for_seed(seed: int, name: str) -> np.random.RandomState:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise DiffPIRError(f"{name}: got {seed!r}; expected an integer in [0, 2**32)")
    return np.random.RandomState(int(seed))


# ----------------------------------------------------------------------------- noise


def add_noise(y01: np.ndarray, sigma_n: float, seed: int) -> np.ndarray:
    """y01 + N(0, sigma_n^2) in [0, 1] units, not clipped (docs/algorithm.md §1).

    Noise is `np.random.RandomState(seed).normal(0, sigma_n, y01.shape)` (legacy
    Mersenne Twister, like the official scripts' np.random); the result keeps
    y01's float dtype. sigma_n = 0 returns a copy and draws nothing.
    """
    y01 = np.asarray(y01)
    if not np.issubdtype(y01.dtype, np.floating):
        raise DiffPIRError(f"add_noise measurement: got dtype {y01.dtype}; expected a float array in [0, 1]")
    if not (math.isfinite(sigma_n) and sigma_n >= 0):
        raise DiffPIRError(f"add_noise sigma_n: got {sigma_n}; expected a finite number >= 0 (in [0, 1] units)")
    rng = _rng_for_seed(seed, "add_noise seed")
    if sigma_n == 0:
        return y01.copy()
    return (y01 + rng.normal(0.0, sigma_n, y01.shape)).astype(y01.dtype)


# ----------------------------------------------------------------------------- kernel files

#: Largest kernel a file may hold (values): 4096 x 4096; checked before the kernel is read.
MAX_KERNEL_ELEMENTS = 4096 * 4096
#: Most kernels one .mat cell array may list.
MAX_KERNELS = 100_000
#: Largest .mat file read, and the most bytes one compressed variable may expand to.
MAX_MAT_BYTES = 256 * 1024 * 1024
#: A kernel whose sum is within this of 1 is used as stored (the official files sum to 1 within
#: 1e-4, and must stay bit-exact); any other positive sum is divided out, with a warning.
KERNEL_SUM_TOLERANCE = 1e-2


def load_kernel(path: PathLike | InputFile, index: int | None = None) -> np.ndarray:
    """Load a 2-D blur kernel as float32 from .npy, .png or .mat (MATLAB v5 or v7.3/HDF5).

    Every kernel file is used with sum 1: a kernel within 1% of it is returned as stored
    (the official and bicubic SR kernels, bit-exact); one with another positive sum (an
    integer array such as a uint8 kernel summing to 2295, an absurdly scaled float array)
    is divided by its sum, with a logged warning; a .png is grey levels by nature and is
    normalised silently. A sum <= 0, NaN/Inf, complex or non-numeric values, more than
    4096 x 4096 values, an empty or non-2-D array are refused; sizes are checked from the
    file's header before anything large is read.

    A .mat must hold a variable `kernels`: a cell array, from which `index` picks one
    (0-based, MATLAB linear order), or a single numeric matrix.

    Args:
        path: a path, or an InputFile (a path or uploaded bytes: the same reader for both).
        index: which kernel of a .mat cell; may be omitted when it holds one.
    """
    p = as_input(path, "kernel")
    suffix = _kernel_suffix(p)
    if index is not None and suffix != ".mat":
        raise DiffPIRError(f"kernel {p.name}: index {index} given, but only .mat files hold several kernels")
    if suffix == ".npy":
        k = read_npy_array(p, "kernel", ndim=(2,), max_elements=MAX_KERNEL_ELEMENTS)
    elif suffix == ".png":
        k = _read_png_kernel(p)
    elif suffix == ".mat":
        k = _read_mat(p, index)
    else:
        raise DiffPIRError(f"kernel {p.name}: unsupported suffix {suffix!r}; expected .npy, .png or .mat")
    return _validated_kernel(k, p, announce=suffix != ".png")


def _kernel_suffix(p: InputFile) -> str:
    """The kernel file's type: its name's suffix, else (an upload without one) its magic bytes."""
    if p.suffix in (".npy", ".png", ".mat") or p.path is not None:
        return p.suffix
    head = p.head(1024)
    if head.startswith(b"\x93NUMPY"):
        return ".npy"
    if head.startswith(b"\x89PNG"):
        return ".png"
    if head.startswith(b"MATLAB") or b"\x89HDF" in head:
        return ".mat"
    return p.suffix or ".npy"


def bicubic_sr_kernel(sf: int) -> np.ndarray:
    """The 25x25 bicubic-equivalent kernel for x2, x3 or x4 SR (docs/algorithm.md §6.3), off-centre by design."""
    if sf not in (2, 3, 4) or isinstance(sf, bool):
        raise DiffPIRError(f"bicubic SR kernel: sf = {sf!r}; expected 2, 3 or 4")
    return load_kernel(BICUBIC_KERNELS_FILE, sf - 2)


def _read_png_kernel(p: InputFile) -> np.ndarray:
    """Grey levels of a PNG kernel (luma of an RGB one), divided by their sum."""
    from .imageio import _read_pixels  # the one guarded decoder: size limit, no warnings

    pixels, _ = _read_pixels(p, "kernel")
    if pixels.shape[0] * pixels.shape[1] > MAX_KERNEL_ELEMENTS:
        raise TooLargeError(f"kernel {p.name}: {pixels.shape[1]}x{pixels.shape[0]} is larger than kernels may be (4096x4096)")
    rgb = pixels.astype(np.float64)
    k = rgb[..., 0] if (rgb[..., :1] == rgb).all() else rgb @ np.array([0.299, 0.587, 0.114])
    total = k.sum()
    if total <= 0:
        raise DiffPIRError(f"kernel {p.name}: the image is all black; expected a kernel with a positive sum")
    return k / total


def _pick(cells: np.ndarray, index: int | None, p: InputFile) -> np.ndarray:
    """One entry of a flat list of kernels, with the count in every error."""
    n = len(cells)
    if n == 0:
        raise DiffPIRError(f"kernel {p.name}: 'kernels' is empty; the file holds no kernel")
    if n > MAX_KERNELS:
        raise TooLargeError(f"kernel {p.name}: 'kernels' lists {n:,} entries; at most {MAX_KERNELS:,} are read")
    if index is None:
        if n != 1:
            raise DiffPIRError(f"kernel {p.name}: holds {n} kernels; pass index 0..{n - 1} (--kernel-index)")
        index = 0
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise DiffPIRError(f"kernel {p.name}: index {index!r} out of range; the file holds {n} kernels (0..{n - 1})")
    return cells[index]


def _read_mat(p: InputFile, index: int | None) -> np.ndarray:
    size = p.size()
    if size > MAX_MAT_BYTES:
        raise TooLargeError(f"kernel {p.name}: a {size:,}-byte .mat file; kernel files are at most {MAX_MAT_BYTES:,} bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # HDF5's signature sits at offset 0, or 512, 1024, 2048 after a user block (MATLAB v7.3 writes 512)
        head = p.head(2056)
        if any(head[at : at + 8] == b"\x89HDF\r\n\x1a\n" for at in (0, 512, 1024, 2048)):
            return _read_mat_hdf5(p, index)
        return _read_mat_v5(p, index)


def _check_mat_v5_sizes(p: InputFile) -> None:
    """Walk a MATLAB v5 file's top-level variables; a compressed one that expands beyond
    MAX_MAT_BYTES (a zip bomb) is refused before scipy inflates it into memory."""
    with p.open() as f:
        header = f.read(128)
        if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
            return  # not v5 (v4 has no compression): scipy says what it is
        endian = "<" if header[126:128] == b"IM" else ">"
        while True:
            tag = f.read(8)
            if len(tag) < 8:
                return
            kind, nbytes = struct.unpack(endian + "II", tag)
            if kind != 15:  # miCOMPRESSED
                f.seek(nbytes + (-nbytes % 8), os.SEEK_CUR)
                continue
            inflater, expanded, left = zlib.decompressobj(), 0, nbytes
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
                try:
                    expanded += len(inflater.decompress(chunk, MAX_MAT_BYTES + 1 - expanded))
                    while inflater.unconsumed_tail and expanded <= MAX_MAT_BYTES:
                        expanded += len(inflater.decompress(inflater.unconsumed_tail, MAX_MAT_BYTES + 1 - expanded))
                except zlib.error:
                    return  # corrupt: scipy reports it
                if expanded > MAX_MAT_BYTES:
                    raise TooLargeError(
                        f"kernel {p.name}: a compressed variable expands beyond {MAX_MAT_BYTES:,} bytes (a zip bomb?)"
                    )


def _read_mat_v5(p: InputFile, index: int | None) -> np.ndarray:
    _check_mat_v5_sizes(p)
    try:
        with p.open() as f:
            contents = scipy_io.loadmat(f, variable_names=["kernels"])
        if "kernels" in contents:
            names = []
        else:
            with p.open() as f:
                names = sorted(name for name, _, _ in scipy_io.whosmat(f))
    except Exception as e:  # scipy's parser fed arbitrary bytes: ValueError, TypeError, MatReadError, ...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise DiffPIRError(f"kernel {p.name}: cannot read MATLAB file, corrupt or truncated ({detail})") from None
    if "kernels" not in contents:
        raise DiffPIRError(f"kernel {p.name}: no variable 'kernels' (found {names[:5]}); expected a cell array 'kernels'")
    kernels = contents["kernels"]
    if not isinstance(kernels, np.ndarray):
        raise DiffPIRError(f"kernel {p.name}: 'kernels' is a {type(kernels).__name__}; expected a cell array or matrix")
    if kernels.dtype == object:  # a cell array; MATLAB's linear order is column-major
        return np.asarray(_pick(kernels.ravel(order="F"), index, p))
    return _pick(np.asarray([kernels]), index, p)


def _read_mat_hdf5(p: InputFile, index: int | None) -> np.ndarray:
    """MATLAB v7.3: HDF5 stores every array transposed (column-major), so each kernel is .T.
    Shapes and types are checked on the datasets' headers before their data is read."""
    try:
        with p.open() as handle, h5py.File(handle, "r") as f:
            if "kernels" not in f:
                raise DiffPIRError(
                    f"kernel {p.name}: no variable 'kernels' (found {sorted(f.keys())[:5]}); expected a cell array 'kernels'"
                )
            kernels = f["kernels"]
            if not isinstance(kernels, h5py.Dataset):
                kind = type(kernels).__name__
                raise DiffPIRError(f"kernel {p.name}: 'kernels' is a {kind}; expected a cell array or matrix")
            if h5py.check_dtype(ref=kernels.dtype) is not None:
                # a MATLAB (1, n) cell is stored as (n, 1) references; C order = MATLAB linear order
                if kernels.size > MAX_KERNELS:
                    raise TooLargeError(f"kernel {p.name}: 'kernels' lists {kernels.size:,} entries; at most {MAX_KERNELS:,} are read")
                ref = _pick(kernels[()].ravel(), index, p)
                target = f[ref]
                if not isinstance(target, h5py.Dataset):
                    raise DiffPIRError(f"kernel {p.name}: kernel {index or 0} is a {type(target).__name__}; expected a matrix")
                return _hdf5_matrix(target, p).T
            _pick(np.empty(1), index, p)  # one matrix: index must be None or 0
            return _hdf5_matrix(kernels, p).T
    except DiffPIRError:
        raise
    except Exception as e:  # h5py on arbitrary bytes: OSError, ValueError, KeyError, TypeError, ...
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
        raise DiffPIRError(f"kernel {p.name}: cannot read MATLAB v7.3 file, corrupt or truncated ({detail})") from None


def _hdf5_matrix(dataset, p: InputFile) -> np.ndarray:
    """A dataset's values, after its header says they are a modest real 2-D matrix."""
    if dataset.dtype.kind not in "buif" or dataset.dtype.fields is not None:
        kind = "complex numbers" if dataset.dtype.fields is not None else f"dtype {dataset.dtype}"
        raise DiffPIRError(f"kernel {p.name}: holds {kind}; expected real numbers")
    if dataset.size > MAX_KERNEL_ELEMENTS:
        raise TooLargeError(
            f"kernel {p.name}: declares {dataset.size:,} values (shape {dataset.shape}); at most {MAX_KERNEL_ELEMENTS:,} are read"
        )
    return np.asarray(dataset[()])


def _validated_kernel(k: np.ndarray, p: InputFile, announce: bool = True) -> np.ndarray:
    """A finite real 2-D kernel with a positive sum, as float32 with sum 1 (see load_kernel)."""
    k = np.asarray(k)
    if k.dtype == object or k.dtype.kind not in "buif" or k.dtype.fields is not None:
        kind = "complex numbers" if k.dtype.kind == "c" else f"dtype {k.dtype}"
        raise DiffPIRError(f"kernel {p.name}: holds {kind}; expected real numbers")
    if k.ndim != 2 or k.size == 0:
        raise DiffPIRError(f"kernel {p.name}: expected a non-empty 2-D array, got shape {k.shape}")
    if k.size > MAX_KERNEL_ELEMENTS:
        raise TooLargeError(f"kernel {p.name}: {k.shape[1]}x{k.shape[0]} is larger than kernels may be (4096x4096)")
    with np.errstate(all="ignore"):  # overflow is refused below, in words, not printed as a warning
        if k.dtype.kind == "f" and not np.isfinite(k).all():
            raise DiffPIRError(f"kernel {p.name}: {int((~np.isfinite(k)).sum())} NaN or Inf value(s); expected finite values")
        values = k.astype(np.float64)
        if not np.isfinite(values).all():
            raise DiffPIRError(f"kernel {p.name}: values beyond the float64 range")
        total = float(values.sum())
        if not math.isfinite(total):
            raise DiffPIRError(f"kernel {p.name}: values so large that their sum overflows; expected a sum of about 1")
        if not total > 0:
            raise DiffPIRError(f"kernel {p.name}: sums to {total:g}; expected a positive sum (about 1)")
        if abs(total - 1.0) > KERNEL_SUM_TOLERANCE:
            if announce:
                logger.warning("kernel %s: %s values summing to %.6g; normalised to sum 1", p.name, k.dtype, total)
            values = values / total
        out = values.astype(np.float32)
    if not np.isfinite(out).all() or not float(out.sum(dtype=np.float64)) > 0:
        raise DiffPIRError(f"kernel {p.name}: its values do not fit float32 (sum {total:g})")
    return out
