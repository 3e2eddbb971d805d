"""DiffusionNFT's update against an independent recomputation, one sample and one training point at a time: the
old policy's velocity from the old weights, each sample's own shuffled training points on the grid's σ values but
the final 0, the loss a mean over samples x training points. Each of these, broken, changes the gradient."""

from __future__ import annotations

import torch

from parauni.rl.nft import nft_loss, noised, reward_weight
from parauni.rl.rollout import cfg_velocity
from test_grpo import trainer


def _random_lora(tr, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) * 0.05 if "lora_B" in n else p.detach().clone()
            for n, p in tr.params.items()}


def test_nft_gradient_matches_a_per_sample_per_point_recomputation(tmp_path):
    """8 samples in micro-batches of 3, 3 and 2, 2 training points each out of a grid of 4 σ values, the old policy
    another LoRA than the current one, the KL term on: one optimizer step's accumulated gradient equals the mean over
    samples x points of each one's own gradient. The training points are drawn here as the reference does
    (``scripts/train_nft_sd3.py:807-816``: each sample's own random permutation of the grid's first T steps, the
    first K of it), the σ values are the grid without its final 0 (σ = 1 is trained, σ = 0 is not)."""
    tr = trainer(tmp_path, "algorithm=diffusion_nft", "optim.train_batch=3", "optim.steps_per_epoch=1",
                 "optim.kl_beta=0.5", "optim.timestep_fraction=0.5", "ldam.enabled=false", "nft.beta=0.5")
    current, old = _random_lora(tr, 1), _random_lora(tr, 2)
    with torch.no_grad():
        for n, p in tr.params.items():
            p.copy_(current[n])
    tr.algo.load_state_tensors({"old": old})
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    o, b = tr.cfg.optim, len(roll.prompts)
    sig = roll.sigmas.tolist()
    assert sig[0] == 1.0 and sig[-1] == 0.0
    grid = torch.tensor(sig[:-1])  # the training σ values: every grid point but the final 0
    k = int(len(grid) * o.timestep_fraction)
    assert k == 2
    # each sample's own streams: its shuffled grid order (first K), then K noise draws
    points = torch.stack([torch.randperm(len(grid), generator=g)[:k]
                          for g in tr.sample_streams("transitions", 0).generators])  # (B, K)
    gens = tr.sample_streams("nft_noise", 0).generators
    noise = {}
    for s in range(b):
        eps = torch.randn((k, *roll.x_0.shape[1:]), generator=gens[s])
        for j in range(k):
            noise[s, j] = eps[j:j + 1]
    r = reward_weight(adv.float(), o.adv_clip, "all")
    grads = []
    with tr.swapped_weights(old):  # the old policy: the old LoRA on the same base weights
        v_olds = {}
        for s in range(b):
            for j in range(k):
                t = grid[points[s, j]].reshape(1)
                x_t = noised(roll.x_0[s:s + 1].float(), noise[s, j], t)
                with torch.no_grad():
                    v_olds[s, j] = cfg_velocity(tr.transformer, x_t, t, roll.cond[s:s + 1], None, 1.0)
    for s in range(b):
        for j in range(k):
            t = grid[points[s, j]].reshape(1)
            x_0 = roll.x_0[s:s + 1].float()
            x_t = noised(x_0, noise[s, j], t)
            with torch.no_grad(), tr.reference() as ref:
                v_ref = cfg_velocity(ref, x_t, t, roll.cond[s:s + 1], None, 1.0)
            v = cfg_velocity(tr.transformer, x_t, t, roll.cond[s:s + 1], None, 1.0)
            loss, _ = nft_loss(v, v_olds[s, j], v_ref, x_t, x_0, t, r[s:s + 1], 0.5, o.adv_clip, o.kl_beta)
            grads.append(torch.autograd.grad(loss, list(tr.params.values())))
    expect = [torch.stack(gs).mean(0) for gs in zip(*grads, strict=True)]
    got = {}
    hooks = [p.register_post_accumulate_grad_hook(lambda p, n=n: got.__setitem__(n, p.grad.clone()))
             for n, p in tr.params.items()]
    stats = tr.update(roll, adv, valid, 0)
    for h in hooks:
        h.remove()
    assert stats["diag/old_deviate"] > 0  # the old policy is another one
    for (n, _), e in zip(tr.params.items(), expect, strict=True):
        # float32 round-off of two summation orders, relative to each tensor's scale
        torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-4 * float(e.abs().max()), msg=n)
