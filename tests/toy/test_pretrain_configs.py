"""The toy pre-training commands' configs (``parauni toy pretrain-vlm / pretrain-prior / train-rewards``):
``--config`` + ``key=value`` overrides, every old flag with its old meaning and default, the shipped YAMLs, and
tiny real runs from a config equal to the same runs from flags."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
import yaml

from parauni.cli import build_parser, main
from parauni.toy import train_rewards, train_vlm
from parauni.toy.config import (
    ALIGNMENT_PATH,
    PRIOR_FLAGS,
    REWARDS_FLAGS,
    VLM_FLAGS,
    config_from_args,
    flat,
    load_pretrain_prior_config,
    load_pretrain_vlm_config,
    load_train_rewards_config,
)
from parauni.toy.rewards.alignment import DEFAULT_PATH
from parauni.train.config import to_yaml_dict

WEIGHTS = Path(train_vlm.__file__).parent / "weights"
COMMANDS = {  # command -> (flags table, loader)
    "pretrain-vlm": (VLM_FLAGS, load_pretrain_vlm_config),
    "pretrain-prior": (PRIOR_FLAGS, load_pretrain_prior_config),
    "train-rewards": (REWARDS_FLAGS, load_train_rewards_config),
}
# the flags' defaults before the configs existed (argparse defaults of each command), except train-rewards' --out:
# the working folder's outputs/toy/alignment, no longer the shipped weights inside the package
OLD_DEFAULTS = {
    "pretrain-vlm": dict(out=None, steps=2100, batch_size=32, lr=1.5e-3, seed=0, warmup=100, turns=6,
                         eval_examples=300, eval_every=0, workers=0, threads=2, fp16=False, device="cpu"),
    "pretrain-prior": dict(out="outputs/toy/prior", space="latent", steps=1500, minutes=None, ae_steps=400,
                           ae_minutes=None, batch_size=64, lr=1e-3, ae_lr=2e-3, warmup=100, weight_decay=0.01,
                           ema=0.999, timesteps="logit-normal", uncond_prob=0.1, template_prob=0.7, hidden=128,
                           layers=4, patch=None, caption_channels=64, text_width=64, text_depth=2,
                           latent_channels=8, vae_width=32, flow_shift=1.0, guidance=4.5, eval_images=0,
                           eval_steps=20, fp16=False, seed=0, threads=2, log_every=50),
    "train-rewards": dict(out="outputs/toy/alignment", steps=1500, batch_size=128, lr=2e-3, pool=40000, seed=0,
                          fp16=False, threads=None),
}


def config_of(argv: list[str]):
    """The config ``parauni toy <argv>`` would run with (parsed as :func:`parauni.cli.main` parses it)."""
    args, extra = build_parser().parse_known_args(["toy", *argv])
    assert not extra
    flags, loader = COMMANDS[argv[0]]
    return config_from_args(args, flags, loader)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_defaults_are_the_flags_defaults(command):
    flags, loader = COMMANDS[command]
    assert flat(loader(), flags) == OLD_DEFAULTS[command]
    assert flat(config_of([command]), flags) == OLD_DEFAULTS[command]  # no flag, no file: the same
    assert ALIGNMENT_PATH == str(DEFAULT_PATH)


def test_defaults_match_the_training_functions():
    """The keys that are arguments of the training functions (not flags) keep those functions' defaults."""
    vlm = inspect.signature(train_vlm.pretrain_vlm).parameters
    cfg = load_pretrain_vlm_config()
    for name, value in [("describe_prob", cfg.data.describe_prob), ("by_question", cfg.data.by_question),
                        ("chunks", cfg.data.chunks), ("weight_decay", cfg.optim.weight_decay),
                        ("mid_eval_examples", cfg.train.mid_eval_examples), ("log_every", cfg.train.log_every),
                        ("vision", cfg.model.vision), ("text", cfg.model.text)]:
        assert vlm[name].default == value, name
    assert inspect.signature(train_rewards.train_alignment).parameters["log_every"].default == \
        load_train_rewards_config().train.log_every


@pytest.mark.parametrize("command,flag_argv,override_argv", [
    ("pretrain-vlm", ["--out", "o", "--steps", "7", "--lr", "3e-4", "--fp16", "--device", "cpu", "--workers", "1"],
     ["train.output_dir=o", "train.steps=7", "optim.lr=3e-4", "train.fp16=true", "train.device=cpu",
      "data.workers=1"]),
    ("pretrain-prior", ["--space", "pixel", "--minutes", "1.5", "--patch", "2", "--timesteps", "uniform", "--fp16"],
     ["model.space=pixel", "train.minutes=1.5", "model.patch=2", "train.timesteps=uniform", "train.fp16=true"]),
    ("train-rewards", ["--out", "1e3", "--pool", "64", "--batch-size", "16", "--seed", "3"],
     ["train.output_dir='1e3'", "data.pool=64", "train.batch_size=16", "train.seed=3"]),
])
def test_a_flag_and_its_override_give_the_same_config(command, flag_argv, override_argv):
    by_flags, by_overrides = config_of([command, *flag_argv]), config_of([command, *override_argv])
    assert by_flags == by_overrides
    assert by_flags != config_of([command])


def test_a_given_flag_overrides_the_file_and_key_value_overrides_win(tmp_path):
    path = tmp_path / "prior.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 5, "batch_size": 8}, "model": {"hidden": 64}}))
    cfg = config_of(["pretrain-prior", "--config", str(path)])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.model.hidden, cfg.train.ae_steps) == (5, 8, 64, 400)
    cfg = config_of(["pretrain-prior", "--config", str(path), "--steps", "9"])
    assert (cfg.train.steps, cfg.train.batch_size) == (9, 8)  # a flag given wins; absent flags leave the file
    cfg = config_of(["pretrain-prior", "--config", str(path), "--steps", "9", "train.steps=11"])
    assert cfg.train.steps == 11


def test_shipped_yamls_hold_the_shipped_recipes():
    shipped = Path(train_vlm.__file__).parents[1] / "configs"
    # test_train skips them (by their prefix)
    assert sorted(p.name for p in shipped.glob("toy_*.yaml") if p.name.startswith(("toy_pretrain_", "toy_train_"))) \
        == ["toy_pretrain_prior.yaml", "toy_pretrain_prior_v2.yaml", "toy_pretrain_vlm.yaml",
            "toy_pretrain_vlm_v2.yaml", "toy_train_rewards.yaml", "toy_train_rewards_v2.yaml"]
    vlm = json.loads((WEIGHTS / "vlm" / "train_config.json").read_text())
    cfg = flat(load_pretrain_vlm_config("toy_pretrain_vlm.yaml"), VLM_FLAGS)
    for key in ("steps", "batch_size", "lr", "seed", "warmup", "turns", "eval_examples", "eval_every", "threads",
                "fp16"):
        assert cfg[key] == vlm[key], key
    prior = json.loads((WEIGHTS / "prior" / "train_config.json").read_text())
    cfg = flat(load_pretrain_prior_config("toy_pretrain_prior.yaml"), PRIOR_FLAGS)
    assert {k: v for k, v in cfg.items() if k != "out"} == {k: prior[k] for k in cfg if k != "out"}
    rewards = json.loads((WEIGHTS / "rewards" / "alignment" / "train_config.json").read_text())
    cfg = flat(load_train_rewards_config("toy_train_rewards.yaml"), REWARDS_FLAGS)
    assert {k: cfg[k] for k in ("steps", "batch_size", "lr", "pool", "seed", "fp16")} == \
        {k: rewards[k] for k in ("steps", "batch_size", "lr", "pool", "seed", "fp16")}
    assert cfg["out"] != str(DEFAULT_PATH)  # the shipped YAML does not overwrite the shipped weights


@pytest.mark.parametrize("argv,words", [
    (["pretrain-vlm", "--out", "{tmp}", "train.stepz=3"], ["train.stepz", "train.steps"]),
    (["pretrain-vlm", "--out", "{tmp}", "optim.lr=-1"], ["optim.lr", "-1"]),
    (["pretrain-vlm"], ["--out", "train.output_dir"]),
    (["pretrain-prior", "--out", "{tmp}", "model.space=voxel"], ["model.space", "voxel"]),
    (["pretrain-prior", "--out", "{tmp}", "train.steps=0"], ["train.steps=0", "train.minutes"]),
    (["pretrain-prior", "--out", "{tmp}", "--config", "{tmp}/bad.yaml"], ["optim.ema", "1.5"]),
    (["train-rewards", "--out", "{tmp}", "data.pool=8"], ["train.batch_size=128", "data.pool=8"]),
    (["train-rewards", "--out", "{tmp}", "opt.lr=1"], ["opt"]),
])
def test_bad_keys_and_values_are_one_line_errors(tmp_path, capsys, argv, words):
    (tmp_path / "bad.yaml").write_text("optim:\n  ema: 1.5\n")
    assert main(["toy", *[a.format(tmp=tmp_path) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "config.yaml").exists()  # nothing ran


def _same_run(tmp_path: Path, command: str, flags: list[str], config: dict) -> tuple[Path, Path]:
    """Run ``command`` once from flags and once from a YAML config; returns the two output folders."""
    a, b = tmp_path / "flags", tmp_path / "config"
    assert main(["toy", command, "--out", str(a), *flags]) == 0
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**config, "train": {**config.get("train", {}), "output_dir": str(b)}}))
    assert main(["toy", command, "--config", str(path)]) == 0
    saved = yaml.safe_load((b / "config.yaml").read_text())
    assert saved == to_yaml_dict(COMMANDS[command][1](b / "config.yaml"))  # config.yaml loads back as itself
    assert {k: v for k, v in yaml.safe_load((a / "config.yaml").read_text())["train"].items() if k != "output_dir"} \
        == {k: v for k, v in saved["train"].items() if k != "output_dir"}
    return a, b


def _weights(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def _losses(folder: Path) -> list[str]:
    return re.findall(r"loss ([0-9.]+)", (folder / "train_log.txt").read_text())


def test_vlm_run_from_config_equals_run_from_flags(tmp_path):
    a, b = _same_run(tmp_path, "pretrain-vlm",
                     ["--steps", "2", "--batch-size", "2", "--eval-examples", "2", "--threads", "1", "--turns", "2"],
                     {"data": {"turns": 2}, "train": {"steps": 2, "batch_size": 2, "eval_examples": 2, "threads": 1}})
    assert _weights(a) and _weights(a) == _weights(b)
    assert len(_losses(a)) == 1 and _losses(a) == _losses(b)
    assert json.loads((a / "heldout_accuracy.json").read_text()) == json.loads((b / "heldout_accuracy.json")
                                                                                .read_text())


def test_prior_run_from_config_equals_run_from_flags(tmp_path):
    sizes = ["--hidden", "32", "--layers", "1", "--vae-width", "8", "--text-width", "16", "--caption-channels", "16"]
    a, b = _same_run(tmp_path, "pretrain-prior",
                     ["--steps", "2", "--ae-steps", "2", "--batch-size", "4", "--threads", "1", "--log-every", "1",
                      *sizes],
                     {"model": {"hidden": 32, "layers": 1, "vae_width": 8, "text_width": 16, "caption_channels": 16},
                      "train": {"steps": 2, "ae_steps": 2, "batch_size": 4, "threads": 1, "log_every": 1}})
    assert len(_weights(a)) == 3 and _weights(a) == _weights(b)  # transformer, text encoder, VAE
    assert len(_losses(a)) == 4 and _losses(a) == _losses(b)
    recorded = json.loads((a / "train_config.json").read_text())
    assert recorded["steps"] == 2 and recorded["hidden"] == 32 and recorded["space"] == "latent"


def test_rewards_run_from_config_equals_run_from_flags(tmp_path):
    a, b = _same_run(tmp_path, "train-rewards",
                     ["--steps", "2", "--pool", "64", "--batch-size", "16", "--threads", "1"],
                     {"data": {"pool": 64}, "train": {"steps": 2, "batch_size": 16, "threads": 1}})
    assert _weights(a) and _weights(a) == _weights(b)
    assert len(_losses(a)) == 2 and _losses(a) == _losses(b)
    recorded = json.loads((a / "train_config.json").read_text())
    assert recorded["command"].startswith(f"parauni toy train-rewards --out {a} --steps 2 --batch-size 16")


def test_train_rewards_without_out_writes_to_the_working_folder_not_the_package(tmp_path, monkeypatch, capsys):
    """The shipped reward model stays as shipped: no --out means outputs/toy/alignment in the working folder; an
    output folder inside the package needs --into-package."""
    shipped = _weights(Path(ALIGNMENT_PATH))
    assert shipped
    monkeypatch.chdir(tmp_path)
    assert main(["toy", "train-rewards", "--steps", "1", "--pool", "16", "--batch-size", "8", "--threads", "1"]) == 0
    assert _weights(tmp_path / "outputs" / "toy" / "alignment")
    assert _weights(Path(ALIGNMENT_PATH)) == shipped
    capsys.readouterr()
    for command, folder in (("train-rewards", ALIGNMENT_PATH), ("pretrain-vlm", str(WEIGHTS / "vlm")),
                            ("pretrain-prior", str(WEIGHTS / "prior"))):
        assert main(["toy", command, "--out", folder, "--steps", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "inside the installed parauni package" in err and \
            "--into-package" in err, err
    assert _weights(Path(ALIGNMENT_PATH)) == shipped
    # --into-package: the command's own shipped folder (checked on the config, nothing trained)
    for command, folder in (("train-rewards", ALIGNMENT_PATH), ("pretrain-vlm", str(WEIGHTS / "vlm")),
                            ("pretrain-prior", str(WEIGHTS / "prior"))):
        assert Path(config_of([command, "--into-package"]).train.output_dir) == Path(folder)
    assert main(["toy", "train-rewards", "--into-package", "--out", "elsewhere"]) == 2
    assert "drop one of them" in capsys.readouterr().err
