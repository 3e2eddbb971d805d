"""One config schema: stages I/II and III share the model, optimizer and run sections (train.config.ModelSource,
AdamWConfig, RunConfig), every key declares what it accepts beside its field, and moved keys name their new place."""

import dataclasses
import typing

import numpy as np
import pytest
import torch
import yaml

from parauni.errors import ConfigError, UnknownKeyError
from parauni.rl.config import (
    GRPOConfig,
    GRPOModelConfig,
    GRPOOptimConfig,
    GRPOTrainConfig,
    SamplingConfig,
    load_grpo_config,
)
from parauni.toy.config import PretrainPriorConfig, PretrainVLMConfig, TrainRewardsConfig
from parauni.train.config import (
    AdamWConfig,
    Config,
    ModelConfig,
    ModelSource,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from parauni.train.schema import field_check

SHARED = [f.name for f in dataclasses.fields(ModelSource)]


def test_both_model_sections_start_with_the_shared_keys():
    assert SHARED == ["source", "vlm", "transformer", "vae", "init", "conditioner"]
    for cls in (ModelConfig, GRPOModelConfig):
        assert [f.name for f in dataclasses.fields(cls)][:len(SHARED)] == SHARED


@pytest.mark.parametrize("load", [load_config, load_grpo_config], ids=["stage I/II", "stage III"])
def test_the_shared_keys_are_read_and_checked_alike(load):
    cfg = load(None, ["model.vlm=org/vlm", "model.transformer=/w/transformer", "model.vae=/w/vae"])
    assert (cfg.model.vlm, cfg.model.transformer, cfg.model.vae) == ("org/vlm", "/w/transformer", "/w/vae")
    with pytest.raises(ConfigError, match="model.vae"):
        load(None, ["model.vae=''"])


# ---- one schema: shared sections, checks beside the fields, moved keys --------------------------------------------

ROOTS = [Config, GRPOConfig, PretrainVLMConfig, PretrainPriorConfig, TrainRewardsConfig]


def _fields(cls, prefix=""):
    """``(field, dotted key)`` of every leaf key of the config dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f, f"{prefix}{f.name}"


@pytest.mark.parametrize("root", ROOTS, ids=lambda r: r.__name__)
def test_every_key_declares_what_it_accepts_beside_its_field(root):
    """Each leaf field carries its check (``setting(default, check)``); none relies on a separate table."""
    keys = list(_fields(root))
    assert keys
    missing = [key for f, key in keys if "check" not in f.metadata]
    assert missing == [], f"fields without a declared check: {missing}"


def test_stages_share_the_optimizer_and_run_sections():
    """Stage III's optim and train sections extend the shared ones: the same keys with the same checks (only
    some defaults differ), so e.g. the evaluation's keys are train.eval_* in both stages."""
    for shared, one, three in ((AdamWConfig, OptimConfig, GRPOOptimConfig), (RunConfig, TrainConfig, GRPOTrainConfig)):
        names = [f.name for f in dataclasses.fields(shared)]
        for cls in (one, three):
            assert issubclass(cls, shared)
            by_name = {f.name: f for f in dataclasses.fields(cls)}
            for n in names:
                assert field_check(cls, n) is field_check(shared, n), (cls.__name__, n)
                assert by_name[n].metadata["check"] is field_check(shared, n)
    assert {n for n in (f.name for f in dataclasses.fields(RunConfig)) if n.startswith("eval_")} == {
        "eval_geneval", "eval_images_per_prompt", "eval_steps", "eval_limit", "eval_guidance_scales"}
    assert not [f.name for f in dataclasses.fields(SamplingConfig) if f.name.startswith("eval")]


@pytest.mark.parametrize("load", [load_config, load_grpo_config], ids=["stage I/II", "stage III"])
@pytest.mark.parametrize("override, message", [
    ("optim.lr=0", "optim.lr: expected a finite number > 0, got 0"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio: expected a finite number in [0, 1], got 1.5"),
    ("train.eval_guidance_scales=[]", "train.eval_guidance_scales: expected a list of one or more values"),
    ("train.eval_steps=0", "train.eval_steps: expected an integer >= 1, got 0"),
    ("train.logger=stdout", "train.logger: expected one of tensorboard, wandb, none, got 'stdout'"),
])
def test_shared_keys_are_refused_alike(load, override, message):
    with pytest.raises(ConfigError) as err:
        load(None, [override])
    assert message in str(err.value)


def test_moved_evaluation_keys_name_their_new_place(tmp_path):
    """Stage III's evaluation keys moved from sampling.eval_* to train.eval_*: a config file or override naming
    the old key is refused with the new one; a saved run's config (migrate=True) is read with them renamed."""
    old = tmp_path / "old.yaml"
    old.write_text("sampling:\n  steps: 6\n  eval_steps: 7\n  eval_guidance_scales: [1.0, 3.0]\n"
                   "train:\n  eval_limit: 2\n")
    with pytest.raises(UnknownKeyError, match=r"sampling.eval_steps has moved to train.eval_steps: rename it"):
        load_grpo_config(old)
    with pytest.raises(UnknownKeyError, match=r"sampling.eval_images_per_prompt has moved to "
                                              r"train.eval_images_per_prompt"):
        load_grpo_config(None, ["sampling.eval_images_per_prompt=2"])
    cfg = load_grpo_config(old, migrate=True)
    assert (cfg.sampling.steps, cfg.train.eval_steps, cfg.train.eval_guidance_scales, cfg.train.eval_limit) == (
        6, 7, [1.0, 3.0], 2)
    both = tmp_path / "both.yaml"
    both.write_text("sampling:\n  eval_steps: 7\ntrain:\n  eval_steps: 9\n")
    with pytest.raises(ConfigError, match="both sampling.eval_steps .* and train.eval_steps are set"):
        load_grpo_config(both, migrate=True)


def test_an_older_checkpoint_still_exports(tmp_path):
    """A stage-III checkpoint whose config.yaml has the older sampling.eval_* keys exports as before."""
    from parauni.rewards.base import WeightedReward
    from parauni.rl.export import export_checkpoint
    from parauni.rl.grpo import GRPOTrainer

    cfg = load_grpo_config(None, ["model.source=tiny", "prompts.per_epoch=2", "sampling.group_size=2",
                                  "sampling.steps=3", "optim.train_batch=4", "optim.steps_per_epoch=1",
                                  "model.lora_rank=2", "model.lora_alpha=4", "rewards.weights={bright: 1.0}",
                                  "ldam.enabled=false", "train.epochs=1", "train.logger=none",
                                  f"train.output_dir={tmp_path / 'run'}"])

    def bright(images, prompts, metadata=None):
        return torch.tensor([float(np.asarray(im).mean()) for im in images])

    GRPOTrainer(cfg, rewards=WeightedReward({"bright": 1.0}, rewards={"bright": bright}), progress=False).run()
    ckpt = tmp_path / "run" / "checkpoint-000001"
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    saved["sampling"]["eval_steps"] = saved["train"].pop("eval_steps")  # the older layout
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
    out = export_checkpoint(ckpt, tmp_path / "exported")
    assert (out / "model_index.json").is_file()
