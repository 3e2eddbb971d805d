"""DiffusionNFT: the objective against derivations written here from the paper's equations (float64), the
deterministic solvers against diffusers' own schedulers, and the algorithm inside the stage-III trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from checkpoint_asserts import assert_same_checkpoint
from parauni.errors import ConfigError, TrainingStalledError
from parauni.rewards.base import WeightedReward
from parauni.rl.config import load_grpo_config
from parauni.rl.grpo import RLTrainer
from parauni.rl.nft import nft_loss, noised, old_policy_decay, reward_weight
from parauni.rl.ode import ode_sample

# -- the objective ------------------------------------------------------------------------------------------------


def _case(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    shape = (b, 2, 3, 3)
    x_0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0.2, 0.55, 0.9][:b], dtype=torch.float64)
    v_old = torch.randn(shape, generator=g, dtype=torch.float64)
    return x_0, eps, t, v_old


def _grad(v, **kw):
    v = v.clone().requires_grad_(True)
    loss, _ = nft_loss(v, **kw)
    (g,) = torch.autograd.grad(loss, v)
    return g


def test_positive_branch_at_the_old_policy_is_weighted_flow_matching():
    """r = 1 and v_old = v: the gradient is the flow-matching gradient 2 (v - u) / n (u = eps - x_0, the target
    velocity), scaled by adv_clip_max * t / (B * mean|v - u|), whatever beta is (the paper's Eq. with r = 1)."""
    x_0, eps, t, v = _case()
    x_t = (1 - t.view(-1, 1, 1, 1)) * x_0 + t.view(-1, 1, 1, 1) * eps
    u = eps - x_0
    b, n = x_0.shape[0], x_0[0].numel()
    for beta in (0.1, 1.0, 2.5):
        g = _grad(v, v_old=v.clone(), v_ref=None, x_t=x_t, x_0=x_0, t=t, r=torch.ones(b, dtype=torch.float64),
                  beta=beta, adv_clip_max=5.0, kl_beta=0.0)
        fm = 2 * (v - u) / n
        scale = 5.0 * t.view(-1, 1, 1, 1) / (b * (v - u).abs().flatten(1).mean(1).view(-1, 1, 1, 1))
        torch.testing.assert_close(g, scale * fm, rtol=1e-10, atol=1e-12)


def test_negative_branch_pushes_the_other_way():
    x_0, eps, t, v = _case(1)
    x_t = noised(x_0, eps, t)
    kw = dict(v_old=v.clone(), v_ref=None, x_t=x_t, x_0=x_0, t=t, beta=0.7, adv_clip_max=5.0, kl_beta=0.0)
    g_pos = _grad(v, r=torch.ones(3, dtype=torch.float64), **kw)
    g_neg = _grad(v, r=torch.zeros(3, dtype=torch.float64), **kw)
    torch.testing.assert_close(g_neg, -g_pos, rtol=1e-10, atol=1e-12)
    # r = 1/2 (advantage 0) at the old policy: the two branches cancel
    g_half = _grad(v, r=torch.full((3,), 0.5, dtype=torch.float64), **kw)
    assert g_half.abs().max() < 1e-12


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_beta_scales_the_step(beta):
    """The positive policy beta v + (1 - beta) v_old hits the target u = eps - x_0 where v = v_old + (u - v_old) /
    beta, so the r = 1 loss is stationary exactly there (and the r = 0 loss at v_old - (u - v_old) / beta): a
    step of 1 / beta from the old policy, the paper's reading of beta."""
    x_0, eps, t, v_old = _case(2)
    x_t = noised(x_0, eps, t)
    u = eps - x_0
    kw = dict(v_old=v_old, v_ref=None, x_t=x_t, x_0=x_0, t=t, beta=beta, adv_clip_max=5.0, kl_beta=0.0)
    one, zero = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    assert _grad(v_old + (u - v_old) / beta, r=one, **kw).abs().max() < 1e-9
    assert _grad(v_old - (u - v_old) / beta, r=zero, **kw).abs().max() < 1e-9
    assert _grad(v_old + (u - v_old) / (2 * beta), r=one, **kw).abs().max() > 1e-3


def test_kl_term_and_sample_weights():
    x_0, eps, t, v = _case(3)
    x_t = noised(x_0, eps, t)
    v_ref = v + 0.1 * torch.arange(3, dtype=torch.float64).view(-1, 1, 1, 1)
    r = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    base, _ = nft_loss(v, v * 0.9, None, x_t, x_0, t, r, 1.0, 5.0, 0.0)
    with_kl, terms = nft_loss(v, v * 0.9, v_ref, x_t, x_0, t, r, 1.0, 5.0, 0.25)
    expect_kl = torch.tensor([0.0, 0.01, 0.04], dtype=torch.float64)
    torch.testing.assert_close(terms["kl"], expect_kl)
    torch.testing.assert_close(with_kl - base, 0.25 * expect_kl.mean())
    # a zero weight takes a sample out of both means without changing the divisor
    w = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    weighted, terms = nft_loss(v, v * 0.9, v_ref, x_t, x_0, t, r, 1.0, 5.0, 0.25, weight=w)
    torch.testing.assert_close(weighted, (5.0 * (w * terms["policy"]).sum() + 0.25 * (w * expect_kl).sum()) / 3)


def test_reward_weight_modes_by_hand():
    a = torch.tensor([-7.0, -2.5, 0.0, 1.0, 5.0])
    torch.testing.assert_close(reward_weight(a), torch.tensor([0.0, 0.25, 0.5, 0.6, 1.0]))
    torch.testing.assert_close(reward_weight(a, mode="positive_only"), torch.tensor([0.5, 0.5, 0.5, 0.6, 1.0]))
    torch.testing.assert_close(reward_weight(a, mode="negative_only"), torch.tensor([0.0, 0.25, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(reward_weight(a, mode="one_only"), torch.tensor([0.5, 0.5, 0.5, 0.6, 0.6]))
    torch.testing.assert_close(reward_weight(a, mode="binary"), torch.tensor([0.4, 0.4, 0.5, 0.6, 0.6]))
    with pytest.raises(ValueError, match="adv_mode"):
        reward_weight(a, mode="nope")


def test_old_policy_decay_schedules():
    assert [old_policy_decay(s, 0) for s in (0, 10, 10_000)] == [0.0, 0.0, 0.0]
    assert [old_policy_decay(s, 1) for s in (0, 100, 499, 500, 10_000)] == pytest.approx([0, 0.1, 0.499, 0.5, 0.5])
    assert [old_policy_decay(s, 2) for s in (0, 74, 75, 76, 10_000)] == pytest.approx([0, 0, 0, 0.0075, 0.999])


# -- the solvers against diffusers --------------------------------------------------------------------------------


def _velocity(x, sigma):
    return torch.tanh(x) * (1 + float(sigma)) + 0.3 * float(sigma)


def test_dpm2_matches_diffusers_dpm_solver_multistep():
    """SANA's scheduler (DPM-Solver++ 2M, flow prediction, flow sigmas): our solver gives the same path."""
    for shift, steps in ((1.0, 10), (3.0, 7), (3.0, 20)):
        sched = DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift,
                                            algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True,
                                            final_sigmas_type="zero")
        sched.set_timesteps(steps)
        x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = x0.clone()
        for k, ts in enumerate(sched.timesteps):
            x = sched.step(_velocity(x, sched.sigmas[k]), ts, x).prev_sample
        ours = ode_sample(_velocity, x0, sched.sigmas.tolist(), "dpm2")
        # diffusers keeps its sigmas and log-SNRs in float32: agreement to its round-off (a first- instead of a
        # second-order step anywhere differs by ~1e-2 here)
        torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)
        assert (ode_sample(_velocity, x0, sched.sigmas.tolist(), "euler") - x).abs().max() > 1e-3


def test_euler_matches_diffusers_flow_match_euler():
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(8)
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x0.clone()
    for k, ts in enumerate(sched.timesteps):
        x = sched.step(_velocity(x, sched.sigmas[k]), ts, x).prev_sample
    # diffusers upcasts to float32 for the step: agreement to float32 round-off
    torch.testing.assert_close(ode_sample(_velocity, x0, sched.sigmas.tolist(), "euler"), x, rtol=1e-5, atol=1e-5)


# -- the algorithm in the trainer -----------------------------------------------------------------------------------


def red(images, prompts, metadata=None):
    return torch.tensor([float(np.asarray(im)[..., 0].mean() / 255.0) for im in images])


BASE = ["algorithm=diffusion_nft", "model.source=tiny", "prompts.per_epoch=2", "sampling.group_size=4",
        "sampling.steps=4", "sampling.guidance_scale=1.0", "model.lora_rank=4", "model.lora_alpha=8",
        "optim.train_batch=4", "optim.steps_per_epoch=1", "optim.timestep_fraction=0.5", "optim.kl_beta=1e-4",
        "rewards.weights={red: 1.0}", "ldam.reward_to_group={red: deep}", "train.save_every=1", "train.logger=none"]


def nft_trainer(tmp_path, *extra, name="run", fns=None, resume=False):
    cfg = load_grpo_config(None, [*BASE, f"train.output_dir={tmp_path / name}", *extra])
    fns = fns or {"red": red}
    return RLTrainer(cfg, rewards=WeightedReward(dict(cfg.rewards.weights), rewards=fns), progress=False,
                     resume=resume)


def test_nft_rollout_stores_clean_latents_and_conditions(tmp_path):
    tr = nft_trainer(tmp_path)
    roll = tr.rollout(0)
    c = tr.pipe.transformer.config
    assert roll.x_0.shape == (8, c.in_channels, c.sample_size, c.sample_size) and len(roll.images) == 8
    assert roll.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and roll.cond.shape[0] == 8
    # the old policy equals the current one at the start: its rollout is the trainer's merged model's ODE path
    torch.testing.assert_close(tr.algo.old.weights["transformer." + next(iter(n for n in dict(
        tr.raw_transformer.named_parameters()) if "lora_B" in n))], next(p for n, p in tr.params.items()
                                                                        if "lora_B" in n))


def test_nft_update_trains_lora_only_and_the_old_policy_follows_its_schedule(tmp_path):
    tr = nft_trainer(tmp_path, "nft.decay_type=1", "optim.lr=1e-2")
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    base = {n: p.clone() for n, p in tr.raw_transformer.named_parameters() if "lora" not in n}
    start = {n: p.detach().clone() for n, p in tr.params.items()}
    stats = tr.update(roll, adv, valid, 0)
    assert stats["diag/optimizer_steps"] == 1 and tr.opt_step == 1 and np.isfinite(stats["loss"])
    for n, p in tr.raw_transformer.named_parameters():
        if "lora" not in n:
            torch.testing.assert_close(p, base[n], rtol=0, atol=0)
    assert any((tr.params[n] - start[n]).abs().max() > 0 for n in start)
    for n in start:  # the old weights do not move during the update
        torch.testing.assert_close(tr.algo.old.weights[n], start[n], rtol=0, atol=0)
    tr.algo.after_epoch()  # decay type 1 after 1 step: old = 0.001 old + 0.999 current
    for n, p in tr.params.items():
        torch.testing.assert_close(tr.algo.old.weights[n], 0.001 * start[n] + 0.999 * p.detach(), rtol=1e-6, atol=1e-7)


def test_ldam_noise_enters_the_stored_conditions(tmp_path):
    tr = nft_trainer(tmp_path, "ldam.enabled=true")
    tr.ldam.current = {"red": {"active": True, "reward": "red", "group": "deep", "gamma": 0.5,
                               "layers": list(tr.ldam.layer_groups["deep"])}}
    roll = tr.rollout(0)
    plain = nft_trainer(tmp_path, "ldam.enabled=true", name="plain").rollout(0)
    inp_noise = roll.layer_noise
    assert inp_noise is not None and inp_noise.abs().sum() > 0
    states = tr.pipe.layer_states(roll.prompts[::4]).repeat_interleave(4, dim=1)
    torch.testing.assert_close(roll.cond, tr.pipe.conditioner(states, inp_noise))
    assert (roll.cond - plain.cond).abs().max() > 1e-4


def test_nft_resumes_exactly_with_its_old_policy(tmp_path):
    extra = ["train.epochs=3", "optim.lr=1e-2", "nft.decay_type=2"]
    full = nft_trainer(tmp_path, *extra, name="full")
    full.run()
    cut = nft_trainer(tmp_path, *extra, name="cut")
    cut.run(stop_after=2)
    assert (tmp_path / "cut" / "checkpoint-000002" / "old.safetensors").is_file()
    resumed = nft_trainer(tmp_path, *extra, name="cut", resume="latest")
    assert resumed.epoch == 2
    resumed.run()
    assert_same_checkpoint(tmp_path / "cut" / "checkpoint-000003", tmp_path / "full" / "checkpoint-000003")
    rows = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_nft_raises_a_simple_reward(tmp_path):
    """On a fixed prompt pool, 15 epochs of DiffusionNFT with a redness reward make the samples redder."""
    tr = nft_trainer(tmp_path, "prompts.pool=4", "prompts.per_epoch=4", "sampling.group_size=8", "train.epochs=15",
                     "model.lora_rank=8", "model.lora_alpha=16", "optim.train_batch=8", "optim.lr=3e-3",
                     "nft.decay_type=0", "train.save_every=1000")
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r["reward/red"] for r in rows]
    assert np.mean(values[-4:]) > np.mean(values[:4]) + 0.01, values


def test_nft_config_checks():
    with pytest.raises(ConfigError, match="train_lim"):
        load_grpo_config(None, [*BASE, "model.train_lim=true"])
    with pytest.raises(ConfigError, match="nft.solver"):
        load_grpo_config(None, [*BASE, "nft.solver=heun"])
    with pytest.raises(ConfigError, match="algorithm"):
        load_grpo_config(None, [*BASE, "algorithm=ppo"])
    with pytest.raises(ConfigError, match="every weight is 0"):
        load_grpo_config(None, [*BASE, "rewards.weights={red: 0.0}"])
    with pytest.raises(ConfigError, match="holds at most 2 optimizer steps"):
        load_grpo_config(None, [*BASE, "optim.steps_per_epoch=3"])


def test_a_run_that_cannot_learn_stops_with_the_cause(tmp_path):
    def flat(images, prompts, metadata=None):
        return torch.ones(len(images))

    tr = nft_trainer(tmp_path, "train.epochs=5", "train.max_idle_epochs=2", fns={"red": flat})
    with pytest.raises(TrainingStalledError, match="every group's rewards were equal"):
        tr.run()
    assert not (tmp_path / "run" / "final").exists()

    def broken(images, prompts, metadata=None):
        return torch.full((len(images),), float("nan"))

    tr = nft_trainer(tmp_path, "train.epochs=5", "train.max_idle_epochs=2", name="nan", fns={"red": broken})
    with pytest.raises(TrainingStalledError, match="NaN or raised"):
        tr.run()


def test_shipped_nft_configs_load_with_the_reference_numbers():
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*nft*.yaml"))
    assert len(paths) >= 3
    for cfg in [load_grpo_config(p) for p in paths]:
        assert cfg.algorithm == "diffusion_nft" and cfg.sampling.guidance_scale == 1.0 and cfg.nft.solver == "dpm2"
    real = load_grpo_config(next(p for p in paths if "toy" not in p.name))
    o, n, s = real.optim, real.nft, real.sampling
    assert (s.group_size, real.prompts.per_epoch, s.steps) == (24, 48, 10)  # config/nft.py _get_config
    assert (n.beta, n.decay_type, o.kl_beta, o.lr, o.adv_clip, o.timestep_fraction) == (0.1, 1, 1e-4, 3e-4, 5.0, 0.99)
    assert (o.ema_decay, o.ema_every, o.steps_per_epoch, real.model.lora_rank, real.model.lora_alpha) == \
        (0.9, 1, 1, 32, 64)
    # the full fine-tune's toy config is the LoRA one with five keys changed, nothing else
    from parauni.train.schema import to_yaml_dict

    full, lora = (to_yaml_dict(load_grpo_config(n)) for n in ("toy_nft_geneval_full.yaml", "toy_nft_geneval.yaml"))
    changed = {(s, k) for s in full for k in (full[s] if isinstance(full[s], dict) else {})
               if full[s][k] != lora[s][k]}
    assert changed == {("model", "finetune"), ("optim", "lr"), ("optim", "timestep_fraction"), ("train", "epochs"),
                       ("train", "output_dir")}
    assert (full["model"]["finetune"], full["optim"]["lr"], full["optim"]["timestep_fraction"]) == ("full", 3e-5, 0.9)


def test_a_second_run_in_the_same_folder_is_refused(tmp_path):
    """Two stage-III runs in one output folder would merge their logs and checkpoints: the second is refused,
    naming the first one's PID, until the first process ends."""
    import subprocess
    import sys

    from parauni.utils.locks import FolderLockedError

    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom parauni.utils.locks import FolderLock\n"
                               f"FolderLock({str(folder)!r}).acquire()\nprint('held', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"PID {holder.pid}"):
            nft_trainer(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    nft_trainer(tmp_path)  # the OS released the dead process's lock
