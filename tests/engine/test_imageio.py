"""Image files in and out (engine/imageio.py): exact round trips, atomic writes, errors."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
import torch
from PIL import Image

from diffpir_rt.engine import imageio
from diffpir_rt.errors import DiffPIRError
from diffpir_rt.engine.imageio import check_finite, from_model, read_image, read_mask, to_model, write_image

DATA = Path(__file__).parents[1] / "data"
BUTTERFLY = DATA / "images" / "butterfly.png"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _raises(match: str):
    return pytest.raises(DiffPIRError, match=match)


def _as_tensor(pixels: np.ndarray, full_scale: int) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / full_scale).permute(2, 0, 1)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- conversions


def test_model_range_conversion():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(to_model(x), torch.tensor([-1.0, -0.5, 0.0, 1.0]))
    torch.testing.assert_close(from_model(to_model(x)), x)
    np.testing.assert_array_equal(from_model(np.array([-1.0, 1.0])), [0.0, 1.0])


def test_check_finite():
    check_finite(torch.zeros(3), "x")
    check_finite(np.zeros(3), "x")
    with _raises(r"^y0: 2 NaN or Inf value\(s\); expected finite values$"):
        check_finite(torch.tensor([0.0, float("nan"), float("inf")]), "y0")
    with _raises("kernel: 1 NaN or Inf"):
        check_finite(np.array([np.inf]), "kernel")


# ----------------------------------------------------------------------------- reading


def test_read_butterfly():
    x = read_image(BUTTERFLY)
    expected = np.asarray(Image.open(BUTTERFLY).convert("RGB")).astype(np.float32) / 255
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(expected).permute(2, 0, 1), rtol=0, atol=0)


def _png_with_sub_filter(path: Path, pixels: np.ndarray) -> None:
    """16-bit RGB PNG whose rows use filter type 1 (Sub), written by hand from the PNG spec."""
    height, width, channels = pixels.shape
    raw = pixels.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    bpp = channels * 2
    filtered = raw.copy()
    filtered[:, bpp:] = raw[:, bpp:] - raw[:, :-bpp]  # uint8 arithmetic wraps mod 256
    data = b"".join(b"\x01" + row.tobytes() for row in filtered)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def test_read_16bit_rgb_png_keeps_all_bits(tmp_path, rng):
    pixels = rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    _png_with_sub_filter(tmp_path / "a.png", pixels)
    x = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(np.round(x.permute(1, 2, 0).double().numpy() * 65535), pixels)
    # the reason for pypng: Pillow keeps only the high byte
    assert np.asarray(Image.open(tmp_path / "a.png")).dtype == np.uint8


def test_read_png_with_fewer_significant_bits(tmp_path, rng):
    """pypng writes 12-bit data as 16-bit + sBIT and hands it back as 12-bit values."""
    pixels = rng.integers(0, 4096, (3, 4, 3), dtype=np.uint16)
    with open(tmp_path / "a.png", "wb") as f:
        png.Writer(4, 3, greyscale=False, bitdepth=12).write(f, pixels.reshape(3, 12).tolist())
    x = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(np.round(x.permute(1, 2, 0).double().numpy() * 4095), pixels)


def test_read_grey_and_alpha_images(tmp_path, rng):
    grey = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png")
    assert x.shape == (3, 4, 6)
    for c in range(3):
        np.testing.assert_array_equal(x[c].numpy(), grey / np.float32(255))

    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: alpha must be dropped, not composited
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png").permute(1, 2, 0).numpy() * 255, rgba[..., :3])

    grey16 = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    with open(tmp_path / "la16.png", "wb") as f:
        png.Writer(6, 4, greyscale=True, alpha=True, bitdepth=16).write(
            f, np.stack([grey16, grey16 // 2], -1).reshape(4, 12)
        )
    x = read_image(tmp_path / "la16.png")
    np.testing.assert_array_equal(np.round(x.double().numpy() * 65535), np.stack([grey16] * 3))


def test_read_palette_png(tmp_path):
    im = Image.new("P", (3, 2))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.save(tmp_path / "p.png")
    x = read_image(tmp_path / "p.png")
    assert x[:, 0, 0].tolist() == [1.0, 0.0, 0.0] and x[:, 1, 1].tolist() == [0.0, 0.0, 1.0]


def test_read_tiff_packbits_8bit_and_planar_16bit(tmp_path, rng):
    pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "m.tif", compression="packbits")  # as McMaster's files
    np.testing.assert_array_equal(read_image(tmp_path / "m.tif").permute(1, 2, 0).numpy() * 255, pixels)

    pixels16 = rng.integers(0, 65536, (3, 5, 7), dtype=np.uint16)  # channels first on disk
    tifffile.imwrite(tmp_path / "s.tif", pixels16, photometric="rgb", planarconfig="separate")
    x = read_image(tmp_path / "s.tif")
    np.testing.assert_array_equal(np.round(x.double().numpy() * 65535), pixels16)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_round_trip_is_exact(tmp_path, rng, suffix, bit_depth):
    full_scale = 2**bit_depth - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    pixels = rng.integers(0, full_scale + 1, (9, 11, 3), dtype=dtype)
    path = write_image(tmp_path / f"x{suffix}", _as_tensor(pixels, full_scale), bit_depth=bit_depth)
    x = read_image(path)
    np.testing.assert_array_equal(np.round(x.permute(1, 2, 0).double().numpy() * full_scale), pixels)


def test_round_trip_jpeg_is_close(tmp_path):
    x = read_image(BUTTERFLY)[:, :64, :64]
    write_image(tmp_path / "x.jpg", x)
    y = read_image(tmp_path / "x.jpg")
    assert y.shape == x.shape
    assert (y - x).abs().mean() < 0.02
    with Image.open(tmp_path / "x.jpg") as im:
        assert im.format == "JPEG"


def test_read_mask(tmp_path):
    mask = read_mask(DATA / "derived" / "mask_random50_seed0.png")
    assert mask.shape == (1, 256, 256) and mask.dtype == torch.float32
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert int((mask == 0).sum()) == 32768
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0, 2] = 1  # any nonzero channel marks the pixel observed
    Image.fromarray(rgb).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png")[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]


# ----------------------------------------------------------------------------- writing


def test_write_quantises_clamps_and_accepts_batch_of_one(tmp_path):
    values = torch.tensor([-0.2, 0.1, 0.5 / 255 + 1e-6, 0.999, 1.3]).reshape(1, 1, 1, 5).expand(1, 3, 1, 5)
    write_image(tmp_path / "q.png", values.contiguous())
    got = np.asarray(Image.open(tmp_path / "q.png"))[0, :, 0]
    assert got.tolist() == [0, 26, 1, 255, 255]  # round(x*255) after clamping to [0, 1]


def test_write_grey_single_channel(tmp_path, rng):
    pixels = rng.integers(0, 65536, (4, 5, 1), dtype=np.uint16)
    write_image(tmp_path / "g.png", _as_tensor(pixels, 65535), bit_depth=16)
    x = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(np.round(x.double().numpy() * 65535), np.repeat(pixels.transpose(2, 0, 1), 3, 0))


def test_write_creates_parents_leaves_no_temp_and_respects_umask(tmp_path):
    out = tmp_path / "a" / "b" / "x.png"
    assert write_image(out, torch.zeros(3, 2, 2)) == out
    assert _listing(out.parent) == ["x.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "x.png"
    write_image(out, torch.zeros(3, 2, 2))
    before = out.read_bytes()

    def disk_full(fd):
        raise OSError("disk full")  # the temp file holds the new bytes by now

    monkeypatch.setattr(imageio.os, "fsync", disk_full)
    with _raises(f"output {out}: cannot write \\(disk full\\)"):
        write_image(out, torch.ones(3, 2, 2))
    assert out.read_bytes() == before
    assert _listing(tmp_path) == ["x.png"]

    def bug(fd):
        raise RuntimeError("a bug keeps its own type")

    monkeypatch.setattr(imageio.os, "fsync", bug)
    with pytest.raises(RuntimeError):
        write_image(tmp_path / "y.png", torch.ones(3, 2, 2))
    assert _listing(tmp_path) == ["x.png"]


def test_write_refuses_to_overwrite_inputs(tmp_path):
    src = tmp_path / "in" / "img.png"
    write_image(src, torch.full((3, 2, 2), 0.5))
    before = src.read_bytes()
    with _raises(f"output {src}: is the input {src}; refusing to overwrite an input"):
        write_image(src, torch.zeros(3, 2, 2), protect=[src])
    roundabout = tmp_path / "in" / ".." / "in" / "img.png"
    with _raises("refusing to overwrite an input"):
        write_image(roundabout, torch.zeros(3, 2, 2), protect=[str(src)])
    link = tmp_path / "link.png"
    link.symlink_to(src)
    with _raises("refusing to overwrite an input"):
        write_image(link, torch.zeros(3, 2, 2), protect=(p for p in [src]))
    hard = tmp_path / "hard.png"
    os.link(src, hard)
    with _raises("refusing to overwrite an input"):
        write_image(hard, torch.zeros(3, 2, 2), protect=[src])
    with _raises("refusing to overwrite an input"):
        write_image(src, torch.zeros(3, 2, 2), protect=str(src))  # a single path works too
    assert src.read_bytes() == before
    write_image(tmp_path / "out.png", torch.zeros(3, 2, 2), protect=[src])  # other paths are fine


# ----------------------------------------------------------------------------- errors


def test_read_errors(tmp_path):
    with _raises(f"^image {tmp_path / 'none.png'}: no such file$"):
        read_image(tmp_path / "none.png")
    with _raises("^mask .*: no such file$"):
        read_mask(tmp_path / "none.png")
    with _raises("is a folder; expected a regular file"):
        read_image(tmp_path)  # a folder is not an image file
    (tmp_path / "noise.png").write_bytes(b"this is not an image")
    with _raises(f"^image {tmp_path / 'noise.png'}: not a PNG, JPEG, TIFF or WebP image"):
        read_image(tmp_path / "noise.png")
    whole = BUTTERFLY.read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    with _raises("cut.png: cannot decode"):
        read_image(tmp_path / "cut.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "x.bmp")
    with _raises("x.bmp: unsupported format BMP; expected one of PNG, JPEG, TIFF"):
        read_image(tmp_path / "x.bmp")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((2, 2), dtype=np.float32))
    with _raises("f.tif: unsupported sample type float32; expected 8- or 16-bit integers"):
        read_image(tmp_path / "f.tif")


def test_unsupported_pixel_layout(tmp_path, monkeypatch):
    """Pillow cannot open the TIFFs that would give such arrays, so the decoder is stubbed."""
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 2, 3), dtype=np.uint16), photometric="rgb")
    monkeypatch.setattr(imageio, "_read_tiff16", lambda *args: np.zeros((2, 2, 5), dtype=np.uint16))
    with _raises(r"s.tif: unsupported pixel layout \(2, 2, 5\); expected grey or RGB\(A\)"):
        read_image(tmp_path / "s.tif")


def test_corrupt_16bit_png(tmp_path):
    _png_with_sub_filter(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint16))
    data = bytearray((tmp_path / "a.png").read_bytes())
    data[-20] ^= 0xFF  # inside the IDAT chunk: CRC mismatch
    (tmp_path / "a.png").write_bytes(bytes(data))
    with _raises("a.png: cannot decode"):
        read_image(tmp_path / "a.png")


@pytest.mark.parametrize(
    "name, x, bit_depth, match",
    [
        ("x.bmp", torch.zeros(3, 2, 2), 8, r"unsupported suffix '.bmp'; expected one of .png, .jpg"),
        ("x.jpg", torch.zeros(3, 2, 2), 16, r"bit_depth 16 not possible for JPEG; expected one of \(8,\)"),
        ("x.png", torch.zeros(3, 2, 2), 12, r"bit_depth 12 not possible for PNG"),
        ("x.png", np.zeros((3, 2, 2)), 8, "expected a torch.Tensor, got ndarray"),
        ("x.png", torch.zeros(5, 2, 2), 8, r"image shape \(5, 2, 2\); expected \(C, H, W\)"),
        ("x.png", torch.zeros(2, 3, 2, 2), 8, r"image shape \(2, 3, 2, 2\)"),
        ("x.png", torch.zeros(2, 2), 8, r"image shape \(2, 2\)"),
        ("x.png", torch.zeros(3, 0, 2), 8, r"image shape \(3, 0, 2\)"),
        ("x.png", torch.tensor([0.5, float("nan")]).reshape(1, 1, 2), 8, "1 NaN or Inf value"),
        ("x.tif", torch.full((3, 1, 1), float("inf")), 16, r"3 NaN or Inf value\(s\); expected finite values"),
    ],
)
def test_write_argument_errors(tmp_path, name, x, bit_depth, match):
    # NaN is the image's fault, not the file's: the message says so
    prefix = "the image to write to" if "NaN" in match else "output"
    with _raises(f"^{prefix} {tmp_path / name}: {match}"):
        write_image(tmp_path / name, x, bit_depth=bit_depth)
    assert _listing(tmp_path) == []


def test_write_path_errors(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with _raises("dir.png: is a directory; expected a file path"):
        write_image(tmp_path / "dir.png", torch.zeros(3, 2, 2))
    (tmp_path / "file").write_text("")
    with _raises(f"{tmp_path / 'file'} is a file, not a folder"):
        write_image(tmp_path / "file" / "x.png", torch.zeros(3, 2, 2))


def test_write_npy_and_text(tmp_path):
    y = torch.tensor([[[-0.1, 1.2]]], dtype=torch.float64)  # out of range stays as is
    out = imageio.write_npy(tmp_path / "sub" / "y.npy", y)
    got = np.load(out)
    assert got.dtype == np.float32 and got.tolist() == [[[np.float32(-0.1), np.float32(1.2)]]]
    imageio.write_npy(tmp_path / "k.npy", np.ones((2, 2)))
    text = imageio.write_text(tmp_path / "r.json", '{"a": 1}\n')
    assert text.read_text() == '{"a": 1}\n'
    assert _listing(tmp_path) == ["k.npy", "r.json", "sub"]
    with _raises("y.txt: unsupported suffix '.txt'; expected '.npy'"):
        imageio.write_npy(tmp_path / "y.txt", y)
    with _raises("y.npy: 1 NaN or Inf value"):
        imageio.write_npy(tmp_path / "y.npy", np.array([np.nan]))
    with _raises("refusing to overwrite an input"):
        imageio.write_npy(out, y, protect=[out])
    with _raises("refusing to overwrite an input"):
        imageio.write_text(text, "x", protect=text)
    with _raises("sub: is a directory"):
        imageio.write_text(tmp_path / "sub", "x")


# ----------------------------------------------------------------------------- without pypng


def test_without_pypng_only_16bit_png_needs_it(tmp_path, monkeypatch, rng):
    """The GPU image has no pypng (--no-deps install): 8-bit I/O works, 16-bit PNG says what to install."""
    pixels16 = rng.integers(0, 65536, size=(3, 4, 3), dtype=np.uint16)
    write_image(tmp_path / "deep.png", _as_tensor(pixels16, 65535), bit_depth=16)
    monkeypatch.setitem(__import__("sys").modules, "png", None)  # `import png` now raises ImportError
    pixels8 = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
    out = write_image(tmp_path / "a.png", _as_tensor(pixels8, 255))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), pixels8)
    np.testing.assert_array_equal(read_image(out).permute(1, 2, 0).numpy() * 255, pixels8.astype(np.float32))
    write_image(tmp_path / "b.tif", _as_tensor(pixels16, 65535), bit_depth=16)  # tifffile, not pypng
    with _raises(r"16-bit PNG needs pypng, which is not installed .*; run `pip install pypng`"):
        write_image(tmp_path / "c.png", _as_tensor(pixels16, 65535), bit_depth=16)
    with _raises("pip install pypng"):
        read_image(tmp_path / "deep.png")
    assert not (tmp_path / "c.png").exists()
