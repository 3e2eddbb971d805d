"""Stage-III algorithms as plugins: the registry, per-algorithm config roots (their sections, defaults and unused
keys), the shipped configs' resolved values, and a fourth algorithm added by a test."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from parauni.checks import POSITIVE
from parauni.errors import ConfigError, UnknownKeyError
from parauni.registry import ALGORITHMS
from parauni.rl.algorithm import Algorithm
from parauni.rl.config import load_grpo_config
from parauni.rl.nft import noised
from parauni.rl.ode import ode_sample
from parauni.rl.rollout import cfg_velocity
from parauni.train.schema import setting, to_yaml_dict
from parauni.utils.images import signed_to_uint8
from parauni.utils.resume_config import flatten
from test_grpo import trainer

ROOT = Path(__file__).resolve().parents[1]
PINNED = Path(__file__).parent / "data" / "rl_shipped_config_values.json"


def test_diffusion_nft_alone_gets_the_reference_defaults():
    """NVlabs/DiffusionNFT @ 24af555: guidance 1 (config/nft.py:64), KL beta 1e-4 (config/base.py:89), timestep
    fraction 0.99 (:87), the EMA every step (scripts/train_nft_sd3.py:567), lr 3e-4 (config/base.py:66)."""
    cfg = load_grpo_config(None, ["algorithm=diffusion_nft"])
    assert (cfg.sampling.guidance_scale, cfg.optim.kl_beta, cfg.optim.timestep_fraction, cfg.optim.ema_every,
            cfg.optim.lr) == (1.0, 1e-4, 0.99, 1, 3e-4)
    assert (cfg.nft.beta, cfg.nft.decay_type, cfg.nft.solver) == (1.0, 1, "dpm2")  # config/nft.py:60-66
    # a file or override still wins
    cfg = load_grpo_config(None, ["algorithm=diffusion_nft", "optim.lr=1e-3", "sampling.guidance_scale=4.5"])
    assert (cfg.optim.lr, cfg.sampling.guidance_scale, cfg.optim.kl_beta) == (1e-3, 4.5, 1e-4)


def test_flow_grpo_keeps_its_defaults():
    cfg = load_grpo_config(None, [])
    assert cfg.algorithm == "flow_grpo" and not hasattr(cfg, "nft")
    assert (cfg.sampling.guidance_scale, cfg.optim.kl_beta, cfg.optim.timestep_fraction, cfg.optim.ema_every,
            cfg.optim.lr, cfg.sampling.noise_level, cfg.optim.clip_range) == (4.5, 0.04, 1.0, 8, 1e-4, 0.7, 1e-4)


def _shipped():
    """The stage-III configs that existed when the values were pinned (later ones have no earlier values)."""
    pinned = json.loads(PINNED.read_text())
    return sorted(p.name for p in (ROOT / "configs").glob("*.yaml")
                  if ("grpo" in p.name or "nft" in p.name) and p.name in pinned)


@pytest.mark.parametrize("name", _shipped())
def test_shipped_configs_resolve_to_the_values_they_had(name):
    """Every key of each shipped stage-III config resolves to the value it had before the algorithms got their own
    config roots (pinned in tests/data), except keys the algorithm never reads (they never acted) and the new
    train.dist_timeout_minutes and train.evaluator."""
    pinned = json.loads(PINNED.read_text())[name]
    cfg = load_grpo_config(ROOT / "configs" / name)
    got = flatten(to_yaml_dict(cfg))
    from parauni.rl.algorithm import algorithm_class

    ignored = set(algorithm_class(cfg.algorithm).unused) | {"train.dist_timeout_minutes", "train.evaluator"}
    if cfg.algorithm != "diffusion_nft":
        ignored |= {k for k in pinned if k.startswith("nft.")}
    assert {k: v for k, v in got.items() if k not in ignored} == {k: v for k, v in pinned.items() if k not in ignored}


@pytest.mark.parametrize("overrides, message", [
    (["nft.beta=0.5"], "nft.beta: the section 'nft' belongs to algorithm 'diffusion_nft', and this config runs "
                       "'flow_grpo'"),
    (["algorithm=diffusion_nft", "sampling.noise_level=0.5"], "sampling.noise_level: algorithm 'diffusion_nft' does "
                                                              "not use it (it is read by flow_grpo"),
    (["algorithm=diffusion_nft", "sampling.sde_window=2"], "sampling.sde_window: algorithm 'diffusion_nft' does not "
                                                           "use it"),
    (["model.finetune=full", "model.lora_rank=8"], "model.lora_rank: model.finetune=full trains every transformer "
                                                   "weight and adds no LoRA"),
    (["algorithm=nope"], "algorithm: expected a registered algorithm or a 'package.module:Class' path, got 'nope'"),
])
def test_keys_of_another_algorithm_or_mode_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_grpo_config(None, overrides)
    assert message in str(err.value)


def test_another_algorithms_section_in_a_file_is_refused_and_a_saved_one_migrates(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algorithm: flow_grpo\nnft:\n  beta: 0.1\n")
    with pytest.raises(UnknownKeyError, match="belongs to algorithm 'diffusion_nft'"):
        load_grpo_config(f)
    cfg = load_grpo_config(f, migrate=True)  # an older run's saved config held every section
    assert cfg.algorithm == "flow_grpo" and not hasattr(cfg, "nft")
    f.write_text("algorithm: diffusion_nft\nsampling:\n  noise_level: 0.3\noptim:\n  drop_zero_adv: false\n")
    assert load_grpo_config(f, migrate=True).nft.beta == 1.0


def test_nft_ema_first_decay_counts_from_one(tmp_path):
    """DiffusionNFT's EMA (decay 0.9, every step) after its first optimizer step: global_step is 1 when
    ema.step runs (scripts/train_nft_sd3.py:1021, 1029), so the decay is min((1 + 1) / (10 + 1), 0.9) = 2/11."""
    tr = trainer(tmp_path, "algorithm=diffusion_nft", "optim.steps_per_epoch=1", "optim.train_batch=8")
    start = {n: p.detach().clone() for n, p in tr.params.items()}
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    tr.update(roll, adv, valid, 0)
    assert tr.opt_step == 1
    moved = False
    for n, p in tr.params.items():
        torch.testing.assert_close(tr.ema[n], 2 / 11 * start[n] + 9 / 11 * p.detach(), rtol=1e-5, atol=1e-7, msg=n)
        moved |= not torch.equal(p, start[n])
    assert moved


# ---- a fourth algorithm, defined here: one class, one registry line ------------------------------------------------

@dataclass
class RWRConfig:
    scale: float = setting(1.0, POSITIVE)  # the loss's factor


class RewardWeightedMatching(Algorithm):
    """Euler rollouts from the current policy, then one optimizer step on the flow-matching loss weighted per
    sample by its advantage (a small reward-weighted regression)."""

    name, section, Config = "tiny_rwr", "rwr", RWRConfig
    defaults = {"sampling.guidance_scale": 1.0}
    unused = ("sampling.noise_level",)
    drops_failed_samples = False

    @torch.no_grad()
    def rollout(self, epoch):
        tr = self.tr
        inp = tr.rollout_inputs(epoch)
        c = tr.pipe.transformer.config
        x = inp.streams.randn((c.in_channels, c.sample_size, c.sample_size))  # each sample's own stream
        x_0 = ode_sample(lambda z, s: cfg_velocity(tr.transformer, z, s, inp.cond, inp.uncond, 1.0), x,
                         tr.sigmas.tolist(), "euler")
        images = signed_to_uint8(tr.pipe.decode(x_0))
        return SimpleNamespace(prompts=inp.prompts, metadata=inp.metadata, group=inp.group, images=images, x_0=x_0,
                               cond=inp.cond, states=None, layer_noise=None)

    def update(self, roll, adv, valid, epoch):
        tr = self.tr
        idx = tr.train_indices(adv, valid, epoch, drop_zero=False)
        streams = tr.sample_streams("transitions", epoch)
        t = streams.rand((), idx) * 0.9 + 0.05
        eps = streams.randn(roll.x_0.shape[1:], idx)
        x_0 = roll.x_0[idx]
        cond, _ = tr.update_conditions(roll, idx)
        v = cfg_velocity(tr.transformer, noised(x_0, eps, t), t, cond, None, 1.0)
        w = torch.where(valid[idx], adv[idx], torch.zeros_like(adv[idx]))
        loss = self.tr.cfg.rwr.scale * (w * ((v - (eps - x_0)) ** 2).mean(dim=(1, 2, 3))).mean()
        tr.acc.backward(loss)
        norm = float(tr.optimizer_step())
        return {"loss": float(loss.detach()), "kl": 0.0, "grad_norm": norm, "diag/optimizer_steps": 1}


def test_a_fourth_algorithm_is_one_class_and_one_registry_line(tmp_path):
    ALGORITHMS.register("tiny_rwr", RewardWeightedMatching, help="reward-weighted flow matching (a test)")
    try:
        cfg = load_grpo_config(None, ["algorithm=tiny_rwr", "rwr.scale=2.0"])
        assert (cfg.rwr.scale, cfg.sampling.guidance_scale) == (2.0, 1.0)
        with pytest.raises(UnknownKeyError, match="belongs to algorithm 'tiny_rwr'"):
            load_grpo_config(None, ["rwr.scale=2.0"])
        with pytest.raises(ConfigError, match="sampling.noise_level: algorithm 'tiny_rwr' does not use it"):
            load_grpo_config(None, ["algorithm=tiny_rwr", "sampling.noise_level=0.3"])
        tr = trainer(tmp_path, "algorithm=tiny_rwr", "rwr.scale=2.0", "train.epochs=2", "train.eval_geneval=false")
        start = {n: p.detach().clone() for n, p in tr.params.items()}
        tr.run()
        rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
        assert tr.opt_step == 2 and any(not torch.equal(p, start[n]) for n, p in tr.params.items())
        assert (tmp_path / "run" / "final" / "model_index.json").is_file()
        # the same class by its path, without a registry line
        path = f"{__name__}:RewardWeightedMatching"
        assert load_grpo_config(None, [f"algorithm={path}"]).sampling.guidance_scale == 1.0
    finally:
        ALGORITHMS._entries.pop("tiny_rwr", None)


@pytest.mark.parametrize("algorithm, stale", [
    ("flow_grpo", {"nft": {"beta": 1.0, "adv_mode": "all", "decay_type": 1, "solver": "dpm2"}}),
    ("diffusion_nft", {"optim": {"drop_zero_adv": False}, "sampling": {"noise_level": 0.3}}),
])
def test_a_checkpoint_of_the_older_layout_resumes(tmp_path, algorithm, stale):
    """Checkpoints written before the algorithms had their own config roots hold every algorithm's section and keys
    the algorithm never read: resuming them is not refused as a config change."""
    import yaml

    from parauni.utils.checkpoints import complete_checkpoints

    trainer(tmp_path, f"algorithm={algorithm}", "train.epochs=1").run()
    ckpt = complete_checkpoints(tmp_path / "run", "grpo_state.json")[-1]
    saved = yaml.safe_load((ckpt / "config.yaml").read_text())
    for section, values in stale.items():
        saved.setdefault(section, {}).update(values)
    (ckpt / "config.yaml").write_text(yaml.safe_dump(saved))
    resumed = trainer(tmp_path, f"algorithm={algorithm}", "train.epochs=2", resume="latest")
    assert resumed.epoch == 1 and resumed.config_changes == []


def test_rl_help_lists_the_algorithms_and_grpo_is_an_alias(capsys, tmp_path):
    from parauni.cli import main

    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    out = capsys.readouterr().out
    for name in ALGORITHMS:
        assert f"  {name} " in out, out
    # the old name runs the same command and says so once, on stderr (here the run stops at a bad value)
    assert main(["grpo", "configs/toy_grpo.yaml", f"train.output_dir={tmp_path}", "optim.lr=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("`parauni grpo` is now `parauni rl`") == 1 and "optim.lr" in err


def test_a_child_config_replaces_a_mapping_unless_it_asks_to_merge(tmp_path):
    """``base:`` and the command line mean the same: a mapping in a child config replaces the base's (a child can
    say "only these rewards"); a top-level ``merge: [rewards.weights]`` sets its keys over the base's instead.
    Sections still merge key by key."""
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {ROOT / 'configs' / 'toy_grpo.yaml'}\nrewards:\n  weights: {{toy_geneval: 2.0}}\n"
                     "optim:\n  lr: 3.0e-3\n")
    cfg = load_grpo_config(child)
    assert cfg.rewards.weights == {"toy_geneval": 2.0}
    assert cfg.rewards.weights == load_grpo_config("configs/toy_grpo.yaml", ["rewards.weights={toy_geneval: 2.0}"]
                                                   ).rewards.weights
    assert cfg.optim.lr == 3e-3 and cfg.optim.clip_range == 1e-3  # the section merged: the base's clip range kept
    assert cfg.rewards.options == {"toy_geneval": {"mode": "clipped"}}  # not set in the child: the base's
    child.write_text(f"base: {ROOT / 'configs' / 'toy_grpo.yaml'}\nmerge: [rewards.weights]\nrewards:\n"
                     "  weights: {toy_geneval: 2.0}\n")
    assert load_grpo_config(child).rewards.weights == {"toy_alignment": 0.01, "toy_quality": 0.1, "toy_geneval": 2.0}
