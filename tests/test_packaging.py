"""Every package folder of the project is in the built distribution: pyproject.toml lists each one
(a folder left out works in an editable install and is missing from `pip install .`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    folders = config["package-dir"]
    assert listed == set(folders), "packages and package-dir must name the same packages"
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *relative.parts]))
    missing = sorted(found - listed)
    assert not missing, f"add to pyproject.toml's packages and package-dir: {missing}"
