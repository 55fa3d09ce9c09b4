"""The README's Python snippet restores exactly what `diffpir restore` restores on the same inputs,
and records the same run (the CLI is a thin layer over `Restorer.restore`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffpir_rt.cli import main
from diffpir_rt.engine.imageio import read_image

ROOT = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_equals_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    code = readme_snippet()
    code = code.split("\nddrm = ")[0]  # the last line shows another method; the comparison is the CLI's default
    exec(compile(code, "README.md", "exec"), {})
    assert main(["restore", "--task", "deblur", "--input", "examples/butterfly_gaussian_blur.png", "--kernel",
                 "examples/gaussian_k61_idx0.npy", "--output", "out/cli.png", "--quiet"]) == 0  # fmt: skip
    api, cli = read_image(tmp_path / "out" / "restored.png"), read_image(tmp_path / "out" / "cli.png")
    assert float((api - cli).abs().max()) <= 1 / 255
    api_record = json.loads((tmp_path / "out" / "restored.png.json").read_text())
    cli_record = json.loads((tmp_path / "out" / "cli.png.json").read_text())
    for key in ("task", "method", "config", "defaults_source", "boundary", "model_calls", "seed"):
        assert api_record[key] == cli_record[key], key
    assert api_record["boundary"] == "extend"  # a photo's borders, as the CLI restores them
    assert api_record["runtime"]["path"]["name"] == cli_record["runtime"]["path"]["name"]
