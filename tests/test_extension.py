"""A new method and a new backend are one file each plus one registry line.

tests/toys/toy_method.py (a tenth method with its own parameter `rho`) and
tests/toys/numpy_backend.py (a numpy model file, `--npz`) are registered with one line each,
then run, untouched by any other file, through the command line, the service's request form
and `diffpir eval`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpir_rt.cli import main
from diffpir_rt.engine import BACKENDS, METHODS, ModelSource, register_backend, register_method, timesteps
from diffpir_rt.engine.imageio import read_image, write_image
from diffpir_rt.runtime import Restorer, run_requests
from diffpir_rt.service.forms import Upload, parse_restore_form

from .toys.numpy_backend import BACKEND
from .toys.toy_method import Toy, ToyConfig

IMAGE = Path(__file__).parent / "data" / "images" / "butterfly.png"


@pytest.fixture
def toy_method():
    register_method(ToyConfig, Toy)  # the registry line
    yield "toy"
    METHODS.pop("toy")


@pytest.fixture
def numpy_model(tmp_path: Path):
    register_backend(BACKEND)  # the registry line
    path = tmp_path / "model.npz"
    np.savez(path, scale=np.array([0.1, 0.2, 0.3], np.float32))
    yield path
    BACKENDS.pop("numpy")


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    return write_image(tmp_path / "y.png", read_image(IMAGE)[:, 100:132, 100:132])


@pytest.fixture
def testset(tmp_path: Path) -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    for i, (top, left) in enumerate([(0, 0), (64, 96)]):
        write_image(folder / f"im{i}.png", read_image(IMAGE)[:, top : top + 32, left : left + 32])
    return folder


def _form(photo: Path, **fields: str) -> list:
    return [("image", Upload(photo.name, photo.read_bytes())), *fields.items()]


# ----------------------------------------------------------------------------- a tenth method


def test_a_new_method_runs_through_the_cli(toy_method, photo: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "x.png"
    assert main(["restore", "--task", "denoise", "--method", "toy", "--rho", "0.25", "--steps", "4", "--sigma-n", "0.1",
                 "--input", str(photo), "--output", str(out), "--checkpoint", str(tiny_checkpoint), "--arch", "tiny",
                 "--quiet"]) == 0  # fmt: skip
    record = json.loads(out.with_name("x.png.json").read_text())
    assert record["method"] == "toy" and record["config"]["rho"] == 0.25 and record["config"]["steps"] == 4
    assert record["model_calls"] == len(timesteps(4, "uniform")) - 1  # the toy's own plan


def test_a_new_method_runs_through_the_service_form(toy_method, photo: Path, tiny_checkpoint: Path) -> None:
    parsed = parse_restore_form(_form(photo, task="denoise", method="toy", rho="2", steps="3", seed="1"))
    restorer = Restorer(ModelSource("checkpoint", tiny_checkpoint, "tiny"), device="cpu", notify=lambda line: None)
    ((image, record),) = run_requests(restorer, [parsed.request])
    assert image.shape == (3, 32, 32) and record["method"] == "toy" and record["config"]["rho"] == 2.0
    with pytest.raises(Exception, match="field rho: expected a number > 0"):
        parse_restore_form(_form(photo, task="denoise", method="toy", rho="-1"))


def test_a_new_method_runs_through_eval(toy_method, testset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(testset), "--tasks", "denoise", "--noise", "0.1", "--methods", "toy",
                 "--random-weights", "--steps", "3", "--rho", "0.5", "--grid-images", "0", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    rows = [r for r in record["per_image"] if r["method"] == "toy"]
    assert len(rows) == 2 and all(np.isfinite(r["psnr"]) for r in rows)
    assert record["method_info"]["toy"]["configs"]["denoise@0.1"]["rho"] == 0.5


# ----------------------------------------------------------------------------- a new backend


def test_a_new_backend_runs_through_the_cli(numpy_model: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    assert main(["restore", "--task", "denoise", "--sigma-n", "0.1", "--steps", "4", "--input", str(photo),
                 "--output", str(out), "--npz", str(numpy_model), "--quiet"]) == 0  # fmt: skip
    record = json.loads(out.with_name("x.png.json").read_text())
    assert record["runtime"]["path"]["backend"] == "numpy" and record["runtime"]["backend"]["backend"] == "numpy"
    assert record["runtime"]["model"]["kind"] == "npz"


def test_a_new_backend_runs_through_the_service_form_and_equals_its_reference(numpy_model: Path, photo: Path) -> None:
    from diffpir_rt.engine import sample

    parsed = parse_restore_form(_form(photo, task="denoise", sigma_n="0.1", steps="4", seed="2"))
    restorer = Restorer(ModelSource("npz", numpy_model), device="cpu", notify=lambda line: None)
    ((image, record),) = run_requests(restorer, [parsed.request])
    # the same loop run by engine.sample with the same numpy model: the runtime adds nothing
    model = BACKEND.load(ModelSource("npz", numpy_model))
    reference = sample(model, parsed.request.operator, parsed.request.y[None], parsed.request.config(restorer), seed=[2])
    assert torch.equal(image, reference[0]) and record["runtime"]["path"]["name"] == "numpy"


def test_a_new_backend_runs_through_eval(numpy_model: Path, testset: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    assert main(["eval", "--data", str(testset), "--tasks", "denoise", "--noise", "0.1", "--methods", "diffpir",
                 "--npz", str(numpy_model), "--steps", "3", "--grid-images", "0", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["runtime"]["path"]["backend"] == "numpy"
    assert len([r for r in record["per_image"] if r["method"] == "diffpir"]) == 2


# ----------------------------------------------------------------------------- one vocabulary


def _matrix() -> list[tuple[str, str]]:
    from diffpir_rt.engine import config_class, restoration_names

    return [(m, t) for m in restoration_names() for t in config_class(m).tasks]


#: A budget each method's other defaults allow (RePaint's jump of 10 and ILVR's range_t of 20
#: need a longer chain); "a few steps" otherwise.
FEW = {"repaint": 12, "ilvr": 22}


@pytest.mark.parametrize("method, task", _matrix(), ids=lambda v: v)
def test_every_method_takes_steps_and_sigma_n_everywhere(method: str, task: str, tmp_path: Path, tiny_checkpoint: Path) -> None:
    from diffpir_rt.engine import config_class

    photo = write_image(tmp_path / "y.png", read_image(IMAGE)[:, 100:132, 100:132])
    inputs: dict[str, Path] = {}
    estimated: list[str] = []
    if task in ("deblur",) and "kernel" in config_class(method).estimates:  # blind: the kernel comes from the image
        estimated = ["--kernel", "auto", "--kernel-size", "5"]
    elif task in ("deblur",):
        inputs["kernel"] = tmp_path / "k.npy"
        np.save(inputs["kernel"], np.full((3, 3), 1 / 9, np.float32))
    if task in ("inpaint",):
        inputs["mask"] = write_image(tmp_path / "m.png", (torch.rand(1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.5).float())
    steps = FEW.get(method, 3)
    flags = [x for name, path in inputs.items() for x in (f"--{name}", str(path))] + estimated
    out = tmp_path / "x.png"
    assert main(["restore", "--task", task, "--method", method, "--steps", str(steps), "--sigma-n", "0.05", "--input",
                 str(photo), "--output", str(out), *flags, "--checkpoint", str(tiny_checkpoint), "--arch", "tiny",
                 "--quiet"]) == 0  # fmt: skip
    record = json.loads(out.with_name("x.png.json").read_text())
    cls = config_class(method)
    assert record["config"][cls.budget] == steps
    if cls.uses_sigma_n():
        assert record["config"]["sigma_n"] == 0.05
    else:  # accepted, recorded as not used, and said
        assert record["unused"] == {"sigma_n": 0.05} and any("sigma_n" in note for note in record["notes"])

    fields = [("task", task), ("method", method), ("steps", str(steps)), ("sigma_n", "0.05"),
              ("image", Upload(photo.name, photo.read_bytes()))]  # fmt: skip
    fields += [(name, Upload(path.name, path.read_bytes())) for name, path in inputs.items()]
    fields += [(estimated[i][2:].replace("-", "_"), estimated[i + 1]) for i in range(0, len(estimated), 2)]
    parsed = parse_restore_form(fields)
    restorer = Restorer(ModelSource("checkpoint", tiny_checkpoint, "tiny"), device="cpu", notify=lambda line: None)
    config = parsed.request.config(restorer)
    assert getattr(config, cls.budget) == steps and config.to_dict() == record["config"]
