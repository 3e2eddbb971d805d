"""Resumable toy pre-training (``parauni toy pretrain-vlm / pretrain-prior / train-rewards --resume``): a run
stopped after k steps and resumed ends with exactly the weights of the same run left uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parauni.cli import main

TINY_VLM = ["--steps", "5", "--batch-size", "4", "--warmup", "2", "--turns", "2", "--eval-examples", "4",
            "--threads", "1", "data.world=v2", "data.caption_lm=0.5", "train.log_every=1",
            "model.vision={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}",
            "model.text={hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2}"]
TINY_PRIOR = ["--steps", "4", "--ae-steps", "3", "--batch-size", "4", "--warmup", "2", "--hidden", "32",
              "--layers", "1", "--caption-channels", "16", "--text-width", "16", "--text-depth", "1",
              "--latent-channels", "4", "--vae-width", "8", "--threads", "1", "--log-every", "1", "data.world=v2"]
TINY_REWARDS = ["--steps", "5", "--batch-size", "8", "--pool", "32", "--threads", "1", "data.world=v2"]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every safetensors tensor under ``folder``, by relative path and name."""
    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        if "resume" in f.parts:
            continue
        out.update({f"{f.relative_to(folder)}:{k}": v for k, v in load_file(f).items()})
    return out


def assert_identical(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa and wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def interrupted_then_resumed(tmp_path: Path, command: str, flags: list[str], stops: list[int]) -> tuple[Path, Path]:
    """The same run once straight through and once in sittings that stop after each of ``stops`` steps."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["toy", command, "--out", str(whole), *flags]) == 0
    assert main(["toy", command, "--out", str(parts), "--stop-after", str(stops[0]), *flags]) == 0
    assert (parts / "resume" / "state.json").is_file() and not weights(parts)  # a checkpoint, no final model
    for k in stops[1:]:
        assert main(["toy", command, "--out", str(parts), "--resume", "--stop-after", str(k), *flags]) == 0
    assert main(["toy", command, "--out", str(parts), "--resume", *flags]) == 0
    assert not (parts / "resume").exists()  # a completed run removes its checkpoint
    return whole, parts


def test_vlm_resume_is_exact(tmp_path):
    whole, parts = interrupted_then_resumed(tmp_path, "pretrain-vlm", TINY_VLM, [2])
    assert_identical(whole, parts)
    assert json.loads((whole / "heldout_accuracy.json").read_text()) == \
        json.loads((parts / "heldout_accuracy.json").read_text())


def test_vlm_checkpoint_every_and_changed_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["toy", "pretrain-vlm", "--out", str(out), "--checkpoint-every", "2", "--stop-after", "3",
                 *TINY_VLM]) == 0
    assert json.loads((out / "resume" / "state.json").read_text())["step"] == 3
    # another learning rate: refused, naming the key
    assert main(["toy", "pretrain-vlm", "--out", str(out), "--resume", *TINY_VLM, "optim.lr=0.01"]) == 2
    err = capsys.readouterr().err
    assert "lr" in err and "other settings" in err
    assert main(["toy", "pretrain-vlm", "--out", str(tmp_path / "none"), "--resume", *TINY_VLM]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_prior_resume_is_exact_across_both_phases(tmp_path):
    # sittings end inside the autoencoder phase (step 2 of 3) and inside the diffusion phase
    whole, parts = interrupted_then_resumed(tmp_path, "pretrain-prior", TINY_PRIOR, [2, 3])
    assert_identical(whole, parts)


def test_rewards_resume_is_exact(tmp_path):
    whole, parts = interrupted_then_resumed(tmp_path, "train-rewards", TINY_REWARDS, [3])
    assert_identical(whole, parts)


@pytest.mark.parametrize("command", ["pretrain-vlm", "pretrain-prior", "train-rewards"])
def test_resume_flags_in_help(command, capsys):
    with pytest.raises(SystemExit):
        main(["toy", command, "--help"])
    out = capsys.readouterr().out
    assert "--resume" in out and "--stop-after" in out and "--checkpoint-every" in out
