"""Stage III resumed with --allow-config-change: a changed LoRA shape is refused by the strict loader's message,
a changed weight decay reaches only the decayed parameter group, a changed optim.eps every group."""

import numpy as np
import pytest
import torch

from parauni.errors import WeightsMismatchError
from parauni.rewards.base import WeightedReward
from parauni.rl.config import load_grpo_config
from parauni.rl.grpo import RLTrainer

BASE = ["model.source=tiny", "prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4",
        "model.lora_rank=4", "model.lora_alpha=8", "optim.train_batch=4", "rewards.weights={red: 1.0}",
        "ldam.reward_to_group={red: deep}", "train.save_every=1", "train.logger=none", "train.epochs=1",
        "model.train_lim=true"]  # the LIM brings 1-D parameters (norms, biases): a group without decay


def red(images, prompts, metadata=None):
    return torch.tensor([float(np.asarray(im)[..., 0].mean() / 255.0) for im in images])


def trainer(run, *extra, resume=False):
    cfg = load_grpo_config(None, [*BASE, f"train.output_dir={run}", *extra])
    return RLTrainer(cfg, rewards=WeightedReward(dict(cfg.rewards.weights), rewards={"red": red}), progress=False,
                     resume="latest" if resume else None, allow_config_change=resume)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "run"
    trainer(out, "optim.weight_decay=1e-4").run()
    return out


def test_a_changed_lora_rank_is_refused_naming_the_shapes(run):
    with pytest.raises(WeightsMismatchError) as err:
        trainer(run, "optim.weight_decay=1e-4", "model.lora_rank=8", "model.lora_alpha=16", resume=True)
    msg = str(err.value)
    assert "does not fit this model:" in msg and "shape mismatch" in msg and "(4, " in msg and "(8, " in msg, msg
    assert msg.rstrip().endswith("was it saved with other model.lora_rank / lora_targets / train_lim or another "
                                 "model?"), msg


def test_a_changed_weight_decay_reaches_only_the_decayed_group(run):
    assert {g["eps"] for g in trainer(run, "optim.weight_decay=1e-4", resume=True).opt.param_groups} == {1e-8}
    tr = trainer(run, "optim.weight_decay=0.25", "optim.eps=1e-6", "train.epochs=2", resume=True)
    assert {g["eps"] for g in tr.opt.param_groups} == {1e-6}  # optim.eps, like stages I/II's
    decays = sorted((g["weight_decay"], min(p.ndim for p in g["params"])) for g in tr.opt.param_groups)
    assert decays[-1] == (0.25, 2)  # the matrices
    assert len(decays) == 2 and decays[0] == (0.0, 1)  # the biases and norm scales
