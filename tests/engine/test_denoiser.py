"""UNetDenoiser contract and checkpoint loading: formats, strictness, and every user error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from diffpir_rt.engine import (
    ARCH_PRESETS,
    DiffPIRError,
    UNetDenoiser,
    build_unet,
    load_state_dict_file,
    load_unet,
)



class NotATensor:
    """A pickled object that torch.load(weights_only=True) must refuse."""


def read_key_table(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """[(key, shape)] from a `key<TAB>(d0, d1, ...)` table (tests/data/spec)."""
    rows = [line.split("\t") for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]
    return [(key, tuple(int(d) for d in shape.strip("() ").split(",") if d.strip())) for key, shape in rows]


def tiny_unet(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():  # module init draws from the global RNG; don't leak the seed
        torch.manual_seed(seed)
        return build_unet("tiny").eval()


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(tiny_unet(seed).state_dict())


def tiny_denoiser(seed: int = 0) -> UNetDenoiser:
    return UNetDenoiser(tiny_unet(seed), arch="tiny").eval()


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- the (x_t, t) -> eps contract -------------------------------------------------------------


def test_eps_is_first_in_channels_of_unet_output() -> None:
    denoiser = tiny_denoiser()
    x_t = randn(2, 3, 16, 16)
    t = torch.tensor([4, 800])
    with torch.no_grad():
        full = denoiser.unet(x_t, t)
        eps = denoiser(x_t, t)
    assert full.shape == (2, 6, 16, 16)
    assert torch.equal(eps, full[:, :3])
    assert denoiser.size_multiple == 2 and denoiser.arch == "tiny"
    assert denoiser.config is ARCH_PRESETS["tiny"]


SHARED_T = [250, torch.tensor(250), torch.tensor([250]), torch.tensor([250, 250], dtype=torch.int32)]


@pytest.mark.parametrize("t", SHARED_T)
def test_shared_timestep_forms_broadcast_to_the_batch(t: int | torch.Tensor) -> None:
    denoiser = tiny_denoiser()
    x_t = randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = denoiser(x_t, torch.full((2,), 250, dtype=torch.int64))
        assert torch.equal(denoiser(x_t, t), expected)


@pytest.mark.parametrize(
    ("x_shape", "t", "message"),
    [
        ((2, 1, 16, 16), torch.tensor([1, 2]), r"x_t: expected shape \(B, 3, H, W\), got \(2, 1, 16, 16\)"),
        ((3, 16, 16), torch.tensor([1]), r"x_t: expected shape \(B, 3, H, W\)"),
        ((1, 3, 15, 16), torch.tensor([1]), r"x_t: H and W must be multiples of 2"),
        ((2, 3, 16, 16), torch.tensor([1.0, 2.0]), "t: expected an integer timestep tensor, got dtype"),
        ((2, 3, 16, 16), torch.tensor([1, 2, 3]), r"t: expected shape \(2,\) or a single timestep"),
        ((2, 3, 16, 16), 2.5, "t: expected an integer timestep, got 2.5"),
    ],
)
def test_bad_denoiser_inputs_raise(x_shape: tuple[int, ...], t: object, message: str) -> None:
    with pytest.raises(DiffPIRError, match=message):
        tiny_denoiser()(randn(*x_shape), t)


# --- state-dict files -------------------------------------------------------------------------


def test_safetensors_round_trip_keeps_stored_dtype(tmp_path: Path) -> None:
    state = {k: v.half() for k, v in tiny_state_dict().items()}
    save_file(state, tmp_path / "w.safetensors")
    loaded = load_state_dict_file(tmp_path / "w.safetensors")
    assert loaded.keys() == state.keys()
    assert all(loaded[k].dtype == torch.float16 and torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "ema"])
def test_torch_file_unwraps_training_dict_and_strips_module_prefix(tmp_path: Path, wrapper: str) -> None:
    state = tiny_state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in state.items()}, "step": 10}, path)
    loaded = load_state_dict_file(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(DiffPIRError, match=r"checkpoint .*nope\.pt: no such file"):
        load_state_dict_file(tmp_path / "nope.pt")


def test_unsupported_suffix_raises(tmp_path: Path) -> None:
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(DiffPIRError, match=r"unsupported suffix '\.npz'"):
        load_state_dict_file(tmp_path / "w.npz")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("junk.pt", "is not a PyTorch checkpoint"),
        ("junk.safetensors", "is not a readable safetensors file"),
    ],
)
def test_unreadable_file_raises_one_line(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / name).write_bytes(b"this is not a checkpoint")
    with pytest.raises(DiffPIRError, match=message) as info:
        load_state_dict_file(tmp_path / name)
    assert "\n" not in str(info.value)


def test_pickled_objects_are_refused_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save({"weight": torch.zeros(2), "extra": NotATensor()}, path)
    with pytest.raises(DiffPIRError, match=r"pickled Python objects \(.*NotATensor\).*never loaded") as info:
        load_state_dict_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_integer_tensors_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ints.pt"
    torch.save({k: v.to(torch.int64) for k, v in tiny_state_dict().items()}, path)
    with pytest.raises(DiffPIRError, match=r"tensors are not floating point \(e\.g\. '.*': int64\); expected float weights"):
        load_state_dict_file(path)


def test_non_tensor_entry_raises(tmp_path: Path) -> None:
    path = tmp_path / "mixed.pt"
    torch.save({"weight": torch.zeros(2), "epoch": 3}, path)  # ints pass weights_only
    with pytest.raises(DiffPIRError, match="entry 'epoch' is a int, not a tensor"):
        load_state_dict_file(path)


# --- load_unet --------------------------------------------------------------------------------


def test_load_unet_reproduces_the_saved_model(tmp_path: Path) -> None:
    state = tiny_state_dict(seed=3)
    save_file(state, tmp_path / "tiny.safetensors")
    reference = build_unet("tiny").eval()
    reference.load_state_dict(state, strict=True)

    denoiser = load_unet(tmp_path / "tiny.safetensors", arch="tiny")

    assert not denoiser.training and not denoiser.unet.training
    assert not any(p.requires_grad for p in denoiser.parameters())
    x_t, t = randn(2, 3, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.equal(denoiser(x_t, t), reference(x_t, t)[:, :3])


def test_fp16_checkpoint_is_cast_to_requested_dtype(tmp_path: Path) -> None:
    state = {k: v.half() for k, v in tiny_state_dict().items()}
    torch.save(state, tmp_path / "half.pt")
    for dtype in (torch.float32, torch.bfloat16):
        denoiser = load_unet(tmp_path / "half.pt", arch="tiny", dtype=dtype)
        params = dict(denoiser.unet.named_parameters())
        assert {p.dtype for p in params.values()} == {dtype}
        key = "input_blocks.1.0.in_layers.2.weight"
        assert torch.equal(params[key], state[key].to(dtype))


def test_ffhq_10m_strict_load_from_guided_diffusion_table(tmp_path: Path, data_dir: Path) -> None:
    """A checkpoint with exactly GD's keys and shapes loads strict and runs at 32x32 (1 px at the bottom)."""
    generator = torch.Generator().manual_seed(0)
    table = read_key_table(data_dir / "spec" / "unet-keys-ffhq_10m.tsv")
    # Slices of one random pool: drawing 94M normals would take seconds. fp16 on disk halves
    # the file (187 MB) and exercises the cast; std 0.02 keeps activations tame.
    pool = (0.02 * torch.randn(5_000_000, generator=generator)).half()
    state = {}
    for i, (key, shape) in enumerate(table):
        n = torch.Size(shape).numel()
        start = (i * 7919) % (len(pool) - n)
        state[key] = pool[start : start + n].reshape(shape).clone()
    save_file(state, tmp_path / "ffhq_10m.safetensors")

    denoiser = load_unet(tmp_path / "ffhq_10m.safetensors", arch="ffhq_10m")
    del state

    assert denoiser.size_multiple == 32
    assert sum(p.numel() for p in denoiser.parameters()) == 93_563_910
    with torch.no_grad():
        eps = denoiser(torch.randn(1, 3, 32, 32, generator=generator), 500)
    assert eps.shape == (1, 3, 32, 32) and eps.dtype == torch.float32
    assert torch.isfinite(eps).all()


def test_unknown_arch_is_checked_before_the_file() -> None:
    with pytest.raises(DiffPIRError, match=r"unknown UNet arch 'ffhq_256'.*'ffhq_10m'"):
        load_unet("does/not/exist.pt", arch="ffhq_256")


def test_unsupported_dtype_raises(tmp_path: Path) -> None:
    with pytest.raises(DiffPIRError, match="dtype: expected one of"):
        load_unet(tmp_path / "x.pt", arch="tiny", dtype=torch.int8)


def test_foreign_checkpoint_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"encoder.conv.weight": torch.zeros(4, 3, 3, 3), "decoder.bias": torch.zeros(4)}, path)
    with pytest.raises(DiffPIRError) as info:
        load_unet(path, arch="tiny")
    message = str(info.value)
    n_tiny = len(build_unet("tiny").state_dict())
    assert f"does not fit arch 'tiny' (missing keys: {n_tiny}, unexpected keys: 2; e.g. 'time_embed.0.weight')" in message
    assert "\n" not in message and "matches no known arch" in message
    assert len(message.replace(str(path), "")) <= 200


def test_wrong_arch_suggests_the_matching_preset(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    save_file(tiny_state_dict(), path)
    expected = r"missing keys: \d+, unexpected keys: \d+, wrong shapes: \d+\); it matches arch 'tiny': use --arch tiny$"
    with pytest.raises(DiffPIRError, match=expected) as info:
        load_unet(path, arch="ffhq_10m")
    assert len(str(info.value).replace(str(path), "")) <= 200


def test_wrong_shaped_tensor_is_named(tmp_path: Path) -> None:
    state = tiny_state_dict()
    state["out.2.bias"] = torch.zeros(3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(DiffPIRError) as info:
        load_unet(path, arch="tiny")
    message = str(info.value)
    assert "(wrong shapes: 1; 'out.2.bias' is (3,), expected (6,))" in message
    assert "missing" not in message and "unexpected" not in message
