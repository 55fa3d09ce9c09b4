"""The runtime's ONNX cache: ONNX Runtime's optimised graph kept beside each export (loaded
without optimising again, made again when stale or damaged), and the int8 export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from diffpir_rt.engine import DiffPIRError, ModelSource, build_unet  # noqa: E402
from diffpir_rt.engine.backends import onnxruntime_backend as ort_backend  # noqa: E402
from diffpir_rt.runtime import Restorer  # noqa: E402
from diffpir_rt.runtime.onnx_cache import cached_onnx  # noqa: E402


@pytest.fixture()
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSource:
    """A tiny checkpoint with its own cache folder (each test damages the cache its own way)."""
    monkeypatch.setenv("DIFFPIR_RT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_unet("tiny").state_dict().items()}, str(path))
    return ModelSource("checkpoint", path, "tiny")


def eps_of(denoiser) -> torch.Tensor:
    x_t = torch.randn(2, 3, 16, 32, generator=torch.Generator().manual_seed(0))
    return denoiser(x_t, torch.tensor([900, 20]))


def record_of(path: Path) -> dict:
    graph = ort_backend.optimized_graph_path(path)
    return json.loads(graph.with_name(graph.name + ".json").read_text())


def test_the_optimised_graph_is_kept_and_loaded_without_optimising(tiny: ModelSource) -> None:
    path = cached_onnx(tiny)
    kept = ort_backend.optimized_graph_path(path)
    assert kept.name == path.name[: -len(".onnx")] + ".ort.onnx" and kept.is_file()
    record = record_of(path)
    assert record["source"]["size"] == path.stat().st_size and record["machine"] == ort_backend.machine_key()
    denoiser = Restorer(tiny, device="cpu", precision="fp32", threads=1).denoiser
    described = denoiser.describe()
    assert described["optimized_graph"] == str(kept) and described["onnx"] == str(path)
    assert described["graph_optimization"] == "ORT_DISABLE_ALL"
    fresh = ort_backend.OnnxRuntimeDenoiser(path, intra_op_threads=1)
    assert fresh.describe()["graph_optimization"] == "ORT_ENABLE_ALL" and fresh.describe()["optimized_graph"] is None
    assert torch.equal(eps_of(denoiser), eps_of(fresh))  # the same graph ORT would have made, bit for bit


def test_a_graph_made_for_another_export_or_machine_is_made_again(tiny: ModelSource) -> None:
    path = cached_onnx(tiny)
    kept = ort_backend.optimized_graph_path(path)
    sidecar = kept.with_name(kept.name + ".json")
    record = record_of(path)
    record["machine"]["onnxruntime"] = "0.0.0"  # another onnxruntime wrote it
    sidecar.write_text(json.dumps(record))
    assert not ort_backend.optimized_graph_matches(path)
    assert ort_backend.open_kept_optimized(path) is None  # never loaded while stale
    cached_onnx(tiny)
    assert ort_backend.optimized_graph_matches(path) and record_of(path)["machine"] == ort_backend.machine_key()
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the export was rewritten
    assert not ort_backend.optimized_graph_matches(path)
    cached_onnx(tiny)
    assert ort_backend.optimized_graph_matches(path)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage-with-matching-record"])
def test_a_damaged_optimised_graph_is_not_used_and_is_made_again(tiny: ModelSource, damage: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from diffpir_rt.engine.artifacts import sha256_file

    path = cached_onnx(tiny)
    kept = ort_backend.optimized_graph_path(path)
    data = bytearray(kept.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # same size: only the hash sees it
        kept.write_bytes(bytes(data))
    elif damage == "truncate":
        kept.write_bytes(bytes(data[: len(data) // 2]))
    else:
        kept.write_bytes(b"\x08\x07 not a graph" + bytes(len(data) - 14))
        record = record_of(path)
        record["optimized"] = {"size": kept.stat().st_size, "sha256": sha256_file(kept)}
        kept.with_name(kept.name + ".json").write_text(json.dumps(record))
    restorer = Restorer(tiny, device="cpu", precision="fp32", threads=1)
    # This run made it again (cached_onnx) or, when only loading could tell, used the export and dropped the copy.
    described = restorer.denoiser.describe()
    if described["optimized_graph"] is None:
        assert described["graph_optimization"] == "ORT_ENABLE_ALL" and not kept.exists()
        assert any("kept for" in r.getMessage() for r in caplog.records)
    assert torch.equal(eps_of(restorer.denoiser), eps_of(ort_backend.OnnxRuntimeDenoiser(path, intra_op_threads=1)))
    again = Restorer(tiny, device="cpu", precision="fp32", threads=1).denoiser.describe()  # the next run loads a good copy
    assert again["optimized_graph"] == str(kept) and again["graph_optimization"] == "ORT_DISABLE_ALL"


def test_a_damaged_export_is_made_again_with_its_optimised_graph(tiny: ModelSource) -> None:
    path = cached_onnx(tiny)
    path.write_bytes(b"\x08\x07 not a graph any more")
    notices: list[str] = []
    restorer = Restorer(tiny, device="cpu", precision="fp32", threads=1, notify=notices.append)
    assert any("unusable" in line for line in notices)
    assert restorer.denoiser.describe()["optimized_graph"] == str(ort_backend.optimized_graph_path(path))
    assert ort_backend.optimized_graph_matches(path)


def test_the_int8_export_is_cached_beside_the_fp32_one(tiny: ModelSource) -> None:
    notices: list[str] = []
    int8 = cached_onnx(tiny, notify=notices.append, precision="int8")
    fp32 = cached_onnx(tiny, precision="fp32")
    assert int8.name.replace("-int8-", "-fp32-") == fp32.name and int8.parent == fp32.parent
    assert any("quantising the model to int8 once" in line for line in notices)
    denoiser = ort_backend.load(ModelSource("onnx", int8), threads=1)
    assert denoiser.precision == "int8" and denoiser.describe()["optimized_graph"] is not None
    assert cached_onnx(tiny, notify=notices.append, precision="int8") == int8 and len(notices) == 2  # made once
    with pytest.raises(DiffPIRError, match="precision 'bf16': the ONNX cache exports fp32, int8"):
        cached_onnx(tiny, precision="bf16")
