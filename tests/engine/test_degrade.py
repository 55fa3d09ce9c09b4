"""Measurement synthesis (engine/degrade.py) against the official protocol (docs/algorithm.md §7).

Expected values come from files generated with the official seeding
(tests/data/derived, see tests/data/README.md), from independent re-derivations
(brute-force loops) or from other published files (kernels_12.mat).
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import PIL
from PIL import Image

from diffpir_rt.engine import degrade
from diffpir_rt.engine.degrade import (
    add_noise,
    bicubic_downsample,
    bicubic_sr_kernel,
    blur,
    blur_uint8,
    box_mask,
    gaussian_kernel,
    gaussian_kernel_std,
    gaussian_std,
    imresize,
    load_kernel,
    motion_kernel,
    random_mask,
)
from diffpir_rt.errors import DiffPIRError

DATA = Path(__file__).parents[1] / "data"
DERIVED = DATA / "derived"
LEVIN = DATA / "kernels" / "Levin09.mat"
KERNELS_12 = DATA / "kernels" / "kernels_12.mat"
LEVIN_SIZES = [19, 17, 15, 27, 13, 21, 23, 23]  # docs/algorithm.md §12


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _butterfly() -> np.ndarray:
    return np.asarray(Image.open(DATA / "images" / "butterfly.png").convert("RGB"))


# ----------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("index, std", list(enumerate([6.293, 7.628, 6.529, 6.865, 5.446])))
def test_gaussian_std_matches_listed_values(index, std):
    assert gaussian_std(index) == pytest.approx(std, abs=5e-4)


@pytest.mark.parametrize("index", range(5))
def test_gaussian_kernel_equals_reference_file(index):
    expected = np.load(DERIVED / f"gaussian_k61_idx{index}.npy")
    k = gaussian_kernel(index)
    assert k.dtype == np.float32 and k.shape == (61, 61)
    np.testing.assert_array_equal(k, expected)


def test_gaussian_kernel_std_has_that_variance():
    """Independent fact: a sampled Gaussian's second moment is std^2 (truncated at 4 std)."""
    std = 5.0
    k = gaussian_kernel_std(std, 61).astype(np.float64)
    offsets = np.arange(61) - 30
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    assert (k.sum(axis=0) * offsets**2).sum() == pytest.approx(std**2, rel=2e-3)
    np.testing.assert_allclose(k, k.T, atol=0)  # isotropic, centred
    assert np.unravel_index(np.argmax(k), k.shape) == (30, 30)


REFERENCE_PILLOW = "13.0.0"  # the version that made the reference files


@pytest.mark.parametrize("index", range(5))
def test_motion_kernel_equals_reference_file(index):
    """Bit-exact with the Pillow that made the files; Pillow's line drawing, blur and
    Lanczos resize may move pixels slightly in other versions, so then only close."""
    expected = np.load(DERIVED / f"motion_k61_i0.5_idx{index}.npy")
    k = motion_kernel(index)
    assert k.dtype == np.float32 and k.shape == (61, 61)
    if PIL.__version__ == REFERENCE_PILLOW:
        np.testing.assert_array_equal(k, expected)
    else:
        np.testing.assert_allclose(k, expected, rtol=0, atol=0.05 * expected.max())
    assert k.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-5)


def test_motion_kernel_other_size_and_intensity():
    k = motion_kernel(7, size=54, intensity=0.2)
    assert k.shape == (54, 54) and k.min() >= 0
    assert k.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(k, motion_kernel(7, size=54, intensity=0.2))


def test_generators_leave_global_rng_alone():
    np.random.seed(99)
    before = np.random.get_state()[1].copy()
    motion_kernel(1)
    gaussian_kernel(1)
    box_mask()
    random_mask(16, 16)
    add_noise(np.zeros((4, 4)), 0.1, seed=3)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# ----------------------------------------------------------------------------- masks


def test_box_mask_equals_reference_png():
    expected = np.asarray(Image.open(DERIVED / "mask_box128_seed0.png")) / 255.0
    mask = box_mask()
    assert mask.dtype == np.float32 and mask.shape == (256, 256)
    np.testing.assert_array_equal(mask, expected)
    rows, cols = np.nonzero(mask == 0)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (60, 187, 63, 190)


def test_random_mask_equals_reference_png():
    expected = np.asarray(Image.open(DERIVED / "mask_random50_seed0.png")) / 255.0
    mask = random_mask()
    np.testing.assert_array_equal(mask, expected)
    assert int((mask == 0).sum()) == 32768


def test_masks_other_sizes():
    mask = box_mask(200, 300, seed=3, box=64, margin=8)
    rows, cols = np.nonzero(mask == 0)
    assert mask.shape == (200, 300)
    assert rows.max() - rows.min() + 1 == 64 and cols.max() - cols.min() + 1 == 64
    assert rows.min() >= 8 and rows.max() < 200 - 8 and cols.min() >= 8 and cols.max() < 300 - 8
    assert int((mask == 0).sum()) == 64 * 64
    mask = random_mask(64, 48, seed=5, p=0.25)
    assert mask.shape == (64, 48) and set(np.unique(mask)) == {0.0, 1.0}
    assert int((mask == 0).sum()) == int(64 * 48 * 0.25)
    assert not np.array_equal(random_mask(64, 48, seed=6, p=0.25), mask)


# ----------------------------------------------------------------------------- blur


def test_blur_uint8_truncates_like_uint8_convolve():
    img = _butterfly()[:64, :80]
    k = gaussian_kernel(2)
    result = blur_uint8(img, k)
    exact = scipy.ndimage.convolve(img.astype(np.float64), k[..., None].astype(np.float64), mode="wrap")
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, exact.astype(np.uint8))
    assert (np.round(exact) != result).any(), "truncation, not rounding, must show somewhere"


def _circular_convolution(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """y[i, j] = sum_ab k[a, b] x[i - (a - ca), j - (b - cb)] with indices mod (H, W)."""
    h, w = x.shape[:2]
    ca, cb = k.shape[0] // 2, k.shape[1] // 2
    y = np.zeros_like(x, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            for a in range(k.shape[0]):
                for b in range(k.shape[1]):
                    y[i, j] += k[a, b] * x[(i - (a - ca)) % h, (j - (b - cb)) % w]
    return y


@pytest.mark.parametrize("ksize", [(3, 3), (5, 3)])
def test_blur_is_circular_convolution(rng, ksize):
    x = rng.random((7, 6, 2))
    k = rng.random(ksize)  # not symmetric, so a flip or a shift would show
    np.testing.assert_allclose(blur(x, k), _circular_convolution(x, k), rtol=0, atol=1e-12)
    np.testing.assert_allclose(blur(x[..., 0], k), _circular_convolution(x[..., :1], k)[..., 0], atol=1e-12)


def test_blur_keeps_float32():
    x = np.full((8, 8, 3), 0.25, dtype=np.float32)
    y = blur(x, gaussian_kernel_std(1.0, 7))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 0.25, atol=1e-6)


# ----------------------------------------------------------------------------- imresize


def _brute_force_imresize(x: np.ndarray, scale: float) -> np.ndarray:
    """Per-output-pixel double sum of the MATLAB formula, with np.pad 'symmetric' boundaries."""

    def cubic(d: float) -> float:
        a = abs(d)
        if a <= 1:
            return 1.5 * a**3 - 2.5 * a**2 + 1
        if a <= 2:
            return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
        return 0.0

    s = min(scale, 1.0)  # kernel stretched by 1/scale only when shrinking (antialiasing)

    def taps(out_pos: int) -> list[tuple[int, float]]:
        u = out_pos / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinate
        js = range(math.floor(u - 2 / s), math.ceil(u + 2 / s) + 1)
        ws = [s * cubic((u - j) * s) for j in js]
        total = sum(ws)
        return [(j, wj / total) for j, wj in zip(js, ws) if wj != 0]

    pad = 40
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    out_h, out_w = math.ceil(x.shape[0] * scale), math.ceil(x.shape[1] * scale)
    out = np.zeros((out_h, out_w, x.shape[2]))
    for r in range(out_h):
        for c in range(out_w):
            for i, wi in taps(r + 1):
                for j, wj in taps(c + 1):
                    out[r, c] += wi * wj * xp[i - 1 + pad, j - 1 + pad]
    return out


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 0.6, 2.0])
def test_imresize_matches_brute_force(rng, scale):
    x = rng.random((11, 9, 2))
    got = imresize(x, scale)
    assert got.shape == (math.ceil(11 * scale), math.ceil(9 * scale), 2)
    np.testing.assert_allclose(got, _brute_force_imresize(x, scale), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4])
def test_imresize_keeps_constants(scale):
    x = np.full((13, 10, 3), 0.37)
    np.testing.assert_allclose(imresize(x, scale), 0.37, rtol=0, atol=1e-12)


def test_imresize_linear_ramp_exact_in_interior():
    """Symmetric weights reproduce a ramp: output row r (1-based) sits at input 4r - 1.5."""
    x = np.repeat(np.arange(32.0)[:, None, None], 8, axis=1)  # value = 0-based row index
    y = imresize(x, 1 / 4)
    for r in range(3, 7):  # rows whose 16-pixel support stays inside the image
        np.testing.assert_allclose(y[r - 1], 4 * r - 2.5, rtol=0, atol=1e-12)


def test_imresize_2d_and_dtype():
    y = imresize(np.zeros((10, 7), dtype=np.float32), 1 / 3)
    assert y.shape == (4, 3) and y.dtype == np.float32


def test_bicubic_downsample_matches_bicubic_kernel_and_top_left_decimation():
    """Independent source: KAIR's x4 kernel + top-left decimation approximates imresize (docs/algorithm.md §6.3)."""
    x = _butterfly().astype(np.float64) / 255
    y = bicubic_downsample(x, 4)
    assert y.shape == (64, 64, 3)
    blurred = blur(x, bicubic_sr_kernel(4))
    errors = [np.abs(blurred[o::4, o::4] - y)[4:-4, 4:-4] for o in range(4)]
    assert errors[0].mean() < 1e-3 and errors[0].max() < 0.01
    assert all(e.mean() > 0.02 for e in errors[1:]), "offset 0 must be the one that matches"


def test_bicubic_downsample_mod_crops_first(rng):
    x = rng.random((18, 15, 3))
    np.testing.assert_array_equal(bicubic_downsample(x, 4), imresize(x[:16, :12], 1 / 4))


# ----------------------------------------------------------------------------- noise


def test_add_noise_statistics_and_seed():
    y = np.full((128, 128, 3), 0.5, dtype=np.float32)
    noisy = add_noise(y, 0.05, seed=7)
    assert noisy.dtype == np.float32
    assert (noisy - y).std() == pytest.approx(0.05, rel=0.02)
    assert abs((noisy - y).mean()) < 1e-3
    np.testing.assert_array_equal(noisy, add_noise(y, 0.05, seed=7))
    expected = (y + np.random.RandomState(7).normal(0, 0.05, y.shape)).astype(np.float32)
    np.testing.assert_array_equal(noisy, expected)
    assert not np.array_equal(noisy, add_noise(y, 0.05, seed=8))


def test_add_noise_is_not_clipped_and_zero_sigma_is_identity():
    y = np.zeros((64, 64))
    assert add_noise(y, 0.1, seed=0).min() < 0
    same = add_noise(y + 1, 0.0, seed=0)
    np.testing.assert_array_equal(same, y + 1)


# ----------------------------------------------------------------------------- kernel files


def test_levin_kernels_sizes_and_sums():
    for i, size in enumerate(LEVIN_SIZES):
        k = load_kernel(LEVIN, i)
        assert k.shape == (size, size) and k.dtype == np.float32
        assert k.sum(dtype=np.float64) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("levin_index, k12_index", [(7, 8), (6, 9)])
def test_levin_transpose_matches_kernels_12(levin_index, k12_index):
    """Independent fact: kernels_12.mat (MATLAB v5, no transpose involved) holds two Levin
    kernels zero-padded to 25x25; only the transposed h5py read matches them."""
    reference = scipy.io.loadmat(KERNELS_12)["kernels"][0, k12_index].astype(np.float64)
    k = load_kernel(LEVIN, levin_index).astype(np.float64)

    def best_fit(candidate: np.ndarray) -> float:
        s = candidate.shape[0]
        errs = []
        for a in range(26 - s):
            for b in range(26 - s):
                padded = np.zeros((25, 25))
                padded[a : a + s, b : b + s] = candidate
                errs.append(np.abs(padded - reference).max())
        return min(errs)

    assert best_fit(k) < 1e-6
    assert best_fit(k.T) > 1e-3


def test_kernels_12_load():
    ks = [load_kernel(KERNELS_12, i) for i in range(12)]
    assert all(k.shape == (25, 25) for k in ks)
    for k in ks[:8]:  # Gaussian-type kernels are centred
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-6)


@pytest.mark.parametrize("sf, centre", [(2, 11.5), (3, 11.0), (4, 10.5)])
def test_bicubic_sr_kernel_centroids(sf, centre):
    k = bicubic_sr_kernel(sf).astype(np.float64)
    rows, cols = np.mgrid[:25, :25]
    assert k.shape == (25, 25)
    assert (k * rows).sum() / k.sum() == pytest.approx(centre, abs=1e-3)
    assert (k * cols).sum() / k.sum() == pytest.approx(centre, abs=1e-3)


def test_load_kernel_npy_png_and_hdf5_matrix(tmp_path, rng):
    k = rng.random((5, 7)).astype(np.float32)
    k /= k.sum(dtype=np.float64)  # a unit-sum kernel is used exactly as stored
    np.save(tmp_path / "k.npy", k)
    np.testing.assert_array_equal(load_kernel(tmp_path / "k.npy"), k)

    pixels = np.zeros((5, 5), dtype=np.uint8)
    pixels[2, 1:4] = [50, 100, 50]
    Image.fromarray(pixels).save(tmp_path / "k.png")
    np.testing.assert_allclose(load_kernel(tmp_path / "k.png"), pixels / 200.0, atol=1e-7)

    with h5py.File(tmp_path / "m73.mat", "w") as f:
        f["kernels"] = k.T  # MATLAB v7.3 stores matrices transposed
    np.testing.assert_array_equal(load_kernel(tmp_path / "m73.mat"), k)

    scipy.io.savemat(tmp_path / "m5.mat", {"kernels": k})
    np.testing.assert_array_equal(load_kernel(tmp_path / "m5.mat"), k)


# ----------------------------------------------------------------------------- errors


def _raises(match: str):
    return pytest.raises(DiffPIRError, match=match)


def test_load_kernel_errors(tmp_path):
    with _raises("no such file"):
        load_kernel(tmp_path / "none.npy")
    (tmp_path / "k.txt").write_text("1")
    with _raises("unsupported suffix '.txt'"):
        load_kernel(tmp_path / "k.txt")
    np.save(tmp_path / "k.npy", np.ones((3, 3)))
    with _raises("only .mat files"):
        load_kernel(tmp_path / "k.npy", 0)
    np.save(tmp_path / "k3.npy", np.ones((3, 3, 1)))
    with _raises(r"expected 2-D, got shape \(3, 3, 1\)"):
        load_kernel(tmp_path / "k3.npy")
    np.save(tmp_path / "nan.npy", np.array([[1.0, np.nan]]))
    with _raises("NaN or Inf"):
        load_kernel(tmp_path / "nan.npy")
    np.save(tmp_path / "zero.npy", np.zeros((3, 3)))
    with _raises("sums to 0"):
        load_kernel(tmp_path / "zero.npy")
    np.save(tmp_path / "neg.npy", -np.ones((3, 3)))
    with _raises("sums to -9"):
        load_kernel(tmp_path / "neg.npy")
    np.save(tmp_path / "cplx.npy", np.ones((3, 3), dtype=complex))
    with _raises("complex numbers"):
        load_kernel(tmp_path / "cplx.npy")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with _raises("not an .npy file"):
        load_kernel(tmp_path / "bad.npy")
    Image.fromarray(np.zeros((3, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    with _raises("all black"):
        load_kernel(tmp_path / "black.png")
    (tmp_path / "bad.png").write_bytes(b"not png")
    with _raises("not a PNG, JPEG, TIFF or WebP image"):
        load_kernel(tmp_path / "bad.png")


def test_load_kernel_normalises_other_sums_with_a_warning(tmp_path, caplog):
    k = np.arange(9, dtype=np.uint8).reshape(3, 3) * 10  # an integer kernel summing to 360
    np.save(tmp_path / "u8.npy", k)
    with caplog.at_level("WARNING"):
        loaded = load_kernel(tmp_path / "u8.npy")
    np.testing.assert_allclose(loaded, k / 360.0, rtol=1e-6)
    assert "summing to 360; normalised to sum 1" in caplog.text


def test_load_kernel_mat_errors(tmp_path):
    with _raises(r"index 8 out of range; the file holds 8 kernels \(0..7\)"):
        load_kernel(LEVIN, 8)
    with _raises("index -1 out of range; the file holds 12 kernels"):
        load_kernel(KERNELS_12, -1)
    with _raises("holds 12 kernels; pass index"):
        load_kernel(KERNELS_12)
    scipy.io.savemat(tmp_path / "other.mat", {"psf": np.ones((3, 3))})
    with _raises(r"no variable 'kernels' \(found \['psf'\]\)"):
        load_kernel(tmp_path / "other.mat")
    with h5py.File(tmp_path / "other73.mat", "w") as f:
        f["psf"] = np.ones((3, 3))
    with _raises(r"no variable 'kernels' \(found \['psf'\]\)"):
        load_kernel(tmp_path / "other73.mat")
    with h5py.File(tmp_path / "group73.mat", "w") as f:
        f.create_group("kernels")
    with _raises("'kernels' is a Group"):
        load_kernel(tmp_path / "group73.mat")
    (tmp_path / "bad.mat").write_bytes(b"garbage" * 30)
    with _raises("cannot read MATLAB file"):
        load_kernel(tmp_path / "bad.mat")


def test_bicubic_sr_kernel_rejects_other_factors():
    with _raises("sf = 5; expected 2, 3 or 4"):
        bicubic_sr_kernel(5)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: gaussian_kernel_std(0.0), "std: got 0.0"),
        (lambda: gaussian_kernel_std(2.0, size=0), "size: got 0"),
        (lambda: gaussian_kernel(-1), "kernel index: got -1"),
        (lambda: gaussian_kernel(True), "kernel index: got True"),
        (lambda: motion_kernel(0, intensity=1.5), "intensity: got 1.5"),
        (lambda: motion_kernel(0, size=2.5), "size: got 2.5"),
        (lambda: motion_kernel(0, size=53), "size: got 53; expected >= 54"),
        (lambda: blur_uint8(np.zeros((4, 4, 3)), np.ones((3, 3))), "expected uint8 \\(H, W, C\\)"),
        (lambda: blur(np.zeros((4, 4)), np.ones(3)), "blur kernel: .* expected a finite 2-D array"),
        (lambda: blur(np.zeros((4, 4)), np.full((3, 3), np.inf)), "blur kernel"),
        (lambda: blur(np.zeros((4, 4), dtype=np.uint8), np.ones((3, 3))), "blur image: got dtype uint8"),
        (lambda: imresize(np.zeros((4, 4, 1)), 0.0), "scale: got 0.0"),
        (lambda: imresize(np.zeros((4, 4, 1, 1)), 0.5), "imresize image: .* shape \\(4, 4, 1, 1\\)"),
        (lambda: bicubic_downsample(np.zeros((8, 8, 3)), 0), "sf: got 0"),
        (lambda: bicubic_downsample(np.zeros((3, 8, 3)), 4), "smaller than sf = 4"),
        (lambda: box_mask(100, 256), "does not fit in 256x100"),  # width x height
        (lambda: box_mask(seed=-1), "box_mask seed: got -1"),
        (lambda: box_mask(h=0), "box_mask h: got 0"),
        (lambda: random_mask(p=1.5), "p: got 1.5"),
        (lambda: random_mask(seed=2**32), "random_mask seed"),
        (lambda: add_noise(np.zeros(3, dtype=np.uint8), 0.1, 0), "measurement: got dtype uint8"),
        (lambda: add_noise(np.zeros(3), -0.1, 0), "sigma_n: got -0.1"),
        (lambda: add_noise(np.zeros(3), float("nan"), 0), "sigma_n: got nan"),
        (lambda: add_noise(np.zeros(3), 0.1, None), "add_noise seed: got None"),
    ],
)
def test_argument_errors(call, match):
    with _raises(match):
        call()


def test_packaged_bicubic_file_is_the_official_one():
    import hashlib

    digest = hashlib.sha256(degrade.BICUBIC_KERNELS_FILE.read_bytes()).hexdigest()
    assert digest.startswith("6be1ba76a6d6e8bb")  # shared/data/README.md


def test_motion_kernel_refuses_an_empty_drawing(monkeypatch):
    class BlankDraw:
        def __init__(self, image):
            pass

        def line(self, *args, **kwargs):
            pass

    monkeypatch.setattr(degrade.ImageDraw, "Draw", BlankDraw)
    with _raises("missed the 122x122 canvas"):
        motion_kernel(0)


def test_blur_image_is_the_uint8_path():
    img = _butterfly()[:32, :40]
    k = gaussian_kernel(0)
    y = degrade.blur_image(img / 255.0, k)
    np.testing.assert_array_equal(y * 255, blur_uint8(img, k))
    with _raises(r"blur_image image: got shape \(4, 4\); expected \(H, W, C\)"):
        degrade.blur_image(np.zeros((4, 4)), k)
