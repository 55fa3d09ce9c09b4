"""The extra-training-data builder (training/data_sources.py) on a tiny git repository it makes.

The repository holds synthetic photos: new ones, a disguised copy of a reference image
(scaled, re-encoded as JPEG, rotated), a mirrored crop of one, a greyscale photo, a too small
one and a re-encoded twin of a new one. Only the new photos may come out, scaled to the size
limits, with a manifest that rebuilds exactly them.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffpir_rt.training import data_sources as ds

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _photo(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random colour field with a few edges: photo-like enough for the thumbnails."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 8, 3))
    big = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width]
    big[(yy * rng.uniform(0.5, 2) + xx) % 97 < 20] *= 0.6
    return np.clip(big, 0, 255).astype(np.uint8)


def _encode(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, ds.Source]:
    refs = tmp_path / "refs"
    refs.mkdir()
    reference = _photo(1, 200, 300)
    (refs / "testimage.png").write_bytes(_encode(reference))

    repo = tmp_path / "mirrors" / "someone" / "photos"
    repo.mkdir(parents=True)
    _git(repo, "init", "-q")
    files = {
        "new_a.png": _encode(_photo(10, 300, 900)),  # scaled to 512 on the long side
        "new_b.jpg": _encode(_photo(11, 180, 240), "JPEG"),
        "disguised.jpg": _encode(np.rot90(np.asarray(Image.fromarray(reference).resize((240, 160)))).copy(), "JPEG"),
        "cropped.png": _encode(reference[35:165, 52:248][:, ::-1].copy()),  # the central 65 %, mirrored
        "reframed.png": _encode(reference[:, 40:260].copy()),  # another aspect ratio: 11:10 instead of 3:2
        "testimage.jpg": _encode(_photo(12, 200, 200), "JPEG"),  # a test image's name
        "grey.png": _encode(np.repeat(_photo(13, 200, 200)[..., :1], 3, axis=2)),
        "small.png": _encode(_photo(14, 100, 400)),  # short side 100 < 128
        "twin.jpg": _encode(np.asarray(Image.fromarray(_photo(11, 180, 240)).resize((300, 225))), "JPEG"),
        "notes.txt": b"not an image",
    }
    for name, data in files.items():
        (repo / name).write_bytes(data)
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "photos")
    source = ds.Source("photos", "git", "test terms", repo="someone/photos", commit=_git(repo, "rev-parse", "HEAD"))
    return tmp_path / "mirrors", refs, source


def test_only_new_photos_come_out_scaled_with_their_provenance(setup, tmp_path: Path) -> None:
    mirrors, refs, source = setup
    out = tmp_path / "out"
    summary = ds.build(mirrors, [refs], out, sources=[source])
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["origin"] for r in rows) == ["new_a.png", "new_b.jpg"]
    assert summary["kept"] == 2 and summary["per_source"] == {"photos": 2}
    for row in rows:
        with Image.open(out / row["file"]) as im:
            assert im.mode == "RGB" and min(im.size) >= ds.MIN_SIDE and max(im.size) <= ds.MAX_SIDE
            assert im.size == (int(row["width"]), int(row["height"]))
    big = next(r for r in rows if r["origin"] == "new_a.png")
    assert (int(big["width"]), int(big["height"])) == (512, 171)
    dropped = summary["dropped"]
    assert dropped["same picture as a reference image"] == 3  # the disguised copy, the mirrored crop, the reframed one
    assert dropped["same name as reference refs/testimage.png"] == 1
    assert dropped["greyscale or unreadable"] == 1
    assert dropped[f"short side below {ds.MIN_SIDE} px"] == 1
    assert dropped["near-duplicate of a kept image"] == 1
    provenance = (out / "PROVENANCE.md").read_text()
    assert "| photos | 2 | someone/photos |" in provenance and "test terms" in provenance


def test_a_manifest_rebuilds_exactly_its_images(setup, tmp_path: Path) -> None:
    mirrors, refs, source = setup
    ds.build(mirrors, [refs], tmp_path / "first", sources=[source])
    with open(tmp_path / "first" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    keep = tmp_path / "one.csv"
    with open(keep, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerow(rows[0])
    ds.build(mirrors, [refs], tmp_path / "again", manifest=keep, sources=[source])
    assert sorted(p.name for p in (tmp_path / "again").glob("*.png")) == [rows[0]["file"]]
    assert (tmp_path / "again" / rows[0]["file"]).read_bytes() == (tmp_path / "first" / rows[0]["file"]).read_bytes()


def test_a_missing_clone_is_reported_not_fatal(tmp_path: Path, setup) -> None:
    _, refs, _ = setup
    gone = ds.Source("gone", "git", "t", repo="nobody/nothing", commit="0" * 40)
    summary = ds.build(tmp_path / "empty", [refs], tmp_path / "out", sources=[gone])
    assert summary["kept"] == 0
    assert "gone: no clone of nobody/nothing" in (tmp_path / "out" / "PROVENANCE.md").read_text()
