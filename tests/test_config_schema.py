"""Stages I/II and III share one model section (train.config.ModelSource): the same keys, the same checks."""

import dataclasses

import pytest

from parauni.errors import ConfigError
from parauni.rl.config import GRPOModelConfig, load_grpo_config
from parauni.train.config import ModelConfig, ModelSource, load_config

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
