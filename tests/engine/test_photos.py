"""Photos as people have them: EXIF orientation, grey pictures, alpha channels, 8 and 16 bit,
JPEG input; read, restored through the CLI, and written back in the same layout."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffpir_rt.cli import main
from diffpir_rt.engine.imageio import Photo, decode_photo, read_photo, upright, write_image

from ..conftest import cli_error


def _rgb(h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_shows_it(orientation: int, tmp_path: Path) -> None:
    pixels = _rgb()
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[274] = orientation
    path = tmp_path / "photo.jpg"
    im.save(path, quality=100, exif=exif)
    with Image.open(path) as stored:
        expected = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    photo = read_photo(path)
    got = np.round(photo.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    # upright() is the same operation on any array, e.g. a 16-bit one
    assert np.array_equal(upright(pixels, orientation), np.asarray(ImageOps.exif_transpose(_tagged(pixels, orientation))))


def _tagged(pixels: np.ndarray, orientation: int) -> Image.Image:
    buffer = io.BytesIO()
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[274] = orientation
    im.save(buffer, format="PNG", exif=exif)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize("suffix, depth", [(".png", 8), (".png", 16), (".tif", 8), (".tif", 16)])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_round_trip_keeps_grey_alpha_and_depth(suffix: str, depth: int, channels: int, tmp_path: Path) -> None:
    scale = 2**depth - 1
    values = np.random.default_rng(channels).integers(0, scale + 1, (channels, 9, 14)).astype(np.float64) / scale
    path = write_image(tmp_path / f"in{suffix}", torch.from_numpy(values), bit_depth=depth)
    photo = read_photo(path)
    assert photo.bit_depth == depth and photo.grayscale == (channels <= 2) and (photo.alpha is not None) == (channels in (2, 4))
    assert photo.rgb.shape == (3, 9, 14)
    back = photo.output(photo.rgb)  # an identity "restoration" gives the file back
    assert back.shape[0] == channels
    assert torch.allclose(back.double(), torch.from_numpy(values), atol=0.5 / scale)


def test_alpha_follows_a_larger_output_and_jpeg_refuses_it(tmp_path: Path) -> None:
    alpha = torch.rand(4, 5)
    photo = Photo(torch.rand(3, 4, 5), 8, alpha=alpha)
    out = photo.output(torch.rand(3, 16, 20))  # SR x4
    assert out.shape == (4, 16, 20) and torch.equal(out[3, ::4, ::4], alpha)
    from diffpir_rt.errors import DiffPIRError

    with pytest.raises(DiffPIRError, match="JPEG cannot store the input's alpha channel"):
        write_image(tmp_path / "o.jpg", out)


def test_uploads_decode_like_files(tmp_path: Path) -> None:
    rgba = np.dstack([_rgb(), np.full((12, 20), 128, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    photo = decode_photo(buffer.getvalue(), "image up.png")
    assert photo.alpha is not None and torch.allclose(photo.alpha, torch.full((12, 20), 128 / 255))


@pytest.mark.parametrize("mode, channels", [("L", 1), ("LA", 2), ("RGBA", 4)])
def test_restore_writes_the_inputs_layout(mode: str, channels: int, tmp_path: Path, tiny_checkpoint: Path) -> None:
    pixels = _rgb(16, 16)
    im = Image.fromarray(pixels).convert(mode)
    src = tmp_path / "noisy.png"
    im.save(src)
    out = tmp_path / "clean.png"
    argv = ["restore", "--task", "denoise", "--input", str(src), "--output", str(out), "--checkpoint",
            str(tiny_checkpoint), "--arch", "tiny", "--steps", "3", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with Image.open(out) as written:
        assert written.mode == mode and written.size == (16, 16)
        if channels in (2, 4):  # alpha untouched
            assert np.array_equal(np.asarray(written)[..., -1], np.asarray(im)[..., -1])


def test_restore_refuses_jpeg_output_for_an_alpha_input(tmp_path: Path, tiny_checkpoint: Path, capsys) -> None:
    src = tmp_path / "a.png"
    Image.fromarray(np.dstack([_rgb(16, 16), np.full((16, 16), 200, np.uint8)]), "RGBA").save(src)
    err = cli_error(capsys, ["restore", "--task", "denoise", "--input", str(src), "--output", str(tmp_path / "o.jpg"),
                             "--checkpoint", str(tiny_checkpoint), "--arch", "tiny", "--steps", "3", "--quiet"])  # fmt: skip
    assert "alpha" in err and not (tmp_path / "o.jpg").exists()
