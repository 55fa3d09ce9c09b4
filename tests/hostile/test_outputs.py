"""Hostile output paths x every path a command writes (main output, run record, saved
kernel/mask, export sidecar): each is checked against every input and every other output
before anything is written; on any failure nothing new exists and nothing is overwritten.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from . import makers
from .conftest import Runner, World

# ----------------------------------------------------------------------------- writers

#: slot -> (suffix of the slot, build(world, folder, path) -> (argv, outputs))
Slot = Callable[[World, Path, str], tuple[list[str], list[Path]]]
SLOTS: dict[str, tuple[str, Slot]] = {
    "restore --output": (".png", lambda w, d, o: (
        ["restore", "--task", "denoise", "--input", str(w.clean16), "--output", o, "--quiet", *w.model()], [Path(o)])),
    "degrade --output": (".png", lambda w, d, o: (
        ["degrade", "--task", "denoise", "--input", str(w.clean16), "--output", o], [Path(o)])),
    "generate --output": (".png", lambda w, d, o: (
        ["generate", "--num", "1", "--size", "16", "--output", o, "--quiet", *w.model()], [Path(o)])),
    "export onnx --output": (".onnx", lambda w, d, o: (
        ["export", "onnx", "--checkpoint", str(w.checkpoint), "--arch", "tiny", "--output", o], [Path(o)])),
    "degrade --save-kernel": (".npy", lambda w, d, o: (
        ["degrade", "--task", "deblur", "--kernel", str(w.kernel), "--input", str(w.clean32), "--output", str(d / "y.npy"),
         "--save-kernel", o], [d / "y.npy", Path(o)])),
    "degrade --save-mask": (".png", lambda w, d, o: (
        ["degrade", "--task", "inpaint", "--mask", str(w.mask), "--input", str(w.clean32), "--output", str(d / "y.png"),
         "--save-mask", o], [d / "y.png", Path(o)])),
}  # fmt: skip

OutMaker = Callable[[Path, str], str]


def _existing(d: Path, s: str) -> str:
    makers.write(d / f"old{s}", b"an earlier result")
    return str(d / f"old{s}")


def _readonly(d: Path, s: str) -> str:
    (d / "ro").mkdir()
    (d / "ro").chmod(0o555)
    return str(d / "ro" / f"o{s}")


KINDS: dict[str, tuple[OutMaker, str]] = {
    "trailing slash": (lambda d, s: str(d / f"o{s}") + "/", "names a folder"),
    "existing folder": (lambda d, s: (d / f"o{s}").mkdir() or str(d / f"o{s}"), "is a folder"),
    "parent is a file": (lambda d, s: makers.write(d / "f.txt", b"x") and str(d / "f.txt" / f"o{s}"), "is a file, not a folder"),
    "grandparent is a file": (lambda d, s: makers.write(d / "f.txt", b"x") and str(d / "f.txt" / "sub" / f"o{s}"), "is a file, not a folder"),
    "new nested folders": (lambda d, s: str(d / "new" / "deeper" / f"o{s}"), "ok"),
    "/sys (unwritable)": (lambda d, s: f"/sys/o{s}", "writ"),
    "/proc (no new files)": (lambda d, s: f"/proc/hostile/o{s}", "writ"),
    "read-only folder": (_readonly, "any"),  # refused, or (as root) written
    "/dev/null": (lambda d, s: "/dev/null", "any"),  # no suffix for most slots; a device otherwise
    "/dev/null with suffix": (lambda d, s: os.symlink("/dev/null", d / f"null{s}") or str(d / f"null{s}"), "is a device"),
    "fifo": (lambda d, s: os.mkfifo(d / f"o{s}") or str(d / f"o{s}"), "FIFO"),
    "name too long": (lambda d, s: str(d / ("o" * 300 + s)), "longer than the file system allows"),
    "name 252 bytes": (lambda d, s: str(d / ("o" * (252 - len(s)) + s)), "any"),  # its .json would be too long
    "path too long": (lambda d, s: str(d / "/".join(["p" * 200] * 25)) + s, "longer than the file system allows"),
    "NUL in name": (lambda d, s: str(d / f"a\0b{s}"), "NUL byte"),
    "newline in name": (lambda d, s: str(d / f"a\nb{s}"), "ok"),
    "empty": (lambda d, s: "", "expected a file name"),
    "unsupported suffix": (lambda d, s: str(d / "o.bmp"), "unsupported suffix"),
    "no suffix": (lambda d, s: str(d / "output"), "unsupported suffix"),
    "upper-case suffix": (lambda d, s: str(d / f"o{s.upper()}"), "ok"),
    "existing file": (_existing, "ok"),
    "dangling symlink": (lambda d, s: os.symlink(d / "gone", d / f"o{s}") or str(d / f"o{s}"), "any"),
}


@pytest.mark.parametrize("slot", list(SLOTS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_output_path(cli: Runner, world: World, tmp_path: Path, slot: str, kind: str) -> None:
    suffix, build = SLOTS[slot]
    make, expect = KINDS[kind]
    if slot.startswith("export") and expect in ("ok", "any"):
        pytest.skip("a successful export takes seconds; tests/export covers it")
    argv, outputs = build(world, tmp_path, make(tmp_path, suffix))
    cli(argv, expect=expect, outputs=outputs)


# ----------------------------------------------------------------------------- outputs that are inputs


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def _aliases(target: Path, d: Path) -> dict[str, str]:
    """Spellings of `target` (a file in d): itself, ./-free relative, a/../, //, a symlink, a hard link."""
    (d / "sub").mkdir(exist_ok=True)
    os.symlink(target, d / f"link{target.suffix}")
    os.link(target, d / f"hard{target.suffix}")
    return {
        "same": str(target),
        "dot-dot": str(d / "sub" / ".." / target.name),
        "double slash": str(d) + "//" + target.name,
        "dot": str(d / "." / target.name),
        "symlink": str(d / f"link{target.suffix}"),
        "hard link": str(d / f"hard{target.suffix}"),
    }


def _restore_onto_input(w: World, d: Path, spelling: str) -> list[str]:
    y = _copy(w.clean16, d / "y.png")
    return ["restore", "--task", "denoise", "--input", str(y), "--output", _aliases(y, d)[spelling], "--quiet", *w.model()]


def _degrade_onto_input(w: World, d: Path, spelling: str) -> list[str]:
    x = _copy(w.clean16, d / "x.png")
    return ["degrade", "--task", "denoise", "--input", str(x), "--output", _aliases(x, d)[spelling]]


def _save_kernel_onto_kernel(w: World, d: Path, spelling: str) -> list[str]:
    k = _copy(w.kernel, d / "k.npy")
    return ["degrade", "--task", "deblur", "--kernel", str(k), "--input", str(w.clean32), "--output", str(d / "y.png"),
            "--save-kernel", _aliases(k, d)[spelling]]  # fmt: skip


def _save_mask_onto_mask(w: World, d: Path, spelling: str) -> list[str]:
    m = _copy(w.mask, d / "m.png")
    return ["degrade", "--task", "inpaint", "--mask", str(m), "--input", str(w.clean32), "--output", str(d / "y.png"),
            "--save-mask", _aliases(m, d)[spelling]]  # fmt: skip


def _restore_onto_kernel(w: World, d: Path, spelling: str) -> list[str]:
    k = _copy(w.kernel, d / "k.npy")
    return ["restore", "--task", "deblur", "--input", str(w.clean32), "--kernel", str(k), "--output", _aliases(k, d)[spelling],
            "--quiet", *w.model()]  # fmt: skip


def _restore_onto_mask(w: World, d: Path, spelling: str) -> list[str]:
    m = _copy(w.mask, d / "m.png")
    return ["restore", "--task", "inpaint", "--input", str(w.clean32), "--mask", str(m), "--output", _aliases(m, d)[spelling],
            "--quiet", *w.model()]  # fmt: skip


def _degrade_onto_mask(w: World, d: Path, spelling: str) -> list[str]:
    m = _copy(w.mask, d / "m.png")
    return ["degrade", "--task", "inpaint", "--mask", str(m), "--input", str(w.clean32), "--output", _aliases(m, d)[spelling]]


ONTO_INPUT = {
    "restore --output = --input": _restore_onto_input,
    "degrade --output = --input": _degrade_onto_input,
    "degrade --save-kernel = --kernel": _save_kernel_onto_kernel,
    "degrade --save-mask = --mask": _save_mask_onto_mask,
    "restore --output = --kernel": _restore_onto_kernel,
    "restore --output = --mask": _restore_onto_mask,
    "degrade --output = --mask": _degrade_onto_mask,
}


@pytest.mark.parametrize("case", list(ONTO_INPUT))
@pytest.mark.parametrize("spelling", ["same", "dot-dot", "double slash", "dot", "symlink", "hard link"])
def test_output_is_an_input(cli: Runner, world: World, tmp_path: Path, case: str, spelling: str) -> None:
    argv = ONTO_INPUT[case](world, tmp_path, spelling)
    cli(argv, expect="refusing to overwrite an input")


def test_run_record_never_overwrites_an_input(cli: Runner, world: World, tmp_path: Path) -> None:
    """An input that happens to be called <output>.json (read by its content) is refused as the record."""
    y = _copy(world.clean16, tmp_path / "o.png.json")
    cli(["restore", "--task", "denoise", "--input", str(y), "--output", str(tmp_path / "o.png"), "--quiet", *world.model()],
        expect="the run record")  # fmt: skip


def test_run_record_never_overwrites_a_mask(cli: Runner, world: World, tmp_path: Path) -> None:
    m = _copy(world.mask, tmp_path / "o.png.json")
    cli(["restore", "--task", "inpaint", "--input", str(world.clean32), "--mask", str(m), "--output", str(tmp_path / "o.png"),
         "--quiet", *world.model()], expect="refusing to overwrite an input")  # fmt: skip


def test_run_record_path_is_a_folder(cli: Runner, world: World, tmp_path: Path) -> None:
    (tmp_path / "o.png.json").mkdir()
    cli(["restore", "--task", "denoise", "--input", str(world.clean16), "--output", str(tmp_path / "o.png"), "--quiet",
         *world.model()], expect="the run record")  # fmt: skip


def test_generate_record_is_a_fifo(cli: Runner, world: World, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "g.png.json")
    cli(["generate", "--num", "1", "--size", "16", "--output", str(tmp_path / "g.png"), "--quiet", *world.model()],
        expect="FIFO")  # fmt: skip


def test_export_sidecar_is_a_folder(cli: Runner, world: World, tmp_path: Path) -> None:
    (tmp_path / "u.onnx.json").mkdir()
    cli(["export", "onnx", "--checkpoint", str(world.checkpoint), "--arch", "tiny", "--output", str(tmp_path / "u.onnx")],
        expect="the sidecar")  # fmt: skip


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--save-kernel", "{out}"], "is also --output"),
        (["--save-kernel", "{d}/k.png"], "unsupported suffix"),
        (["--save-kernel", "{d}/kdir.npy"], "is a folder"),
        (["--save-kernel", "{d}/k.npy/"], "names a folder"),
        (["--save-mask", "{d}/m.png"], "--task deblur uses no mask"),
    ],
)
def test_degrade_extra_outputs_are_checked_first(cli: Runner, world: World, tmp_path: Path, extra: list[str], expect: str) -> None:
    """degrade once wrote its measurement and then refused --save-kernel, leaving a stray file."""
    (tmp_path / "kdir.npy").mkdir()
    out = tmp_path / "y.npy"
    extra = [e.format(out=out, d=tmp_path) for e in extra]
    cli(["degrade", "--task", "deblur", "--kernel", str(world.kernel), "--input", str(world.clean32), "--output", str(out), *extra],
        expect=expect)  # fmt: skip


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--save-mask", "{out}"], "is also --output"),
        (["--save-mask", "{d}/m.npy"], "unsupported suffix"),
        (["--save-kernel", "{d}/k.npy"], "--task inpaint uses no kernel"),
    ],
)
def test_degrade_mask_outputs_are_checked_first(cli: Runner, world: World, tmp_path: Path, extra: list[str], expect: str) -> None:
    out = tmp_path / "y.png"
    extra = [e.format(out=out, d=tmp_path) for e in extra]
    cli(["degrade", "--task", "inpaint", "--mask", "random", "--input", str(world.clean32), "--output", str(out), *extra],
        expect=expect)  # fmt: skip


# ----------------------------------------------------------------------------- failures halfway


def _failing(name: str):
    from diffpir_rt.errors import DiffPIRError

    def fail(*args, **kwargs):
        raise DiffPIRError(f"{name}: the disk is full (simulated)")

    return fail


def test_degrade_failing_on_its_second_file_leaves_nothing(cli: Runner, world: World, tmp_path: Path, monkeypatch) -> None:
    from diffpir_rt.engine import imageio

    monkeypatch.setattr(imageio, "write_npy", _failing("--save-kernel"))
    cli(["degrade", "--task", "deblur", "--kernel", str(world.kernel), "--input", str(world.clean32), "--output", str(tmp_path / "a" / "y.png"),
         "--save-kernel", str(tmp_path / "k.npy")], expect="simulated")  # fmt: skip
    assert not (tmp_path / "a").exists()


def test_restore_failing_on_its_record_leaves_nothing(cli: Runner, world: World, tmp_path: Path, monkeypatch) -> None:
    from diffpir_rt.engine import imageio

    monkeypatch.setattr(imageio, "write_text", _failing("the run record"))
    cli(["restore", "--task", "denoise", "--input", str(world.clean16), "--output", str(tmp_path / "o.png"), "--quiet",
         *world.model()], expect="simulated")  # fmt: skip


def test_failure_keeps_an_earlier_output(cli: Runner, world: World, tmp_path: Path, monkeypatch) -> None:
    """An output that existed before a failing run is neither removed nor changed."""
    from diffpir_rt.engine import imageio

    earlier = makers.write(tmp_path / "o.png", makers.png_bytes(np.zeros((4, 4), np.uint8)))
    monkeypatch.setattr(imageio, "write_text", _failing("the run record"))
    cli(["restore", "--task", "denoise", "--input", str(world.clean16), "--output", str(earlier), "--quiet", *world.model()],
        expect="simulated")  # fmt: skip
