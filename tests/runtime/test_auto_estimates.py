"""`--sigma-n auto` and `--kernel auto` on every surface: the command line, the service form, batch
requests (build_request / run_requests) and the Python API (Restorer.restore), with the estimates in
the run record and the refusals each as one line.

The references are independent of the code under test: the noise level a measurement was drawn
with (the estimate must land near it), the kernel's defining properties (N x N, non-negative, sum 1),
and the flags' documented messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpir_rt.cli import main
from diffpir_rt.engine import AUTO, Deblur, Denoise, InputFile, Inpaint, ModelSource, TaskInputs, estimating_method, prepare_blind
from diffpir_rt.engine.imageio import read_image, write_image
from diffpir_rt.runtime import Restorer, RequestOptions, build_request, run_requests
from diffpir_rt.service.forms import Upload, parse_restore_form

from ..conftest import cli_error

IMAGE = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"
SIGMA = 0.05
SIZE = 48


def noisy_crop(tmp_path: Path, sigma: float = SIGMA, name: str = "y.png", seed: int = 0) -> tuple[Path, torch.Tensor]:
    """A crop of the test photo plus N(0, sigma²), written as a 16-bit PNG (quantisation far below sigma)."""
    x = read_image(IMAGE)[:, 60 : 60 + SIZE, 60 : 60 + SIZE].double()
    y = (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).clamp(0, 1)
    return write_image(tmp_path / name, y.float(), bit_depth=16), y.float()


@pytest.fixture(scope="module")
def restorer(tiny_checkpoint: Path) -> Restorer:
    return Restorer(ModelSource("checkpoint", tiny_checkpoint, "tiny"), device="cpu", notify=lambda line: None)


def tiny(tiny_checkpoint: Path) -> list[str]:
    return ["--checkpoint", str(tiny_checkpoint), "--arch", "tiny", "--quiet", "--threads", "1"]


# ----------------------------------------------------------------------------- sigma_n auto


def test_cli_sigma_n_auto_records_an_estimate_near_the_truth(tmp_path: Path, tiny_checkpoint: Path) -> None:
    photo, _ = noisy_crop(tmp_path)
    out = tmp_path / "x.png"
    assert main(["restore", "--task", "denoise", "--sigma-n", "auto", "--steps", "3", "--input", str(photo),
                 "--output", str(out), *tiny(tiny_checkpoint)]) == 0  # fmt: skip
    record = json.loads(out.with_name("x.png.json").read_text())
    estimate = record["sigma_n_estimate"]
    assert abs(estimate - SIGMA) < 0.25 * SIGMA  # clipping at 0/1 and a 48² crop: within 25 %
    assert record["config"]["sigma_n"] == estimate  # the loop ran with it
    assert any("sigma_n auto" in note for note in record["notes"])


def test_api_sigma_n_auto_is_the_mean_of_per_sample_estimates(tmp_path: Path, restorer: Restorer) -> None:
    _, y1 = noisy_crop(tmp_path, 0.02, "a.png", seed=1)
    _, y2 = noisy_crop(tmp_path, 0.08, "b.png", seed=2)
    y = torch.stack([y1, y2])
    config = restorer.config("denoise", steps=3)
    out = restorer.restore(y, Denoise(), config, seed=[0, 1], sigma_n=AUTO)
    assert out.shape == y.shape
    low, high = restorer.last_record["sigma_n_estimate"]
    assert abs(low - 0.02) < 0.3 * 0.02 and abs(high - 0.08) < 0.2 * 0.08
    assert restorer.last_record["config"]["sigma_n"] == pytest.approx((low + high) / 2, abs=1e-6)
    # a number replaces the config's too; a config itself never holds the word
    restorer.restore(y1, Denoise(), config, seed=0, sigma_n=0.03)
    assert restorer.last_record["config"]["sigma_n"] == 0.03 and "sigma_n_estimate" not in restorer.last_record
    with pytest.raises(Exception, match="sigma_n auto: estimated from the measurement"):
        restorer.config("denoise", sigma_n=AUTO)


def test_inpainting_estimates_on_observed_pixels_only(tmp_path: Path, restorer: Restorer) -> None:
    _, y = noisy_crop(tmp_path)
    mask = torch.zeros(SIZE, SIZE)
    mask[:, : SIZE // 2] = 1.0
    y = y * mask  # the missing half is exactly 0: counted, it would read as far less noise
    restorer.restore(y, Inpaint(mask.numpy()), restorer.config("inpaint", steps=3), seed=0, sigma_n=AUTO)
    assert abs(restorer.last_record["sigma_n_estimate"] - SIGMA) < 0.3 * SIGMA


def test_the_form_and_build_request_take_auto(tmp_path: Path, restorer: Restorer) -> None:
    photo, _ = noisy_crop(tmp_path)
    parsed = parse_restore_form([("task", "denoise"), ("sigma_n", "auto"), ("steps", "3"),
                                 ("image", Upload(photo.name, photo.read_bytes()))])  # fmt: skip
    request = parsed.request
    assert isinstance(request.overrides["sigma_n"], float) and request.estimates["sigma_n_estimate"] == request.overrides["sigma_n"]
    ((_, record),) = run_requests(restorer, [request])
    assert record["sigma_n_estimate"] == request.overrides["sigma_n"] == record["config"]["sigma_n"]


# ----------------------------------------------------------------------------- kernel auto


def blurred_photo(tmp_path: Path) -> Path:
    x = read_image(IMAGE)[:, 40 : 40 + SIZE, 40 : 40 + SIZE]
    k = np.zeros((5, 5))
    k[2, :] = 0.2
    y = Deblur(k).forward(x[None].double())[0] + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return write_image(tmp_path / "blurred.png", y.clamp(0, 1).float(), bit_depth=16)


def check_kernel(kernel: np.ndarray, size: int) -> None:
    assert kernel.shape == (size, size) and (kernel >= 0).all()
    assert abs(float(kernel.sum()) - 1.0) < 1e-4


def test_cli_kernel_auto_writes_the_kernel_and_records_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    photo = blurred_photo(tmp_path)
    out, saved = tmp_path / "x.png", tmp_path / "k.npy"
    assert main(["restore", "--task", "deblur", "--kernel", "auto", "--kernel-size", "7", "--steps", "3", "--input", str(photo),
                 "--output", str(out), "--save-kernel", str(saved), *tiny(tiny_checkpoint)]) == 0  # fmt: skip
    record = json.loads(out.with_name("x.png.json").read_text())
    assert record["method"] == estimating_method("kernel", "deblur") and record["kernel"] == AUTO
    kernel = np.load(saved)
    check_kernel(kernel, 7)
    np.testing.assert_allclose(kernel, np.asarray(record["kernel_estimate"]), atol=1e-5)
    assert "sigma_n_estimate" in record  # an unknown blur comes with an unknown noise level


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "sr", "--kernel", "auto"], r"--kernel auto: .* applies to --task deblur, not to --task sr"),
        (["--task", "inpaint", "--kernel", "auto"], r"--kernel auto: .* not to --task inpaint \(it takes no --kernel\)"),
        (["--task", "deblur", "--kernel", "auto", "--kernel-size", "13"], r"--kernel-size 13: larger than a quarter of the 48x48"),
        (["--task", "deblur", "--kernel", "auto", "--kernel-size", "6"], r"--kernel-size 6: expected an odd"),
        (["--task", "deblur", "--kernel", "auto", "--method", "ddrm"], r"runs method \w+ \(it estimates the kernel\), not --method ddrm"),
        (["--task", "denoise", "--save-kernel", "k.npy"], r"--save-kernel: .* give --kernel auto"),
        (["--task", "denoise", "--sigma-n", "automatic"], r"--sigma-n: expected a number in \[0, 1\], or auto"),
    ],
)
def test_refusals_are_one_line(argv: list[str], message: str, tmp_path: Path, tiny_checkpoint: Path,
                               capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    photo = blurred_photo(tmp_path)
    err = cli_error(capsys, ["restore", *argv, "--input", str(photo), "--output", str(tmp_path / "x.png"), *tiny(tiny_checkpoint)])
    import re

    assert re.search(message, err), err


def test_batch_requests_and_the_form_run_blind_alone(tmp_path: Path, restorer: Restorer) -> None:
    """Two blind requests never share a batch (each keeps its own kernel); the form's kernel=auto is a text field."""
    from diffpir_rt.runtime import batch_key

    photo = blurred_photo(tmp_path)
    image = InputFile.from_path(photo, "--input")
    overrides = {"steps": 3, "kernel_size": 7, "sigma_n": 0.01}
    a, b = (build_request("deblur", image, TaskInputs(kernel=AUTO), None, overrides, RequestOptions()) for _ in range(2))
    assert batch_key(restorer, a) != batch_key(restorer, b)
    ((_, record),) = run_requests(restorer, [a])
    check_kernel(np.asarray(record["kernel_estimate"]), 7)
    assert record["boundary"] == "extend"  # a photo: the estimate and the loop model its edges
    parsed = parse_restore_form([("task", "deblur"), ("kernel", "auto"), ("kernel_size", "7"), ("steps", "3"),
                                 ("image", Upload(photo.name, photo.read_bytes()))])  # fmt: skip
    assert parsed.request.method == a.method and parsed.request.sources["kernel"] == AUTO


def test_api_picks_the_estimating_method_for_a_blind_operator(tmp_path: Path, restorer: Restorer) -> None:
    y = read_image(blurred_photo(tmp_path))[None]
    op = prepare_blind(y, 7, "circular", sigma_n=0.01)
    restorer.restore(y, op, seed=0, boundary="circular", sigma_n=0.01)
    assert restorer.last_record["method"] == estimating_method("kernel", "deblur")
    check_kernel(np.asarray(restorer.last_record["kernel_estimate"]), 7)
    np.testing.assert_allclose(op.estimate.kernel()[0].numpy(), np.asarray(restorer.last_record["kernel_estimate"]), atol=1e-5)


# ----------------------------------------------------------------------------- the default


def test_a_photo_without_sigma_n_runs_with_the_estimate(tmp_path: Path, restorer: Restorer) -> None:
    """The default for user images is the estimate (docs/blind.md §1.4); a method without a noise
    model estimates nothing, and where no estimate can be made the model's default applies, said."""
    from diffpir_rt.engine import config_class, restoration_names

    photo, _ = noisy_crop(tmp_path)
    image = InputFile.from_path(photo, "--input")
    request = build_request("denoise", image, TaskInputs(), None, {"steps": 3}, RequestOptions())
    ((_, record),) = run_requests(restorer, [request])
    assert abs(record["sigma_n_estimate"] - SIGMA) < 0.25 * SIGMA and record["config"]["sigma_n"] == record["sigma_n_estimate"]
    # the API without a config takes it the same way
    restorer.restore(read_image(photo), Denoise(), seed=0)
    assert restorer.last_record["sigma_n_estimate"] == record["sigma_n_estimate"]
    noiseless = [m for m in restoration_names("inpaint") if not config_class(m).uses_sigma_n()]
    if noiseless:
        mask = write_image(tmp_path / "m.png", torch.ones(1, SIZE, SIZE))
        other = build_request("inpaint", image, TaskInputs(mask=InputFile.from_path(mask, "--mask")), noiseless[0], {}, RequestOptions())
        assert "sigma_n" not in other.overrides and not other.estimates
    # a mask that leaves too few observed pixels: no estimate, the fixed default, and a note
    sparse = torch.zeros(1, SIZE, SIZE)
    sparse[0, ::8, ::8] = 1.0
    mask = write_image(tmp_path / "sparse.png", sparse)
    fallback = build_request("inpaint", image, TaskInputs(mask=InputFile.from_path(mask, "--mask")), None, {"steps": 3}, RequestOptions())
    assert "sigma_n" not in fallback.overrides and "sigma_n_fallback" in fallback.estimates
    ((_, record),) = run_requests(restorer, [fallback])
    assert record["config"]["sigma_n"] == restorer.default_sigma_n("inpaint")
    assert any(note.startswith("sigma_n: no estimate") for note in record["notes"])
    with pytest.raises(Exception, match="too few observed pixels"):  # asked for explicitly: refused, one line
        build_request("inpaint", image, TaskInputs(mask=InputFile.from_path(mask, "--mask")), None, {"sigma_n": AUTO}, RequestOptions())
