"""Stage III outside fp32 / one process / one accumulation step: precision of rollouts and updates, the process
group's timeout, the optimizer steps per rank, gradient accumulation under a launcher, per-sample normalisation and
zero-weight rewards."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState

from test_grpo import trainer


@pytest.fixture
def fresh_accelerator():
    """Accelerate keeps one process-wide state: a test that asks for another precision (or launcher setting)
    starts from a clean one and leaves a clean one behind."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("merge", ["true", "false"])
def test_bf16_first_on_policy_update_has_ratio_one(tmp_path, fresh_accelerator, merge):
    """One optimizer step an epoch: every micro-batch of the first update is on-policy, so the new
    log-probabilities equal the stored ones when rollout and update run at the same precision. A trained
    (non-zero) LoRA makes a merged copy differ from the adapter under bf16."""
    tr = trainer(tmp_path, "train.mixed_precision=bf16", "optim.train_batch=8", "optim.steps_per_epoch=1",
                 f"sampling.merge_lora={merge}", "ldam.enabled=false", "optim.clip_range=1e-4")
    assert tr.acc.mixed_precision == "bf16"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in tr.params.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    stats = tr.update(roll, adv, valid, 0)
    assert stats["clip_frac"] == 0.0 and stats["ratio_dev"] < 1e-6, stats


def test_process_group_timeout_comes_from_the_config(tmp_path, fresh_accelerator):
    """Every rank waits in a collective while the main process evaluates: the wait is bounded by
    ``train.dist_timeout_minutes`` (given to the process group), not by NCCL's 10-minute default."""
    from datetime import timedelta

    tr = trainer(tmp_path, "train.dist_timeout_minutes=7.5")
    assert tr.acc.init_handler is not None and tr.acc.init_handler.timeout == timedelta(minutes=7.5)
    default = trainer(tmp_path, name="default")
    assert default.acc.init_handler.timeout == timedelta(minutes=default.cfg.train.dist_timeout_minutes)


def test_launcher_gradient_accumulation_changes_nothing(tmp_path, fresh_accelerator, monkeypatch):
    """Stage III accumulates over micro-batches itself: a launcher's gradient accumulation (``accelerate launch
    --gradient_accumulation_steps 2`` sets this variable) must not divide its losses."""
    extra = ("optim.train_batch=4", "optim.steps_per_epoch=1", "ldam.enabled=false")
    plain = trainer(tmp_path, *extra, name="plain")
    roll = plain.rollout(0)
    adv, valid, _ = plain.advantages(roll)
    expect = plain.update(roll, adv, valid, 0)
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    launched = trainer(tmp_path, *extra, name="launched")
    assert launched.acc.gradient_accumulation_steps == 1
    roll = launched.rollout(0)
    adv, valid, _ = launched.advantages(roll)
    got = launched.update(roll, adv, valid, 0)
    assert got["grad_norm"] == pytest.approx(expect["grad_norm"], rel=1e-6)
    for n, p in launched.params.items():
        torch.testing.assert_close(p, plain.params[n], rtol=0, atol=0, msg=n)


def test_steps_per_epoch_is_checked_per_process():
    """Micro-batches are cut per process: configs/toy_grpo.yaml (64 samples an epoch, micro-batches of 16, 2 steps)
    holds 2 steps on 1 or 2 processes but only 1 on 4, which is refused naming the fix; the run's planned
    optimizer steps count the same steps."""
    from parauni.errors import ConfigError
    from parauni.rl.config import load_grpo_config, steps_per_epoch

    cfg = load_grpo_config("configs/toy_grpo.yaml")
    assert steps_per_epoch(cfg, 1) == 2 and steps_per_epoch(cfg, 2) == 2
    with pytest.raises(ConfigError, match=r"on 4 processes .* at most 1 optimizer step.*optim.steps_per_epoch=1"):
        steps_per_epoch(cfg, 4)
    cfg = load_grpo_config("configs/toy_grpo.yaml", ["optim.steps_per_epoch=null"])
    assert [steps_per_epoch(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]


def test_planned_steps_follow_the_steps_an_epoch_makes(tmp_path):
    """``planned_steps`` (the schedule's and the EMA's clock) equals the optimizer steps an epoch actually makes."""
    tr = trainer(tmp_path, "optim.steps_per_epoch=null", "optim.train_batch=3", "train.epochs=2",
                 "optim.drop_zero_adv=false")
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    made = tr.update(roll, adv, valid, 0)["diag/optimizer_steps"]
    assert made == 3 and tr.planned_steps() == 2 * made


def test_nft_loss_is_a_mean_over_samples_with_a_short_last_micro_batch(tmp_path):
    """8 samples in micro-batches of 3, 3 and 2 accumulated into one optimizer step: the gradient is the mean over
    the 8 samples of each sample's own gradient (every sample weighs the same), recomputed here one sample at a
    time with the update's own training points and noise draws."""
    from parauni.rl.diffusion_nft import training_points
    from parauni.rl.nft import nft_loss, noised, reward_weight
    from parauni.rl.rollout import cfg_velocity

    tr = trainer(tmp_path, "algorithm=diffusion_nft", "optim.train_batch=3", "optim.steps_per_epoch=1",
                 "optim.kl_beta=0", "optim.timestep_fraction=0.25", "ldam.enabled=false", "nft.beta=0.5")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained LoRA: current and old policies differ from the base model
        for n, p in tr.params.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        tr.algo.old.load({"old": {n: p.detach().clone() for n, p in tr.params.items()}})
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    o = tr.cfg.optim
    # the update's draws: the samples, each sample's training point (K = 1) and noise from its own streams
    idx = tr.train_indices(adv, valid, 0, drop_zero=False)
    grid = roll.sigmas[:-1].float()
    points = torch.cat([training_points(1, len(grid), o.timestep_fraction, g)
                        for g in tr.sample_streams("transitions", 0).generators])
    noise = tr.sample_streams("nft_noise", 0).randn((1, *roll.x_0.shape[1:]))[:, 0]  # (B, c, h, w)
    r = reward_weight(adv.float(), o.adv_clip, tr.cfg.nft.adv_mode)
    old = tr.algo.old_model()
    grads = []
    for s in idx.tolist():
        x_0 = roll.x_0[s:s + 1].float()
        t = grid[points[s:s + 1, 0]]
        x_t = noised(x_0, noise[s:s + 1], t)
        cond = roll.cond[s:s + 1]
        with torch.no_grad():
            v_old = cfg_velocity(old, x_t, t, cond, None, 1.0)
        v = cfg_velocity(tr.transformer, x_t, t, cond, None, 1.0)
        loss, _ = nft_loss(v, v_old, None, x_t, x_0, t, r[s:s + 1], 0.5, o.adv_clip, 0.0)
        grads.append(torch.autograd.grad(loss, list(tr.params.values())))
    expect = [torch.stack(gs).mean(0) for gs in zip(*grads, strict=True)]
    got = {}
    hooks = [p.register_post_accumulate_grad_hook(lambda p, n=n: got.__setitem__(n, p.grad.clone()))
             for n, p in tr.params.items()]
    tr.update(roll, adv, valid, 0)
    for h in hooks:
        h.remove()
    for (n, _), e in zip(tr.params.items(), expect, strict=True):
        # float32 round-off of two summation orders, relative to each tensor's scale; the per-micro-batch mean
        # weighs the last 2 samples 3/2 times and misses by far more
        torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-4 * float(e.abs().max()), msg=n)


def test_a_zero_weight_reward_never_drops_samples():
    """A reward weighted 0 is watched, not summed: its NaN neither makes the total NaN nor takes the sample out."""
    from parauni.rewards.base import WeightedReward

    def nan_all(images, prompts, metadata=None):
        return torch.full((len(images),), float("nan"))

    def const(images, prompts, metadata=None):
        return torch.arange(len(images), dtype=torch.float32)

    images = [torch.zeros(4, 4, 3, dtype=torch.uint8).numpy() for _ in range(3)]
    total, parts = WeightedReward({"c": 2.0, "watched": 0.0}, rewards={"c": const, "watched": nan_all})(
        images, ["a"] * 3)
    assert total.tolist() == [0.0, 2.0, 4.0] and torch.isnan(parts["watched"]).all()
    total, _ = WeightedReward({"c": 2.0, "bad": 0.5}, rewards={"c": const, "bad": nan_all})(images, ["a"] * 3)
    assert torch.isnan(total).all()  # a weighted NaN still drops the sample


def test_zero_weight_nan_reward_keeps_every_sample_in_the_loop(tmp_path):
    tr = trainer(tmp_path, "rewards.weights={red: 1.0, odd: 0.0}", "ldam.reward_to_group={red: deep, odd: shallow}",
                 fns={"red": lambda im, p, m=None: torch.tensor([float(x[..., 0].mean()) for x in im]),
                      "odd": lambda im, p, m=None: torch.full((len(im),), float("nan"))})
    roll = tr.rollout(0)
    adv, valid, stats = tr.advantages(roll)
    assert stats["reward/dropped"] == 0 and bool(valid.all())
