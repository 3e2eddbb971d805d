"""DiffusionNFT's parts of a stage-III epoch (Zheng et al. 2025, arXiv 2509.16117; NVlabs/DiffusionNFT @ 24af555,
``scripts/train_nft_sd3.py``, cited by line): deterministic rollouts from the *old* policy that store only clean
latents and conditions, and the forward-process update of :func:`parauni.rl.nft.nft_loss`.

- **The old policy** (:544, :576-581, :1035-1039): a copy of the trainable weights, equal to them at the start,
  soft-updated after every epoch as ``old = d * old + (1 - d) * current`` with ``d`` =
  :func:`parauni.rl.nft.old_policy_decay` of the optimizer steps taken (``nft.decay_type``). Rollouts and the
  ``v_old`` predictions use it, as a plain transformer copy with the old LoRA merged (exact: the old weights do
  not change within an epoch).
- **Rollouts** (:640-676): the ODE solver ``nft.solver`` (``dpm2`` as the reference, or ``euler``) on the run's σ
  grid, guidance ``sampling.guidance_scale`` (the reference's NFT configs: 1, ``config/nft.py``); stored: the clean
  latents, the conditions (with any LDAM noise) and the grid.
- **Training points** (:569, :807-816, :862-870): per sample the grid's σ values but the final 0, shuffled, the
  first ``max(1, int(steps * optim.timestep_fraction))`` of them; fresh noise at each.
- **Update** (:801-1030): per micro-batch and training point the old, current and reference (adapter off)
  velocities, conditional only; gradients accumulate over ``1 / optim.steps_per_epoch`` of the micro-batches times
  the training points, the loss a mean over those samples x training points (the reference's division by
  ``gradient_accumulation_steps * num_train_timesteps`` of equal micro-batches); the EMA after each
  optimizer step as for Flow-GRPO (the reference: decay 0.9 with warm-up, every step, :567).

Departures, each for a stated reason:

- Samples whose reward is NaN (a reward that failed) keep their place in the micro-batch with weight 0, so every
  process makes the same number of backward passes (the reference has no failed rewards).
- The update's predictions are always conditional (guidance 1): the reference concatenates unconditional
  embeddings when its guidance is above 1 (:839-853), which does not fit its single-batch latents; its NFT
  configs use guidance 1.
- The advantages are :func:`parauni.rl.objective.group_advantages` (per-prompt mean, one std over the epoch, as
  the reference's ``PerPromptStatTracker(global_std=True)`` of ``config/base.py``), clipped to ``optim.adv_clip``
  (the reference's ``adv_clip_max``, 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import POSITIVE, Check, choice
from ..errors import ConfigError
from ..train.schema import setting
from .algorithm import Algorithm
from .nft import ADV_MODES, DECAY_TYPES, nft_loss, noised, old_policy_decay, reward_weight
from .ode import SOLVERS
from .old_policy import OldPolicy
from .rollout import CleanRollout, cfg_velocity, clean_rollout


@dataclass
class NFTConfig:
    """DiffusionNFT's own settings, the config's ``nft:`` section (NVlabs/DiffusionNFT ``config/nft.py``); the
    shared ones are in ``optim``: ``adv_clip`` (adv_clip_max), ``kl_beta`` (train.beta), ``timestep_fraction``, the
    EMA and AdamW."""

    # implicit policies v+ = beta v + (1 - beta) v_old (reference: 1; 0.1 for several rewards)
    beta: float = setting(1.0, POSITIVE)
    # how advantages become r: all, positive_only, negative_only, one_only, binary
    adv_mode: str = setting("all", choice(*ADV_MODES))
    # the old policy's soft-update schedule (0: on-policy; 1: 0 -> 0.5 over 500 steps; 2)
    decay_type: int = setting(1, Check(f"one of {', '.join(map(str, DECAY_TYPES))}",
                                       lambda v: isinstance(v, int) and not isinstance(v, bool) and v in DECAY_TYPES))
    # the rollout's deterministic solver: dpm2 (DPM-Solver++(2M)) or euler
    solver: str = setting("dpm2", choice(*SOLVERS))


def training_points(n_samples: int, n_steps: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``(B, K)`` indices into the grid's first ``n_steps`` σ values: each sample's own shuffled order, the first
    ``K = max(1, int(n_steps * fraction))`` of it (:569, :807-816)."""
    k = max(1, int(n_steps * fraction))
    return torch.stack([torch.randperm(n_steps, generator=generator)[:k] for _ in range(n_samples)])


class DiffusionNFT(Algorithm):
    """``algorithm: diffusion_nft``: deterministic rollouts from the old policy, forward-process updates."""

    name = "diffusion_nft"
    section, Config = "nft", NFTConfig
    # the reference's defaults where they differ from Flow-GRPO's (NVlabs/DiffusionNFT @ 24af555)
    defaults = {
        "sampling.guidance_scale": 1.0,  # config/nft.py:64
        "optim.kl_beta": 1e-4,  # config/base.py:89 (train.beta)
        "optim.timestep_fraction": 0.99,  # config/base.py:87
        "optim.ema_every": 1,  # scripts/train_nft_sd3.py:567 (update_step_interval=1)
        "optim.lr": 3e-4,  # config/base.py:66
    }
    # Flow-GRPO's SDE, ratio and sample-dropping keys: nothing here reads them
    unused = ("sampling.noise_level", "sampling.sde_window", "sampling.sde_window_range", "sampling.merge_lora",
              "optim.clip_range", "optim.kl_form", "optim.drop_zero_adv")
    drops_failed_samples = False  # NaN rewards stay in the micro-batch with weight 0

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.model.train_lim:
            raise ConfigError("model.train_lim=true is not supported with algorithm=diffusion_nft yet (its old "
                              "policy would need a copy of the LIM); use algorithm=flow_grpo or train_lim=false")

    def __init__(self, trainer):
        super().__init__(trainer)
        # the old policy's weights, one per trainable tensor (the reference's "old" adapter), equal at the start
        self.old = OldPolicy(trainer)

    # -- the old policy --------------------------------------------------------------------------------------
    def old_model(self):
        """The plain transformer with the old weights merged (rebuilt only after :meth:`after_epoch` moved them)."""
        return self.old.model()

    @torch.no_grad()
    def after_epoch(self) -> None:
        """``old = d * old + (1 - d) * current`` with ``d = old_policy_decay(optimizer steps, nft.decay_type)``
        (:1035-1039)."""
        self.old.soft_update(old_policy_decay(self.tr.opt_step, self.tr.cfg.nft.decay_type))

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The old weights, written to ``old.safetensors`` in each checkpoint (exact resume)."""
        return self.old.state_tensors()

    def load_state_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        self.old.load(tensors)

    def progress_numbers(self, row: dict) -> dict[str, str]:
        """The old policy's deviation from the current one."""
        return {"old_dev": f"{row['diag/old_deviate']:.1e}"}

    # -- sampling --------------------------------------------------------------------------------------------
    def rollout(self, epoch: int) -> CleanRollout:
        """This process's prompts of ``epoch`` and their ``G`` clean samples each, from the old policy."""
        return clean_rollout(self.tr, self.tr.rollout_inputs(epoch), self.old_model(), self.tr.cfg.nft.solver)

    # -- update ---------------------------------------------------------------------------------------------
    def update(self, roll: CleanRollout, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """DiffusionNFT's update over every sample of the rollout (see the module docstring)."""
        tr = self.tr
        o, n = tr.cfg.optim, tr.cfg.nft
        dev = tr.acc.device
        plan = tr.update_plan(adv, valid, epoch, drop_zero=False)
        grid = roll.sigmas[:-1].to(torch.float32)  # training σ values (the final 0 is never trained)
        # each sample's training points and fresh noise from its own streams: (B, K) and (B, K, c, h, w)
        points = torch.cat([training_points(1, len(grid), o.timestep_fraction, g)
                            for g in tr.sample_streams("transitions", epoch).generators])
        k_points = points.shape[1]
        noise = tr.sample_streams("nft_noise", epoch).randn((k_points, *roll.x_0.shape[1:]))
        r_all = reward_weight(adv.to(torch.float32), o.adv_clip, n.adv_mode)
        weight_all = valid.to(torch.float32)
        stats = {"policy_loss": [], "kl": [], "loss": [], "old_deviate": []}
        grad_norms = []
        old_model = self.old_model()
        before = tr.snapshot()
        for step in plan:
            for i, mb in enumerate(step.micro):
                x_0 = roll.x_0[mb].to(dev).float()
                cond, _ = tr.update_conditions(roll, mb)
                r, w = r_all[mb].to(dev), weight_all[mb].to(dev)
                if step.padding[i]:  # a sync-only pass: weight 0, finite inputs
                    r, w = torch.zeros_like(r), torch.zeros_like(w)
                for k in range(k_points):
                    t = grid[points[mb, k]].to(dev)  # (b,)
                    x_t = noised(x_0, noise[mb, k].to(dev), t)
                    last = i == len(step.micro) - 1 and k == k_points - 1
                    with tr.micro_step(sync=last), tr.acc.autocast():
                        with torch.no_grad():
                            v_old = cfg_velocity(old_model, x_t, t, cond.detach(), None, 1.0)
                        v = cfg_velocity(tr.transformer, x_t, t, cond, None, 1.0)
                        v_ref = None
                        if o.kl_beta > 0:  # the reference: the LoRA off (a full fine-tune: the starting weights)
                            with torch.no_grad(), tr.reference() as reference:
                                v_ref = cfg_velocity(reference, x_t, t, cond.detach(), None, 1.0)
                        loss, terms = nft_loss(v, v_old, v_ref, x_t, x_0, t, r, n.beta, o.adv_clip, o.kl_beta,
                                               weight=w)
                        # nft_loss is a mean over the micro-batch: back to a sum, each sample weighted by the plan
                        # (a mean over the step's samples x training points, whatever the micro-batches)
                        tr.acc.backward(loss * (len(mb) * step.weight_of(i) / k_points))
                    if not step.padding[i]:
                        stats["policy_loss"].append(terms["policy"].cpu())
                        stats["kl"].append(terms["kl"].cpu())
                        stats["old_deviate"].append(terms["old_deviate"].cpu())
                        # the micro-batch's mean once per sample: the epoch's mean is over samples, whatever
                        # the micro-batches (and the processes)
                        stats["loss"].append(loss.detach().reshape(1).cpu().repeat(len(mb)))
            grad_norms.append(float(tr.optimizer_step()))
        mean = tr.mean_over_processes({**stats, "r": [r_all[valid]]})
        return {"loss": mean["loss"], "policy_loss": mean["policy_loss"], "kl": mean["kl"],
                "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
                "diag/old_deviate": mean["old_deviate"], "diag/r_mean": mean["r"],
                "diag/old_decay": old_policy_decay(tr.opt_step, n.decay_type),
                "diag/update_norm": tr.distance_from(before),
                "diag/trained_samples": int(sum(s.total for s in plan)), "diag/optimizer_steps": len(plan)}
