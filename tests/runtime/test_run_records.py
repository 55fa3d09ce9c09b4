"""Run records tell the truth: for every method on every backend this machine has, the path that ran
(with every fallback) is what the summary line says and what the .json records, and a method the
prepared backend cannot serve says that it ran elsewhere."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diffpir_rt.cli import main
from diffpir_rt.engine import BACKENDS, config_class, restoration_names
from diffpir_rt.engine.imageio import read_image, write_image

IMAGE = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"
#: A budget each method's other defaults allow (RePaint's jump, ILVR's range_t).
FEW = {"repaint": 12, "ilvr": 22}


def _cpu_backends() -> list[str]:
    return [name for name, b in BACKENDS.items() if "cpu" in b.devices and b.problem("cpu") is None and
            ("bundled" in b.runs_kinds or b.made_from_torch)]  # fmt: skip


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("method", restoration_names())
def test_summary_line_and_record_name_the_path_that_ran(method: str, backend: str, tmp_path: Path, tiny_checkpoint: Path,
                                                        capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    task = config_class(method).tasks[-1]  # denoise where the method has it, else inpaint
    photo = write_image(tmp_path / "y.png", read_image(IMAGE)[:, 100:132, 100:132])
    extra = []
    if "kernel" in config_class(method).estimates:  # blind deblurring: the kernel comes from the image
        extra = ["--kernel", "auto", "--kernel-size", "5"]
    if task == "inpaint":
        mask = write_image(tmp_path / "m.png", read_image(IMAGE)[:1, :32, :32] > 0.5)
        extra = ["--mask", str(mask)]
    out = tmp_path / "x.png"
    assert main(["restore", "--task", task, "--method", method, "--steps", str(FEW.get(method, 3)), "--sigma-n", "0.05",
                 "--input", str(photo), "--output", str(out), *extra, "--checkpoint", str(tiny_checkpoint),
                 "--arch", "tiny", "--backend", backend, "--dtype", "fp32"]) == 0  # fmt: skip
    printed = capsys.readouterr()
    record = json.loads(out.with_name("x.png.json").read_text())
    path = record["runtime"]["path"]
    summary = re.search(r"UNet calls, [0-9.]+ s, ([a-z-]+)(?:; (\d+) fallback)?", printed.out)
    assert summary, printed.out
    assert summary.group(1) == path["name"] and int(summary.group(2) or 0) == len(path["fallbacks"])
    assert record["runtime"]["backend"]["backend"] == path["backend"]  # the denoiser that ran describes itself
    needs = config_class(method)
    served = BACKENDS[backend]
    cannot = (needs.capabilities.gradients and not served.gives_gradients) or (
        record["config"].get("variance") == "learned" and not served.gives_variance)
    if cannot:  # it ran on torch, and everything says so
        assert path["backend"] == "torch" and path["fallbacks"], path
        assert any("running it on torch" in line for line in printed.err.splitlines())
    else:
        assert path["backend"] == backend and not path["fallbacks"], path
