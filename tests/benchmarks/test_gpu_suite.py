"""The GPU suite's pieces on CPU: the kernel micro-benchmark, the summary, and the script itself
(a quick CPU smoke run: every stage guarded, at most 8 files back, partial results summarised)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diffpir_rt.benchmarks import kernel_micro, suite_summary

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
#: The device tool returns at most 8 files, named with letters, digits, '.', '_' and '-'.
MAX_FILES = 8


def test_kernel_micro_on_cpu_times_the_torch_paths(tmp_path) -> None:
    code = kernel_micro.main(["--device", "cpu", "--batches", "1", "--size", "32", "--calls", "1", "--repeats", "1",
                              "--json", str(tmp_path / "k.json"), "--markdown", str(tmp_path / "k.md")])  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert {r["case"] for r in rows} == {"predict_x0_01", "step_mask", "fourier_correction_sf1",
                                        "fourier_correction_sf4", "step_fourier", "ifft2"}  # fmt: skip
    assert all(r["torch_ms_eager"] > 0 and "cupy_ms_eager" not in r for r in rows)
    assert "| step_mask | 1 |" in (tmp_path / "k.md").read_text()


def test_summary_survives_missing_and_partial_stages(tmp_path) -> None:
    stages = tmp_path / "stages.tsv"
    stages.write_text("stage\tstatus\tseconds\tlimit\nenv\tok\t3\t60\nlatency\ttimeout\t300\t300\n")
    (tmp_path / "latency.json").write_text(json.dumps({"meta": {"arch": "ffhq_10m"}, "results": [
        {"backend": "eager-fp32", "task": "deblur", "size": 256, "batch": 1, "steps": 20, "error": "skipped: time budget spent"}]}))  # fmt: skip
    (tmp_path / "pytest.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.kernels.test_cupy_kernels" name="test_a"><failure message="x"/></testcase>'
        '<testcase classname="t" name="b"/><testcase classname="t" name="c"><skipped/></testcase></testsuite></testsuites>'
    )
    assert suite_summary.main(["--stages", str(stages), "--out-dir", str(tmp_path)]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| latency | timeout | 300 | 300 |" in text
    assert "1 passed, 1 failed, 0 errors, 1 skipped (of 3)" in text
    assert "FAILED tests.kernels.test_cupy_kernels::test_a" in text
    assert "0 of 1 configurations measured" in text
    assert json.loads((tmp_path / "summary.json").read_text())["tests"]["failures"] == 1


def test_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SUITE)], capture_output=True).returncode == 0


def test_script_runs_modules_by_their_installed_name() -> None:
    """`python -m benchmarks.X` fails by design (a second copy of the package), and a
    PYTHONPATH shim cannot work from the root, where diffpir_rt/ shadows it."""
    text = SUITE.read_text()
    assert "-m benchmarks." not in text and "PYTHONPATH=" not in text
    assert "-m diffpir_rt.benchmarks.kernel_micro" in text and "-m diffpir_rt.benchmarks.latency" in text


def test_summary_lists_the_measurements_of_the_gpu_tests(tmp_path) -> None:
    stages = tmp_path / "stages.tsv"
    stages.write_text("stage\tstatus\tseconds\tlimit\ntests\tok\t30\t200\n")
    measured = tmp_path / "measurements.jsonl"
    measured.write_text(json.dumps({"name": "psnr_fp16_vs_fp32_db", "value": 51.234, "threshold": 45.0,
                                    "task": "deblur", "provisional": True}) + "\n")  # fmt: skip
    args = ["--stages", str(stages), "--out-dir", str(tmp_path), "--measurements", str(measured)]
    assert suite_summary.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["measurements"] == [json.loads(measured.read_text())]
    assert "| psnr_fp16_vs_fp32_db | 51.23 | 45.0 |" in (tmp_path / "summary.md").read_text()
    # no file: an empty list, not an error
    assert suite_summary.main(args[:4] + ["--measurements", str(tmp_path / "none.jsonl")]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["measurements"] == []


def test_record_measurement_appends_json_lines(tmp_path, monkeypatch, capsys) -> None:
    from tests.gpu_support import MEASUREMENTS_ENV, record_measurement

    monkeypatch.setenv(MEASUREMENTS_ENV, str(tmp_path / "m.jsonl"))
    record_measurement("psnr_bf16_vs_fp32_db", 38.5, task="inpaint", threshold=30.0)
    record_measurement("psnr_fp16_vs_fp32_db", 50.0, task="inpaint", threshold=45.0)
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["psnr_bf16_vs_fp32_db", "psnr_fp16_vs_fp32_db"] and rows[0]["value"] == 38.5
    assert "MEASURED psnr_bf16_vs_fp32_db = 38.500" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils timeout is not on PATH")
def test_the_suite_stops_before_any_stage_when_an_import_fails(tmp_path) -> None:
    """The import check runs with pypng hidden and stops the suite (exit 3) with a summary."""
    env = {**os.environ, "PYTHON": sys.executable, "DIFFPIR_SUITE_DEVICE": "cpu", "DIFFPIR_SUITE_QUICK": "1",
           "DIFFPIR_SUITE_SKIP_INSTALL": "1", "DIFFPIR_RT_KERNEL_DIR": str(tmp_path / "unused"),
           "DIFFPIR_SUITE_IMPORTS": "diffpir_rt.engine.imageio diffpir_rt.kernels.* diffpir_rt.no_such_module"}  # fmt: skip
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SUITE), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "suite.log").read_text()
    assert "imports: ok      diffpir_rt.engine.imageio" in log  # without pypng
    assert "imports: ok      diffpir_rt.kernels._loader" in log  # "pkg.*": every module under it
    assert "imports: FAILED  diffpir_rt.no_such_module: ModuleNotFoundError" in log
    assert "STOPPED: a module of the GPU path does not import" in log
    assert "fatbin:" not in log and "tests: start" not in log
    assert sorted(p.name for p in out.iterdir()) == ["suite.log", "summary.json", "summary.md"]
    stages = json.loads((out / "summary.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["env", "imports", "stopped"] and stages[1]["status"].startswith("failed")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("timeout") is None, reason="coreutils timeout is not on PATH")
def test_quick_cpu_smoke_run_of_the_suite(tmp_path) -> None:
    """~1-2 minutes on two busy cores: the real script, quick settings, CPU, no install."""
    env = {**os.environ, "PYTHON": sys.executable, "DIFFPIR_SUITE_DEVICE": "cpu", "DIFFPIR_SUITE_QUICK": "1",
           "DIFFPIR_SUITE_SKIP_INSTALL": "1", "DIFFPIR_SUITE_ARCHS": "80", "DIFFPIR_SUITE_BUDGET_S": "400",
           "DIFFPIR_RT_KERNEL_DIR": str(tmp_path / "unused")}  # fmt: skip
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(SUITE), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= MAX_FILES and all(re.fullmatch(r"[A-Za-z0-9._-]+", f) for f in files), files
    assert {"suite.log", "summary.md", "summary.json", "latency.json", "latency.md", "pytest.xml"} <= set(files)
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"] if s["stage"] in ("tests", "kernels", "latency")] == ["ok"] * 3
    assert all("error" not in r for r in json.loads((out / "latency.json").read_text())["results"])
