"""The rooms import in one direction (diffpir_rt/_rooms.py), and everything imports as diffpir_rt.*.

Every import statement of every module is read from the source (function-level imports
included), mapped to the room it reaches, and checked: a module may import its own room
and rooms of lower rank, never a room of higher or equal rank (peers stay apart). The
rooms that sit on top (benchmarks, training, service) use the other rooms' public API:
`from diffpir_rt.engine import X`, not `diffpir_rt.engine.some_module`.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from diffpir_rt._rooms import ROOM_RANKS

ROOT = Path(__file__).resolve().parents[1]
#: Folders mapped into the diffpir_rt namespace (pyproject.toml package-dir), by room.
ROOM_FOLDERS = {"engine": "engine", "kernels": "kernels", "export": "export", "runtime": "runtime",
                "training": "training", "benchmarks": "benchmarks", "service": "service"}  # fmt: skip
#: Rooms that must use the other rooms' public API (their package's top-level names).
PUBLIC_API_ONLY = ("benchmarks", "training", "service")
#: Top-level names of this repository that must never be imported as such.
TOP_LEVEL_NAMES = ("engine", "kernels", "export", "runtime", "training", "benchmarks", "service")


def modules() -> list[tuple[str, Path]]:
    """(room, file) for every Python module of the package."""
    found = []
    for room, folder in ROOM_FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            found.append((room, path))
    for path in sorted((ROOT / "diffpir_rt").glob("*.py")):
        stem = path.stem
        found.append(({"__init__": "__main__"}.get(stem, stem), path))
    return found


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every `import diffpir_rt...` / `from diffpir_rt... import`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from diffpir_rt import engine` reaches a room; `from diffpir_rt import __version__` the root.
            names = ([f"{node.module}.{a.name}" if a.name in ROOM_RANKS else node.module for a in node.names]
                     if node.module == "diffpir_rt" else [node.module])  # fmt: skip
            out += [(node.lineno, name) for name in names]
    return out


def room_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "diffpir_rt" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("room, path", modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_imports_point_down(room: str, path: Path) -> None:
    assert room in ROOM_RANKS, f"{path}: room {room!r} is not in diffpir_rt/_rooms.py"
    for line, module in imported_modules(path):
        assert module.split(".")[0] not in TOP_LEVEL_NAMES, f"{path}:{line} imports {module!r}; use diffpir_rt.{module}"
        target = room_of(module)
        if target is None or target == room:
            continue
        assert target in ROOM_RANKS, f"{path}:{line} imports unknown room {module!r}"
        assert ROOM_RANKS[target] < ROOM_RANKS[room], (
            f"{path}:{line}: room {room!r} (rank {ROOM_RANKS[room]}) imports {module!r} of room {target!r} "
            f"(rank {ROOM_RANKS[target]}): imports must point to lower rooms"
        )
        if room in PUBLIC_API_ONLY and target not in ("errors", "client"):
            assert module == f"diffpir_rt.{target}", f"{path}:{line}: {room} uses the public API: from diffpir_rt.{target} import ..."


def test_tests_and_docs_never_import_top_level_names() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+(" + "|".join(TOP_LEVEL_NAMES) + r")(\.|\s)", re.M)
    offenders = []
    for path in [*ROOT.joinpath("tests").rglob("*.py"), *ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md"]:
        if pattern.search(path.read_text()):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"import diffpir_rt.<room>, not the top-level name: {offenders}"


def test_readme_runs_no_top_level_module() -> None:
    text = (ROOT / "README.md").read_text()
    assert not re.search(r"python -m (" + "|".join(TOP_LEVEL_NAMES) + r")\b", text)


def test_a_room_refuses_its_top_level_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the repository root on sys.path, `import engine` would load a second copy: it must fail."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(ROOT))
    sys.modules.pop("engine", None)
    with pytest.raises(ImportError, match="import diffpir_rt.engine"):
        importlib.import_module("engine")
    sys.modules.pop("engine", None)
