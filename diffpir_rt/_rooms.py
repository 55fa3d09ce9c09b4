"""The project's rooms and the one direction their imports may point.

Every room is a sub-package of ``diffpir_rt`` (engine/, kernels/, ... are mapped into
the namespace by pyproject.toml). A module may import its own room and any room of a
lower rank; rooms of equal rank are peers and stay out of each other.
tests/test_layering.py walks every import and holds the code to this table.
"""

from __future__ import annotations

#: room -> rank. "errors" and this module are the floor every room may stand on, "params"
#: (how a user parameter is declared) the step above it; "cliargs" (argparse, generated from
#: the declarations) serves the command-line modules of every room from export up, and is
#: no part of the engine's or the runtime's public API; "cli" assembles the sub-commands
#: of every room, so it sits on top.
ROOM_RANKS: dict[str, int] = {
    "errors": 0,
    "_rooms": 0,
    "lazy": 0,
    "params": 1,
    "client": 1,
    "kernels": 1,
    "engine": 2,
    "cliargs": 2,
    "export": 3,
    "runtime": 4,
    "training": 5,
    "benchmarks": 5,
    "service": 5,
    "cli": 6,
    "__main__": 7,
}


def require_qualified_name(module_name: str, room: str) -> None:
    """Refuse to load a room under a second name.

    With the repository root on sys.path (pytest's rootdir insertion, ``python -m`` from
    the root), ``engine/errors.py`` would load both as ``engine.errors`` and as
    ``diffpir_rt.engine.errors``: two copies of every class, so an ``except`` for one
    misses the other. Each room calls this first thing, so the wrong name fails loudly.
    """
    expected = f"diffpir_rt.{room}"
    if module_name != expected:
        raise ImportError(
            f"import {expected} (installed with `pip install -e .`), not {module_name!r}: "
            f"the top-level name would load a second copy of the package"
        )

