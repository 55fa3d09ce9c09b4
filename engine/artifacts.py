"""Provenance of files: content hashes, sidecar JSON records, atomic writes of artifacts.

Every artifact `X` (unet.onnx, unet.plan) has a sidecar `X.json` beside it that
records what it was made from; consumers compare it with what they have and
rebuild or refuse on a mismatch, never trusting a file because it exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from diffpir_rt.errors import DiffPIRError

#: Bumped when a sidecar's layout changes.
SIDECAR_VERSION = 1


def sidecar_path(artifact: str | os.PathLike[str]) -> Path:
    """unet.onnx -> unet.onnx.json (the restore CLI's record naming)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of one file's bytes (weights, exported graphs)."""
    return sha256_files([path])


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One SHA-256 over the bytes of several files, in order (an .onnx and its external data)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def canonical_sha256(record: Any) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys, no spaces)."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tool_versions(*packages: str) -> dict[str, str | None]:
    """Installed versions of the named distributions (None if absent), plus Python's."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a binary artifact atomically: a temp file beside it, then os.replace."""
    from .imageio import _prepare_folder, _write_atomic  # the one atomic writer: folder errors in one line

    path = Path(path)
    _prepare_folder(path)
    _write_atomic(path, data)
    return path


def write_sidecar(artifact: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write `artifact`.json atomically, keys sorted so equal records give equal bytes."""
    from .imageio import write_text

    body = {"sidecar_version": SIDECAR_VERSION, **record}
    return write_text(sidecar_path(artifact), json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_sidecar(artifact: str | os.PathLike[str], what: str = "artifact") -> dict[str, Any]:
    """The sidecar record of `artifact`.

    Raises:
        DiffPIRError: missing, unreadable, or written by another sidecar version.
    """
    path = sidecar_path(artifact)
    if not path.is_file():
        raise DiffPIRError(f"{what} {artifact}: its sidecar {path.name} is missing, so its provenance is unknown")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffPIRError(f"{what} {artifact}: sidecar {path.name} is not readable JSON ({e})") from e
    if not isinstance(record, dict) or record.get("sidecar_version") != SIDECAR_VERSION:
        found = record.get("sidecar_version") if isinstance(record, dict) else None
        raise DiffPIRError(
            f"{what} {artifact}: sidecar {path.name} has version {found!r}; expected {SIDECAR_VERSION}"
        )
    return record
