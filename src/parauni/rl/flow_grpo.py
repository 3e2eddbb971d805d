"""Flow-GRPO's parts of a stage-III epoch (Liu et al. 2025, yifan123/flow_grpo @ ac4c86e): the SDE rollout
that stores every transition and its log-probability, and the clipped-ratio + KL update over those transitions.

The shared loop (prompts, conditions with LDAM noise, rewards, advantages, optimizer and EMA steps,
checkpoints, evaluation) is :class:`parauni.rl.trainer.RLTrainer`; the maths are the pure functions of
:mod:`parauni.rl.sde` and :mod:`parauni.rl.objective`.
"""

from __future__ import annotations

import torch

from ..utils.images import signed_to_uint8
from .algorithm import Algorithm
from .lora import merged_transformer
from .objective import clipped_policy_loss, kl_to_reference, ratio_stats
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
        pipe, dev, streams = tr.pipe, tr.acc.device, inp.streams
        cond, uncond = inp.cond, inp.uncond
        shape = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
        b, steps = len(inp.prompts), s.steps
        trainable = self.sde_transitions(epoch)
        sde = set(trainable) | ({steps - 1} if s.sde_window is None else set())  # the full SDE: the last step too
        model = self.rollout_model()
        x = streams.randn((shape[0], shape[1], shape[1])).to(dev)  # each sample's own stream
        path, logps = [x], []
        sig = tr.sigmas.tolist()
        with tr.acc.autocast():
            for j in range(steps):
                xs, lps = [], []
                for a in range(0, b, s.rollout_batch):
                    sl = slice(a, a + s.rollout_batch)
                    v = cfg_velocity(model, path[-1][sl], sig[j], cond[sl], uncond, s.guidance_scale)
                    eps = streams.randn(path[-1].shape[1:], range(b)[sl]).to(dev)
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
        plan = tr.update_plan(adv, valid, epoch, drop_zero=o.drop_zero_adv)
        trainable = torch.tensor(roll.trainable)
        n_train = trained_transitions(len(trainable), o.timestep_fraction)
        # each sample its own transitions (the reference shuffles them per sample, train_sd3.py:778-790), from its
        # own stream: (B, n_train) indices into the rollout's steps
        chosen = tr.sample_streams("transitions", epoch).randperm(len(trainable))[:, :n_train].sort(dim=1).values
        steps_all = trainable[chosen]
        acc_stats = {"policy_loss": [], "kl": [], "loss": [], "ratio": [], "clipped": [], "approx_kl": []}
        grad_norms = []
        before = tr.snapshot()
        for step in plan:
            for i, mb in enumerate(step.micro):
                A = adv[mb].to(tr.acc.device) if not step.padding[i] else torch.zeros(len(mb), device=tr.acc.device)
                for k in range(n_train):
                    last = i == len(step.micro) - 1 and k == n_train - 1  # gradients sync on the last backward
                    stats = self._transition_backward(roll, mb, steps_all[mb, k], A, step.weight_of(i) / n_train,
                                                      sync=last)
                    for key, value in stats.items():
                        if not step.padding[i]:
                            acc_stats[key].append(value)
            grad_norms.append(float(tr.optimizer_step()))
        mean = tr.mean_over_processes({**acc_stats, "ratio_dev": [(r - 1).abs() for r in acc_stats["ratio"]]})
        ratios = torch.cat(acc_stats["ratio"]).float() if acc_stats["ratio"] else torch.zeros(0)
        lo = tr.data.extreme_over_processes(float(ratios.min()) if len(ratios) else float("inf"), largest=False)
        hi = tr.data.extreme_over_processes(float(ratios.max()) if len(ratios) else float("-inf"), largest=True)
        return {"loss": mean["loss"], "policy_loss": mean["policy_loss"], "kl": mean["kl"],
                "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
                "clip_frac": mean["clipped"], "ratio_dev": mean["ratio_dev"], "diag/approx_kl": mean["approx_kl"],
                "diag/ratio_mean": mean["ratio"], "diag/ratio_min": lo, "diag/ratio_max": hi,
                "diag/update_norm": tr.distance_from(before),
                "diag/trained_samples": sum(s.total for s in plan), "diag/optimizer_steps": len(plan)}

    def _transition_backward(self, roll: Rollout, mb, j: torch.Tensor, A: torch.Tensor, weight: float,
                             sync: bool) -> dict[str, torch.Tensor]:
        """The loss of each sample of ``mb`` at its transition ``j`` ``(b,)`` (advantages ``A``), summed with
        ``weight`` per sample (:meth:`EpochData.update_plan`'s, over the transitions trained), backpropagated,
        gradients synced across processes only with ``sync``; returns the per-sample statistics (policy loss, KL,
        loss and :func:`ratio_stats`)."""
        tr = self.tr
        o, s = tr.cfg.optim, tr.cfg.sampling
        dev = tr.acc.device
        cond, uncond = tr.update_conditions(roll, mb)
        x_j, x_next = roll.latents[mb, j].to(dev), roll.latents[mb, j + 1].to(dev)
        s_j, s_next = roll.sigmas[j].to(dev), roll.sigmas[j + 1].to(dev)  # (b,)
        with tr.micro_step(sync), tr.acc.autocast():
            v = cfg_velocity(tr.transformer, x_j, s_j, cond, uncond, s.guidance_scale)
            new = sde_step(x_j.float(), v, s_j, s_next, s.noise_level, prev_sample=x_next)
            old_lp = roll.log_probs[mb, j].to(dev)
            ratio = torch.exp(new.log_prob - old_lp)
            policy = clipped_policy_loss(A, ratio, o.clip_range)  # (b,)
            if o.kl_beta > 0:  # the reference: the LoRA adapter off (a full fine-tune: the starting transformer)
                with torch.no_grad(), tr.reference() as reference:
                    v_ref = cfg_velocity(reference, x_j, s_j, cond.detach(), uncond.detach(), s.guidance_scale)
                ref = sde_step(x_j.float(), v_ref, s_j, s_next, s.noise_level, prev_sample=x_next)
                kl = kl_to_reference(new.mean, ref.mean, new.std_dev_t, new.std_dev_t_dt, o.kl_form)
            else:  # no KL term: skip the reference forward
                kl = torch.zeros_like(policy)
            loss = (policy + o.kl_beta * kl).sum() * weight
            tr.acc.backward(loss)
        r = ratio_stats(new.log_prob, old_lp, o.clip_range)
        return {**{key: r[key].cpu() for key in ("ratio", "clipped", "approx_kl")},
                "policy_loss": policy.detach().cpu(), "kl": kl.detach().cpu(),
                "loss": (policy + o.kl_beta * kl).detach().cpu()}

    def progress_numbers(self, row: dict) -> dict[str, str]:
        """The share of clipped ratios. (Its old policy is the rollout's own: no state, nothing after an epoch.)"""
        return {"clip": f"{row['clip_frac']:.2f}"}
