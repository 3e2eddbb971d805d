"""Stage III on 2 processes (torchrun, gloo) against ONE process with the same global batch: the rollouts (every
sample's noise is keyed by its global index, so one process samples the same latents), the advantages over every
process's rewards, and the first optimizer step's gradient (DDP's mean over ranks of the weighted per-sample
losses: the mean over the global batch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from parauni.rl.config import load_grpo_config
from parauni.rl.trainer import RLTrainer

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["model.source=tiny", "prompts.per_epoch=4", "sampling.group_size=4", "sampling.steps=4", "model.lora_rank=4",
        "model.lora_alpha=8", "optim.train_batch=3", "optim.steps_per_epoch=1", "optim.max_grad_norm=1e6",
        "rewards.weights={redness: 1.0}", "ldam.enabled=false", "train.logger=none", "train.epochs=1"]
PER_ALGORITHM = {
    # every trained transition (fraction 1), every sample (no zero-advantage drop): the update's gradient is then
    # a function of the global batch alone
    "flow_grpo": ["optim.timestep_fraction=1.0", "optim.drop_zero_adv=false", "optim.kl_beta=0.1"],
    "diffusion_nft": ["algorithm=diffusion_nft", "optim.timestep_fraction=0.5", "nft.beta=0.5"],
    "awm": ["algorithm=awm", "optim.timestep_fraction=0.5"],
}
SCRIPT = """
import sys, torch
from parauni.rl.config import load_grpo_config
from parauni.rl.trainer import RLTrainer
cfg = load_grpo_config(None, sys.argv[1:])
tr = RLTrainer(cfg, progress=False)
with torch.no_grad():  # a trained LoRA: the same on every rank (seeded), so gradients reach every tensor
    g = torch.Generator().manual_seed(5)
    for n, p in tr.params.items():
        if "lora_B" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    tr.algo.load_state_tensors({"old": {n: p.detach().clone() for n, p in tr.params.items()}}) \\
        if cfg.algorithm == "diffusion_nft" else None
roll = tr.rollout(0)
adv, valid, _ = tr.advantages(roll)
grads = {}
tr.opt.optimizer.register_step_pre_hook(
    lambda o, a, k: grads.update({n: p.grad.detach().clone() for n, p in tr.params.items()}))
stats = tr.update(roll, adv, valid, 0)
keep = {k: v for k, v in vars(roll).items() if isinstance(v, torch.Tensor)}
keep["images"] = torch.from_numpy(__import__("numpy").stack(roll.images))
keep["prompts"], keep["trainable"] = roll.prompts, getattr(roll, "trainable", [])
torch.save({"roll": keep, "adv": adv, "valid": valid, "grads": grads, "loss": stats["loss"]},
           f"{cfg.train.output_dir}/rank{tr.acc.process_index}.pt")
"""


def _two_processes(tmp_path, args, port) -> list[dict]:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    (tmp_path / "two").mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(script), *args, f"train.output_dir={tmp_path / 'two'}"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(tmp_path / "two" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def _one_process(tmp_path, args) -> RLTrainer:
    cfg = load_grpo_config(None, [*args, f"train.output_dir={tmp_path / 'one'}"])
    tr = RLTrainer(cfg, progress=False)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        for n, p in tr.params.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    if cfg.algorithm == "diffusion_nft":
        tr.algo.load_state_tensors({"old": {n: p.detach().clone() for n, p in tr.params.items()}})
    return tr


def _grads_of_one_step(tr, roll, adv, valid) -> dict[str, torch.Tensor]:
    grads = {}
    hook = tr.opt.optimizer.register_step_pre_hook(
        lambda o, a, k: grads.update({n: p.grad.detach().clone() for n, p in tr.params.items()}))
    with tr.swapped_weights({n: p.detach().clone() for n, p in tr.params.items()}):  # the step is undone after
        tr.update(roll, adv, valid, 0)
    hook.remove()
    return grads


@pytest.mark.slow  # the default run's 2-process case: tests/test_regimes_rl.py (DDP, 2 epochs, Flow-GRPO)
@pytest.mark.parametrize("algorithm", ["flow_grpo", "diffusion_nft", "awm"])
def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, free_port, algorithm):
    """Both ranks' rollouts, put in the global order (prompt-major: rank r holds prompts r, r + 2, ...), equal the
    one process's own rollout: its latents, clean samples and log-probabilities within float32 round-off of a
    batch of 8 rows instead of 16 (1e-5). Advantages: each rank's equal the one process's over the global batch.
    The gradient of the one optimizer step: each rank's equals the one process's update of the global batch
    (the ranks' own rollout data, so only the update is compared): every per-sample draw of the update (Flow-GRPO's
    transitions, DiffusionNFT's and AWM's training points and noise) follows the sample, not the process. A sum
    instead of a mean across ranks, a per-rank normalisation or a per-rank seed misses by a factor or by the
    noise itself; the tolerance is float32 round-off of other summation orders (1e-4 of each tensor's scale)."""
    args = [*ARGS, *PER_ALGORITHM[algorithm]]
    ranks = _two_processes(tmp_path, args, free_port())
    tr = _one_process(tmp_path, args)
    roll = tr.rollout(0)
    g = tr.cfg.sampling.group_size
    rolls = [r["roll"] for r in ranks]
    group = torch.cat([r["group"] for r in rolls])
    order = torch.argsort(group * g + torch.arange(len(group)) % g)  # rank-major -> the global order
    n = len(roll.prompts)
    for key, value in rolls[0].items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or key == "sigmas" or key == "images":
            continue
        cat = torch.cat([r[key] for r in rolls])[order]
        assert len(cat) == n, key
        if cat.is_floating_point():
            torch.testing.assert_close(cat, getattr(roll, key), rtol=1e-5, atol=1e-5, msg=key)
        else:
            assert torch.equal(cat, getattr(roll, key)), key
        setattr(roll, key, cat)  # the update below trains on the ranks' own data
    images = list(torch.cat([r["images"] for r in rolls])[order].numpy())
    roll.images, roll.prompts = images, [(rolls[0]["prompts"] + rolls[1]["prompts"])[i] for i in order.tolist()]
    adv, valid, _ = tr.advantages(roll)
    torch.testing.assert_close(adv, torch.cat([r["adv"] for r in ranks])[order], rtol=1e-5, atol=1e-6)
    assert bool(valid.all()) and adv.abs().sum() > 0
    expect = _grads_of_one_step(tr, roll, adv, valid)
    for rank in ranks:
        for name, e in expect.items():
            torch.testing.assert_close(rank["grads"][name], e, rtol=1e-4, atol=1e-4 * float(e.abs().max()), msg=name)
    assert np.isfinite(ranks[0]["loss"])


def test_sample_streams_follow_the_global_index_and_never_share_a_seed():
    """Each process holds prompts ``rank, rank + N, ...``: the global indices of all processes together are every
    sample once, whatever N. Per-sample seeds (stream, epoch, global index) never meet each other nor a shared
    stream's seed (stream, epoch)."""
    from types import SimpleNamespace

    from parauni.rl.epoch import _PER_SAMPLE, _SHARED, EpochData

    cfg = SimpleNamespace(train=SimpleNamespace(seed=3), prompts=SimpleNamespace(per_epoch=8),
                          sampling=SimpleNamespace(group_size=4))
    for world in (1, 2, 4):
        parts = [EpochData.global_index(SimpleNamespace(cfg=cfg, acc=SimpleNamespace(num_processes=world,
                                                                                      process_index=r)))
                 for r in range(world)]
        assert sorted(torch.cat(parts).tolist()) == list(range(32))
        assert parts[0][:4].tolist() == [0, 1, 2, 3] and (world == 1 or parts[1][:4].tolist() == [4, 5, 6, 7])
    data = SimpleNamespace(cfg=cfg)
    streams = ("rollout", "ldam", "sde_window", "train_order", "transitions", "nft_noise", "awm_noise")
    seeds = [EpochData._seed(data, s, e, _PER_SAMPLE, i) for s in streams for e in range(6) for i in range(32)]
    seeds += [EpochData._seed(data, s, e, _SHARED, 0) for s in streams for e in range(6)]
    assert len(set(seeds)) == len(seeds)
