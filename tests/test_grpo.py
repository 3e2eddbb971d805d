"""Stage III: rollouts, advantages, the update, LDAM in the loop, checkpoints, exact resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from parauni.rewards.base import WeightedReward
from parauni.rl.config import load_grpo_config
from parauni.rl.grpo import GRPOTrainer
from parauni.rl.lora import add_lora, merged_transformer
from parauni.rl.prompts import prompt_source

GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def red(images, prompts, metadata=None):
    return torch.tensor([float(np.asarray(im)[..., 0].mean() / 255.0) for im in images])


def bright(images, prompts, metadata=None):
    return torch.tensor([float(np.asarray(im).mean() / 255.0) for im in images])


def nan_first(images, prompts, metadata=None):
    out = bright(images, prompts)
    out[0] = float("nan")
    return out


BASE = ["model.source=tiny", "prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4",
        "model.lora_rank=4", "model.lora_alpha=8", "optim.train_batch=4", "rewards.weights={red: 1.0, bright: 0.5}",
        "ldam.reward_to_group={red: deep, bright: shallow}", "train.save_every=1"]


def trainer(tmp_path, *extra, name="run", fns=None, resume=False):
    base = [b for b in BASE if not b.startswith("model.lora_")] if "model.finetune=full" in extra else BASE
    cfg = load_grpo_config(None, [*base, f"train.output_dir={tmp_path / name}", *extra])
    fns = fns or {"red": red, "bright": bright}
    return GRPOTrainer(cfg, rewards=WeightedReward(dict(cfg.rewards.weights), rewards=fns), progress=False,
                       resume=resume)


def test_rollout_shapes_and_advantages(tmp_path):
    tr = trainer(tmp_path)
    roll = tr.rollout(0)
    assert roll.latents.shape[:2] == (8, 5) and roll.log_probs.shape == (8, 4)
    assert torch.isfinite(roll.log_probs).all() and len(roll.images) == 8
    assert roll.group.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    adv, valid, stats = tr.advantages(roll)
    total = torch.tensor([1.0 * r + 0.5 * b for r, b in zip(red(roll.images, roll.prompts).tolist(),
                                                           bright(roll.images, roll.prompts).tolist(), strict=True)])
    # Flow-GRPO's global std: numpy's population std of every reward of the epoch
    t = total.numpy().astype(np.float64)
    expect = np.concatenate([t[g * 4:(g + 1) * 4] - t[g * 4:(g + 1) * 4].mean() for g in range(2)])
    expect = np.clip(expect / (np.std(t) + 1e-4), -5, 5)
    np.testing.assert_allclose(adv.numpy(), expect, rtol=1e-5, atol=1e-6)
    assert valid.all() and stats["reward/total"] == pytest.approx(float(total.mean()), rel=1e-5)
    assert stats["diag/zero_std_share"] == 0.0
    assert stats["diag/group_reward_std"] == pytest.approx(np.mean([np.std(t[:4]), np.std(t[4:])]), rel=1e-5)


def test_nan_reward_sample_leaves_the_update(tmp_path):
    tr = trainer(tmp_path, "rewards.weights={red: 1.0, odd: 1.0}", "ldam.reward_to_group={red: deep, odd: shallow}",
                 fns={"red": red, "odd": nan_first})
    roll = tr.rollout(0)
    adv, valid, stats = tr.advantages(roll)
    assert stats["reward/dropped"] == 1 and not bool(valid[0]) and bool(valid[1:].all())
    assert np.isfinite(tr.update(roll, adv, valid, 0)["loss"])


def test_update_changes_only_lora_and_first_ratio_is_one(tmp_path):
    tr = trainer(tmp_path, "optim.train_batch=8", "optim.steps_per_epoch=1")
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    base = {n: p.clone() for n, p in tr.raw_transformer.named_parameters() if "lora" not in n}
    lora = {n: p.clone() for n, p in tr.params.items()}
    stats = tr.update(roll, adv, valid, 0)
    assert stats["ratio_dev"] < 1e-5  # one micro-batch: new == old policy up to float round-off
    for n, p in tr.raw_transformer.named_parameters():
        if "lora" not in n:
            assert torch.equal(p, base[n]), n
    assert any(not torch.equal(p, lora[n]) for n, p in tr.params.items())


def test_loop_logs_ldam_checkpoints_and_resumes_exactly(tmp_path):
    extra = ["train.epochs=4", "ldam.patience=1", "ldam.window=2"]
    full = trainer(tmp_path, *extra, name="full")
    full.run()
    rows = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("reward/red" in r for r in rows)
    decisions = [json.loads(x) for x in (tmp_path / "full" / "ldam.jsonl").read_text().splitlines()]
    assert len(decisions) == 8 and {d["reward"] for d in decisions} == {"red", "bright"}
    assert (tmp_path / "full" / "curves" / "rewards.png").is_file()
    cut = trainer(tmp_path, *extra, name="cut")
    cut.run(stop_after=2)
    resumed = trainer(tmp_path, *extra, name="cut", resume="latest")
    assert resumed.epoch == 2
    resumed.run()
    a = load_file(str(tmp_path / "cut" / "checkpoint-000004" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "full" / "checkpoint-000004" / "trainable.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    la = [json.loads(x) for x in (tmp_path / "cut" / "ldam.jsonl").read_text().splitlines()]
    assert la == decisions


def test_merged_export_matches_the_adapter():
    from parauni.pipelines.presets import build_tiny

    tr = build_tiny().transformer
    torch.manual_seed(0)
    add_lora(tr, 4, 8, ["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # a non-zero adapter
    x, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    t = torch.tensor([500.0, 200.0])
    with torch.no_grad():
        want = tr(x, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
        tr.disable_adapters()
        plain = tr(x, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
        tr.enable_adapters()
        merged = merged_transformer(tr)
        got = merged(x, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
    assert not torch.allclose(want, plain, atol=1e-4)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # the rollout's copy is refreshed in place after every update
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
        want = tr(x, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
        assert merged_transformer(tr, into=merged) is merged
        got = merged(x, encoder_hidden_states=emb, timestep=t, return_dict=False)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_shipped_grpo_configs_load():
    """The paper's stage III numbers (supplementary Sec. 2, Tab. 1) and LDAM's (Sec. 1): the defaults and the
    real-size configs; the toy config departs only where it says."""
    from pathlib import Path

    paths = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*grpo*.yaml"))
    assert len(paths) >= 2
    for cfg in [load_grpo_config(None)] + [load_grpo_config(p) for p in paths]:
        assert cfg.optim.adv_clip == 5.0 and cfg.sampling.noise_level == 0.7 and cfg.sampling.guidance_scale == 4.5
        assert cfg.ldam.gamma0 == 0.1 and cfg.ldam.window == 5
    for cfg in [load_grpo_config(None)] + [load_grpo_config(p) for p in paths if "toy" not in p.name]:
        assert cfg.optim.clip_range == 1e-4 and cfg.optim.kl_beta == 0.04 and cfg.ldam.patience == 5
        o = cfg.optim  # Flow-GRPO's update: 2 accumulated steps an epoch, its KL form, EMA and weight decay
        assert (o.steps_per_epoch, o.kl_form, o.drop_zero_adv, o.weight_decay) == (2, "reference", True, 1e-4)
        assert (o.ema_decay, o.ema_every, o.ema_warmup, cfg.sampling.grid) == (0.9, 8, True, "scheduler")
    real = [load_grpo_config(p) for p in paths if "toy" not in p.name]
    assert all(c.sampling.group_size == 24 and c.model.lora_rank == 32 and c.model.lora_alpha == 64 for c in real)


def test_prompt_files(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\na blue square\n")
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                              "prompt": "a photo of a circle"}) + "\n")
    cfg = load_grpo_config(None, ["prompts.kind=file", f"prompts.path={txt}"])
    got = prompt_source(cfg.prompts, 0).epoch(0, 5)
    assert {r["prompt"] for r in got} <= {"a red circle", "a blue square"} and len(got) == 5
    cfg = load_grpo_config(None, ["prompts.kind=file", f"prompts.path={jl}"])
    assert prompt_source(cfg.prompts, 0).epoch(3, 2)[0]["tag"] == "single_object"
    with pytest.raises(FileNotFoundError):
        prompt_source(load_grpo_config(None, ["prompts.kind=file", "prompts.path=/nope.txt"]).prompts, 0)
    with pytest.raises(KeyError, match="sampling.groupsize"):
        load_grpo_config(None, ["sampling.groupsize=3"])


def test_fixed_prompt_sets_are_walked_in_shuffled_passes():
    """A pool (or a file) is seen once per pass: per_epoch == pool gives the same prompts every epoch."""
    cfg = load_grpo_config(None, ["prompts.pool=6"]).prompts
    src = prompt_source(cfg, seed=3)
    texts = [r["prompt"] for r in src.records]
    seen = [r["prompt"] for e in range(3) for r in src.epoch(e, 4)]  # 12 draws = 2 passes
    assert sorted(seen[:6]) == sorted(texts) and sorted(seen[6:]) == sorted(texts)
    assert len(set(texts)) == 6 and seen[:6] != seen[6:]  # six distinct prompts; each pass in its own order
    same = [sorted(r["prompt"] for r in src.epoch(e, 6)) for e in range(4)]
    assert all(s == sorted(texts) for s in same)
    assert [r["prompt"] for r in prompt_source(cfg, seed=3).epoch(1, 4)] == seen[4:8]  # deterministic


def test_no_kl_term_skips_the_reference(tmp_path):
    tr = trainer(tmp_path, "optim.kl_beta=0")
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    calls = []
    hook = tr.raw_transformer.register_forward_hook(lambda *a: calls.append(1))
    stats = tr.update(roll, adv, valid, 0)
    hook.remove()
    assert stats["kl"] == 0.0 and np.isfinite(stats["loss"])
    assert len(calls) == 6  # 2 micro-batches of 4 x 3 trained transitions: the policy forward only


def test_grpo_raises_a_simple_reward(tmp_path):
    """On a fixed prompt pool, 20 epochs with a brightness reward make the samples brighter."""
    tr = trainer(tmp_path, "prompts.pool=4", "prompts.per_epoch=4", "sampling.group_size=8", "sampling.steps=6",
                 "train.epochs=20", "rewards.weights={bright: 1.0}", "model.lora_rank=8", "model.lora_alpha=16",
                 "optim.train_batch=8", "optim.lr=3e-3", "ldam.enabled=false", "train.save_every=1000",
                 fns={"bright": bright})
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r["reward/bright"] for r in rows]
    assert np.mean(values[-5:]) > np.mean(values[:5]) + 0.01, values


@pytest.mark.parametrize("extra", [["model.train_lim=true"], ["algorithm=diffusion_nft", "optim.kl_beta=1e-4",
                                                               "sampling.guidance_scale=1.0"]],
                         ids=["flow_grpo_with_lim", "diffusion_nft"])
def test_two_processes_share_advantages_and_weights(tmp_path, extra, free_port):
    """torchrun with 2 CPU processes (gloo): rewards are gathered, both ranks save their RNG state, and the
    trainable weights stay identical across ranks: DDP averages the transformer's gradients, the trainer the LIM's
    (``model.train_lim``); under both algorithms."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "run.py"
    script.write_text(
        "import os, sys, json, torch\n"
        "from parauni.rl.config import load_grpo_config\n"
        "from parauni.rl.grpo import GRPOTrainer\n"
        "cfg = load_grpo_config(None, sys.argv[1:])\n"
        "odd = load_grpo_config(None, [*sys.argv[1:], 'prompts.per_epoch=3'])\n"  # 2 + 1 prompts: refused at start
        "try:\n    GRPOTrainer(odd, progress=False)\n    said = 'accepted'\n"
        "except Exception as err:\n    said = f'{type(err).__name__}: {err}'\n"
        "open(f'{cfg.train.output_dir}_odd{os.environ[\"RANK\"]}.txt', 'w').write(said)\n"
        "tr = GRPOTrainer(cfg, progress=False)\n"
        "tr.run()\n"
        "flat = torch.cat([p.detach().flatten() for p in tr.params.values()])\n"
        "torch.save(flat, f'{cfg.train.output_dir}/lora_rank{tr.acc.process_index}.pt')\n")
    args = [a for a in BASE if not a.startswith(("rewards.weights", "ldam.reward_to_group"))]
    args += ["rewards.weights={toy_quality: 1.0}", "prompts.per_epoch=4", "train.epochs=2", "train.save_every=2",
             f"train.output_dir={tmp_path / 'two'}", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(free_port()), str(script), *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["reward/toy_quality"]) for r in rows)
    ckpt = tmp_path / "two" / "checkpoint-000002"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    a, b = (torch.load(tmp_path / "two" / f"lora_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(a, torch.zeros_like(a)) and torch.equal(a, b)
    # 3 prompts on 2 processes used to split 2 + 1 while the gather assumed equal shares: refused on every rank
    for rank in (0, 1):
        said = (tmp_path / f"two_odd{rank}.txt").read_text()
        assert said.startswith("ConfigError: prompts.per_epoch (3) must be a multiple of the number of processes (2)")


def _optimizer_snapshots(tr):
    """Trainable weights after every optimizer step (a post-step hook on the wrapped torch optimizer)."""
    snaps = []
    tr.opt.optimizer.register_step_post_hook(lambda *a: snaps.append({n: p.detach().clone()
                                                                       for n, p in tr.params.items()}))
    return snaps


@pytest.mark.parametrize("steps_per_epoch, expected", [("2", 2), ("null", 4)])
def test_optimizer_steps_per_epoch(tmp_path, steps_per_epoch, expected):
    """8 samples in micro-batches of 2: Flow-GRPO's default accumulates into 2 optimizer steps an epoch;
    ``null`` steps after every micro-batch."""
    tr = trainer(tmp_path, "optim.train_batch=2", f"optim.steps_per_epoch={steps_per_epoch}")
    snaps = _optimizer_snapshots(tr)
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    stats = tr.update(roll, adv, valid, 0)
    assert len(snaps) == expected and stats["diag/optimizer_steps"] == expected and tr.opt_step == expected
    assert stats["diag/trained_samples"] == 8


def test_learning_rate_warmup_and_cosine_match_torch_schedulers(tmp_path):
    """optim.warmup_steps / min_lr_ratio: the learning rate of each of the 8 planned optimizer steps (2 epochs x 4)
    is what torch's LinearLR warm-up then CosineAnnealingLR give; the default keeps optim.lr constant."""
    extra = ["optim.train_batch=2", "optim.steps_per_epoch=null", "train.epochs=2", "optim.lr=1e-3"]
    ref = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    sched = torch.optim.lr_scheduler.SequentialLR(ref, [
        torch.optim.lr_scheduler.LinearLR(ref, start_factor=0.5, end_factor=1.0, total_iters=1),
        torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=6, eta_min=1e-4)], milestones=[2])
    expected = []
    for _ in range(8):
        expected.append(ref.param_groups[0]["lr"])
        ref.step()
        sched.step()
    for opts, want in (([], [1e-3] * 8), (["optim.warmup_steps=2", "optim.min_lr_ratio=0.1"], expected)):
        tr = trainer(tmp_path, *extra, *opts, name=f"run{len(opts)}")
        used = []
        tr.opt.optimizer.register_step_pre_hook(lambda o, *a, used=used: used.append(o.param_groups[0]["lr"]))
        tr.run()
        assert tr.planned_steps() == 8 and len(used) == 8
        assert used == pytest.approx(want, rel=1e-12, abs=0)
        rows = _lines(tmp_path / f"run{len(opts)}" / "metrics.jsonl")
        assert [r["lr"] for r in rows] == pytest.approx([want[3], want[7]], rel=1e-12, abs=0)


def test_resume_refuses_more_epochs_under_a_decaying_learning_rate(tmp_path):
    """train.epochs may change on resume while the learning rate is constant; under a cosine decay the optimizer
    steps already taken would have had other rates, so it is refused."""
    from parauni.utils.resume_config import ResumeConfigError

    trainer(tmp_path, "train.epochs=2", "optim.min_lr_ratio=0.0").run(stop_after=1)
    with pytest.raises(ResumeConfigError, match="cosine learning-rate decay spans train.epochs"):
        resumed(tmp_path, "train.epochs=3", "optim.min_lr_ratio=0.0")
    trainer(tmp_path, "train.epochs=2", name="flat").run(stop_after=1)
    assert resumed(tmp_path, "train.epochs=3", name="flat").epoch == 1


@pytest.mark.parametrize("algorithm", ["flow_grpo", "diffusion_nft"])
def test_full_finetune_trains_every_weight_against_the_starting_model(tmp_path, algorithm):
    """model.finetune=full: every transformer weight trains (no LoRA), the KL term's reference is a frozen copy of
    the starting transformer, the logged distance is ||W - W_start||, and the export holds the EMA weights."""
    from parauni.rl.export import export_checkpoint

    tr = trainer(tmp_path, "model.finetune=full", f"algorithm={algorithm}", "optim.kl_beta=0.1", "optim.lr=1e-4",
                 "train.epochs=1", "sampling.guidance_scale=1.0")
    raw = tr.raw_transformer
    start = {n: p.detach().clone() for n, p in raw.named_parameters()}
    assert set(tr.params) == {f"transformer.{n}" for n in start} and not any("lora" in n for n in tr.params)
    tr.run()
    moved = {n for n, p in raw.named_parameters() if not torch.equal(p.detach(), start[n])}
    assert moved == set(start)
    with tr.reference() as reference:
        assert reference is tr.reference_model and not any(p.requires_grad for p in reference.parameters())
        for n, p in reference.named_parameters():
            assert torch.equal(p, start[n]), n
    name, value = tr.policy.delta_norm()
    expected = sum(float((p.detach() - start[n]).pow(2).sum()) for n, p in raw.named_parameters()) ** 0.5
    assert name == "diag/weight_delta_norm" and value == pytest.approx(expected, rel=1e-6) and value > 0
    assert _lines(tmp_path / "run" / "metrics.jsonl")[0][name] == pytest.approx(expected, rel=1e-6)
    out = export_checkpoint(tmp_path / "run" / "checkpoint-000001", tmp_path / "exported")
    exported = load_file(str(next((out / "transformer").glob("*.safetensors"))))
    assert set(exported) == set(start)
    for n, v in exported.items():
        torch.testing.assert_close(v, tr.ema[f"transformer.{n}"].to(v.dtype), rtol=0, atol=0, msg=n)


def test_ema_follows_the_reference_schedule(tmp_path):
    """EMA every 2 optimizer steps with decay min((1 + n) / (10 + n), 0.9) at the n-th step (1-based, as the
    reference's global_step when it calls the EMA: due where (n + 1) % 2 == 0), recomputed by hand from the
    weights after each step."""
    tr = trainer(tmp_path, "optim.train_batch=2", "optim.steps_per_epoch=null", "optim.ema_every=2")
    init = {n: p.detach().clone() for n, p in tr.params.items()}
    snaps = _optimizer_snapshots(tr)
    for epoch in range(2):
        roll = tr.rollout(epoch)
        adv, valid, _ = tr.advantages(roll)
        tr.update(roll, adv, valid, epoch)
    assert len(snaps) == 8
    for n in init:
        e = init[n].clone()
        for n_step, snap in enumerate(snaps, start=1):
            if (n_step + 1) % 2 == 0:
                d = min((1 + n_step) / (10 + n_step), 0.9)
                e = d * e + (1 - d) * snap[n]
        torch.testing.assert_close(tr.ema[n], e, rtol=1e-5, atol=1e-7, msg=n)


def group_constant(images, prompts, metadata=None):
    """Prompt 0's group all scores 1 (no preference to learn); prompt 1's scores by redness."""
    first = prompts[0]
    return torch.tensor([1.0 if p == first else float(np.asarray(im)[..., 0].mean() / 255.0)
                         for im, p in zip(images, prompts, strict=True)])


def test_zero_advantage_groups_leave_the_update(tmp_path):
    extra = ["rewards.weights={flat: 1.0}", "ldam.enabled=false", "prompts.pool=2"]
    fns = {"flat": group_constant}
    tr = trainer(tmp_path, *extra, fns=fns)
    roll = tr.rollout(0)
    assert roll.prompts[0] != roll.prompts[4]
    adv, valid, stats = tr.advantages(roll)
    assert stats["diag/zero_std_share"] == 0.5 and bool((adv[:4] == 0).all()) and bool((adv[4:] != 0).all())
    assert tr.update(roll, adv, valid, 0)["diag/trained_samples"] == 4
    keep = trainer(tmp_path, *extra, "optim.drop_zero_adv=false", name="keep", fns=fns)
    roll = keep.rollout(0)
    adv, valid, _ = keep.advantages(roll)
    assert keep.update(roll, adv, valid, 0)["diag/trained_samples"] == 8


def test_sde_window_samples_and_trains_only_its_transitions(tmp_path):
    tr = trainer(tmp_path, "sampling.steps=6", "sampling.sde_window=2", "optim.kl_beta=0")
    roll = tr.rollout(3)
    window = roll.trainable
    assert len(window) == 2 and window[1] == window[0] + 1 and window[1] <= 4  # never the last transition
    finite = torch.isfinite(roll.log_probs).all(0).tolist()
    assert [j for j, ok in enumerate(finite) if ok] == window  # ODE (no density) elsewhere
    adv, valid, _ = tr.advantages(roll)
    calls = []
    hook = tr.raw_transformer.register_forward_hook(lambda *a: calls.append(1))
    tr.update(roll, adv, valid, 3)
    hook.remove()
    assert len(calls) == 2 * 2  # 2 micro-batches x the 2 window transitions
    with pytest.raises(ValueError, match="sde_window"):
        load_grpo_config(None, ["sampling.steps=6", "sampling.sde_window=6"])


def test_epoch_diagnostics_are_logged(tmp_path):
    tr = trainer(tmp_path, "train.epochs=2", "train.save_every=2")
    tr.run()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"clip_frac", "kl", "grad_norm", "diag/approx_kl", "diag/ratio_mean", "diag/ratio_min", "diag/ratio_max",
            "diag/zero_std_share", "diag/adv_mean", "diag/adv_std", "diag/group_reward_std", "diag/update_norm",
            "diag/lora_delta_norm", "time/rollout", "time/reward", "time/update"}
    assert keys <= set(rows[0]), keys - set(rows[0])
    for r in rows:
        assert r["diag/ratio_min"] <= r["diag/ratio_mean"] <= r["diag/ratio_max"]
        assert r["diag/lora_delta_norm"] > 0 and r["diag/update_norm"] > 0
    assert rows[0]["diag/ratio_max"] - rows[0]["diag/ratio_min"] > 0  # the second step's ratios moved
    assert (tmp_path / "run" / "curves" / "diagnostics.png").is_file()
    assert list((tmp_path / "run" / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"


def test_sde_window_range(tmp_path):
    tr = trainer(tmp_path, "sampling.steps=8", "sampling.sde_window=2", "sampling.sde_window_range=[1, 4]")
    starts = {tr.algo.sde_transitions(e)[0] for e in range(40)}
    assert starts == {1, 2}  # windows [1, 2] or [2, 3]: inside transitions 1..3
    with pytest.raises(ValueError, match="sde_window_range"):
        load_grpo_config(None, ["sampling.steps=8", "sampling.sde_window=3", "sampling.sde_window_range=[1, 3]"])


# -- resuming exactly or not at all; GRPO runs become models ----------------------------------------------------
def resumed(tmp_path, *extra, name="run", resume="latest", allow=False):
    cfg = load_grpo_config(None, [*BASE, f"train.output_dir={tmp_path / name}", *extra])
    return GRPOTrainer(cfg, resume=resume, allow_config_change=allow, progress=False,
                       rewards=WeightedReward(dict(cfg.rewards.weights), rewards={"red": red, "bright": bright}))


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_grpo_resume_refuses_changed_sampling_and_cuts_logs_back(tmp_path):
    """A run killed after epoch 3 (last checkpoint: epoch 2) resumes to the uninterrupted run's weights, metrics
    rows and LDAM decisions (no duplicate rows); a changed sampling / prompt setting is refused first."""
    from parauni.utils.resume_config import ResumeConfigError

    extra = ["train.epochs=4", "train.save_every=2", "ldam.patience=1", "ldam.window=2"]
    trainer(tmp_path, *extra, name="full").run()
    trainer(tmp_path, *extra, name="cut").run(stop_after=3)
    cut = tmp_path / "cut"
    assert [r["step"] for r in _lines(cut / "metrics.jsonl")] == [1, 2, 3] and len(_lines(cut / "ldam.jsonl")) == 6
    saved = (cut / "config.yaml").read_bytes()
    with pytest.raises(ResumeConfigError) as err:
        resumed(tmp_path, *extra, "sampling.noise_level=0.5", "prompts.per_epoch=4", name="cut")
    assert "sampling.noise_level: 0.7 -> 0.5" in str(err.value) and "prompts.per_epoch: 2 -> 4" in str(err.value)
    assert (cut / "config.yaml").read_bytes() == saved
    tr = resumed(tmp_path, *extra[:1], "train.save_every=1", *extra[2:], name="cut")  # save_every: a safe change
    assert tr.epoch == 2 and not (cut / "config_changes.jsonl").exists()
    tr.run()
    assert [r["step"] for r in _lines(cut / "metrics.jsonl")] == [1, 2, 3, 4]
    assert _lines(cut / "ldam.jsonl") == _lines(tmp_path / "full" / "ldam.jsonl")
    a = load_file(str(cut / "checkpoint-000004" / "ema.safetensors"))
    b = load_file(str(tmp_path / "full" / "checkpoint-000004" / "ema.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_grpo_corrupt_newest_checkpoint_falls_back(tmp_path, caplog):
    import logging

    from parauni.utils.checkpoint_files import CorruptCheckpointError

    trainer(tmp_path, "train.epochs=2").run()
    bad = tmp_path / "run" / "checkpoint-000002" / "ema.safetensors"
    bad.write_bytes(bad.read_bytes()[:-10])
    with caplog.at_level(logging.WARNING):
        assert resumed(tmp_path, "train.epochs=2", resume="auto").epoch == 1
    assert str(bad) in caplog.text
    with pytest.raises(CorruptCheckpointError, match="checkpoint-000001"):
        resumed(tmp_path, "train.epochs=2", resume=str(bad.parent))


def test_grpo_export_refuses_weights_of_another_lora(tmp_path, capsys):
    from parauni.cli import main

    trainer(tmp_path, "train.epochs=1").run()
    ckpt = tmp_path / "run" / "checkpoint-000001"
    assert main(["export", str(ckpt), "--out", str(tmp_path / "ok"), "--no-ema"]) == 0
    (ckpt / "config.yaml").write_text((ckpt / "config.yaml").read_text().replace("lora_rank: 4", "lora_rank: 8"))
    capsys.readouterr()
    assert main(["export", str(ckpt), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "lora_A" in err and "ema.safetensors" in err, err


def test_grpo_command_writes_final_and_export_makes_a_model(tmp_path, capsys):
    """`parauni grpo` ends with <output_dir>/final (the EMA LoRA merged); `parauni export` makes the same model
    from the checkpoint (or the run folder); generate and toy GenEval run on it."""
    from parauni.cli import main

    out = tmp_path / "grpo"
    assert main(["grpo", "configs/toy_grpo_redness.yaml", "prompts.per_epoch=1", "prompts.pool=1",
                 "sampling.group_size=2", "sampling.steps=3", "optim.train_batch=2", "optim.steps_per_epoch=1",
                 "train.epochs=2", "train.save_every=1", "train.logger=none", "train.eval_geneval=false",
                 "optim.ema_every=1", f"train.output_dir={out}", "--no-progress"]) == 0
    assert (out / "final" / "model_index.json").is_file()
    assert main(["export", str(out / "checkpoint-000002"), "--out", str(tmp_path / "ema")]) == 0
    assert main(["export", str(out), "--out", str(tmp_path / "run_folder")]) == 0  # its newest checkpoint
    assert main(["export", str(out / "checkpoint-000002"), "--out", str(tmp_path / "raw"), "--no-ema"]) == 0

    def transformer(folder):
        return load_file(str(next((folder / "transformer").glob("*.safetensors"))))

    final, ema, raw = transformer(out / "final"), transformer(tmp_path / "ema"), transformer(tmp_path / "raw")
    assert set(final) == set(ema) and not any("lora" in k for k in final)
    for k in final:
        torch.testing.assert_close(ema[k], final[k], rtol=0, atol=1e-6, msg=k)
        torch.testing.assert_close(transformer(tmp_path / "run_folder")[k], final[k], rtol=0, atol=0, msg=k)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # --no-ema: the raw LoRA
    model = str(tmp_path / "ema")
    assert main(["generate", "--model", model, "--prompt", "a red circle", "--out", str(tmp_path / "gen"),
                 "--steps", "2", "--no-progress"]) == 0
    assert list((tmp_path / "gen").glob("000_*.png"))
    assert main(["eval", "geneval", "--model", model, "--out", str(tmp_path / "ev"), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", "2"]) == 0
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "ev" / "results.jsonl").read_text().splitlines()]
    by_task: dict[str, list[bool]] = {}
    for r in rows:  # one image of the first prompt of each of the six tasks, each scored
        assert Path(r["filename"]).is_file() and isinstance(r["correct"], bool), r
        by_task.setdefault(r["tag"], []).append(r["correct"])
    assert sorted(by_task) == sorted(GENEVAL_TASKS) and all(len(v) == 1 for v in by_task.values())
    # GenEval's overall score: the mean over tasks of each task's share of correct images
    assert summary["overall"] == pytest.approx(sum(np.mean(v) for v in by_task.values()) / 6, abs=1e-9)
    assert summary["tasks"] == pytest.approx({t: float(np.mean(v)) for t, v in by_task.items()})


def test_random_streams_never_share_a_seed(tmp_path):
    """Every (stream, epoch) has its own seed: the old ``seed * 7 + epoch + 1`` of one stream equalled the next
    epoch's ``seed * 7 + epoch`` of another."""
    tr = trainer(tmp_path)
    draws = {(stream, e): tr.generator(stream, e).initial_seed() for stream in
             ("rollout", "sde_window", "train_order", "transitions", "nft_noise") for e in range(20)}
    assert len(set(draws.values())) == len(draws)
    assert tr.generator("rollout", 3).initial_seed() == trainer(tmp_path, name="again").generator("rollout", 3) \
        .initial_seed()


def test_adapters_come_back_on_after_an_error():
    from parauni.pipelines.presets import build_tiny
    from parauni.rl.lora import adapters_off

    tr = build_tiny(seed=0).transformer
    add_lora(tr, 4, 8, ["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.fill_(0.1)
    x = torch.randn(1, tr.config.in_channels, tr.config.sample_size, tr.config.sample_size)
    cond = torch.randn(1, 4, tr.config.caption_channels)

    def run():
        return tr(x, encoder_hidden_states=cond, timestep=torch.tensor([500.0]), return_dict=False)[0]

    adapted = run()
    with pytest.raises(RuntimeError), adapters_off(tr):
        plain = run()
        raise RuntimeError("boom")
    assert not torch.allclose(plain, adapted) and torch.equal(run(), adapted)


