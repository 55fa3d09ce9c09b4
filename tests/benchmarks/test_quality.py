"""The quality harness on tiny configurations: it runs, writes its files, and its numbers are right.

Test images are crops of tests/data/images/butterfly.png (set3c); DiffPIR uses the
tiny random UNet on 32x32 crops (its attention at 16x16 stays cheap), baselines
use 64x64 crops, where the official 61x61 kernels fit. No timing assertions.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpir_rt.benchmarks import baselines, metrics, quality, quality_report
from diffpir_rt.benchmarks.protocol import TaskSpec, TestImage, load_images, make_measurement, task_matrix
from diffpir_rt.engine import DiffPIRError, UNetDenoiser, build_unet, degrade
from diffpir_rt.cli import main
from diffpir_rt.engine.imageio import read_image, write_image

BUTTERFLY = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"
# Small-image task options: a 9x9 Gaussian, an 8x8 box 4 px from the border.
SMALL = {"kernel_size": 9, "box": 8, "box_margin": 4}


def _crops(folder: Path, size: int) -> Path:
    """Two size x size crops of butterfly.png (different content) written as a tiny test set."""
    x = read_image(BUTTERFLY)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / "a.png", x[:, 100 : 100 + size, 100 : 100 + size])
    write_image(folder / "b.png", x[:, 30 : 30 + size, 150 : 150 + size])
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a few busy cores, two threads make the tiny UNet ~5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _crops(tmp_path_factory.mktemp("data") / "tiny32", 32)


@pytest.fixture(scope="module")
def images64(tmp_path_factory: pytest.TempPathFactory) -> list[TestImage]:
    return load_images(_crops(tmp_path_factory.mktemp("data") / "crops64", 64))


@pytest.fixture(scope="module")
def tiny_model() -> UNetDenoiser:
    torch.manual_seed(0)
    return UNetDenoiser(build_unet("tiny").eval().requires_grad_(False), arch="tiny").eval()


# ----------------------------------------------------------------------------- metrics


def test_psnr_equals_hand_computation_on_uint8(rng: np.random.Generator) -> None:
    gt = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = np.clip(gt.astype(int) + rng.integers(-9, 10, gt.shape), 0, 255).astype(np.uint8)
    mse = np.mean((gt.astype(np.float64) - out.astype(np.float64)) ** 2)
    assert metrics.psnr(gt, out) == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-10)
    inner = (gt[4:-4, 4:-4].astype(np.float64) - out[4:-4, 4:-4]) ** 2  # border shave = sf for SR
    assert metrics.psnr(gt, out, border=4) == pytest.approx(10 * math.log10(255**2 / inner.mean()), abs=1e-10)


def test_ssim_of_identical_images_is_one_and_drops_with_noise(rng: np.random.Generator) -> None:
    gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert metrics.ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)
    noise = rng.normal(0, 1, gt.shape)
    scores = [metrics.ssim(gt, np.clip(gt + level * noise, 0, 255).round().astype(np.uint8)) for level in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_to_uint8_clamps_and_rounds_like_the_official_protocol() -> None:
    x = np.array([-0.2, 0.0, 0.5 / 255, 1.5 / 255, 0.4, 1.0, 1.7]).reshape(1, -1, 1)
    expected = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)  # half to even: 0.5 -> 0, 1.5 -> 2
    np.testing.assert_array_equal(metrics.to_uint8(x), expected)
    assert metrics.to_uint8(x).ravel().tolist() == [0, 0, 0, 2, 102, 255, 255]


def test_metric_inputs_are_checked() -> None:
    a = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(DiffPIRError, match="uint8"):
        metrics.psnr(a, a.astype(np.float32))
    with pytest.raises(DiffPIRError, match="shape"):
        metrics.ssim(a, a[:8])


# ----------------------------------------------------------------------------- protocol and baselines


def test_measurements_follow_the_official_protocol(images64: list[TestImage]) -> None:
    image = images64[1]  # index 1: kernel seed 10, mask seed 1
    m = make_measurement(TaskSpec("gaussian_deblur", 0.0), image)
    np.testing.assert_array_equal(m.kernel, degrade.gaussian_kernel(1))
    np.testing.assert_array_equal(m.y, degrade.blur_image(image.pixels, degrade.gaussian_kernel(1)))
    m = make_measurement(TaskSpec("sr4", 0.0), image)
    np.testing.assert_allclose(m.y, degrade.bicubic_downsample(image.pixels, 4))
    m = make_measurement(TaskSpec("inpaint_random", 0.05), image)
    np.testing.assert_array_equal(m.mask, degrade.random_mask(64, 64, seed=1))
    # noise: seeded by the image alone, identical for every method and run
    again = make_measurement(TaskSpec("inpaint_random", 0.05), image)
    np.testing.assert_array_equal(m.y, again.y)
    assert np.std(m.y - image.pixels * m.mask[..., None]) == pytest.approx(0.05, rel=0.05)


def test_task_matrix_skips_noiseless_denoising_and_checks_sizes(images64: list[TestImage]) -> None:
    tasks = task_matrix(["sr4", "denoise"], [0.0, 0.05])
    assert [t.key for t in tasks] == ["sr4@0", "sr4@0.05", "denoise@0.05"]
    with pytest.raises(DiffPIRError, match="larger than image"):
        make_measurement(TaskSpec("gaussian_deblur", 0.0, kernel_size=65), images64[0])
    with pytest.raises(DiffPIRError, match="does not fit"):
        make_measurement(TaskSpec("inpaint_box", 0.0), images64[0])  # the official 128 box on 64x64
    with pytest.raises(DiffPIRError, match="expected one of"):
        TaskSpec("deblurr", 0.0)


def test_skimage_wiener_uses_the_official_circular_convolution(rng: np.random.Generator) -> None:
    """The claim behind using skimage's wiener as is: its FFT model equals the circular blur."""
    from skimage.restoration import wiener

    x = rng.random((64, 64))
    kernel = degrade.motion_kernel(0)
    y = degrade.blur(x, kernel)  # scipy convolve, mode 'wrap'
    restored = wiener(y, kernel, 1e-9, reg=np.zeros((3, 3)), clip=False)  # no regulariser: inverse filter
    np.testing.assert_allclose(restored, x, atol=1e-6)


@pytest.mark.parametrize(
    "label, sigma, winners",
    [
        ("gaussian_deblur", 0.0, ("wiener", "datastep")),
        ("motion_deblur", 0.0, ("wiener", "unsupervised_wiener", "datastep")),
        ("motion_deblur", 0.05, ("wiener",)),
        ("inpaint_box", 0.0, ("biharmonic",)),
        ("inpaint_random", 0.05, ("biharmonic",)),
        ("denoise", 0.05, ("tv", "nlmeans")),
    ],
)
def test_baselines_beat_the_raw_measurement(images64: list[TestImage], label: str, sigma: float, winners: tuple[str, ...]) -> None:
    task = TaskSpec(label, sigma, box=24, box_margin=8)
    config, _ = quality.hyperparameters(task, steps=20)
    for result in quality.evaluate(None, task, images64, config, methods=["measurement", *winners]):
        raw = result.metrics["measurement"]
        for name in winners:
            assert result.metrics[name]["psnr"] > raw["psnr"] + 0.5, (result.image, name)
            assert result.metrics[name]["ssim"] > raw["ssim"], (result.image, name)


def test_sr_baselines_are_sane(images64: list[TestImage]) -> None:
    task = TaskSpec("sr4", 0.0)
    config, _ = quality.hyperparameters(task, steps=20)
    results = quality.evaluate(None, task, images64, config, keep_outputs=True)
    for r in results:
        assert set(r.metrics) == {"bicubic", "datastep"}  # no same-size measurement to score
        assert 15 < r.metrics["bicubic"]["psnr"] < 40
        # one data step on top of the bicubic init brings it back toward the measurement: no worse
        assert r.metrics["datastep"]["psnr"] > r.metrics["bicubic"]["psnr"] - 0.5
        assert r.outputs["bicubic"].shape == r.gt.shape == (64, 64, 3)


def test_final_rho_is_the_samplers_last_data_step() -> None:
    from diffpir_rt.engine import DiffPIRConfig
    from diffpir_rt.engine.schedule import linear_schedule

    config = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=100)
    sigma_bar = linear_schedule().sigma_bar
    assert config.timesteps()[-2:] == [5, 0]
    assert baselines.final_rho(config) == pytest.approx(7.0 * 0.05**2 / sigma_bar[5] ** 2)


# ----------------------------------------------------------------------------- evaluate with DiffPIR


def test_evaluate_is_independent_of_the_other_images(small_set: Path, tiny_model: UNetDenoiser) -> None:
    images = load_images(small_set)
    task = TaskSpec("gaussian_deblur", 0.05, **SMALL)
    config, _ = quality.hyperparameters(task, steps=3)
    both = quality.evaluate(tiny_model, task, images, config, methods=["diffpir", "datastep"], seed=5)
    alone = quality.evaluate(tiny_model, task, images[1:], config, methods=["diffpir", "datastep"], seed=5)
    assert alone[0].image == both[1].image == "b.png" and alone[0].seed == both[1].seed == 6
    assert alone[0].metrics == both[1].metrics
    assert both[0].metrics["diffpir"] != both[1].metrics["diffpir"]
    # limit keeps indices: the second image alone is still index 1
    assert load_images(small_set, limit=1)[0].index == 0 and images[1].index == 1


def test_hyperparameters_take_overrides_then_task_defaults() -> None:
    task = TaskSpec("inpaint_box", 0.05)
    config, source = quality.hyperparameters(task)
    assert (config.lam, config.zeta, config.steps, config.sigma_n) == (1.0, 1.0, 20, 0.05)  # sigma_n: the measurement's
    assert "docs/algorithm.md §8.1" in source
    config, _ = quality.hyperparameters(task, {"inpaint": {"lam": 3.0, "steps": 50, "source": "card"}}, zeta=0.2)
    assert (config.lam, config.zeta, config.steps) == (3.0, 0.2, 50)


# ----------------------------------------------------------------------------- CLI end to end


def _run_eval(args: list[str]) -> int:
    return main(["eval", "--quiet", *args])


def test_eval_cli_writes_json_csv_markdown_and_grids(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tasks = "gaussian_deblur,sr4,inpaint_box,inpaint_random,denoise"
    assert _run_eval(["--data", str(small_set), "--tasks", tasks, "--random-weights", "--arch", "tiny", "--steps", "3",
                      "--kernel-size", "9", "--box", "8", "--box-margin", "4", "--out", str(out), "--grid-images", "2"]) == 0

    record = json.loads((out / "results.json").read_text())
    assert record["schema"] == quality.SCHEMA and record["kind"] == "table"
    assert record["config"]["model"]["source"] == "random" and record["config"]["versions"]["scikit-image"]
    assert "not computed" in record["config"]["metrics_note"]  # LPIPS/FID absent without weights, and said so
    assert [t["key"] for t in record["tasks"]] == [t.key for t in task_matrix(tasks.split(","), [0.0, 0.05])]
    rows = record["per_image"]
    # per image: every applicable method, once
    expected_methods = {"gaussian_deblur": 5, "sr4": 3, "inpaint_box": 4, "inpaint_random": 4, "denoise": 5}
    assert len(rows) == 2 * sum(expected_methods[t["label"]] for t in record["tasks"])
    for row in rows:
        assert set(row) >= {"dataset", "image", "index", "task", "sigma_n", "method", "psnr", "ssim"}
        assert "lpips" not in row
        assert 3 < row["psnr"] < 60 and -1 < row["ssim"] <= 1

    # the summary is the per-image mean
    entry = next(e for e in record["summary"] if e["task"] == "sr4" and e["sigma_n"] == 0.05 and e["method"] == "bicubic")
    per_image = [r["psnr"] for r in rows if r["task"] == "sr4" and r["sigma_n"] == 0.05 and r["method"] == "bicubic"]
    assert entry["n"] == 2 and entry["psnr"] == pytest.approx(np.mean(per_image))

    with open(out / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[0]["psnr"]) == pytest.approx(rows[0]["psnr"])
    summary = (out / "summary.md").read_text()
    assert "| task | σ_n | n | measurement | wiener |" in summary and f"{entry['psnr']:.2f}" in summary
    assert summary == quality_report.markdown(record)  # derived from the JSON alone

    assert len(record["grids"]) == len(record["tasks"])
    grid = read_image(out / record["grids"][0])
    assert grid.shape[1] > 2 * (32 + 4) and grid.shape[2] == 4 * (32 + 4)  # 2 rows; gt | y | baseline | diffpir


def test_eval_cli_is_reproducible(small_set: Path, tmp_path: Path) -> None:
    args = ["--data", str(small_set), "--tasks", "denoise", "--noise", "0.05", "--random-weights", "--steps", "3",
            "--methods", "diffpir,nlmeans", "--grid-images", "0", "--seed", "3"]
    assert _run_eval([*args, "--out", str(tmp_path / "a")]) == 0
    assert _run_eval([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    assert a["per_image"] == b["per_image"] and not (tmp_path / "a" / "grids").exists()


def test_ablation_mode_writes_tables_and_plot(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    assert _run_eval(["--ablation", "--data", str(small_set), "--max-images", "1", "--tasks", "gaussian_deblur",
                      "--kernel-size", "9", "--random-weights", "--ablation-steps", "2,3", "--ablation-lam", "1,7",
                      "--ablation-zeta", "0.3", "--steps", "3", "--out", str(out)]) == 0
    record = json.loads((out / "ablation.json").read_text())
    sweeps = [(e["sweep"], e["steps"], e["lam"], e["zeta"]) for e in record["ablation"]]
    assert sweeps == [("steps", 2, 7.0, 0.3), ("steps", 3, 7.0, 0.3), ("lam_zeta", 3, 1.0, 0.3), ("lam_zeta", 3, 7.0, 0.3)]
    assert all(e["n"] == 1 and e["psnr"] is not None for e in record["ablation"])
    markdown = (out / "ablation.md").read_text()
    assert "| steps | λ | ζ | n | PSNR (dB) | SSIM |" in markdown and "| λ \\ ζ | 0.3 |" in markdown
    plot = read_image(out / "ablation.png")
    assert plot.shape[1] > 100 and plot.shape[2] > 400


@pytest.mark.parametrize(
    "args, message",
    [
        (["--crop", "48"], "smaller than the crop"),
        (["--tasks", "deblur"], "unknown task 'deblur'"),
        (["--methods", "wiener,magic"], "unknown method 'magic'"),
        (["--tasks", "motion_deblur"], "larger than image"),
        (["--lpips-weights", "{missing}"], "no such file"),
        (["--checkpoint", "{missing}", "--random-weights"], "conflicts with --checkpoint"),
        (["--arch", "tiny"], "--arch applies to --checkpoint or --random-weights"),
        (["--ablation", "--methods", "wiener"], "sweeps DiffPIR only"),
    ],
)
def test_eval_cli_user_errors_exit_2_with_one_line(args: list[str], message: str, small_set: Path, tmp_path: Path, capsys) -> None:
    args = [a.replace("{missing}", str(tmp_path / "missing.pt")) for a in args]
    if not {"--methods", "--ablation", "--random-weights"} & set(args):
        args += ["--methods", "baselines"]  # no model needed to reach the error
    assert _run_eval(["--data", str(small_set), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()  # nothing written on a user error


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed here")
def test_lpips_without_the_package_says_so(small_set: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "vgg16.pth"
    torch.save({}, weights)
    assert _run_eval(["--data", str(small_set), "--methods", "baselines", "--lpips-weights", str(weights)]) == 2
    assert "needs the 'lpips' package" in capsys.readouterr().err


def test_no_model_for_the_diffpir_column_is_a_clear_error(small_set: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    from diffpir_rt.engine import prior

    monkeypatch.setattr(prior, "CARD_PATH", tmp_path / "absent.json")  # a build without a bundled prior
    assert _run_eval(["--data", str(small_set)]) == 2
    assert "--methods baselines" in capsys.readouterr().err


def test_bench_dispatches_to_the_latency_harness(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:  # argparse --help of latency.main
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "Latency and throughput" in capsys.readouterr().out
