"""Training program of the bundled prior (training/train.py) and the shipped weights.

Tiny preset, 16x16 crops of synthetic images: each run takes a second or two.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffpir_rt.training import train as tr
from diffpir_rt.engine.denoiser import load_unet
from diffpir_rt.errors import DiffPIRError

RECIPE = tr.Recipe(arch="tiny", crop=16, batch_size=2, lr=1e-3, warmup_steps=2, seed=3)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Four smooth random RGB images of assorted sizes >= 16."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for i, (h, w) in enumerate([(24, 20), (16, 32), (30, 30), (17, 19)]):
        coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        image.save(folder / f"im{i}.png")
    return folder


def stage(image_dir: Path, out: Path, **kwargs) -> tr.Stage:
    return tr.Stage(data=str(image_dir), out=str(out), threads=None, progress=False, log_every=1, **kwargs)


def test_tiny_run_writes_checkpoint_and_logs(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = tr.train(RECIPE, stage(image_dir, out, max_steps=5))
    assert trainer.step == 5
    for name in ("checkpoint.pt", "loss.csv", "train_log.json"):
        assert (out / name).is_file(), name
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 5 and log["arch"] == "tiny"
    assert np.isfinite(log["final_loss"])
    assert log["stages"][0]["from_step"] == 0 and log["stages"][0]["to_step"] == 5
    rows = (out / "loss.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 5  # header + one row per step (log_every=1)


def test_zero_init_predicts_zero_eps_at_step_0() -> None:
    unet = tr.init_unet("tiny", seed=0)
    out = unet(torch.randn(1, 3, 16, 16), torch.tensor([10]))
    assert torch.equal(out, torch.zeros_like(out))


def test_crops_are_reproducible_and_in_range(image_dir: Path) -> None:
    images = tr.load_images(image_dir, min_side=16)
    a = tr.draw_crops(images, 5, 16, True, torch.Generator().manual_seed(1))
    b = tr.draw_crops(images, 5, 16, True, torch.Generator().manual_seed(1))
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, b)


def test_resume_continues_bit_identically(image_dir: Path, tmp_path: Path) -> None:
    # Given: one uninterrupted 6-step run, and a 3-step run resumed to 6 steps
    tr.train(RECIPE, stage(image_dir, tmp_path / "a", max_steps=6))
    tr.train(RECIPE, stage(image_dir, tmp_path / "b", max_steps=3))
    tr.train(None, stage(image_dir, tmp_path / "b", max_steps=6, resume=True))
    # Then: model, EMA, optimizer moments, RNG state and step are identical
    a = tr.read_checkpoint(tmp_path / "a" / tr.CHECKPOINT_NAME)
    b = tr.read_checkpoint(tmp_path / "b" / tr.CHECKPOINT_NAME)
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for index, moments in a["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    assert torch.equal(a["generator"], b["generator"])
    assert a["recent_losses"] == b["recent_losses"]
    # and the loss log holds each step once
    steps = [int(r.split(",")[0]) for r in (tmp_path / "b" / "loss.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert len(b["stages"]) == 2


def test_ema_tracks_model_with_warmup(image_dir: Path, tmp_path: Path) -> None:
    trainer = tr.train(RECIPE, stage(image_dir, tmp_path / "run", max_steps=2))
    # decay at update n is min(0.999, (1+n)/(10+n)): small at first, so the EMA moves
    assert trainer.ema_decay_at(0) == pytest.approx(0.1)
    assert trainer.ema_decay_at(10**6) == RECIPE.ema_decay
    model = trainer.model.state_dict()
    moved = [k for k in trainer.ema if not torch.equal(trainer.ema[k], model[k])]
    assert moved  # EMA is an average, not a copy


def test_resume_errors(image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(DiffPIRError, match="no such file"):
        tr.train(None, stage(image_dir, out, max_steps=1, resume=True))
    tr.train(RECIPE, stage(image_dir, out, max_steps=1))
    with pytest.raises(DiffPIRError, match="already holds checkpoint.pt"):
        tr.train(RECIPE, stage(image_dir, out, max_steps=2))
    other = tr.Recipe(**{**RECIPE.to_dict(), "lr": 5e-4})
    with pytest.raises(DiffPIRError, match="recipe differs"):
        tr.train(other, stage(image_dir, out, max_steps=2, resume=True))


def test_input_errors(image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffPIRError, match="crop: expected a positive multiple of 16"):
        tr.Recipe(arch="compact_fast", crop=60)
    with pytest.raises(DiffPIRError, match="unknown UNet arch"):
        tr.Recipe(arch="nope")
    with pytest.raises(DiffPIRError, match="not a folder"):
        tr.load_images(tmp_path / "missing")
    with pytest.raises(DiffPIRError, match="smaller than the crop 32"):
        tr.load_images(image_dir, min_side=32)
    with pytest.raises(DiffPIRError, match="max_minutes"):
        stage(image_dir, tmp_path, max_minutes=0)
    with pytest.raises(DiffPIRError, match="not a readable training checkpoint"):
        bad = tmp_path / "bad.pt"
        bad.write_bytes(b"not a checkpoint")
        tr.read_checkpoint(bad)


def test_cli_help_and_user_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tr.main(["--help"])
    assert exit_info.value.code == 0
    assert "--max-minutes" in capsys.readouterr().out
    code = tr.main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--arch", "tiny",
                    "--crop", "16", "--max-steps", "1", "--quiet"])
    assert code == 2
    assert "not a folder" in capsys.readouterr().err


def test_export_writes_strict_loadable_fp16_weights_and_card(image_dir: Path, tmp_path: Path) -> None:
    tr.train(RECIPE, stage(image_dir, tmp_path / "run", max_steps=3))
    weights_dir = tmp_path / "weights"
    card = tr.export_prior(tmp_path / "run" / tr.CHECKPOINT_NAME, "tiny_prior", weights_dir)
    path = weights_dir / "tiny_prior.safetensors"
    assert card["weights"] == path.name and card["arch"] == "tiny"
    assert card["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert json.loads((weights_dir / "bundled_prior.json").read_text()) == card
    assert (weights_dir / "MODEL_CARD.md").is_file()
    assert set(card["task_defaults"]) == {"deblur", "sr", "inpaint", "denoise"}
    # load_unet is strict: every key and shape must fit the preset
    denoiser = load_unet(path, "tiny")
    ckpt = tr.read_checkpoint(tmp_path / "run" / tr.CHECKPOINT_NAME)
    for key, value in denoiser.unet.state_dict().items():
        assert torch.equal(value, ckpt["ema"][key].half().float()), key
    assert card["fp16_check"]["max_abs_eps_diff"] < 1e-2
    # the export is a pure function of the checkpoint: same bytes, same hash
    again = tr.export_prior(tmp_path / "run" / tr.CHECKPOINT_NAME, "tiny_prior", tmp_path / "weights_again")
    assert again["sha256"] == card["sha256"]
    # re-export under another name replaces the previous weights file
    tr.export_prior(tmp_path / "run" / tr.CHECKPOINT_NAME, "tiny_prior2", weights_dir)
    assert not path.exists() and (weights_dir / "tiny_prior2.safetensors").is_file()


# ----------------------------------------------------------------------------- shipped weights


def test_bundled_prior_matches_card_and_denoises(data_dir: Path) -> None:
    from diffpir_rt.engine import prior
    from diffpir_rt.engine.imageio import read_image
    from diffpir_rt.engine.operators import Denoise
    from diffpir_rt.engine.sampler import DiffPIRConfig, sample
    from diffpir_rt.engine import ModelSource

    card = prior.bundled_card()
    if card is None:
        pytest.skip("this build ships no bundled prior (engine/weights/bundled_prior.json)")
    path = prior.bundled_weights_path()
    assert prior.sha256_file(path) == card["sha256"]
    assert path.stat().st_size <= 25 * 2**20
    model = prior.load_bundled_prior()  # verifies the hash, strict keys

    x = read_image(data_dir / "images" / "butterfly.png")[None, :, 64:128, 64:128]
    sigma = 0.1
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    y = x + sigma * noise
    task = ModelSource().tuned_defaults(card["defaults_method"], "denoise")
    config = DiffPIRConfig(lam=task["lam"], zeta=task["zeta"], sigma_n=sigma, steps=10)
    restored = sample(model, Denoise(), y, config, seed=0)

    def psnr(a: torch.Tensor) -> float:
        return float(10 * torch.log10(1 / (a.clamp(0, 1) - x).pow(2).mean()))

    assert psnr(restored) > psnr(y) + 1.0


def test_stop_request_ends_stage_with_checkpoint(image_dir: Path, tmp_path: Path) -> None:
    calls = iter(range(100))
    trainer = tr.train(RECIPE, stage(image_dir, tmp_path / "run", max_steps=50), stop=lambda: next(calls) >= 2)
    assert trainer.step == 2
    assert tr.read_checkpoint(tmp_path / "run" / tr.CHECKPOINT_NAME)["step"] == 2


def test_compact_preset_is_a_few_million_params_and_any_size() -> None:
    with torch.device("meta"):
        unet = tr.build_unet("compact_fast")
    params = sum(p.numel() for p in unet.parameters())
    assert 2e6 <= params <= 6e6
    assert unet.config.out_channels == 6 and unet.size_multiple == 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_device_without_cuda_is_a_user_error(image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DiffPIRError, match="CUDA is not available"):
        tr.train(RECIPE, stage(image_dir, tmp_path / "run", max_steps=1, device="cuda"))


def test_init_weights_starts_from_the_given_weights(image_dir: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    """`diffpir train --init-weights W`: a new run whose model and EMA start as W (the shipped prior's path)."""
    from diffpir_rt.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(image_dir), "--out", str(out), "--init-weights", str(tiny_checkpoint),
                 "--arch", "tiny", "--crop", "16", "--batch-size", "2", "--max-steps", "1", "--quiet"]) == 0  # fmt: skip
    state = tr.read_checkpoint(out / tr.CHECKPOINT_NAME)
    assert state["step"] == 1 and state["stages"][0]["init_weights"] == str(tiny_checkpoint)
    given = load_unet(tiny_checkpoint, "tiny").unet.state_dict()
    fresh = tr.init_unet("tiny", seed=0).state_dict()
    # one step of AdamW from W moves each weight by about lr; a random init is far away
    for key in given:
        assert torch.allclose(state["model"][key], given[key], atol=5e-3), key
    assert any(not torch.allclose(given[k], fresh[k], atol=5e-3) for k in given)


def test_cosine_schedule_and_min_snr_weights_follow_their_formulas(image_dir: Path) -> None:
    recipe = tr.Recipe(arch="tiny", crop=16, batch_size=2, lr=1e-3, warmup_steps=10, lr_schedule="cosine",
                       lr_cycle_steps=100, lr_min_ratio=0.1, loss_weighting="min_snr", min_snr_gamma=5.0)  # fmt: skip
    trainer = tr.Trainer(recipe, tr.load_images(image_dir, min_side=16))
    assert trainer.lr_at(0) == pytest.approx(1e-4) and trainer.lr_at(9) == pytest.approx(1e-3)  # linear warmup
    assert trainer.lr_at(10) == pytest.approx(1e-3) and trainer.lr_at(60) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half a cycle
    assert trainer.lr_at(110) == pytest.approx(1e-3)  # a warm restart
    from diffpir_rt.engine import linear_schedule

    alpha_bar = linear_schedule().alpha_bar
    t = torch.tensor([0, 100, 500, 999])
    snr = alpha_bar[t.numpy()] / (1 - alpha_bar[t.numpy()])
    expected = np.minimum(snr, 5.0) / snr
    np.testing.assert_allclose(trainer.loss_weights(t).numpy(), expected, rtol=1e-5)
    with pytest.raises(DiffPIRError, match="loss_weighting"):
        tr.Recipe(arch="tiny", crop=16, loss_weighting="p2")


def test_the_fewest_steps_within_the_tolerance_of_the_best_win() -> None:
    from diffpir_rt.training.tune import fewest_steps

    # inpainting-like: more steps keep paying, so the most wins; deblurring-like: 20 is as good
    assert fewest_steps({20: 27.0, 50: 27.6, 100: 27.9}) == 100
    assert fewest_steps({20: 22.05, 50: 22.10, 100: 22.08}) == 20
    assert fewest_steps({20: 25.0, 50: 25.45, 100: 25.5}, within=0.1) == 50
