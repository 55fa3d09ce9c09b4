"""`--version`, every `--help` and the common user errors answer without importing torch.

Importing torch costs over a second, more than these answers may take; the guard is
structural (which modules a command loads), so it holds on any machine, fast or loaded.
The answers' wall time is measured by `python -m diffpir_rt.benchmarks.startup`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "onnx", "onnxruntime", "ray", "scipy", "tensorrt", "cupy")

#: Runs `diffpir <argv>` for each argv in one fresh interpreter and reports what it loaded.
PROBE = """
import contextlib, io, json, sys
from diffpir_rt.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        codes.append(main(argv))
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
print(json.dumps({"codes": codes, "heavy": heavy}))
"""


def probe(argvs: list[list[str]]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_version_and_every_help_load_no_model_code() -> None:
    from diffpir_rt.cli import COMMANDS

    # `bench` is left out: its parser lists the latency arms, declared by the module that runs them.
    argvs = [["--version"], ["--help"], *([name, "--help"] for name in COMMANDS if name != "bench")]
    argvs += [["restore", "--help", "--method", "ddnm"], ["export", "onnx", "--help"], ["export", "trt", "--help"],
              ["train", "export", "--help"]]  # fmt: skip
    result = probe(argvs)
    assert result["heavy"] == [], f"--help imported {result['heavy']}"
    assert set(result["codes"]) == {0}


def test_argument_and_path_errors_load_no_model_code(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.png")
    out = str(tmp_path / "out.png")
    argvs = [
        ["restor"],  # a mistyped command
        ["restore", "--task", "deblur", "--input", missing, "--output", out, "--kernel", missing],
        ["restore", "--task", "deblur", "--input", missing, "--output", out, "--steps", "-3"],
        ["restore", "--task", "sr", "--scale", "5", "--input", missing, "--output", out],
        ["restore", "--task", "sr", "--input", missing, "--output", out, "--method", "repaint"],
        ["restore", "--task", "inpaint", "--input", missing, "--output", out],
        ["restore", "--task", "deblur", "--input", missing, "--output", out, "--tsk", "x"],
    ]
    result = probe(argvs)
    assert result["heavy"] == [], f"an error answer imported {result['heavy']}"
    assert set(result["codes"]) == {2}
