"""The Restorer: the path it picks and records, its precision policy, defaults that follow the
weights, seeds that make a sample independent of its batch, and the ONNX export cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.engine import Deblur, DiffPIRError, Inpaint, ModelSource, build_unet, bundled_card, sample
from diffpir_rt.engine.prior import bundled_weights_path
from diffpir_rt.runtime import Restorer, RestoreRequest, run_requests


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in build_unet("tiny").state_dict().items()}, str(path))
    return ModelSource("checkpoint", path, "tiny")


def gaussian(size: int, std: float) -> np.ndarray:
    r = np.arange(size) - size // 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * std**2))
    return g / g.sum()


def test_reference_path_is_engine_sample(tiny: ModelSource) -> None:
    restorer = Restorer(tiny, reference=True, device="cpu")
    assert restorer.path.name == "reference" and restorer.path.precision == "fp32"
    op, y = Deblur(gaussian(5, 1.0)), torch.rand(1, 3, 16, 16)
    config = restorer.config("deblur", steps=4)
    expected = sample(tiny.load_torch(), op, y, config, seed=3)
    assert torch.equal(restorer.restore(y, op, config, seed=3, boundary="circular"), expected)
    assert restorer.describe()["path"]["reason"].startswith("--reference")


def test_auto_precision_is_bf16_where_the_cpu_has_it() -> None:
    from diffpir_rt.engine import cpu_native_bf16
    from diffpir_rt.runtime.restorer import check_precision

    assert check_precision("auto", torch.device("cpu")) == ("bf16" if cpu_native_bf16() else "fp32")
    assert check_precision("fp32", torch.device("cpu")) == "fp32"


def test_default_cpu_path_is_within_its_tolerance(tiny: ModelSource) -> None:
    """The fp32 fast path against the fp32 reference (the bf16 one has its own test, tests/runtime/test_bf16.py)."""
    notices: list[str] = []
    fast = Restorer(tiny, device="cpu", precision="fp32", notify=notices.append)
    reference = Restorer(tiny, device="cpu", reference=True)
    assert fast.path.name in ("onnxruntime", "torch-fast")
    op, y = Inpaint((torch.rand(16, 16) > 0.5).double()), torch.rand(2, 3, 16, 16)
    config = fast.config("inpaint", steps=5)
    got, ref = fast.restore(y, op, config, seed=1), reference.restore(y, op, config, seed=1)
    assert float((got - ref).abs().max()) <= 1e-4
    if fast.path.name == "onnxruntime":
        # The export is made once per weights and reused: a second Restorer says nothing.
        assert sum("exporting" in line for line in notices) <= 1
        again: list[str] = []
        Restorer(tiny, device="cpu", precision="fp32", notify=again.append)
        assert not any("exporting" in line for line in again)


def test_fp16_is_refused_on_cpu_and_dtype_on_a_graph(tiny: ModelSource, tmp_path: Path) -> None:
    with pytest.raises(DiffPIRError, match="use --dtype bf16 or fp32 on the CPU"):
        Restorer(tiny, device="cpu", precision="fp16")
    with pytest.raises(DiffPIRError, match="--reference runs fp32"):
        Restorer(tiny, device="cpu", precision="bf16", reference=True)
    bf16 = Restorer(tiny, device="cpu", precision="bf16")
    assert bf16.path.name == "torch-fast" and bf16.path.precision == "bf16"
    with pytest.raises(DiffPIRError, match="--dtype bf16: applies to torch weights"):
        Restorer(ModelSource("onnx", tmp_path / "u.onnx"), device="cpu", precision="bf16")


def test_defaults_follow_the_weights_wherever_they_are_loaded_from() -> None:
    card = bundled_card()
    if card is None:
        pytest.skip("this build ships no bundled prior")
    copy = ModelSource("checkpoint", bundled_weights_path(), card["arch"])
    method = card["defaults_method"]
    for task in ("deblur", "sr", "inpaint", "denoise"):
        tuned = ModelSource().tuned_defaults(method, task)
        assert tuned and copy.tuned_defaults(method, task) == tuned
        assert tuned["source"] == card["task_defaults"][task]["source"]
        assert ModelSource().tuned_defaults("ddrm", task) == {}  # the card was tuned for one method
    official = Restorer(ModelSource("random", arch="tiny"), device="cpu", reference=True)
    assert official.config("deblur").steps == 100  # no card: the official values


def test_config_overrides_and_errors(tiny: ModelSource) -> None:
    restorer = Restorer(tiny, device="cpu", reference=True)
    config = restorer.config("deblur", lam=2.0, zeta=None)
    assert config.lam == 2.0 and config.zeta == restorer.config("deblur").zeta
    with pytest.raises(DiffPIRError, match="--method 'nope'"):
        restorer.config("deblur", "nope")
    with pytest.raises(DiffPIRError, match="method diffpir: has no parameter 'eta'"):
        restorer.config("deblur", eta=0.5)
    ddrm = restorer.config("deblur", "ddrm", sigma_n=0.05)
    assert ddrm.method == "ddrm"
    with pytest.raises(DiffPIRError, match="method ddrm: has no parameter 'lam'"):
        restorer.config("deblur", "ddrm", lam=3.0)


def test_a_sample_does_not_depend_on_its_batch(tiny: ModelSource) -> None:
    restorer = Restorer(tiny, device="cpu", reference=True)
    ys = [torch.rand(3, 16, 16) for _ in range(2)]
    # Kernels of different sizes share a batch under the circular model (an extended domain's size
    # depends on the kernel's, so --boundary extend batches equal sizes: tests/engine/test_boundary.py).
    requests = [RestoreRequest("deblur", y, Deblur(gaussian(k, 1.0 + k / 4)), overrides={"steps": 4}, seed=10 + k,
                               boundary="circular") for k, y in zip((3, 5), ys)]  # fmt: skip
    batched = run_requests(restorer, requests)
    assert batched[0][1]["batch_size"] == 2
    for request, (image, record) in zip(requests, batched):
        ((alone, _),) = run_requests(restorer, [request])
        assert torch.allclose(image, alone, atol=1e-6), record["seed"]


def test_methods_without_variance_on_onnx_fall_back_to_torch(tiny: ModelSource) -> None:
    notices: list[str] = []
    restorer = Restorer(tiny, device="cpu", precision="fp32", notify=notices.append)
    if restorer.path.name != "onnxruntime":
        pytest.skip("ONNX Runtime is not installed")
    config = restorer.config("deblur", "dmps", steps=3, sigma_n=0.05)
    out = restorer.restore(torch.rand(1, 3, 16, 16), Deblur(gaussian(5, 1.0)), config, seed=0)
    assert out.shape == (1, 3, 16, 16)
    assert any("needs the learned variance" in line for line in notices)


def test_a_damaged_onnx_cache_is_exported_again(tiny: ModelSource) -> None:
    pytest.importorskip("onnxruntime")
    from diffpir_rt.runtime.onnx_cache import cached_onnx

    path = cached_onnx(tiny)
    path.write_bytes(b"\x08\x07 not a graph any more")
    notices: list[str] = []
    restorer = Restorer(tiny, device="cpu", precision="fp32", notify=notices.append)
    assert restorer.path.name == "onnxruntime"
    assert any("unusable" in line for line in notices)
    assert restorer.restore(torch.rand(1, 3, 16, 16), Deblur(gaussian(5, 1.0)), restorer.config("deblur", steps=3), seed=0).shape == (1, 3, 16, 16)
