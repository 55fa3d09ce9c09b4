"""benchmarks/unet_latency.py runs end to end on the tiny UNet and writes JSON + markdown.

No timing assertions: it is a benchmark, its numbers depend on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffpir_rt.benchmarks import unet_latency  # noqa: E402


def test_writes_json_and_markdown(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--arch", "tiny", "--size", "16", "--small-arch", "", "--repeats", "5", "--threads", "1", "--gap", "0", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    try:
        assert unet_latency.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # main() sets the process-wide count
    result = json.loads((tmp_path / "unet_latency.json").read_text())
    assert result["threads"] == {"torch_intra_op": 1, "ort_intra_op": 1, "ort_inter_op": 1}
    assert result["environment"]["cpu_model"] and result["environment"]["versions"]["onnxruntime"]
    rows = {row["candidate"]: row for row in result["results"]}
    assert set(rows) == {"torch eager fp32", "onnxruntime fp32"}
    for row in rows.values():
        assert len(row["times_s"]) == 5 and row["min_s"] <= row["median_s"] <= row["p90_s"]
    assert rows["torch eager fp32"]["speedup_vs_torch"] == 1.0
    assert rows["onnxruntime fp32"]["max_abs_diff_vs_torch"] <= 1e-4
    markdown = (tmp_path / "unet_latency.md").read_text()
    assert "| tiny | 16² | onnxruntime fp32 |" in markdown and markdown in capsys.readouterr().out
    with pytest.raises(SystemExit):
        unet_latency.main(["--repeats", "3"])
