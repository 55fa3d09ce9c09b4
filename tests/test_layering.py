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


def module_name(path: Path) -> str:
    """The dotted name a source file is imported as (diffpir_rt.<room>.<...>)."""
    for room, folder in ROOM_FOLDERS.items():
        base = ROOT / folder
        if base in path.parents:
            parts = [room, *path.relative_to(base).with_suffix("").parts]
            break
    else:
        parts = [path.stem]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["diffpir_rt", *parts])


#: A string that names a module of the package: importlib.import_module("diffpir_rt.x"), an import
#: path such as "diffpir_rt.service.app:build_app", a lazy table of submodules.
QUALIFIED = re.compile(r"^diffpir_rt(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_.]*)?$")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of the package in a file: absolute and relative
    `import`/`from ... import` statements (function-level included), and every string constant that
    names one of its modules (importlib calls, import paths)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
                names = [f"{module}.{a.name}" for a in node.names] if not node.module else [module]
                out += [(node.lineno, name) for name in names]
            elif node.module:
                # `from diffpir_rt import engine` reaches a room; `from diffpir_rt import __version__` the root.
                names = ([f"{node.module}.{a.name}" if a.name in ROOM_RANKS else node.module for a in node.names]
                         if node.module == "diffpir_rt" else [node.module])  # fmt: skip
                out += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and QUALIFIED.match(node.value):
            out.append((node.lineno, node.value.split(":")[0]))
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
        if room in PUBLIC_API_ONLY and target not in ("errors", "client", "params", "cliargs"):
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


# ----------------------------------------------------------------------------- inside the engine

#: The engine's own order, lowest first: a module may import its own group and the groups before
#: it, never a later one (schedule and operators < tasks < methods < backends < the loop and the
#: graph runtime < the public API). A new engine module joins a group here.
ENGINE_GROUPS: list[tuple[str, ...]] = [
    ("paths", "device", "schedule", "padding", "archs", "unet"),
    ("imageio", "artifacts", "degrade", "denoiser"),
    ("operators", "step", "fast_unet", "prior", "boundary_models", "boundary", "boundary_sr", "boundary_taper", "fused", "estimate"),
    ("tasks",),
    ("methods",),
    ("backends", "model_source", "tiling"),
    ("sampler", "graph_runtime"),
    ("__init__",),
]


def engine_group(module: str) -> int:
    """The group of an engine module (diffpir_rt.engine.X[.Y]) by its top-level part."""
    parts = module.split(".")
    top = parts[2] if len(parts) > 2 else "__init__"
    for rank, group in enumerate(ENGINE_GROUPS):
        if top in group:
            return rank
    raise AssertionError(f"engine module {module!r} is in no group of ENGINE_GROUPS; add it where it belongs")


@pytest.mark.parametrize("path", sorted((ROOT / "engine").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_point_down_its_declared_order(path: Path) -> None:
    own = module_name(path)
    rank = engine_group(own)
    own_top = own.split(".")[2] if own.count(".") >= 2 else "__init__"
    for line, module in imported_modules(path):
        if module != "diffpir_rt.engine" and not module.startswith("diffpir_rt.engine."):
            continue
        if module.count(".") >= 2 and module.split(".")[2] == own_top:
            continue  # within its own module or package
        target = engine_group(module)
        assert target <= rank, (
            f"{path.relative_to(ROOT)}:{line}: {own} (group {rank}: {ENGINE_GROUPS[rank]}) imports {module} "
            f"(group {target}: {ENGINE_GROUPS[target]}): the engine's imports must point to earlier groups"
        )


def test_the_layering_test_sees_relative_imports_and_import_strings(tmp_path: Path) -> None:
    """A back edge written as a relative import or an importlib string is an import all the same."""
    probe = ROOT / "service" / "_layering_probe.py"
    probe.write_text('import importlib\nfrom ..cli import main\nmod = importlib.import_module("diffpir_rt.benchmarks.quality")\n')
    try:
        found = {module for _, module in imported_modules(probe)}
    finally:
        probe.unlink()
    assert found >= {"importlib", "diffpir_rt.cli", "diffpir_rt.benchmarks.quality"}
