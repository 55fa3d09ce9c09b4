"""The quality harness on tiny configurations: it runs, writes its files, and its numbers are right.

Test images are crops of tests/data/images/butterfly.png (set3c); the diffusion methods use
the tiny random UNet on 32x32 crops (its attention at 16x16 stays cheap) with a few steps,
on the torch backend (no ONNX export per test session); baselines use 64x64 crops, where
the official 61x61 kernels fit. No timing assertions.
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
from diffpir_rt.benchmarks.protocol import NOISE_SEED_OFFSET, Scenario, TestImage, load_images, make_measurement, task_matrix
from diffpir_rt.cli import main
from diffpir_rt.engine import DiffPIRError, ModelSource, degrade
from diffpir_rt.engine.imageio import read_image, write_image
from diffpir_rt.runtime import Restorer

BUTTERFLY = Path(__file__).parents[1] / "data" / "images" / "butterfly.png"
# Small-image task options: a 9x9 Gaussian, an 8x8 box 4 px from the border.
SMALL = {"kernel_size": 9, "box": 8, "box_margin": 4}
SMALL_ARGS = ["--kernel-size", "9", "--box", "8", "--box-margin", "4"]
# Every family method at a few steps (RePaint: 5 respaced steps, jumps of 2: 21 UNet calls).
FEW_STEPS = ["--method-steps", "diffpir=3", "ddrm=3", "ddnm=3", "dps=3", "dmps=3", "ilvr=3", "repaint=5",
             "--method-param", "ilvr.range_t=1", "--method-param", "repaint.jump_length=2", "--method-preset", "repaint=fast"]  # fmt: skip
TINY = ["--random-weights", "--backend", "torch"]


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
def tiny_restorer() -> Restorer:
    return Restorer(ModelSource("random", arch="tiny"), backend="torch", device="cpu", notify=lambda line: None)


def _datastep_config(restorer: Restorer, spec: Scenario, steps: int = 20):
    return quality.method_config(restorer, spec, "diffpir", {"steps": steps})


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
    """The task registry's measurement with the benchmark's seeds: the same numbers as before the registry."""
    image = images64[1]  # index 1: kernel seed 10, mask seed 1, noise seed offset + run seed + 1
    m = make_measurement(Scenario.named("deblur/gaussian", 0.0), image)
    np.testing.assert_array_equal(m.kernel, degrade.gaussian_kernel(1))
    np.testing.assert_array_equal(m.y, degrade.blur_image(image.pixels, degrade.gaussian_kernel(1)))
    m = make_measurement(Scenario.named("deblur/motion", 0.05), image, seed=3)
    blurred = degrade.blur_image(image.pixels, degrade.motion_kernel(1))
    np.testing.assert_array_equal(m.y, degrade.add_noise(blurred, 0.05, seed=NOISE_SEED_OFFSET + 3 + 1))
    assert m.seed == 4  # the sampler's seed: run seed + index
    m = make_measurement(Scenario.named("sr/x4", 0.0), image)
    np.testing.assert_allclose(m.y, degrade.bicubic_downsample(image.pixels, 4))
    assert m.operator.sf == 4
    m = make_measurement(Scenario.named("inpaint/random", 0.05), image)
    np.testing.assert_array_equal(m.mask, degrade.random_mask(64, 64, seed=1))
    m_box = make_measurement(Scenario.named("inpaint/box", 0.0, box=24, box_margin=8), image)
    np.testing.assert_array_equal(m_box.mask, degrade.box_mask(64, 64, seed=1, box=24, margin=8))
    # noise: seeded by the image alone, identical for every method and run
    again = make_measurement(Scenario.named("inpaint/random", 0.05), image)
    np.testing.assert_array_equal(m.y, again.y)
    assert np.std(m.y - image.pixels * m.mask[..., None]) == pytest.approx(0.05, rel=0.05)


def test_scenarios_are_variants_of_the_registry_tasks() -> None:
    spec = Scenario.named("deblur/motion", 0.05)
    assert (spec.task, spec.variant, spec.label, spec.key) == ("deblur", "motion", "deblur/motion", "deblur/motion@0.05")
    assert Scenario.named("sr/x2", 0.0).scale == 2 and Scenario.named("deblur", 0.0).variant == "gaussian"
    assert Scenario.named("denoise", 0.1).slug == "denoise_sigma0.1"
    with pytest.raises(DiffPIRError, match="expected one of deblur/gaussian"):
        Scenario.named("gaussian_deblur", 0.0)  # the old labels are gone: one vocabulary
    with pytest.raises(DiffPIRError, match="expected one of"):
        Scenario.named("deblur/boxcar", 0.0)


def test_task_matrix_expands_tasks_pins_noise_and_skips_noiseless_denoising(images64: list[TestImage]) -> None:
    tasks = task_matrix(["sr/x4", "denoise"], [0.0, 0.05])
    assert [t.key for t in tasks] == ["sr/x4@0", "sr/x4@0.05", "denoise@0.05"]
    tasks = task_matrix(["deblur", "inpaint/random@0", "inpaint/box"], [0.05])
    assert [t.key for t in tasks] == ["deblur/gaussian@0.05", "deblur/motion@0.05", "inpaint/random@0", "inpaint/box@0.05"]
    assert len(task_matrix(["all"], [0.0, 0.05])) == 11
    with pytest.raises(DiffPIRError, match="larger than the 64x64 image"):
        make_measurement(Scenario.named("deblur/gaussian", 0.0, kernel_size=65), images64[0])
    with pytest.raises(DiffPIRError, match="does not fit"):
        make_measurement(Scenario.named("inpaint/box", 0.0), images64[0])  # the official 128 box on 64x64


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
        ("deblur/gaussian", 0.0, ("wiener", "datastep")),
        ("deblur/motion", 0.0, ("wiener", "unsupervised_wiener", "datastep")),
        ("deblur/motion", 0.05, ("wiener",)),
        ("inpaint/box", 0.0, ("biharmonic",)),
        ("inpaint/random", 0.05, ("biharmonic",)),
        ("denoise", 0.05, ("tv", "nlmeans")),
    ],
)
def test_baselines_beat_the_raw_measurement(
    images64: list[TestImage], tiny_restorer: Restorer, label: str, sigma: float, winners: tuple[str, ...]
) -> None:
    task = Scenario.named(label, sigma, box=24, box_margin=8)
    configs = {"datastep": _datastep_config(tiny_restorer, task)}
    for result in quality.evaluate(None, task, images64, configs, methods=["measurement", *winners]):
        raw = result.metrics["measurement"]
        for name in winners:
            assert result.metrics[name]["psnr"] > raw["psnr"] + 0.5, (result.image, name)
            assert result.metrics[name]["ssim"] > raw["ssim"], (result.image, name)


def test_sr_baselines_are_sane(images64: list[TestImage], tiny_restorer: Restorer) -> None:
    task = Scenario.named("sr/x4", 0.0)
    names, skipped = quality.plan_methods(task, quality.default_methods()[:-1])
    assert names == ["bicubic", "datastep"] and skipped == []  # no same-size measurement to score
    results = quality.evaluate(None, task, images64, {"datastep": _datastep_config(tiny_restorer, task)}, methods=names,
                               keep_outputs=True)  # fmt: skip
    for r in results:
        assert set(r.metrics) == {"bicubic", "datastep"}
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


# ----------------------------------------------------------------------------- methods and configs


def test_methods_that_do_not_apply_are_skipped_with_the_reason() -> None:
    names, skipped = quality.plan_methods(Scenario.named("inpaint/box", 0.05), [*quality.family_names(), "wiener", "biharmonic"])
    assert names == ["biharmonic", "diffpir", "ddrm", "ddnm", "dps", "dmps", "repaint"]
    assert {s["method"] for s in skipped} == {"dpir", "ilvr"}
    assert all(s["key"] == "inpaint/box@0.05" and "does not apply" in s["reason"] for s in skipped)
    names, skipped = quality.plan_methods(Scenario.named("deblur/gaussian", 0.05), quality.family_names())
    assert "repaint" not in names and [s["method"] for s in skipped] == ["repaint"]
    assert "it restores inpaint" in skipped[0]["reason"]


def test_configs_come_from_the_restorer_with_the_measurements_noise() -> None:
    restorer = Restorer(ModelSource(), backend="torch", device="cpu", notify=lambda line: None)  # the bundled prior
    card = restorer.tuned_defaults("diffpir", "inpaint")
    config = quality.method_config(restorer, Scenario.named("inpaint/box", 0.05), "diffpir")
    assert (config.lam, config.zeta, config.steps) == (card["lam"], card["zeta"], card["steps"])  # the model card's tuned values
    assert config.sigma_n == 0.05 != card["sigma_n"]  # sigma_n: always the measurement's
    config = quality.method_config(restorer, Scenario.named("sr/x4", 0.05), "diffpir", {"steps": 7, "lam": 2.0})
    assert (config.steps, config.lam, config.sigma_n) == (7, 2.0, 0.05)
    dps = quality.method_config(restorer, Scenario.named("inpaint/random", 0.0), "dps", {"steps": 200})
    assert (dps.zeta, dps.steps) == (0.5, 200) and quality.model_calls(dps) == 200  # official inpainting scale
    # DPIR's last SR level follows the scenario's scale: max(sf, 255 sigma_n)
    assert quality.method_config(restorer, Scenario.named("sr/x2", 0.0), "dpir").model_sigma2 == 2.0
    assert quality.method_config(restorer, Scenario.named("sr/x4", 0.0), "dpir").model_sigma2 == 4.0
    with pytest.raises(DiffPIRError, match="method ddrm, task denoise@0.05: .*no parameter 'lam'"):
        quality.method_config(restorer, Scenario.named("denoise", 0.05), "ddrm", {"lam": 1.0})


def test_evaluate_is_independent_of_the_other_images(small_set: Path, tiny_restorer: Restorer) -> None:
    images = load_images(small_set)
    task = Scenario.named("deblur/gaussian", 0.05, **SMALL)
    configs = {"diffpir": quality.method_config(tiny_restorer, task, "diffpir", {"steps": 3}),
               "ddrm": quality.method_config(tiny_restorer, task, "ddrm", {"steps": 3})}  # fmt: skip
    configs["datastep"] = configs["diffpir"]
    methods = ["datastep", "diffpir", "ddrm"]
    both = quality.evaluate(tiny_restorer, task, images, configs, methods=methods, seed=5)
    alone = quality.evaluate(tiny_restorer, task, images[1:], configs, methods=methods, seed=5)
    assert alone[0].image == both[1].image == "b.png" and alone[0].seed == both[1].seed == 6
    assert alone[0].metrics == both[1].metrics
    assert both[0].metrics["diffpir"] != both[1].metrics["diffpir"]
    assert set(both[0].seconds) == set(methods) and all(t >= 0 for t in both[0].seconds.values())
    # limit keeps indices: the second image alone is still index 1
    assert load_images(small_set, limit=1)[0].index == 0 and images[1].index == 1


# ----------------------------------------------------------------------------- CLI end to end


def _run_eval(args: list[str]) -> int:
    return main(["eval", "--quiet", *args])


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_eval_cli_writes_json_csv_markdown_and_grids(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    tasks = ["deblur/gaussian", "sr/x4", "inpaint", "denoise"]
    assert _run_eval(["--data", str(small_set), "--tasks", *tasks, *TINY, "--steps", "3", *SMALL_ARGS,
                      "--out", str(out), "--grid-images", "2"]) == 0  # fmt: skip

    record = json.loads((out / "results.json").read_text())
    assert record["schema"] == quality.SCHEMA and record["kind"] == "table"
    assert record["config"]["model"]["kind"] == "random" and record["config"]["versions"]["scikit-image"]
    assert "not computed" in record["config"]["metrics_note"]  # LPIPS/FID absent without weights, and said so
    assert [t["key"] for t in record["tasks"]] == [t.key for t in task_matrix(tasks, [0.0, 0.05])]
    rows = record["per_image"]
    # per image: every applicable method (the baselines and diffpir by default), once
    expected_methods = {"deblur": 5, "sr": 3, "inpaint": 4, "denoise": 5}
    assert len(rows) == 2 * sum(expected_methods[t["task"]] for t in record["tasks"])
    for row in rows:
        assert set(row) >= {"dataset", "image", "index", "task", "scenario", "sigma_n", "method", "psnr", "ssim", "seconds"}
        assert "lpips" not in row
        assert 3 < row["psnr"] < 60 and -1 < row["ssim"] <= 1 and row["seconds"] >= 0

    # the summary is the per-image mean
    entry = next(e for e in record["summary"] if e["scenario"] == "sr/x4" and e["sigma_n"] == 0.05 and e["method"] == "bicubic")
    per_image = [r["psnr"] for r in rows if r["scenario"] == "sr/x4" and r["sigma_n"] == 0.05 and r["method"] == "bicubic"]
    assert entry["n"] == 2 and entry["psnr"] == pytest.approx(np.mean(per_image))

    with open(out / "per_image.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows) and float(table[0]["psnr"]) == pytest.approx(rows[0]["psnr"])
    summary = (out / "summary.md").read_text()
    assert "| method | NFE | deblur/gaussian@0 PSNR (dB) | deblur/gaussian@0 SSIM |" in summary
    assert f"{entry['psnr']:.2f}" in summary and "| diffpir | 2 |" in summary  # 3 quad steps: 2 UNet calls
    assert summary == quality_report.markdown(record)  # derived from the JSON alone

    assert len(record["grids"]) == len(record["tasks"])
    grid = read_image(out / record["grids"][0])  # deblur: gt | y | measurement | wiener | unsup. | datastep | diffpir
    assert grid.shape[1] > 2 * (32 + 4) and grid.shape[2] == 7 * (32 + 4)


def test_method_table_runs_the_family_through_the_restorer(small_set: Path, tmp_path: Path, monkeypatch) -> None:
    """Every family method on the same measurements, each restoration through Restorer.restore;
    the methods that do not apply are skipped with a note; NFE, seconds, path and deviations recorded."""
    calls: list[str] = []
    original = Restorer.restore

    def counting(self, y, operator, config, *args, **kwargs):
        calls.append(config.method)
        return original(self, y, operator, config, *args, **kwargs)

    monkeypatch.setattr(Restorer, "restore", counting)
    out = tmp_path / "family"
    assert _run_eval(["--data", str(small_set), "--max-images", "1", "--tasks", "deblur/gaussian", "inpaint/random@0",
                      "denoise", "--noise", "0.05", *TINY, *SMALL_ARGS, "--methods", "family", "wiener", *FEW_STEPS,
                      "--grid-images", "1", "--note", "a test run", "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    runs = {("deblur/gaussian@0.05"): ["diffpir", "ddrm", "ddnm", "dps", "dmps", "dpir", "ilvr"],
            ("inpaint/random@0"): ["diffpir", "ddrm", "ddnm", "dps", "dmps", "repaint"],
            ("denoise@0.05"): ["diffpir", "ddrm", "ddnm", "dps", "dmps", "dpir", "ilvr"]}  # fmt: skip
    assert calls == [m for methods in runs.values() for m in methods]  # one image: one restore per (task, method)
    assert record["methods"] == ["wiener", *quality.family_names()]
    assert {(s["method"], s["key"]) for s in record["skipped"]} == {
        ("repaint", "deblur/gaussian@0.05"), ("repaint", "denoise@0.05"), ("dpir", "inpaint/random@0"), ("ilvr", "inpaint/random@0")}
    runtime = record["config"]["runtime"]
    assert runtime["path"]["name"] == "torch-fast" and runtime["path"]["backend"] == "torch"
    info = record["method_info"]
    assert info["dpir"]["nfe"] == {"deblur/gaussian@0.05": 8, "denoise@0.05": 1}
    assert info["repaint"]["nfe"] == {"inpaint/random@0": 21} and info["dps"]["nfe"]["denoise@0.05"] == 3
    assert info["dps"]["configs"]["inpaint/random@0"]["zeta"] == 0.5
    assert "dps: steps 3 instead of the default 1000, by --method-steps" in record["deviations"]
    assert "repaint: jump_n_sample 5 instead of the default 10, by --method-preset repaint=fast" in record["deviations"]
    assert record["notes"] == ["a test run"]

    summary = (out / "summary.md").read_text()
    assert "| dpir | 8, 1 |" in summary and "| repaint | 21 |" in summary and "s / image" in summary
    assert "- repaint on deblur/gaussian@0.05: method repaint: does not apply to task deblur" in summary
    assert "- ilvr on inpaint/random@0: method ilvr: does not apply to task inpaint" in summary
    assert "**torch-fast**" in summary and "- a test run" in summary
    rows = [r for r in record["per_image"] if r["scenario"] == "inpaint/random"]
    assert [r["method"] for r in rows] == runs["inpaint/random@0"]  # wiener is a deblur baseline
    grid = read_image(out / "grids" / "tiny32_inpaint-random_sigma0.png")  # gt | y | 6 methods
    assert grid.shape[2] == 8 * (32 + 4)


def test_reference_flag_runs_the_reference_path(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "ref"
    assert _run_eval(["--data", str(small_set), "--max-images", "1", "--tasks", "denoise", "--noise", "0.05",
                      "--random-weights", "--reference", "--methods", "ddrm", "--method-steps", "ddrm=2",
                      "--grid-images", "0", "--out", str(out)]) == 0  # fmt: skip
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["runtime"]["path"]["name"] == "reference"
    assert record["method_info"]["ddrm"]["runs_on"].startswith("reference")


def test_eval_writes_into_the_current_folder_by_default(small_set: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run_eval(["--data", str(small_set), "--tasks", "denoise", "--noise", "0.05", "--methods", "tv",
                      "--grid-images", "0"]) == 0  # fmt: skip
    (run,) = (tmp_path / "eval-results").iterdir()
    assert (run / "results.json").is_file() and (run / "summary.md").is_file()
    record = json.loads((run / "results.json").read_text())
    assert record["config"]["model"] is None and record["method_info"] == {"tv": {"kind": "baseline", "nfe": 0}}


def test_eval_cli_is_reproducible(small_set: Path, tmp_path: Path) -> None:
    args = ["--data", str(small_set), "--tasks", "denoise", "--noise", "0.05", *TINY, "--steps", "3",
            "--methods", "diffpir,nlmeans", "--grid-images", "0", "--seed", "3"]  # fmt: skip
    assert _run_eval([*args, "--out", str(tmp_path / "a")]) == 0
    assert _run_eval([*args, "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / n / "results.json").read_text()) for n in "ab")
    assert _without_seconds(a["per_image"]) == _without_seconds(b["per_image"]) and not (tmp_path / "a" / "grids").exists()


def test_ablation_mode_writes_tables_and_plot(small_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation"
    assert _run_eval(["--ablation", "--data", str(small_set), "--max-images", "1", "--tasks", "deblur/gaussian",
                      "--kernel-size", "9", *TINY, "--ablation-steps", "2,3", "--ablation-lam", "1,7",
                      "--ablation-zeta", "0.3", "--steps", "3", "--out", str(out)]) == 0  # fmt: skip
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
        (["--crop", "48"], "is 32x32, smaller than the 48x48 crop"),
        (["--tasks", "gaussian_deblur"], "task 'gaussian_deblur': expected one of deblur/gaussian"),
        (["--tasks", "denoise@x"], "expected NAME@SIGMA"),
        (["--methods", "wiener,magic"], "unknown method 'magic'"),
        (["--methods", "ddim"], "generates images unconditionally"),
        (["--methods", "ddrm", "--method-steps", "ddrm=0"], "--method-steps ddrm=0: expected an integer in [1, 1000]"),
        (["--methods", "ddrm", "--method-steps", "dps=10"], "dps is not among the methods"),
        (["--methods", "wiener", "--steps", "5"], "--steps: no method of this run takes it"),
        (["--methods", "dps", "--method-param", "dps.lam=2"], "method dps has no parameter 'lam'"),
        (["--methods", "ddrm", "--method-param", "ddrm.sigma_n=0.1"], "sigma_n is always the measurement's"),
        (["--methods", "repaint", "--tasks", "deblur/gaussian"], "no requested method applies"),
        (["--tasks", "deblur/motion"], "kernel: 61x61 is larger than the 32x32 image; use a larger --crop"),
        (["--tasks", "deblur/gaussian", "--kernel-size", "33"], "use a larger --crop, or a smaller --kernel-size"),
        (["--lpips-weights", "{missing}"], "no such file"),
        (["--checkpoint", "{missing}", "--random-weights"], "name one model source"),
        (["--arch", "tiny", "--methods", "diffpir"], "--arch applies to torch weights (--checkpoint)"),
        (["--ablation", "--methods", "wiener"], "sweeps diffpir only"),
        (["--methods", "ddrm", "--tasks", "denoise", "--random-weights", "--method-param", "ddrm.eta=5"], "--method-param ddrm.eta=5: expected a number in [0, 1]"),
    ],
)
def test_eval_cli_user_errors_exit_2_with_one_line(args: list[str], message: str, small_set: Path, tmp_path: Path, capsys) -> None:
    args = [a.replace("{missing}", str(tmp_path / "missing.pt")) for a in args]
    if not {"--methods", "--ablation", "--random-weights"} & set(args):
        args += ["--methods", "classical"]  # no model needed to reach the error
    assert _run_eval(["--data", str(small_set), "--out", str(tmp_path / "o"), *SMALL_ARGS, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()  # nothing written on a user error


def test_tiny_images_are_refused_with_their_size(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "one"
    folder.mkdir()
    write_image(folder / "dot.png", torch.zeros(3, 1, 1))
    assert _run_eval(["--data", str(folder), "--methods", "classical", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dot.png: 1x1; expected at least 8x8" in err, err


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips is installed here")
def test_lpips_without_the_package_says_so(small_set: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "vgg16.pth"
    torch.save({}, weights)
    assert _run_eval(["--data", str(small_set), "--methods", "classical", "--lpips-weights", str(weights)]) == 2
    assert "needs the 'lpips' package" in capsys.readouterr().err


def test_no_model_for_the_diffusion_methods_is_a_clear_error(small_set: Path, capsys, monkeypatch, tmp_path: Path) -> None:
    from diffpir_rt.engine import prior

    monkeypatch.setattr(prior, "CARD_PATH", tmp_path / "absent.json")  # a build without a bundled prior
    assert _run_eval(["--data", str(small_set)]) == 2
    assert "--methods classical" in capsys.readouterr().err


def test_quality_report_refuses_an_older_schema(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"schema": "diffpir-rt.quality/1"}))
    assert quality_report.main([str(path)]) == 2
    assert "quality/2 records only" in capsys.readouterr().err


def test_bench_dispatches_to_the_latency_harness(capsys) -> None:
    try:  # argparse --help of latency.main: an exit, or its code returned
        code = main(["bench", "--help"])
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 0
    assert "Latency and throughput" in capsys.readouterr().out
