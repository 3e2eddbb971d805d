"""Flow-GRPO's parts of a stage-III epoch (Liu et al. 2025, yifan123/flow_grpo @ ac4c86e): the SDE rollout
that stores every transition and its log-probability, and the clipped-ratio + KL update over those transitions.

The shared loop (prompts, conditions with LDAM noise, rewards, advantages, optimizer and EMA steps,
checkpoints, evaluation) is :class:`parauni.rl.trainer.RLTrainer`; the maths are the pure functions of
:mod:`parauni.rl.sde` and :mod:`parauni.rl.objective`.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from ..utils.images import signed_to_uint8
from .algorithm import Algorithm
from .lora import merged_transformer
from .objective import clipped_policy_loss, kl_to_reference, ratio_stats, split_evenly
from .rollout import Rollout, cfg_velocity, trained_transitions
from .sde import sde_step


class FlowGRPO(Algorithm):
    """``algorithm: flow_grpo``: rollouts with the SDE step, updates with the clipped ratio of new to old
    log-probabilities (``scripts/train_sd3.py``). The shared keys' defaults are its own (see docs/rl.md)."""

    name = "flow_grpo"
    drops_failed_samples = True  # samples whose reward is NaN leave the update

    def __init__(self, trainer):
        super().__init__(trainer)
        self._rollout_model = None  # the merged copy, refreshed every epoch (sampling.merge_lora)

    # -- sampling --------------------------------------------------------------------------------------------
    def sde_transitions(self, epoch: int) -> list[int]:
        """The transitions sampled with the SDE (and trained) in ``epoch``: all but the last, or with
        ``sampling.sde_window = N`` a window of N consecutive ones placed at random each epoch (seeded) inside
        ``sampling.sde_window_range`` (default: every transition but the last); the others run as the
        deterministic ODE (Euler) step, as in Flow-GRPO-Fast / MixGRPO."""
        s = self.tr.cfg.sampling
        if s.sde_window is None:
            return list(range(s.steps - 1))
        lo, hi = s.sde_window_range or (0, s.steps - 1)  # the window ends before the last step
        g = self.tr.generator("sde_window", epoch)
        start = int(torch.randint(lo, hi - s.sde_window + 1, (1,), generator=g))
        return list(range(start, start + s.sde_window))

    def rollout_model(self):
        """The transformer the rollout samples with: a plain copy with the LoRA merged (refreshed here) when
        ``sampling.merge_lora`` and the update runs in float32, else the adapted transformer itself. Under bf16 or
        fp16 autocast a merged weight ``W + s B A`` rounds differently from the adapter's ``W x + s B (A x)``
        (measured on the tiny model with a trained LoRA: clip_frac 0.92, ratio_dev 5e-4 at the first on-policy
        update), so there the rollout uses the update's own model; in float32 the two agree to 1e-7."""
        if not self.tr.cfg.sampling.merge_lora or self.tr.acc.mixed_precision != "no":
            return self.tr.transformer
        self._rollout_model = merged_transformer(self.tr.raw_transformer, into=self._rollout_model)
        return self._rollout_model

    @torch.no_grad()
    def rollout(self, epoch: int) -> Rollout:
        """This process's prompts of ``epoch`` and their ``G`` samples each, with everything the update needs. The
        sampling runs under the update's autocast (one model, one precision for both, as the reference:
        ``scripts/train_sd3.py:555, 637, 873``), so an on-policy update starts at ratio 1."""
        tr, s = self.tr, self.tr.cfg.sampling
        inp = tr.rollout_inputs(epoch)
        pipe, dev, gen = tr.pipe, tr.acc.device, inp.generator
        cond, uncond = inp.cond, inp.uncond
        shape = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
        b, steps = len(inp.prompts), s.steps
        trainable = self.sde_transitions(epoch)
        sde = set(trainable) | ({steps - 1} if s.sde_window is None else set())  # the full SDE: the last step too
        model = self.rollout_model()
        x = torch.randn((b, shape[0], shape[1], shape[1]), generator=gen).to(dev)
        path, logps = [x], []
        sig = tr.sigmas.tolist()
        with tr.acc.autocast():
            for j in range(steps):
                xs, lps = [], []
                for a in range(0, b, s.rollout_batch):
                    sl = slice(a, a + s.rollout_batch)
                    v = cfg_velocity(model, path[-1][sl], sig[j], cond[sl], uncond, s.guidance_scale)
                    eps = torch.randn(path[-1][sl].shape, generator=gen).to(dev)
                    level = s.noise_level if j in sde else 0.0
                    out = sde_step(path[-1][sl].float(), v, sig[j], sig[j + 1], level, noise=eps)
                    xs.append(out.prev_sample)
                    lps.append(out.log_prob)
                path.append(torch.cat(xs))
                logps.append(torch.cat(lps))
        images = signed_to_uint8(pipe.decode(path[-1].to(pipe.transformer.dtype)))
        train_lim = tr.cfg.model.train_lim
        return Rollout(inp.prompts, inp.metadata, inp.group, inp.states if train_lim else None,
                       inp.noise if train_lim else None, cond, torch.stack(path, dim=1), torch.stack(logps, dim=1),
                       tr.sigmas, images, trainable)

    # -- update ---------------------------------------------------------------------------------------------
    def update(self, roll: Rollout, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """Clipped-ratio + KL updates over the stored SDE transitions (never the last), Flow-GRPO style.

        The samples are cut into micro-batches of ``optim.train_batch``; gradients accumulate over
        ``1 / optim.steps_per_epoch`` of them times every trained transition, so an epoch makes
        ``steps_per_epoch`` optimizer steps (the reference's default: 2, ``config/grpo.py:83-88``); the loss is
        the mean over those samples and transitions. ``steps_per_epoch=None`` steps after every micro-batch.
        After each optimizer step the EMA follows :func:`objective.ema_decay` every ``optim.ema_every`` steps.
        """
        tr, o = self.tr, self.tr.cfg.optim
        idx = tr.train_indices(adv, valid, epoch, drop_zero=o.drop_zero_adv)
        gen = tr.generator("transitions", epoch)
        trainable = roll.trainable
        n_train = trained_transitions(len(trainable), o.timestep_fraction)
        sig = roll.sigmas.tolist()
        micro = [idx[a:a + o.train_batch] for a in range(0, len(idx), o.train_batch)]
        chunks = split_evenly(len(micro), o.steps_per_epoch or len(micro)) if micro else []
        acc_stats = {"policy_loss": [], "kl": [], "loss": [], "ratio": [], "clipped": [], "approx_kl": [],
                     "grad_norm": []}
        before = tr.snapshot()
        pos = 0
        for size in chunks:
            group = micro[pos:pos + size]
            pos += size
            n_samples = sum(len(mb) for mb in group)
            for i, mb in enumerate(group):
                chosen = torch.randperm(len(trainable), generator=gen)[:n_train].sort().values.tolist()
                steps_j = [trainable[c] for c in chosen]
                A = adv[mb].to(tr.acc.device)
                for k, j in enumerate(steps_j):
                    last = i == len(group) - 1 and k == len(steps_j) - 1  # gradients sync on the last backward
                    stats = self._transition_backward(roll, mb, j, A, sig, n_samples * len(steps_j), sync=last)
                    for key, value in stats.items():
                        acc_stats[key].append(value)
            acc_stats["grad_norm"].append(tr.optimizer_step())
        cat = {k: torch.cat(v).float() if v else torch.full((1,), float("nan")) for k, v in acc_stats.items()}
        return {"loss": float(cat["loss"].mean()), "policy_loss": float(cat["policy_loss"].mean()),
                "kl": float(cat["kl"].mean()), "grad_norm": float(cat["grad_norm"].mean()),
                "clip_frac": float(cat["clipped"].mean()), "ratio_dev": float((cat["ratio"] - 1).abs().mean()),
                "diag/approx_kl": float(cat["approx_kl"].mean()), "diag/ratio_mean": float(cat["ratio"].mean()),
                "diag/ratio_min": float(cat["ratio"].min()), "diag/ratio_max": float(cat["ratio"].max()),
                "diag/update_norm": tr.distance_from(before), "diag/trained_samples": len(idx),
                "diag/optimizer_steps": len(chunks)}

    def _transition_backward(self, roll: Rollout, mb, j: int, A: torch.Tensor, sig: list[float], denom: int,
                             sync: bool) -> dict[str, torch.Tensor]:
        """The loss of transition ``j`` for the samples ``mb`` (advantages ``A``), divided by ``denom`` (the
        samples x transitions of the accumulation), backpropagated, gradients synced across processes only with
        ``sync``; returns the per-sample statistics (policy loss, KL, loss and :func:`ratio_stats`)."""
        tr = self.tr
        o, s = tr.cfg.optim, tr.cfg.sampling
        dev = tr.acc.device
        cond, uncond = tr.update_conditions(roll, mb)
        x_j, x_next = roll.latents[mb, j].to(dev), roll.latents[mb, j + 1].to(dev)
        ctx = tr.acc.no_sync(tr.transformer) if not sync else nullcontext()
        with ctx, tr.acc.autocast():
            v = cfg_velocity(tr.transformer, x_j, sig[j], cond, uncond, s.guidance_scale)
            new = sde_step(x_j.float(), v, sig[j], sig[j + 1], s.noise_level, prev_sample=x_next)
            old_lp = roll.log_probs[mb, j].to(dev)
            ratio = torch.exp(new.log_prob - old_lp)
            policy = clipped_policy_loss(A, ratio, o.clip_range)  # (b,)
            if o.kl_beta > 0:  # the reference: the LoRA adapter off (a full fine-tune: the starting transformer)
                with torch.no_grad(), tr.reference() as reference:
                    v_ref = cfg_velocity(reference, x_j, sig[j], cond.detach(), uncond.detach(), s.guidance_scale)
                ref = sde_step(x_j.float(), v_ref, sig[j], sig[j + 1], s.noise_level, prev_sample=x_next)
                kl = kl_to_reference(new.mean, ref.mean, new.std_dev_t, new.std_dev_t_dt, o.kl_form)
            else:  # no KL term: skip the reference forward
                kl = torch.zeros_like(policy)
            loss = (policy + o.kl_beta * kl).sum() / denom
            tr.acc.backward(loss)
        r = ratio_stats(new.log_prob, old_lp, o.clip_range)
        return {**{key: r[key].cpu() for key in ("ratio", "clipped", "approx_kl")},
                "policy_loss": policy.detach().cpu(), "kl": kl.detach().cpu(),
                "loss": (policy + o.kl_beta * kl).detach().cpu()}

    def progress_numbers(self, row: dict) -> dict[str, str]:
        """The share of clipped ratios. (Its old policy is the rollout's own: no state, nothing after an epoch.)"""
        return {"clip": f"{row['clip_frac']:.2f}"}
