"""What loads late: a room's public names, and torch itself.

`diffpir --help`, `diffpir restore --help` and an argument error answer in a fraction of a
second only if reading the declarations (tasks, methods, backends, their parameters) imports
no model code: torch alone takes over a second to import. So each room's package resolves
its public names on first use (`lazy_exports`), and the modules that hold declarations next
to their math (a method's config beside its sampler) reach torch through `lazy_module`,
which imports it at the first attribute actually used.
"""

from __future__ import annotations

import functools
import importlib
import types
from typing import Any, Callable


def lazy_exports(package: str, api: dict[str, str]):
    """A room's public API, each name imported from its module on first use (PEP 562).

    `diffpir --help` and argument errors must answer in a fraction of a second, so reading a
    declaration (a task, a method's fields) must not import torch through every other module
    of the room. `api` maps each module (relative to `package`) to the space-separated names
    it exports; a name equal to the module's own name exports the module itself.
    Returns the package's `__getattr__`, `__dir__` and `__all__`.
    """
    exports = {name: module for module, names in api.items() for name in names.split()}

    def __getattr__(name: str):
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name, package)
        value = module if module_name.rsplit(".", 1)[-1] == name else getattr(module, name)
        setattr(importlib.import_module(package), name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)


class _LazyModule(types.ModuleType):
    """A stand-in for a module that imports it on the first attribute looked up.

    Nothing is cached on the stand-in: every look-up goes to the real module, so a test that
    patches an attribute of torch sees its patch here too.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module(self.__name__), name)


def lazy_module(name: str) -> types.ModuleType:
    """`name` (e.g. "torch", "torch.nn.functional"), imported when first used."""
    return _LazyModule(name)


def no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run under torch.no_grad(), like the `@torch.no_grad()` decorator, but torch is
    imported at the first call rather than when the module defining `fn` is imported."""

    @functools.wraps(fn)
    def without_gradients(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_gradients
