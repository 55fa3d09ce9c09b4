"""Each concept is declared once: no code branches on a task's or a method's name outside its registry.

Tasks are objects (engine/tasks/), methods describe themselves (engine/methods/); every other
module asks them. This test reads the source of every room and fails on a comparison or a
membership test against a task or method name (`task == "sr"`, `method in ("diffpir", "dps")`),
and on any method named by a string outside engine/methods/ (a second place that knows one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from diffpir_rt.engine import TASKS, method_names

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("engine", "kernels", "export", "runtime", "training", "benchmarks", "service", "diffpir_rt")
#: The registries, where names are declared.
REGISTRIES = (ROOT / "engine" / "tasks", ROOT / "engine" / "methods")
#: The product's own name coincides with the default method's: as a string it names the program
#: (the CLI's prog, the Serve app and its namespace), never the method; such literals are not
#: flagged, but a comparison against it still is.
PRODUCT_NAME = "diffpir"


def sources() -> list[Path]:
    files = []
    for room in ROOMS:
        for path in sorted((ROOT / room).rglob("*.py")):
            if not any(registry in path.parents for registry in REGISTRIES):
                files.append(path)
    return files


def _names(node: ast.AST) -> list[str]:
    """String constants a comparison operand holds (itself, or the items of a literal tuple/list/set)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [v for item in node.elts for v in _names(item)]
    return []


def branches_on_names(path: Path, root: Path = ROOT) -> list[str]:
    tasks, methods = set(TASKS), set(method_names())
    where = path.relative_to(root)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hit = sorted(set(_names(operand)) & (tasks | methods))
                if hit:
                    found.append(f"{where}:{node.lineno}: compares with {hit}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in methods and node.value != PRODUCT_NAME:
                found.append(f"{where}:{node.lineno}: names method {node.value!r}")
    return found


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_branch_on_a_task_or_method_name(path: Path) -> None:
    found = branches_on_names(path)
    assert not found, "declare it on the task or the method instead:\n" + "\n".join(found)


def test_the_check_catches_a_ladder(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text('def f(task, method):\n    if task == "sr":\n        return 4\n    return method in ("ddrm", "ddnm")\n')
    found = branches_on_names(probe, tmp_path)
    assert len(found) == 4, found  # the comparison with "sr", the membership test, and "ddrm"/"ddnm" named
    assert any("compares with ['sr']" in line for line in found) and any("['ddnm', 'ddrm']" in line for line in found)
