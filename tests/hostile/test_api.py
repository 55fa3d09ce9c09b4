"""The Python API under hostile arguments: every bad argument raises DiffPIRError (one line,
short), never another exception, a hang or a silently wrong image.

Entry points: sample, generate, the operators, load_unet / load_state_dict_file,
load_kernel, read_image / read_mask, read_npy, write_image / write_npy, resolve_device,
Restorer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from diffpir_rt.engine import DiffPIRConfig, Deblur, Denoise, Inpaint, METHODS, SuperResolution, generate, sample
from diffpir_rt.errors import DiffPIRError

from . import makers
from .harness import MAX_MESSAGE, run

CONFIG = DiffPIRConfig(lam=7.0, zeta=0.3, sigma_n=0.05, steps=3)
DDIM = METHODS["ddim"][0](steps=3)
Y = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def zeros(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


def _returning(value: Callable[[torch.Tensor], Any]) -> Callable:
    return lambda x, t: value(x)


EPS_MODELS: dict[str, Callable] = {
    "None": _returning(lambda x: None),
    "a float": _returning(lambda x: 0.5),
    "a list": _returning(lambda x: [0.0] * 3),
    "a numpy array": _returning(lambda x: np.zeros(tuple(x.shape), np.float32)),
    "NaN": _returning(lambda x: torch.full_like(x, float("nan"))),
    "Inf": _returning(lambda x: torch.full_like(x, float("inf"))),
    "NaN in one pixel": _returning(lambda x: torch.zeros_like(x).index_fill_(3, torch.tensor([0]), float("nan"))),
    "wrong shape": _returning(lambda x: torch.zeros(1, 3, 4, 4)),
    "one channel": _returning(lambda x: torch.zeros_like(x[:, :1])),
    "int64": _returning(lambda x: torch.zeros_like(x, dtype=torch.int64)),
    "bool": _returning(lambda x: torch.zeros_like(x, dtype=torch.bool)),
    "complex": _returning(lambda x: torch.zeros_like(x, dtype=torch.complex64)),
    "on the meta device": _returning(lambda x: torch.zeros_like(x, device="meta")),
    "a tuple": _returning(lambda x: (torch.zeros_like(x),)),
}


def _api(fn: Callable[[], Any], tmp_path: Path) -> tuple[Any, BaseException | None]:
    """Run one API call: a DiffPIRError (one line, short) or a result; anything else fails."""
    box: dict[str, Any] = {}

    def call() -> int:
        try:
            box["result"] = fn()
        except DiffPIRError as e:
            box["error"] = e
        return 0

    outcome = run(call, [tmp_path])
    assert outcome.escaped is None, outcome.escaped
    assert not outcome.new and not outcome.changed, (outcome.new, outcome.changed)
    error = box.get("error")
    if error is not None:
        text = str(error)
        assert "\n" not in text and text.isprintable(), repr(text)
        assert len(text) <= MAX_MESSAGE + 80, text  # + a path
        assert not outcome.warnings, outcome.warnings  # nothing printed before the error
    return box.get("result"), error


@pytest.mark.parametrize("kind", list(EPS_MODELS))
@pytest.mark.parametrize("entry", ["sample (denoise)", "sample (deblur)", "sample (inpaint)", "generate"])
def test_eps_model_returning_garbage(tmp_path: Path, entry: str, kind: str) -> None:
    model = EPS_MODELS[kind]
    if entry == "generate":
        fn = lambda: generate(model, (1, 3, 16, 16), DDIM, seed=0)  # noqa: E731
    else:
        operator = {"sample (denoise)": Denoise(), "sample (deblur)": Deblur(np.ones((3, 3)) / 9),
                    "sample (inpaint)": Inpaint(np.ones((16, 16)))}[entry]  # fmt: skip
        fn = lambda: sample(model, operator, Y, CONFIG, seed=0)  # noqa: E731
    result, error = _api(fn, tmp_path)
    assert error is not None, f"a model returning {kind} gave a result back"
    assert str(error).startswith("eps_model"), str(error)


ARGUMENTS: dict[str, tuple[Callable[[], Any], str]] = {
    # operators
    "Deblur(None)": (lambda: Deblur(None), "kernel"),
    "Deblur('gaussian')": (lambda: Deblur("gaussian"), "kernel"),
    "Deblur(complex numpy)": (lambda: Deblur(np.ones((3, 3), complex) / 9), "complex"),
    "Deblur(complex torch)": (lambda: Deblur(torch.ones(3, 3, dtype=torch.complex64) / 9), "complex"),
    "Deblur(object array)": (lambda: Deblur(np.array([[None, 1]])), "kernel"),
    "Deblur(string array)": (lambda: Deblur(np.array([["a"]])), "kernel"),
    "Deblur(ragged list)": (lambda: Deblur([[1.0], [1.0, 2.0]]), "kernel"),
    "Deblur(dict)": (lambda: Deblur({"k": 1}), "kernel"),
    "Deblur(empty)": (lambda: Deblur(np.zeros((0, 0))), "kernel"),
    "Deblur(NaN)": (lambda: Deblur(np.full((3, 3), np.nan)), "NaN"),
    "Deblur(zero sum)": (lambda: Deblur(np.zeros((3, 3))), "positive sum"),
    "Deblur(4-D)": (lambda: Deblur(np.ones((1, 1, 3, 3))), "kernel"),
    "Deblur(meta tensor)": (lambda: Deblur(torch.ones(3, 3, device="meta")), "device"),
    "Inpaint(None)": (lambda: Inpaint(None), "mask"),
    "Inpaint('mask.png')": (lambda: Inpaint("mask.png"), "mask"),
    "Inpaint(complex)": (lambda: Inpaint(np.ones((16, 16), complex)), "complex"),
    "Inpaint(values 2)": (lambda: Inpaint(np.full((16, 16), 2.0)), "values in [0, 1]"),
    "Inpaint(NaN)": (lambda: Inpaint(np.full((16, 16), np.nan)), "NaN"),
    "SuperResolution(4.0)": (lambda: SuperResolution(4.0), "scale"),
    "SuperResolution('4')": (lambda: SuperResolution("4"), "scale"),
    "SuperResolution(True)": (lambda: SuperResolution(True), "scale"),
    "SuperResolution(5)": (lambda: SuperResolution(5), "scale"),
    "SuperResolution(2, complex kernel)": (lambda: SuperResolution(2, np.ones((3, 3), complex)), "complex"),
    # sample's own arguments
    "operator None": (lambda: sample(zeros, None, Y, CONFIG, seed=0), "operator"),
    "operator a string": (lambda: sample(zeros, "deblur", Y, CONFIG, seed=0), "operator"),
    "operator a class": (lambda: sample(zeros, Denoise, Y, CONFIG, seed=0), "pass an instance"),
    "operator an int": (lambda: sample(zeros, 3, Y, CONFIG, seed=0), "operator"),
    "eps_model None": (lambda: sample(None, Denoise(), Y, CONFIG, seed=0), "eps_model"),
    "eps_model a string": (lambda: sample("unet", Denoise(), Y, CONFIG, seed=0), "eps_model"),
    "seed a string": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed="3"), "seed"),
    "seed a float": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=3.0), "seed"),
    "seed numpy float": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=np.float64(3)), "seed"),
    "seed True": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=True), "seed"),
    "seed -1": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=-1), "seed"),
    "seed 2^64": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=2**64), "18446744073709551616"),
    "seed 2^200": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=2**200), "seed"),
    "seed list too short": (lambda: sample(zeros, Denoise(), Y.repeat(2, 1, 1, 1), CONFIG, seed=[1]), "one seed per sample"),
    "seed a string with x_T and noise": (
        lambda: sample(zeros, Denoise(), Y, CONFIG, seed="x", x_T=torch.zeros(1, 3, 16, 16), noise=[torch.zeros(1, 3, 16, 16)] * 2),
        "seed"),
    "callback a string": (lambda: sample(zeros, Denoise(), Y, CONFIG, seed=0, callback="print"), "callback"),
    "config None": (lambda: sample(zeros, Denoise(), Y, None, seed=0), "config"),
    "config a dict": (lambda: sample(zeros, Denoise(), Y, {"steps": 3}, seed=0), "config"),
    "y None": (lambda: sample(zeros, Denoise(), None, CONFIG, seed=0), "y"),
    "y numpy": (lambda: sample(zeros, Denoise(), Y.numpy(), CONFIG, seed=0), "y"),
    "y int": (lambda: sample(zeros, Denoise(), Y.to(torch.int64), CONFIG, seed=0), "floating"),
    "y complex": (lambda: sample(zeros, Denoise(), Y.to(torch.complex64), CONFIG, seed=0), "floating"),
    "y NaN": (lambda: sample(zeros, Denoise(), torch.full_like(Y, float("nan")), CONFIG, seed=0), "NaN"),
    "y batch 0": (lambda: sample(zeros, Denoise(), Y[:0], CONFIG, seed=0), "empty"),
    "y 0 high": (lambda: sample(zeros, Denoise(), Y[:, :, :0], CONFIG, seed=0), "empty"),
    "y 5-D": (lambda: sample(zeros, Denoise(), Y[None], CONFIG, seed=0), "shape"),
    "y meta": (lambda: sample(zeros, Denoise(), Y.to("meta"), CONFIG, seed=0), "device"),
    "y mismatching the kernel": (lambda: sample(zeros, Deblur(np.ones((32, 32)) / 1024), Y, CONFIG, seed=0), "larger than"),
    "x_T NaN": (lambda: sample(zeros, Denoise(), Y, CONFIG, x_T=torch.full_like(Y, float("nan"))), "x_T"),
    "x_T wrong shape": (lambda: sample(zeros, Denoise(), Y, CONFIG, x_T=torch.zeros(1, 3, 8, 8)), "x_T"),
    "noise a string": (lambda: sample(zeros, Denoise(), Y, CONFIG, noise="abc"), "noise"),
    "noise too few": (lambda: sample(zeros, Denoise(), Y, CONFIG, noise=[torch.zeros_like(Y)]), "noise"),
    # generate's
    "generate shape None": (lambda: generate(zeros, None, DDIM, seed=0), "shape"),
    "generate shape a string": (lambda: generate(zeros, "1,3,16,16", DDIM, seed=0), "shape"),
    "generate shape with 0": (lambda: generate(zeros, (1, 3, 0, 16), DDIM, seed=0), "shape"),
    "generate shape with floats": (lambda: generate(zeros, (1, 3, 16.0, 16), DDIM, seed=0), "shape"),
    "generate huge shape": (lambda: generate(zeros, (1, 3, 10**6, 10**6), DDIM, seed=0), "at most"),
    "generate device meta": (lambda: generate(zeros, (1, 3, 16, 16), DDIM, seed=0, device="meta"), "meta"),
    "generate device mps": (lambda: generate(zeros, (1, 3, 16, 16), DDIM, seed=0, device="mps"), "mps"),
    "generate device bogus": (lambda: generate(zeros, (1, 3, 16, 16), DDIM, seed=0, device="bogus"), "not a device name"),
    "generate seed a float": (lambda: generate(zeros, (1, 3, 16, 16), DDIM, seed=1.5), "seed"),
    "generate with a restoring config": (lambda: generate(zeros, (1, 3, 16, 16), CONFIG, seed=0), "use sample()"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ARGUMENTS))
def test_bad_argument(tmp_path: Path, case: str) -> None:
    fn, expect = ARGUMENTS[case]
    result, error = _api(fn, tmp_path)
    assert error is not None, f"{case}: accepted, returned {type(result).__name__}"
    assert expect.lower() in str(error).lower(), str(error)


VALID: dict[str, Callable[[], Any]] = {
    "Deblur(uint8 kernel)": lambda: sample(zeros, Deblur(np.ones((3, 3), np.uint8)), Y, CONFIG, seed=0),
    "Deblur(bool kernel)": lambda: sample(zeros, Deblur(np.ones((3, 3), bool)), Y, CONFIG, seed=0),
    "Deblur(list kernel)": lambda: sample(zeros, Deblur([[0.25, 0.25], [0.25, 0.25]]), Y, CONFIG, seed=0),
    "Inpaint(bool mask)": lambda: sample(zeros, Inpaint(np.ones((16, 16), bool)), Y, CONFIG, seed=0),
    "y 1x1": lambda: sample(zeros, Denoise(), Y[:, :, :1, :1], CONFIG, seed=0),
    "y 1x40": lambda: sample(zeros, Denoise(), torch.rand(1, 3, 1, 40), CONFIG, seed=0),
    "y float64": lambda: sample(zeros, Denoise(), Y.double(), CONFIG, seed=0),
    "y unbatched": lambda: sample(zeros, Denoise(), Y[0], CONFIG, seed=0),
    "seed numpy int": lambda: sample(zeros, Denoise(), Y, CONFIG, seed=np.int64(3)),
    "seed 2^64 - 1": lambda: sample(zeros, Denoise(), Y, CONFIG, seed=2**64 - 1),
    "eps float64": lambda: sample(lambda x, t: torch.zeros_like(x, dtype=torch.float64), Denoise(), Y, CONFIG, seed=0),
    "generate 1x1": lambda: generate(zeros, (1, 3, 1, 1), DDIM, seed=0),
    "generate device cpu:0": lambda: generate(zeros, (1, 3, 4, 4), DDIM, seed=0, device="cpu:0"),
}


@pytest.mark.parametrize("case", list(VALID))
def test_valid_odd_argument(tmp_path: Path, case: str) -> None:
    result, error = _api(VALID[case], tmp_path)
    assert error is None, str(error)
    assert isinstance(result, torch.Tensor) and torch.isfinite(result).all()
    assert 0 <= float(result.min()) and float(result.max()) <= 1


# ----------------------------------------------------------------------------- loaders


def test_a_complex_kernel_is_refused_by_the_api_as_by_the_cli(tmp_path: Path) -> None:
    from diffpir_rt.engine.degrade import load_kernel

    np.save(tmp_path / "k.npy", np.ones((3, 3), complex) / 9)
    _, error = _api(lambda: load_kernel(tmp_path / "k.npy"), tmp_path)
    assert error is not None and "complex" in str(error)
    _, error = _api(lambda: Deblur(np.load(tmp_path / "k.npy")), tmp_path)
    assert error is not None and "complex" in str(error)


LOADERS: dict[str, Callable[[Path], Any]] = {}


def _loader(name: str):
    def register(fn):
        LOADERS[name] = fn
        return fn

    return register


@_loader("read_image")
def _read_image(p: Path) -> Any:
    from diffpir_rt.engine.imageio import read_image

    return read_image(p)


@_loader("read_mask")
def _read_mask(p: Path) -> Any:
    from diffpir_rt.engine.imageio import read_mask

    return read_mask(p)


@_loader("read_npy")
def _read_npy(p: Path) -> Any:
    from diffpir_rt.engine.paths import read_npy

    return read_npy(p, "input")


@_loader("load_kernel")
def _load_kernel(p: Path) -> Any:
    from diffpir_rt.engine.degrade import load_kernel

    return load_kernel(p)


@_loader("load_state_dict_file")
def _load_state(p: Path) -> Any:
    from diffpir_rt.engine import load_state_dict_file

    return load_state_dict_file(p)


@_loader("load_unet")
def _load_unet(p: Path) -> Any:
    from diffpir_rt.engine import load_unet

    return load_unet(p, "tiny")


FILES: dict[str, Callable[[Path], Path]] = {
    "missing": lambda d: d / "missing.png",
    "folder": lambda d: (d / "dir.png").mkdir() or d / "dir.png",
    "fifo": lambda d: os.mkfifo(d / "f.png") or d / "f.png",
    "/dev/null": lambda d: Path("/dev/null"),
    "empty": lambda d: makers.write(d / "e.png", b""),
    "random bytes": lambda d: makers.write(d / "r.png", os.urandom(999)),
    "long name": lambda d: d / ("x" * 300 + ".png"),
    "NUL in name": lambda d: d / "a\0b.png",
    "an int": lambda d: 42,  # type: ignore[return-value]
    "None": lambda d: None,  # type: ignore[return-value]
    "PNG bomb": lambda d: makers.write(d / "b.png", makers.png_declaring(100000, 100000)),
    "npy pickle": lambda d: makers.write(d / "p.npy", makers.npy_object_pickle(d / "PWNED")),
}


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("kind", list(FILES))
def test_loader(tmp_path: Path, loader: str, kind: str) -> None:
    path = FILES[kind](tmp_path)
    result, error = _api(lambda: LOADERS[loader](path), tmp_path)
    assert error is not None, f"{loader}({kind}) returned {type(result).__name__}"
    assert not (tmp_path / "PWNED").exists()


_IMAGE = torch.zeros(3, 4, 4)
#: case -> (set-up: folder -> the path to write, the call, expected message)
WRITES: dict[str, tuple[Callable[[Path], Path], Callable[[Path], Any], str]] = {
    "write_image NaN": (lambda d: d / "o.png", lambda p: _write_image(p, torch.full((3, 4, 4), float("nan"))), "the image to write"),
    "write_image a list": (lambda d: d / "o.png", lambda p: _write_image(p, [[0.0]]), "expected a torch.Tensor"),
    "write_image 0x0": (lambda d: d / "o.png", lambda p: _write_image(p, torch.zeros(3, 0, 0)), "image shape"),
    "write_image .bmp": (lambda d: d / "o.bmp", lambda p: _write_image(p, _IMAGE), "unsupported suffix"),
    "write_image into /sys": (lambda d: Path("/sys/o.png"), lambda p: _write_image(p, _IMAGE), "cannot write"),
    "write_image under a file": (lambda d: makers.write(d / "f", b"x") / "o.png", lambda p: _write_image(p, _IMAGE), "is a file, not a folder"),
    "write_image onto a folder": (lambda d: (d / "o.png").mkdir() or d / "o.png", lambda p: _write_image(p, _IMAGE), "is a directory"),
    "write_image long name": (lambda d: d / ("o" * 300 + ".png"), lambda p: _write_image(p, _IMAGE), "too long"),
    "write_image NUL": (lambda d: d / "a\0.png", lambda p: _write_image(p, _IMAGE), "NUL"),
    "write_npy Inf": (lambda d: d / "o.npy", lambda p: _write_npy(p, np.full((2, 2), np.inf)), "the array to write"),
}  # fmt: skip


def _write_image(path: Path, x: Any) -> Any:
    from diffpir_rt.engine.imageio import write_image

    return write_image(path, x)


def _write_npy(path: Path, x: Any) -> Any:
    from diffpir_rt.engine.imageio import write_npy

    return write_npy(path, x)


@pytest.mark.parametrize("case", list(WRITES))
def test_bad_write(tmp_path: Path, case: str) -> None:
    setup, fn, expect = WRITES[case]
    path = setup(tmp_path)
    result, error = _api(lambda: fn(path), tmp_path)
    assert error is not None, f"{case}: wrote {result}"
    assert expect.lower() in str(error).lower(), str(error)


@pytest.mark.parametrize(
    "device, expect",
    [("meta", "meta"), ("mps", "mps"), ("xla", "xla"), ("hpu", "hpu"), ("bogus", "not a device name"), ("", "not a device name"),
     ("cpu:1", "one CPU device"), ("cuda:99", "cuda"), ("cuda:-1", "cuda"), (None, "device"), (3, "device"), ("privateuseone", "privateuseone")],
)  # fmt: skip
def test_resolve_device(tmp_path: Path, device: Any, expect: str) -> None:
    from diffpir_rt.engine import resolve_device

    _, error = _api(lambda: resolve_device(device), tmp_path)
    assert error is not None and expect in str(error), str(error)


def test_restorer_refuses_a_meta_device(tmp_path: Path) -> None:
    from diffpir_rt.runtime import Restorer

    _, error = _api(lambda: Restorer(device="meta"), tmp_path)
    assert error is not None and "meta" in str(error)
