"""Advantage Weighted Matching: the objective against a transcription of the reference's code written here
(float64), the training points against the reference's draw, and the algorithm inside the stage-III trainer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoint_asserts import assert_same_checkpoint
from parauni.errors import ConfigError
from parauni.rewards.base import WeightedReward
from parauni.rl.awm import (
    AdvantageWeightedMatching,
    AWMConfig,
    awm_log_prob,
    awm_sample_loss,
    old_decay,
    training_indices,
)
from parauni.rl.config import GRPOConfig, load_grpo_config
from parauni.rl.grpo import RLTrainer

# -- the reference, transcribed ---------------------------------------------------------------------------------
# scxue/advantage_weighted_matching @ be51372, advantage_weighted_matching/scripts/train_sd3_awm.py: the surrogate of
# compute_log_prob_awm (:234-252) and the loss of one micro-batch (:1282-1354), on flat (K * B) point-major rows.


def ref_log_prob(noise_pred, clean_latents, random_noise, timestep, weighting, ghuber_power):
    sigma = timestep
    std_dev_t = torch.sqrt(sigma / (1 - torch.clamp(sigma, 0, 0.99))) * 0.7
    model_output = noise_pred.double()
    log_prob = -(model_output - (random_noise.double() - clean_latents.double())) ** 2
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    if weighting == "t":
        log_prob = log_prob * timestep.view(-1)
    elif weighting == "t**2":
        log_prob = log_prob * timestep.view(-1) ** 2
    elif weighting == "Uniform":
        log_prob = log_prob
    elif weighting == "huber":
        log_prob = -(torch.sqrt(-log_prob + 1e-10) - 1e-5) * timestep.view(-1)
    elif weighting == "ghuber":
        log_prob = -(torch.pow(-log_prob + 1e-10, ghuber_power) - torch.pow(
            torch.tensor(1e-10, device=log_prob.device, dtype=log_prob.dtype), ghuber_power)) * timestep.view(-1) \
            / ghuber_power
    return log_prob, model_output, std_dev_t


def ref_loss(noise_pred, old_noise_pred, ref_pred, ema_pred, clean, noise, timesteps, adv, K, B, cfg):
    w = cfg["weighting"]
    log_prob, model_output, std_dev_t = ref_log_prob(noise_pred, clean, noise, timesteps, w, cfg["ghuber_power"])
    if old_noise_pred is None:  # on-policy: the first accumulation's old log-probs are the current ones (:1283-1284)
        old_log_probs = log_prob.reshape(K, B).detach()
    else:
        old_log_probs = ref_log_prob(old_noise_pred, clean, noise, timesteps, w, cfg["ghuber_power"])[0].reshape(K, B)
    _, model_output_ref, _ = ref_log_prob(ref_pred, clean, noise, timesteps, w, cfg["ghuber_power"])
    _, model_output_ema, _ = ref_log_prob(ema_pred, clean, noise, timesteps, w, cfg["ghuber_power"])
    log_probs = log_prob.reshape(K, B)
    model_output = model_output.reshape(K, B, *model_output.shape[1:])
    model_output_ref = model_output_ref.reshape(K, B, *model_output_ref.shape[1:])
    model_output_ema = model_output_ema.reshape(K, B, *model_output_ema.shape[1:])
    std_dev_t = std_dev_t.reshape(K, B, *std_dev_t.shape[1:])
    advantages = torch.clamp(adv[:, 0], -cfg["adv_clip_max"], cfg["adv_clip_max"])
    advantages = advantages / cfg["adv_clip_max"] * cfg["advantage_max"]
    if cfg["loss_type"] == "sum_first":
        ratio = torch.exp(log_probs.mean(dim=0) - old_log_probs.mean(dim=0).detach())
    else:
        ratio = torch.exp(log_probs.view(-1) - old_log_probs.view(-1).detach())
        advantages = advantages.unsqueeze(0).repeat(K, 1).view(-1)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1.0 - cfg["clip_range"], 1.0 + cfg["clip_range"])
    policy_loss = torch.mean(torch.maximum(unclipped_loss, clipped_loss))
    if cfg["kl_weight"] == "ELBO":
        kl_loss = ((model_output - model_output_ref) ** 2).mean(dim=(2, 3, 4), keepdim=True) / (2 * std_dev_t ** 2)
    else:
        kl_loss = ((model_output - model_output_ref) ** 2).mean(dim=(2, 3, 4), keepdim=True)
    kl_loss = kl_loss.mean(dim=0).mean()
    if cfg["kl_ema_weight"] == "ELBO":
        ema_kl_loss = ((model_output - model_output_ema) ** 2).mean(dim=(2, 3, 4), keepdim=True) / (2 * std_dev_t ** 2)
    else:
        ema_kl_loss = ((model_output - model_output_ema) ** 2).mean(dim=(2, 3, 4), keepdim=True)
    ema_kl_loss = ema_kl_loss.mean(dim=0).mean()
    return policy_loss + cfg["beta"] * kl_loss + cfg["ema_beta"] * ema_kl_loss


NAMES = {"uniform": "Uniform", "elbo": "ELBO"}


@pytest.mark.parametrize("on_policy", [False, True])
@pytest.mark.parametrize("loss_type", ["exp_first", "sum_first"])
@pytest.mark.parametrize("weighting,kl_weight", [("uniform", "uniform"), ("t", "elbo"), ("t**2", "uniform"),
                                                 ("huber", "elbo"), ("ghuber", "uniform")])
def test_objective_and_gradient_match_the_reference(weighting, kl_weight, loss_type, on_policy):
    K, B, shape = 3, 4, (2, 3, 3)
    g = torch.Generator().manual_seed(7)
    x_0 = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    eps = torch.randn(K, B, *shape, generator=g, dtype=torch.float64)
    t = torch.tensor([[1.0, 0.2, 0.55, 0.9], [0.995, 0.4, 0.05, 0.7], [0.3, 0.8, 0.15, 0.6]], dtype=torch.float64)
    u = eps - x_0
    v0 = u + 0.8 * torch.randn(K, B, *shape, generator=g, dtype=torch.float64)
    v_prev = v0 + 0.05 * torch.randn(K, B, *shape, generator=g, dtype=torch.float64)
    v_ref = v0 + 0.3 * torch.randn(K, B, *shape, generator=g, dtype=torch.float64)
    v_old = v0 + 0.1 * torch.randn(K, B, *shape, generator=g, dtype=torch.float64)
    adv = torch.tensor([-7.0, -1.3, 0.4, 6.2], dtype=torch.float64)  # two beyond adv_clip_max = 5
    c = AWMConfig(weighting=weighting, ghuber_power=0.25, loss_type=loss_type, advantage_max=1.5,
                  kl_weight=kl_weight, old_kl_beta=0.7, old_kl_weight="elbo" if kl_weight == "uniform" else "uniform")
    adv_clip_max, kl_beta = 5.0, 0.3
    old, clip_range = None, 0.01
    if not on_policy:
        old = awm_log_prob(v_prev.flatten(0, 1), eps.flatten(0, 1), x_0.repeat(K, 1, 1, 1), t.reshape(-1), weighting,
                           0.25).reshape(K, B)
        # a clip range between the ratios' deviations, so that some are clipped and some are not
        dev = (awm_sample_loss(v0, old, None, None, x_0, eps, t, adv, c, 1.0, adv_clip_max, 0.0)[1]["ratio"] - 1).abs()
        clip_range = float(dev.flatten().sort().values[dev.numel() // 2 - 1:dev.numel() // 2 + 1].mean())

    v_ours = v0.clone().requires_grad_(True)
    loss, terms = awm_sample_loss(v_ours, old, v_ref, v_old, x_0, eps, t, adv, c, clip_range, adv_clip_max, kl_beta)
    ours = loss.mean()
    (g_ours,) = torch.autograd.grad(ours, v_ours)

    flat = lambda z: z.reshape(K * B, *shape)  # noqa: E731
    v_theirs = flat(v0).clone().requires_grad_(True)
    cfg = {"weighting": NAMES.get(weighting, weighting), "ghuber_power": 0.25, "loss_type": loss_type,
           "advantage_max": 1.5, "adv_clip_max": adv_clip_max, "clip_range": clip_range, "beta": kl_beta,
           "kl_weight": NAMES[kl_weight], "ema_beta": 0.7, "kl_ema_weight": NAMES[c.old_kl_weight]}
    theirs = ref_loss(v_theirs, None if on_policy else flat(v_prev), flat(v_ref), flat(v_old),
                      x_0.repeat(K, 1, 1, 1), flat(eps), t.reshape(-1, 1, 1, 1), adv.reshape(B, 1), K, B, cfg)
    (g_theirs,) = torch.autograd.grad(theirs, v_theirs)

    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_ours, g_theirs.reshape(K, B, *shape), rtol=0, atol=1e-12)
    assert g_ours.abs().max() > 1e-3  # not a vacuous agreement
    if on_policy:
        assert bool((terms["ratio"] == 1).all())
    else:  # the case exercises the clip on both sides of the ratio
        r = terms["ratio"]
        assert bool(((r - 1).abs() > clip_range).any()) and bool(((r - 1).abs() < clip_range).any())


def test_training_points_are_the_reference_draw_per_sample():
    """Each sample's row is the reference's draw (:1197-1205; :1172-1180; :1181-1193) from its own uniforms."""
    n, steps, frac, k = 64, 14, 0.9, 6  # the reference's GenEval numbers (dgx:37, :56, :60)
    for time_type in ("discrete_wo_init", "discrete", "discrete_with_init"):
        idx = training_indices(n, steps, frac, k, time_type, torch.Generator().manual_seed(3))
        strata = k - 1 if time_type == "discrete_with_init" else k
        u_all = torch.rand((n, strata), generator=torch.Generator().manual_seed(3))
        for row, u in zip(idx, u_all, strict=True):
            lo = 0 if time_type == "discrete" else 1
            boundaries = torch.linspace(lo, int(steps * frac), steps=strata + 1)
            lower_bounds, upper_bounds = boundaries[:-1].long(), boundaries[1:].long()
            want = lower_bounds + (u * (upper_bounds - lower_bounds)).long()
            if time_type == "discrete_with_init":
                want = torch.cat([torch.tensor([0]), want])
            assert row.tolist() == want.tolist()
        assert idx.shape == (n, k) and int(idx.max()) < int(steps * frac)
        assert len({tuple(r) for r in idx.tolist()}) > n // 4  # each sample draws its own points
    wo = training_indices(n, steps, frac, k, "discrete_wo_init", torch.Generator().manual_seed(0))
    assert int(wo.min()) >= 1  # sigma = 1 is never trained
    assert old_decay(0, 0.3) == 0.0 and old_decay(120, 0.3) == pytest.approx(0.12) and old_decay(900, 0.3) == 0.3
    assert old_decay(5, 0.3, "constant") == 0.3


# -- the algorithm in the trainer -----------------------------------------------------------------------------------


def red(images, prompts, metadata=None):
    return torch.tensor([float(np.asarray(im)[..., 0].mean() / 255.0) for im in images])


BASE = ["algorithm=awm", "model.source=tiny", "prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4",
        "sampling.guidance_scale=1.0", "model.lora_rank=4", "model.lora_alpha=8", "optim.train_batch=4",
        "optim.steps_per_epoch=1", "optim.timestep_fraction=0.9", "optim.kl_beta=1e-3", "optim.clip_range=1e-4",
        "awm.train_timesteps=2", "rewards.weights={red: 1.0}", "ldam.reward_to_group={red: deep}",
        "train.save_every=1", "train.logger=none"]


def awm_trainer(tmp_path, *extra, name="run", resume=False):
    base = [b for b in BASE if not b.startswith("model.lora_")] if "model.finetune=full" in extra else BASE
    cfg = load_grpo_config(None, [*base, f"train.output_dir={tmp_path / name}", *extra])
    return RLTrainer(cfg, rewards=WeightedReward(dict(cfg.rewards.weights), rewards={"red": red}), progress=False,
                     resume=resume)


def one_update(tr):
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    return tr.update(roll, adv, valid, 0)


def test_an_epoch_trains_lora_only_on_policy_with_ratio_one(tmp_path):
    tr = awm_trainer(tmp_path, "optim.lr=1e-2")
    base = {n: p.clone() for n, p in tr.raw_transformer.named_parameters() if "lora" not in n}
    start = {n: p.detach().clone() for n, p in tr.params.items()}
    roll = tr.rollout(0)
    assert roll.x_0.shape[0] == 8 and len(roll.images) == 8
    stats = one_update(tr)
    assert stats["diag/optimizer_steps"] == 1 and np.isfinite(stats["loss"]) and stats["grad_norm"] > 0
    assert stats["ratio_dev"] == 0 and stats["clip_frac"] == 0  # the first on-policy update: ratio 1 exactly
    for n, p in tr.raw_transformer.named_parameters():
        if "lora" not in n:
            torch.testing.assert_close(p, base[n], rtol=0, atol=0)
    assert any((tr.params[n] - start[n]).abs().max() > 0 for n in start)
    for n in start:  # the old weights stay during the update, then follow min(0.3, 0.001 * steps) = 0.001
        torch.testing.assert_close(tr.algo.old.weights[n], start[n], rtol=0, atol=0)
    tr.algo.after_epoch()
    for n, p in tr.params.items():
        torch.testing.assert_close(tr.algo.old.weights[n], 0.001 * start[n] + 0.999 * p.detach(), rtol=1e-6, atol=1e-7)


def test_old_surrogates_share_the_points_and_noise_and_predate_the_steps(tmp_path):
    """Two optimizer steps an epoch: with a negligible step the second step's ratios stay 1 (same points, same
    noise, same autocast as the new surrogates); with a real step they move (the old ones came before it)."""
    tiny = one_update(awm_trainer(tmp_path, "optim.steps_per_epoch=2", "optim.train_batch=2", "optim.lr=1e-12",
                                  name="tiny"))
    assert tiny["diag/optimizer_steps"] == 2 and tiny["ratio_dev"] < 1e-7, tiny
    real = one_update(awm_trainer(tmp_path, "optim.steps_per_epoch=2", "optim.train_batch=2", "optim.lr=3e-2",
                                  name="real"))
    assert real["ratio_dev"] > 1e-6 and real["clip_frac"] > 0, real


def test_the_gradient_does_not_depend_on_the_micro_batches(tmp_path):
    """Points and noise are drawn per sample and the loss is divided per sample: micro-batches of 8 and of 3, 3, 2
    give the same accumulated gradient (its norm, before clipping)."""
    norms = [one_update(awm_trainer(tmp_path, f"optim.train_batch={b}", name=f"b{b}"))["grad_norm"] for b in (8, 3)]
    assert norms[0] > 0 and norms[1] == pytest.approx(norms[0], rel=1e-5), norms


def test_a_full_fine_tune_trains_every_weight_against_the_starting_model(tmp_path):
    tr = awm_trainer(tmp_path, "model.finetune=full", "optim.lr=1e-4", "optim.kl_beta=0.1")
    start = {n: p.detach().clone() for n, p in tr.raw_transformer.named_parameters()}
    stats = one_update(tr)
    assert stats["kl"] == 0 and stats["ratio_dev"] == 0  # the first step starts at the reference
    moved = {n for n, p in tr.raw_transformer.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert moved == set(start)
    with tr.reference() as reference:
        for n, p in reference.named_parameters():
            assert torch.equal(p, start[n]), n
    roll = tr.rollout(1)
    adv, valid, _ = tr.advantages(roll)
    assert tr.update(roll, adv, valid, 1)["kl"] > 0  # then the policy has left it


def test_off_policy_rolls_out_from_the_old_policy(tmp_path):
    tr = awm_trainer(tmp_path, "awm.off_policy=true", "optim.lr=5e-2")
    one_update(tr)  # the current policy moves; the old one has not followed yet
    x_old = tr.rollout(1).x_0
    tr.algo.cfg = dataclasses.replace(tr.algo.cfg, off_policy=False)
    x_now = tr.rollout(1).x_0
    assert (x_old - x_now).abs().max() > 1e-4
    tr.algo.old.load({"old": {n: p.detach().clone() for n, p in tr.params.items()}})
    tr.algo.cfg = dataclasses.replace(tr.algo.cfg, off_policy=True)
    torch.testing.assert_close(tr.rollout(1).x_0, x_now, rtol=1e-5, atol=1e-5)


def test_awm_resumes_exactly_with_its_old_policy(tmp_path):
    extra = ["train.epochs=2", "optim.lr=1e-2", "awm.old_decay_type=constant"]
    awm_trainer(tmp_path, *extra, name="full").run()
    awm_trainer(tmp_path, *extra, name="cut").run(stop_after=1)
    assert (tmp_path / "cut" / "checkpoint-000001" / "old.safetensors").is_file()
    resumed = awm_trainer(tmp_path, *extra, name="cut", resume="latest")
    assert resumed.epoch == 1
    resumed.run()
    assert_same_checkpoint(tmp_path / "cut" / "checkpoint-000002", tmp_path / "full" / "checkpoint-000002")


@pytest.mark.slow  # 15 epochs: about 20 s on a shared CPU core
def test_awm_raises_a_simple_reward(tmp_path):
    """On a fixed prompt pool, 15 epochs of AWM with a redness reward make the samples redder."""
    tr = awm_trainer(tmp_path, "prompts.pool=4", "prompts.per_epoch=4", "sampling.group_size=8", "train.epochs=15",
                     "model.lora_rank=8", "model.lora_alpha=16", "optim.train_batch=8", "optim.lr=3e-3",
                     "optim.clip_range=1.0", "train.save_every=1000")
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r["reward/red"] for r in rows]
    assert np.mean(values[-4:]) > np.mean(values[:4]) + 0.01, values


def test_awm_config_checks_and_declared_keys(tmp_path):
    with pytest.raises(ConfigError, match="awm.weighting"):
        load_grpo_config(None, [*BASE, "awm.weighting=cubic"])
    with pytest.raises(ConfigError, match="awm.time_type"):
        load_grpo_config(None, [*BASE, "awm.time_type=logit_normal"])
    with pytest.raises(ConfigError, match="train_lim"):
        awm_trainer(tmp_path, "model.train_lim=true")
    root = GRPOConfig()
    for key in [*AdvantageWeightedMatching.defaults, *AdvantageWeightedMatching.unused]:  # real shared keys
        section, name = key.split(".")
        assert hasattr(getattr(root, section), name), key
    assert AdvantageWeightedMatching.Config is AWMConfig and AdvantageWeightedMatching.section == "awm"
    assert not set(AdvantageWeightedMatching.defaults) & set(AdvantageWeightedMatching.unused)


def test_shipped_awm_config_loads_with_the_reference_numbers():
    path = Path(__file__).resolve().parents[1] / "configs" / "toy_awm_geneval.yaml"
    cfg = load_grpo_config(path)
    assert cfg.algorithm == "awm" and cfg.sampling.guidance_scale == 1.0 and cfg.optim.clip_range == 1.0
    assert cfg.optim.ema_decay == 0.99 and cfg.optim.ema_every == 1 and cfg.optim.steps_per_epoch == 1
    a = cfg.awm
    assert (a.weighting, a.ghuber_power, a.loss_type, a.advantage_max, a.old_kl_beta, a.old_decay, a.time_type) == \
        ("ghuber", 0.25, "exp_first", 1.0, 1.0, 0.3, "discrete_wo_init")
