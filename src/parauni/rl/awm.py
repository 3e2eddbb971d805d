"""Advantage Weighted Matching (AWM; Xue et al. 2025, arXiv 2509.25050) as a stage-III algorithm. Reference:
scxue/advantage_weighted_matching @ be51372 (Apache-2.0); ``:N`` is a line of
``advantage_weighted_matching/scripts/train_sd3_awm.py``, ``base:N`` of ``config/base_awm.py`` and ``dgx:N`` of
``config/dgx_awm.py`` (its GenEval config, ``geneval_sd3_no_cfg_1node``).

AWM scores a clean sample ``x_0`` by its flow-matching loss: with fresh noise ``eps`` and ``x_t = (1 - t) x_0 +
t eps``, ``log p ~ -mean((v(x_t, t) - (eps - x_0))^2)``, optionally reweighted in ``t`` (:210-252). The update is
PPO's clipped ratio of that surrogate, current over old, times the advantage (:1292-1329), plus a KL term to the
reference (the adapter off) and one to a soft-updated old policy (:1330-1352). The data path is DiffusionNFT's:
rollouts keep only clean latents, so any solver samples.

- **Rollouts** (:883-904): from the current policy, or from the old one with ``awm.off_policy``; the ODE solver
  ``awm.solver`` on the run's σ grid (the reference samples with its SA-solver, noise 0.4 in t in [0.3, 0.9]).
- **Training points** (:1197-1205, ``time_type: discrete_wo_init``): ``awm.train_timesteps`` grid indices, one in
  each of as many strata of ``[1, int(steps * optim.timestep_fraction)]``; fresh noise at each (:1215-1220).
  Each sample draws its own points (the reference shares them within a micro-batch), so a sample's loss does not
  depend on how the samples are cut into micro-batches or processes.
- **Old surrogates** (:1227-1240, :1282-1284): the same points and noise as the new ones, under the same
  autocast; those of the first optimizer step's micro-batches are the current forward's, detached (on-policy:
  ratio 1), the others' are computed before any step (with ``awm.off_policy``: all of them, by the old policy).
- **Loss**: the per-sample loss (:func:`awm_sample_loss`) summed over the samples of an optimizer step and
  divided by their count (the reference: the mean over a micro-batch, averaged over its accumulation steps; the
  same for equal micro-batches); samples whose reward is NaN weigh 0.
- **The old policy** (:650-658, :1409-1419): a copy of the trainable weights, equal at the start, after every
  epoch ``old = d old + (1 - d) current`` with ``d = min(awm.old_decay, 0.001 * optimizer steps)`` (``linear``)
  or ``awm.old_decay`` (``constant``).

Departures: the rollout solver (above); no CFG in the update (the reference's ``train.cfg`` is False, base:89);
the reference skips its first two epochs (:880) and computes its EMA once an epoch (:1391), which is once an
optimizer step at its one step an epoch (``optim.steps_per_epoch: 1``, dgx:52-53).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import NON_NEGATIVE, POSITIVE, POSITIVE_INT, PROBABILITY, boolean, choice
from ..errors import ConfigError
from ..train.schema import setting
from .lora import merged_transformer
from .nft import noised
from .ode import SOLVERS
from .old_policy import OldPolicy
from .rollout import CleanRollout, cfg_velocity, clean_rollout

WEIGHTINGS = ("uniform", "t", "t**2", "huber", "ghuber")  # :240-251 ("Uniform" there)
TIME_TYPES = ("discrete_wo_init", "discrete", "discrete_with_init")  # :1172-1205
LOSS_TYPES = ("exp_first", "sum_first")  # :1301-1310
KL_WEIGHTS = ("uniform", "elbo")  # :1334-1339 ("Uniform", "ELBO" there)
DECAYS = ("linear", "constant")  # :1410-1413


@dataclass
class AWMConfig:
    """AWM's own settings (the reference's GenEval config); the shared ones are in ``optim`` and ``sampling``."""

    train_timesteps: int = setting(6, POSITIVE_INT)  # training points per sample (dgx:56)
    time_type: str = setting("discrete_wo_init", choice(*TIME_TYPES))  # how they are drawn (dgx:88)
    weighting: str = setting("ghuber", choice(*WEIGHTINGS))  # the surrogate's weighting in t (dgx:63)
    ghuber_power: float = setting(0.25, POSITIVE)  # the power of the ghuber weighting (dgx:64)
    loss_type: str = setting("exp_first", choice(*LOSS_TYPES))  # a ratio per point, or of the mean (dgx:61)
    advantage_max: float = setting(1.0, POSITIVE)  # clipped advantages are rescaled to +-this (dgx:58)
    kl_weight: str = setting("uniform", choice(*KL_WEIGHTS))  # the reference KL's weighting (dgx:57)
    old_kl_beta: float = setting(1.0, NON_NEGATIVE)  # the weight of the KL to the old policy (ema_beta, dgx:67)
    old_kl_weight: str = setting("uniform", choice(*KL_WEIGHTS))  # its weighting (kl_ema_weight, dgx:65)
    old_decay: float = setting(0.3, PROBABILITY)  # the old policy's largest decay (kl_ema_decay, dgx:66)
    old_decay_type: str = setting("linear", choice(*DECAYS))  # its schedule (kl_ema_decay_type, dgx:68)
    off_policy: bool = setting(False, boolean())  # roll out (and take old surrogates) from the old policy (dgx:69)
    solver: str = setting("dpm2", choice(*SOLVERS))  # the rollout's deterministic solver: dpm2 or euler


# -- the maths --------------------------------------------------------------------------------------------------


def training_indices(n_samples: int, n_steps: int, fraction: float, k: int, time_type: str,
                     generator: torch.Generator) -> torch.Tensor:
    """``(B, K)`` grid indices, each sample its own (:1172-1205): ``boundaries = linspace(lo, int(n_steps *
    fraction), K + 1)`` truncated to integers, index ``k`` uniform in ``[boundaries[k], boundaries[k + 1])``
    (the lower bound where they are equal). ``lo`` is 1 for ``discrete_wo_init`` (σ = 1 never trained), 0 for
    ``discrete``; ``discrete_with_init`` trains index 0 and draws the other ``K - 1`` as ``wo_init``."""
    top = int(n_steps * fraction)
    if time_type not in TIME_TYPES:
        raise ValueError(f"unknown time_type {time_type!r}; choose one of {TIME_TYPES}")
    lo, strata = (0, k) if time_type == "discrete" else (1, k if time_type == "discrete_wo_init" else k - 1)
    u = torch.rand((n_samples, strata), generator=generator)
    bounds = torch.linspace(lo, top, strata + 1)
    lower, upper = bounds[:-1].long(), bounds[1:].long()
    idx = lower + (u * (upper - lower)).long()
    if time_type == "discrete_with_init":
        idx = torch.cat([torch.zeros((n_samples, 1), dtype=torch.long), idx], dim=1)
    return idx


def awm_log_prob(v: torch.Tensor, eps: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor, weighting: str = "uniform",
                 ghuber_power: float = 0.25) -> torch.Tensor:
    """The surrogate log-likelihood ``(N,)`` in float64 (:234-252) of velocities ``v`` ``(N, ...)`` at
    ``x_t = (1 - t) x_0 + t eps`` (``t`` ``(N,)``): ``l = -mean((v - (eps - x_0))^2)``, then ``uniform``: ``l``;
    ``t``: ``l t``; ``t**2``: ``l t^2``; ``huber``: ``-(sqrt(-l + 1e-10) - 1e-5) t``; ``ghuber``:
    ``-((-l + 1e-10)^p - 1e-10^p) t / p`` with ``p = ghuber_power``."""
    dims = tuple(range(1, v.ndim))
    lp = -((v.double() - (eps.double() - x_0.double())) ** 2).mean(dim=dims)
    t = t.reshape(-1).to(lp.dtype)
    if weighting == "uniform":
        return lp
    if weighting == "t":
        return lp * t
    if weighting == "t**2":
        return lp * t**2
    if weighting == "huber":
        return -(torch.sqrt(-lp + 1e-10) - 1e-5) * t
    if weighting == "ghuber":
        p = ghuber_power
        return -(torch.pow(-lp + 1e-10, p) - torch.pow(torch.tensor(1e-10, dtype=lp.dtype), p)) * t / p
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")


def elbo_std(t: torch.Tensor) -> torch.Tensor:
    """``sqrt(t / (1 - clamp(t, 0, 0.99))) * 0.7`` (:236), the scale of the ``elbo`` KL weighting."""
    return torch.sqrt(t / (1 - torch.clamp(t, 0, 0.99))) * 0.7


def scaled_advantages(adv: torch.Tensor, adv_clip_max: float, advantage_max: float | None) -> torch.Tensor:
    """Advantages ``(B,)`` clipped to ``+-adv_clip_max`` and rescaled to ``+-advantage_max`` (:1293-1299)."""
    a = adv.clamp(-adv_clip_max, adv_clip_max)
    return a if advantage_max is None else a / adv_clip_max * advantage_max


def clipped_ratio_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip_range: float,
                       loss_type: str = "exp_first") -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic loss per sample ``(B,)`` and the ratio, from surrogates ``(K, B)`` (:1301-1329):
    ``exp_first``: a ratio ``exp(l - l_old)`` per point ``(K, B)``, ``max(-A r, -A clip(r, 1 +- e))`` averaged over
    the points; ``sum_first``: one ratio per sample ``(B,)`` of the points' mean surrogates. The reference's loss
    is the mean of these over the samples."""
    old = old_log_prob.detach()
    if loss_type == "exp_first":
        ratio, a = torch.exp(log_prob - old), adv.unsqueeze(0)
    elif loss_type == "sum_first":
        ratio, a = torch.exp(log_prob.mean(0) - old.mean(0)), adv
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    loss = torch.maximum(-a * ratio, -a * ratio.clamp(1.0 - clip_range, 1.0 + clip_range))
    return (loss.mean(0) if loss_type == "exp_first" else loss), ratio


def velocity_kl(v: torch.Tensor, v_other: torch.Tensor, t: torch.Tensor, weight: str = "uniform") -> torch.Tensor:
    """The KL term per point ``(K, B)`` between velocities ``(K, B, ...)`` in float64 (:1334-1348):
    ``mean((v - v_other)^2)``, divided by ``2 elbo_std(t)^2`` for ``elbo``; ``t`` ``(K, B)``."""
    d = ((v.double() - v_other.detach().double()) ** 2).mean(dim=tuple(range(2, v.ndim)))
    if weight == "uniform":
        return d
    if weight == "elbo":
        return d / (2 * elbo_std(t.to(d.dtype)) ** 2)
    raise ValueError(f"unknown KL weighting {weight!r}; choose one of {KL_WEIGHTS}")


def awm_sample_loss(v, old_log_prob, v_ref, v_old, x_0, eps, t, adv, c: AWMConfig, clip_range: float,
                    adv_clip_max: float, kl_beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AWM's loss per sample ``(B,)`` (the reference's micro-batch loss is its mean) and detached terms.

    ``v`` ``(K, B, ...)``: the current velocities at the training points (differentiable); ``old_log_prob``
    ``(K, B)`` (``None``: the current's, detached: on-policy); ``v_ref``, ``v_old``: the reference's and the old
    policy's velocities (``None`` skips a KL term); ``x_0`` ``(B, ...)``; ``eps`` ``(K, B, ...)``; ``t`` ``(K, B)``;
    ``adv`` ``(B,)``. ``loss = policy + kl_beta kl + old_kl_beta old_kl`` with each KL averaged over the points."""
    kb = v.shape[:2]
    flat = (kb[0] * kb[1], *v.shape[2:])
    x0 = x_0.unsqueeze(0).expand(kb[0], *x_0.shape)
    lp = awm_log_prob(v.reshape(flat), eps.reshape(flat), x0.reshape(flat), t.reshape(-1), c.weighting,
                      c.ghuber_power).reshape(kb)
    old = lp.detach() if old_log_prob is None else old_log_prob
    a = scaled_advantages(adv.to(lp.dtype), adv_clip_max, c.advantage_max)
    policy, ratio = clipped_ratio_loss(lp, old, a, clip_range, c.loss_type)
    zero = torch.zeros_like(policy)
    kl = velocity_kl(v, v_ref, t, c.kl_weight).mean(0) if v_ref is not None else zero
    old_kl = velocity_kl(v, v_old, t, c.old_kl_weight).mean(0) if v_old is not None else zero
    loss = policy + kl_beta * kl + c.old_kl_beta * old_kl
    terms = {"log_prob": lp.detach(), "ratio": ratio.detach(), "policy": policy.detach(), "kl": kl.detach(),
             "old_kl": old_kl.detach()}
    return loss, terms


def old_decay(step: int, decay: float, kind: str = "linear") -> float:
    """The old policy's decay after ``step`` optimizer steps (:1410-1413): ``min(decay, 0.001 step)`` or ``decay``."""
    if kind not in DECAYS:
        raise ValueError(f"unknown decay type {kind!r}; choose one of {DECAYS}")
    return min(decay, 0.001 * step) if kind == "linear" else decay


# -- the algorithm ------------------------------------------------------------------------------------------------


class AdvantageWeightedMatching:
    """``algorithm: awm``: ODE rollouts that keep clean latents; clipped-ratio updates of the flow-matching
    surrogate with KL terms to the reference and to a soft-updated old policy."""

    name = "awm"
    section = "awm"
    Config = AWMConfig
    defaults = {"sampling.guidance_scale": 1.0,  # dgx:39
                "optim.lr": 3e-4,  # dgx:62
                "optim.kl_beta": 1e-3,  # train.beta, dgx:55
                "optim.clip_range": 1.0,  # dgx:86
                "optim.adv_clip": 5.0,  # adv_clip_max, base:91
                "optim.timestep_fraction": 0.9,  # dgx:60
                "optim.steps_per_epoch": 1,  # gradient accumulation over the epoch's micro-batches, dgx:52-53
                "optim.ema_decay": 0.99, "optim.ema_every": 1}  # dgx:91-92
    # zero-advantage samples always stay (:1074-1077): optim.drop_zero_adv is Flow-GRPO's
    unused = ("sampling.noise_level", "sampling.sde_window", "sampling.sde_window_range", "optim.kl_form",
              "optim.drop_zero_adv")
    drops_failed_samples = False

    def __init__(self, trainer):
        if trainer.cfg.model.train_lim:
            raise ConfigError("model.train_lim=true is not supported with algorithm=awm (its old policy would need a "
                              "copy of the LIM); use model.train_lim=false")
        self.tr = trainer
        self.cfg: AWMConfig = getattr(trainer.cfg, self.section)
        self.old = OldPolicy(trainer)  # the reference's "ema" adapter
        self._rollout_model = None

    # -- the old policy --------------------------------------------------------------------------------------
    def old_model(self):
        """A plain transformer with the old weights merged (rebuilt only after :meth:`after_epoch` moved them)."""
        return self.old.model()

    @torch.no_grad()
    def after_epoch(self) -> None:
        """``old = d old + (1 - d) current`` with ``d = old_decay(optimizer steps)`` (:1409-1419)."""
        self.old.soft_update(old_decay(self.tr.opt_step, self.cfg.old_decay, self.cfg.old_decay_type))

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """The old weights, ``old.safetensors`` in each checkpoint (exact resume)."""
        return self.old.state_tensors()

    def load_state_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        self.old.load(tensors)

    def progress_numbers(self, row: dict) -> dict[str, str]:
        return {"clip": f"{row['clip_frac']:.2f}", "old_kl": f"{row['diag/old_kl']:.1e}"}

    # -- sampling --------------------------------------------------------------------------------------------
    def rollout_model(self):
        """The old policy (``awm.off_policy``), else the current one: a merged copy when ``sampling.merge_lora`` and
        the update runs in float32 (under bf16 a merged weight rounds differently from the adapter, as for
        Flow-GRPO's rollouts), else the adapted transformer itself."""
        tr = self.tr
        if self.cfg.off_policy:
            return self.old_model()
        if not tr.cfg.sampling.merge_lora or tr.acc.mixed_precision != "no":
            return tr.transformer
        self._rollout_model = merged_transformer(tr.raw_transformer, into=self._rollout_model)
        return self._rollout_model

    def rollout(self, epoch: int) -> CleanRollout:
        """This process's prompts of ``epoch`` and their ``G`` clean samples each."""
        return clean_rollout(self.tr, self.tr.rollout_inputs(epoch), self.rollout_model(), self.cfg.solver)

    # -- update ---------------------------------------------------------------------------------------------
    def _velocity(self, model, roll: CleanRollout, mb, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """``model``'s conditional velocities ``(K, b, ...)`` at the points ``t`` ``(K, b)`` with noise ``eps``
        ``(K, b, ...)`` of the samples ``mb``: one forward of ``K b`` rows, point-major as the reference (:1212)."""
        dev = self.tr.acc.device
        x_0 = roll.x_0[mb].to(dev).float()
        k = t.shape[0]
        x_t = noised(x_0.repeat(k, 1, 1, 1), eps.reshape(-1, *x_0.shape[1:]), t.reshape(-1))
        cond = roll.cond[mb].to(dev).repeat(k, 1, 1)
        return cfg_velocity(model, x_t, t.reshape(-1), cond, None, 1.0).reshape(*t.shape, *x_0.shape[1:])

    def update(self, roll: CleanRollout, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """AWM's update over every sample of the rollout (see the module docstring)."""
        tr, c = self.tr, self.cfg
        o, dev = tr.cfg.optim, tr.acc.device
        plan = tr.update_plan(adv, valid, epoch, drop_zero=False)
        grid = roll.sigmas[:-1].to(torch.float32)
        # each sample's training points and noise from its own streams (the same whichever process holds it)
        points = torch.cat([training_indices(1, len(grid), o.timestep_fraction, c.train_timesteps, c.time_type, g)
                            for g in tr.sample_streams("transitions", epoch).generators])  # (B, K)
        t_all = grid[points].T.contiguous()  # (K, B)
        noise = tr.sample_streams("awm_noise", epoch).randn((points.shape[1], *roll.x_0.shape[1:])).transpose(0, 1)
        weight = valid.to(torch.float32)
        before = tr.snapshot()
        old_model = self.old_model()  # built before any forward: it swaps the trainable weights in place
        # the old surrogates of every micro-batch after the first optimizer step, before any step (:1227-1240)
        old_lp = {}
        with torch.no_grad(), tr.acc.autocast():
            model = old_model if c.off_policy else tr.transformer
            for s_i, step in enumerate(plan):
                if s_i == 0 and not c.off_policy:
                    continue
                for i, mb in enumerate(step.micro):
                    t, eps = t_all[:, mb].to(dev), noise[:, mb].to(dev)
                    v = self._velocity(model, roll, mb, t, eps)
                    x_0 = roll.x_0[mb].to(dev).float().repeat(len(t), 1, 1, 1)
                    old_lp[s_i, i] = awm_log_prob(v.flatten(0, 1), eps.flatten(0, 1), x_0, t.reshape(-1),
                                                  c.weighting, c.ghuber_power).reshape(t.shape)
        stats = {k: [] for k in ("loss", "policy_loss", "kl", "old_kl", "ratio")}
        grad_norms = []
        for s_i, step in enumerate(plan):
            for i, mb in enumerate(step.micro):
                t, eps = t_all[:, mb].to(dev), noise[:, mb].to(dev)
                a, w = adv[mb].to(dev), weight[mb].to(dev)
                if step.padding[i]:  # a sync-only pass: weight 0, finite inputs
                    a, w = torch.zeros_like(a), torch.zeros_like(w)
                with tr.micro_step(sync=i == len(step.micro) - 1), tr.acc.autocast():
                    v = self._velocity(tr.transformer, roll, mb, t, eps)
                    v_ref = v_old = None
                    with torch.no_grad():
                        if o.kl_beta > 0:  # the reference: the adapter off (:1272-1275)
                            with tr.reference() as reference:
                                v_ref = self._velocity(reference, roll, mb, t, eps)
                        if c.old_kl_beta > 0:  # the old policy (:1276-1280)
                            v_old = self._velocity(old_model, roll, mb, t, eps)
                    loss, terms = awm_sample_loss(v, old_lp.get((s_i, i)), v_ref, v_old, roll.x_0[mb].to(dev).float(),
                                                  eps, t, a, c, o.clip_range, o.adv_clip, o.kl_beta)
                    tr.acc.backward((w * loss).sum() * step.weight_of(i))
                if not step.padding[i]:
                    stats["loss"].append(loss.detach().float().cpu())
                    stats["policy_loss"].append(terms["policy"].float().cpu())
                    stats["kl"].append(terms["kl"].float().cpu())
                    stats["old_kl"].append(terms["old_kl"].float().cpu())
                    stats["ratio"].append(terms["ratio"].double().flatten().cpu())
            grad_norms.append(float(tr.optimizer_step()))
        dev_r = [(r - 1).abs() for r in stats["ratio"]]
        mean = tr.mean_over_processes({**stats, "ratio_dev": dev_r,
                                       "clipped": [(d > o.clip_range).double() for d in dev_r]})
        return {"loss": mean["loss"], "policy_loss": mean["policy_loss"], "kl": mean["kl"],
                "grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else float("nan"),
                "clip_frac": mean["clipped"], "ratio_dev": mean["ratio_dev"], "diag/old_kl": mean["old_kl"],
                "diag/old_decay": old_decay(tr.opt_step, c.old_decay, c.old_decay_type),
                "diag/update_norm": tr.distance_from(before),
                "diag/trained_samples": int(sum(s.total for s in plan)), "diag/optimizer_steps": len(plan)}
