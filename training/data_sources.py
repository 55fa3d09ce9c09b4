"""Extra training images for the bundled prior: rebuild a folder of public natural photos.

BSDS432 alone is a small training set. This module gathers public natural-image collections
with stated terms into one folder of RGB PNGs (short side >= 128, long side <= 512), so
`diffpir train --data` can take it next to BSDS432, and writes where every image came from.

    python -m diffpir_rt.training.data_sources --mirrors DIR --references DIR ... --out runs/data/extra

Sources (`SOURCES`) are git repositories read from local clones under --mirrors (named
`owner+name/repo` as fetched, or `owner/name`, or `name`) at pinned commits, and the photos
scikit-image ships in its wheel. Nothing is downloaded: a missing clone or package is skipped
and reported.

Every kept image passed the exclusion check against the images the project evaluates on
and trains on already (--references: CBSD68, McMaster, Kodak24, Set5, Set14, ... and
BSDS432): the same file bytes, the same decoded pixels, the same file name, or the same
picture after resizing, re-encoding, rotation, mirroring or a central crop (cosine similarity
of 32x32 grey thumbnails of central crops >= `DUPLICATE_SIMILARITY`). The same test removes near-duplicates
within the collected images (one repository keeps re-encoded versions of a wallpaper).
Greyscale photos and images too small for a 128 crop are left out.

The project's own reference run took, besides shared/data's CBSD68, McMaster, set3c and
BSDS432, the test sets of two public repositories, unpacked with `git archive`:
cszn/FFDNet at e787f46d (testsets/: Kodak24, CBSD68, BSD68, Set12, RNI15, RNI6) and
jiny2001/dcscn-super-resolution at d382bc30 (data/: set5, set14, bsd100, bsd200). About 20
minutes on two busy cores.

Outputs in --out: the PNGs, manifest.csv (one row per image: source, origin, blob or file
hash, size, output sha256) and PROVENANCE.md (sources, terms, counts, the exclusion check and
the closest reference match seen). `--manifest FILE` rebuilds exactly the images a manifest
lists.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from diffpir_rt.errors import DiffPIRError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Short side kept at least this (the training crops are up to 128 px); long side at most this.
MIN_SIDE = 128
MAX_SIDE = 512
#: Thumbnail cosine similarity at or above which two images count as the same picture.
DUPLICATE_SIMILARITY = 0.95
#: Mean absolute channel difference (0..255) below which a photo counts as greyscale.
GREY_LEVEL = 2.0
THUMB = 32
#: Central crops (fraction of each side) compared: one image is a centred crop of another when
#: some pair of these matches (crop ratios from 0.4 to 1 within about 10 %).
CROPS = (1.0, 0.85, 0.7, 0.55, 0.4)


@dataclass(frozen=True)
class Source:
    """One collection of photos.

    Attributes:
        name: short name (file-name prefix of its images).
        kind: "git" (files of one commit), "git-history" (every image blob reachable from the
            clone's refs, distinct blobs only), or "skimage" (the photos scikit-image bundles).
        repo: owner/name of a public GitHub repository (git kinds).
        commit: the pinned commit ("git"), or the commit whose history is walked ("git-history":
            every ref of the clone is walked too; --manifest pins the exact blobs).
        include: regular expression a path must match; exclude: one it must not match.
        files: the scikit-image data files ("skimage").
        terms: the collection's licence or terms, in a line.
    """

    name: str
    kind: str
    terms: str
    repo: str = ""
    commit: str = ""
    include: str = r".*"
    exclude: str = r"^$"
    files: tuple[str, ...] = ()
    notes: str = ""


SOURCES: tuple[Source, ...] = (
    Source(
        "imagenet_sample", "git",
        "ImageNet images (Flickr and other web photos); ImageNet terms of access: non-commercial research and "
        "educational use only, the copyright stays with each photo's owner",
        repo="EliSchwartz/imagenet-sample-images", commit="bc69043e2862758a1906c6a24a792bb28c6bb2ff",
        include=r"\.JPEG$",
        notes="one photo of each of the 1000 ImageNet-1k classes (the project evaluates on no ImageNet image)",
    ),
    Source(
        "elementary", "git-history",
        "per photo in the repository's debian/copyright: Unsplash photos (CC0 before 2017-06-08, the Unsplash "
        "License after), Pexels License, and CC BY-SA 4.0 for the project's own; all allow use and modification",
        repo="elementary/wallpapers", commit="f28b86144ba01d788ac61ad198ca16fa9477913f",
        # artwork, renders, gradients and graphics, not photographs, and colour-graded copies of
        # one photo (looked at one by one)
        exclude=r"(?i)(odin|low poly|mesh gradient|reborn|urban dream\.png|early_access|\.svg$|artcast|bokeh glow|relax|"
                r"somewhere far away|star river|luna-prerelease|viktor forgacs 0[23])",
        notes="desktop wallpapers of elementary OS, every version in the repository's history",
    ),
    Source(
        "skimage", "skimage",
        "scikit-image data (BSD-3 package); astronaut and rocket: public domain (NASA, SpaceX), chelsea and "
        "coffee: CC0 by their photographers",
        files=("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"),
    ),
)


# ----------------------------------------------------------------------------- reading


@dataclass
class Candidate:
    source: Source
    origin: str  # path in the repository or package
    blob: str  # git blob id, or sha256 of the file
    data: bytes = field(repr=False)


def find_clone(mirrors: Path, repo: str) -> Optional[Path]:
    """A local clone of owner/name under `mirrors`: owner+name/repo (bare), owner/name or name."""
    owner, name = repo.split("/")
    for path in (mirrors / f"{owner}+{name}" / "repo", mirrors / owner / name, mirrors / name):
        if path.exists():
            return path
    return None


def _git(clone: Path, *args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(clone), *args], capture_output=True)
    if done.returncode != 0:
        raise DiffPIRError(f"git {' '.join(args[:2])} in {clone}: {done.stderr.decode(errors='replace').strip()[:200]}")
    return done.stdout


def _tree(clone: Path, commit: str) -> list[tuple[str, str]]:
    """(blob id, path) of every file of a commit."""
    out = []
    for line in _git(clone, "ls-tree", "-r", "-z", commit).split(b"\0"):
        if line:
            meta, path = line.split(b"\t", 1)
            kind, blob = meta.split()[1:3]
            if kind == b"blob":
                out.append((blob.decode(), path.decode()))
    return out


def _has_blob(clone: Path, blob: str) -> bool:
    return subprocess.run(["git", "-C", str(clone), "cat-file", "-e", blob], capture_output=True).returncode == 0


def read_source(source: Source, mirrors: Path, skipped: list[str]) -> Iterator[Candidate]:
    """The source's image files, in a fixed order; files the clone lacks are skipped."""
    if source.kind == "skimage":
        try:
            import skimage
        except ImportError:
            skipped.append(f"{source.name}: scikit-image is not installed")
            return
        folder = Path(skimage.__file__).parent / "data"
        for name in source.files:
            path = folder / name
            if path.is_file():
                data = path.read_bytes()
                yield Candidate(source, f"skimage {skimage.__version__}: data/{name}", hashlib.sha256(data).hexdigest(), data)
            else:
                skipped.append(f"{source.name}: data/{name} is not in this scikit-image")
        return
    clone = find_clone(mirrors, source.repo)
    if clone is None:
        skipped.append(f"{source.name}: no clone of {source.repo} under {mirrors}")
        return
    if source.kind == "git":
        commits = [source.commit]
    else:
        refs = _git(clone, "rev-list", "--all").decode().split()
        commits = [source.commit, *(c for c in refs if c != source.commit)]
    seen: dict[str, str] = {}
    for commit in commits:
        for blob, path in _tree(clone, commit):
            if (path.lower().endswith(IMAGE_SUFFIXES) and re.search(source.include, path)
                    and not re.search(source.exclude, path) and blob not in seen):  # fmt: skip
                seen[blob] = path
    for blob, path in sorted(seen.items(), key=lambda item: (item[1], item[0])):
        if not _has_blob(clone, blob):  # snapshots can lack their largest files
            skipped.append(f"{source.name}: {path} ({blob[:10]}) is not in the clone")
            continue
        yield Candidate(source, path, blob, _git(clone, "cat-file", "blob", blob))


# ----------------------------------------------------------------------------- images


def decode(data: bytes) -> Optional[np.ndarray]:
    """(H, W, 3) uint8 RGB, or None for a greyscale or unreadable image.

    Photos over 2 MAX_SIDE on a side come out reduced to between 2 and 4 MAX_SIDE (JPEG's DCT
    scaling, else a box reduction): they end at MAX_SIDE anyway, and a full decode of a
    20-megapixel wallpaper costs seconds and hundreds of MB for nothing.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("L", "LA", "1", "I", "I;16", "F"):
                return None
            im.draft("RGB", (2 * MAX_SIDE, 2 * MAX_SIDE))  # JPEG only; a no-op for other formats
            im = im.convert("RGB")
            factor = max(im.size) // (2 * MAX_SIDE)
            if factor > 1:
                im = im.reduce(factor)
            rgb = np.asarray(im)
    except Exception:  # not an image PIL reads: leave it out
        return None
    a = rgb.astype(np.int16)
    if np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean() < GREY_LEVEL:
        return None
    return rgb


def fit(rgb: np.ndarray) -> Optional[np.ndarray]:
    """Scaled down (Lanczos) to a long side of MAX_SIDE if larger; None if the short side ends below MIN_SIDE."""
    from PIL import Image

    height, width = rgb.shape[:2]
    scale = min(1.0, MAX_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if min(size) < MIN_SIDE:
        return None
    if scale < 1.0:
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return rgb


def thumbnails(rgb: np.ndarray) -> np.ndarray:
    """(16 len(CROPS), THUMB*THUMB) unit vectors: grey 32x32 thumbnails of the image's central
    crops (`CROPS` of each side, then the same fractions of its central square, which another
    aspect ratio of the same picture shares), each in the 8 rotations and mirrorings (rows 8 i:
    crop i as it is), each zero-mean (exposure and contrast do not matter)."""
    from PIL import Image

    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) if rgb.ndim == 3 else rgb.astype(np.float64)
    height, width = grey.shape
    side = min(height, width)
    boxes = [(height * f, width * f) for f in CROPS] + [(side * f, side * f) for f in CROPS]
    out = []
    for box_height, box_width in boxes:
        top, left = round((height - box_height) / 2), round((width - box_width) / 2)
        part = grey[top : height - top, left : width - left]
        small = np.asarray(Image.fromarray(part.astype(np.float32)).resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float64)
        for k in range(4):
            for flipped in (small, small[:, ::-1]):
                v = np.rot90(flipped, k).ravel()
                v = v - v.mean()
                out.append(v / (np.linalg.norm(v) + 1e-12))
    return np.array(out)


@dataclass
class Reference:
    """The images a candidate must not be: file and pixel hashes, names, thumbnails."""

    names: list[str] = field(default_factory=list)  # "set/file" per image
    file_hashes: dict[str, str] = field(default_factory=dict)
    pixel_hashes: dict[str, str] = field(default_factory=dict)
    stems: dict[str, str] = field(default_factory=dict)
    thumbs: list[np.ndarray] = field(default_factory=list)  # (16 len(CROPS), D) per image

    def add(self, label: str, data: bytes, stem: str) -> None:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im.convert("RGB"))
        self.names.append(label)
        self.file_hashes.setdefault(hashlib.sha256(data).hexdigest(), label)
        self.pixel_hashes.setdefault(hashlib.sha256(pixels.tobytes()).hexdigest(), label)
        self.stems.setdefault(stem.lower(), label)
        self.thumbs.append(thumbnails(pixels))

    def matrix(self) -> np.ndarray:
        """(2 len(CROPS) N, D): each reference's central crops as they are."""
        return plain(self.thumbs)


def plain(thumbs: Sequence[np.ndarray]) -> np.ndarray:
    """The unrotated thumbnail of each crop of each image, stacked."""
    return np.concatenate([t[::8] for t in thumbs]) if thumbs else np.zeros((0, THUMB * THUMB))


def load_references(folders: Sequence[Path]) -> tuple[Reference, dict[str, int]]:
    reference, counts = Reference(), {}
    for folder in folders:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DiffPIRError(f"--references {folder}: no images")
        counts[str(folder)] = len(files)
        for path in files:
            reference.add(f"{folder.name}/{path.relative_to(folder)}", path.read_bytes(), path.stem)
    return reference, counts


def closest(thumbs: np.ndarray, matrix: np.ndarray, labels: Sequence[str]) -> tuple[float, str]:
    """(highest similarity of any of a candidate's thumbnails to any row, that row's label)."""
    if len(matrix) == 0:
        return -1.0, ""
    sims = thumbs @ matrix.T  # (thumbnails, rows)
    flat = int(np.argmax(sims))
    return float(sims.flat[flat]), labels[flat % sims.shape[1]]


# ----------------------------------------------------------------------------- build


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


@dataclass
class _BuildState:
    """The references, and what the build keeps, drops and notes as it screens candidates in order."""

    out: Path
    reference: Reference
    ref_matrix: np.ndarray
    ref_labels: list[str]
    rows: list[dict[str, object]] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    nearest: dict[str, tuple[float, str, str]] = field(default_factory=dict)
    kept_thumbs: list[np.ndarray] = field(default_factory=list)
    kept_labels: list[str] = field(default_factory=list)

    def drop(self, reason: str, label: str) -> None:
        """Count a left-out candidate under its reason (PROVENANCE.md lists them)."""
        self.dropped.setdefault(reason, []).append(label)


def _wanted_blobs(manifest: Optional[Path]) -> Optional[set[tuple[str, str]]]:
    """The (source, blob) pairs a --manifest lists, so a rebuild keeps exactly those; None: no manifest."""
    if manifest is None:
        return None
    with open(manifest, newline="") as f:
        return {(row["source"], row["blob"]) for row in csv.DictReader(f)}


def _decode_unless_reference(c: Candidate, stem: str, reference: Reference) -> tuple[Optional[np.ndarray], str]:
    """(the decoded RGB, "") or (None, why it is left out): same file, name or pixels as a reference, or greyscale."""
    if hashlib.sha256(c.data).hexdigest() in reference.file_hashes:
        return None, "same file as a reference image"
    if stem.lower() in reference.stems:
        return None, f"same name as reference {reference.stems[stem.lower()]}"
    rgb = decode(c.data)
    if rgb is None:
        return None, "greyscale or unreadable"
    if hashlib.sha256(rgb.tobytes()).hexdigest() in reference.pixel_hashes:  # (large photos: reduced pixels)
        return None, "same pixels as a reference image"
    return rgb, ""


def _keep(
    state: _BuildState, source: Source, c: Candidate, stem: str, fitted: np.ndarray, thumbs: np.ndarray, label: str, similarity: float, match: str
) -> None:
    """Write a kept image as PNG and add its manifest row; its thumbnails join the near-duplicate check."""
    from PIL import Image

    name = f"{source.name}_{_safe(stem)}_{c.blob[:8]}.png"
    buffer = io.BytesIO()
    Image.fromarray(fitted).save(buffer, format="PNG", optimize=False)
    (state.out / name).write_bytes(buffer.getvalue())
    state.kept_thumbs.append(thumbs)
    state.kept_labels.append(label)
    state.rows.append({"file": name, "source": source.name, "repo": source.repo or "scikit-image", "commit": source.commit,
                       "origin": c.origin, "blob": c.blob, "width": fitted.shape[1], "height": fitted.shape[0],
                       "closest_reference_similarity": f"{similarity:.3f}", "closest_reference": match,
                       "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()})  # fmt: skip


def _consider(state: _BuildState, source: Source, c: Candidate) -> None:
    """Screen one candidate against the references and the kept images; keep it if it passes every check."""
    label = f"{source.name}:{c.origin}"
    stem = Path(c.origin).stem
    rgb, reason = _decode_unless_reference(c, stem, state.reference)
    if rgb is None:
        state.drop(reason, label)
        return
    thumbs = thumbnails(rgb)
    similarity, match = closest(thumbs, state.ref_matrix, state.ref_labels)
    if similarity >= DUPLICATE_SIMILARITY:
        state.drop("same picture as a reference image", label)
        state.skipped.append(f"{label}: similarity {similarity:.3f} to {match}")
        return
    best = state.nearest.get(source.name)
    if best is None or similarity > best[0]:
        state.nearest[source.name] = (similarity, label, match)
    fitted = fit(rgb)
    if fitted is None:
        state.drop(f"short side below {MIN_SIDE} px", label)
        return
    twin, twin_label = closest(thumbs, plain(state.kept_thumbs), [x for x in state.kept_labels for _ in range(2 * len(CROPS))])
    if twin >= DUPLICATE_SIMILARITY:
        state.drop("near-duplicate of a kept image", label)
        state.skipped.append(f"{label}: similarity {twin:.3f} to kept {twin_label}")
        return
    _keep(state, source, c, stem, fitted, thumbs, label, similarity, match)


def _write_manifest(out: Path, rows: list[dict[str, object]]) -> None:
    """manifest.csv: one row per kept image (a header only when none was kept)."""
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build(
    mirrors: Path, references: Sequence[Path], out: Path, manifest: Optional[Path] = None, sources: Sequence[Source] = SOURCES
) -> dict[str, object]:
    """Write the images, manifest.csv and PROVENANCE.md into `out`; returns the counts."""
    reference, ref_counts = load_references(references)
    ref_matrix = reference.matrix()
    ref_labels = [label for label in reference.names for _ in range(2 * len(CROPS))]
    state = _BuildState(out, reference, ref_matrix, ref_labels)
    wanted = _wanted_blobs(manifest)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    for source in sources:
        for c in read_source(source, mirrors, state.skipped):
            if wanted is not None and (source.name, c.blob) not in wanted:
                continue
            _consider(state, source, c)
    rows = state.rows
    _write_manifest(out, rows)
    summary = {"kept": len(rows), "per_source": {s.name: sum(r["source"] == s.name for r in rows) for s in sources},
               "dropped": {k: len(v) for k, v in state.dropped.items()}, "references": ref_counts}  # fmt: skip
    (out / "PROVENANCE.md").write_text(_provenance(sources, summary, state.dropped, state.skipped, state.nearest, len(reference.names)))
    return summary


def _provenance(sources: Sequence[Source], summary: dict, dropped: dict, skipped: list, nearest: dict, n_refs: int) -> str:
    lines = [
        "# Extra training images: provenance",
        "",
        f"{summary['kept']} RGB PNGs, short side >= {MIN_SIDE} px, long side <= {MAX_SIDE} px (larger photos scaled down "
        "with Lanczos). Rebuilt by `python -m diffpir_rt.training.data_sources` (training/data_sources.py); "
        "`--manifest manifest.csv` rebuilds exactly these images. Not for redistribution: each source keeps its terms.",
        "",
        "| source | images | repository / package | pinned at | terms |",
        "|---|---:|---|---|---|",
    ]
    for s in sources:
        where = s.repo or "scikit-image wheel (skimage/data)"
        pin = s.commit[:12] + (" (+ every blob in the history)" if s.kind == "git-history" else "") if s.commit else "installed version"
        lines.append(f"| {s.name} | {summary['per_source'][s.name]} | {where} | {pin} | {s.terms} |")
    lines += ["", "Notes:"] + [f"- {s.name}: {s.notes}" for s in sources if s.notes]
    lines += [
        "",
        "## Exclusion check",
        "",
        f"Against {n_refs} reference images (the sets the project evaluates on, and BSDS432 it trains on already):",
        "",
    ]
    lines += [f"- {folder}: {count}" for folder, count in summary["references"].items()]
    lines += [
        "",
        "A candidate is left out if it has the same file bytes, the same decoded pixels or the same file name as a "
        f"reference, or if a 32x32 grey zero-mean thumbnail of one of its central crops ({', '.join(f'{c:g}' for c in CROPS)} "
        f"of each side, and the same of its central square; 8 rotations and mirrorings) has cosine similarity >= "
        f"{DUPLICATE_SIMILARITY} with one of a reference's (resized, re-encoded, rotated, mirrored, centre-cropped or "
        "re-framed copies). The same test against the images kept so far removes near-duplicates.",
        "",
        "| reason | candidates left out |",
        "|---|---:|",
    ]
    lines += [f"| {reason} | {len(labels)} |" for reason, labels in sorted(dropped.items())]
    lines += ["", "Closest reference seen per source (highest thumbnail similarity among the kept images):", ""]
    lines += [f"- {name}: {sim:.3f} ({label} ~ {match})" for name, (sim, label, match) in nearest.items()]
    lines += ["", "## Left out, one by one", ""]
    for reason, labels in sorted(dropped.items()):
        lines += [f"- {reason}: " + ", ".join(labels)]
    if skipped:
        lines += ["", "## Notes from the run", ""] + [f"- {s}" for s in skipped]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m diffpir_rt.training.data_sources", description=__doc__.split("\n\n")[0])
    p.add_argument("--mirrors", type=Path, required=True, help="folder holding clones of the source repositories")
    p.add_argument("--references", type=Path, nargs="+", required=True,
                   help="folders of images that must not be in the output (test sets, current training set)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/data/extra"), help="output folder (default: runs/data/extra)")
    p.add_argument("--manifest", type=Path, default=None, help="rebuild exactly the images of this manifest.csv")
    args = p.parse_args(argv)
    try:
        summary = build(args.mirrors, args.references, args.out, args.manifest)
    except DiffPIRError as e:
        print(f"data_sources: {e}", file=sys.stderr)
        return 2
    print(f"wrote {summary['kept']} images to {args.out} ({summary['per_source']}); left out: {summary['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
