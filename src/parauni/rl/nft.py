"""DiffusionNFT's objective as small pure functions (Zheng et al. 2025, "DiffusionNFT: Online Diffusion
Reinforcement with Forward Process", arXiv 2509.16117).

The reference is NVlabs/DiffusionNFT at commit 24af555 (Apache-2.0); line numbers below are those of
``scripts/train_nft_sd3.py`` unless another file is named.

DiffusionNFT trains on the *forward* process: for a clean rollout sample ``x_0`` with reward-derived weight
``r`` in [0, 1], fresh noise ``eps`` and a flow time ``t``, ``x_t = (1 - t) x_0 + t eps``, and the current
velocity ``v_theta`` is pulled so that the *implicit positive policy* ``beta v_theta + (1 - beta) v_old``
predicts ``x_0`` (weight ``r``) while the *implicit negative policy* ``(1 + beta) v_old - beta v_theta`` does
(weight ``1 - r``). ``v_old`` is the rollout ("old") policy's velocity, held fixed. No log-probability, no SDE and
no CFG enter the update, so the rollout may use any deterministic solver.
"""

from __future__ import annotations

import torch

ADV_MODES = ("all", "positive_only", "negative_only", "one_only", "binary")
DECAY_TYPES = (0, 1, 2)
# return_decay (:169-189): (flat, uprate, uphold) of each decay type
_DECAYS = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


def old_policy_decay(step: int, decay_type: int = 1) -> float:
    """How much of the old policy's weights the soft update keeps after optimizer step count ``step``
    (``return_decay``, :169-189): ``0`` before ``flat`` steps, then ``min((step - flat) * uprate, uphold)``.

    Type 0 keeps nothing (the old policy is the current one at every rollout: on-policy); type 1 (the reference's
    default, ``config/nft.py``) ramps from 0 to 0.5 over 500 optimizer steps; type 2 waits 75 steps and then ramps
    to 0.999. The update after each epoch (:1035-1039) is ``old = decay * old + (1 - decay) * current``."""
    if decay_type not in _DECAYS:
        raise ValueError(f"unknown decay type {decay_type!r}; choose one of {DECAY_TYPES}")
    flat, uprate, uphold = _DECAYS[decay_type]
    if step < flat:
        return 0.0
    return min((step - flat) * uprate, uphold)


def reward_weight(adv: torch.Tensor, adv_clip_max: float = 5.0, mode: str = "all") -> torch.Tensor:
    """The weight ``r`` in [0, 1] of the positive branch for advantages ``adv`` ``(B,)`` (:910-929).

    The advantage is clipped to ``+-adv_clip_max``, then reshaped by ``mode``: ``all`` keeps it,
    ``positive_only`` / ``negative_only`` clip it to its positive / negative part, ``one_only`` maps it to 1 where
    positive and 0 elsewhere, ``binary`` to its sign. Then ``r = clip(A / adv_clip_max / 2 + 1/2, 0, 1)``: a sample
    with advantage 0 weighs both branches equally."""
    a = adv.clamp(-adv_clip_max, adv_clip_max)
    if mode == "positive_only":
        a = a.clamp(0, adv_clip_max)
    elif mode == "negative_only":
        a = a.clamp(-adv_clip_max, 0)
    elif mode == "one_only":
        a = torch.where(a > 0, torch.ones_like(a), torch.zeros_like(a))
    elif mode == "binary":
        a = torch.sign(a)
    elif mode != "all":
        raise ValueError(f"unknown adv_mode {mode!r}; choose one of {ADV_MODES}")
    return (a / adv_clip_max / 2.0 + 0.5).clamp(0, 1)


def noised(x_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x_0 + t eps`` (:862-870) with ``t`` ``(B,)`` broadcast over ``x_0`` ``(B, ...)``."""
    t = t.reshape(-1, *([1] * (x_0.ndim - 1))).to(x_0.dtype)
    return (1 - t) * x_0 + t * noise


def _adaptive_x0_loss(x0_pred: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
    """``mean((x0_pred - x_0)^2 / w)`` per sample with ``w`` the detached mean absolute error of the same
    prediction, computed in float64 and floored at 1e-5 (:939-957): an adaptive weighting that makes each
    sample's loss about its own error scale (its gradient is ``2 (x0_pred - x_0) / (n w)``)."""
    dims = tuple(range(1, x_0.ndim))
    with torch.no_grad():
        w = (x0_pred.double() - x_0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
    return ((x0_pred - x_0) ** 2 / w).mean(dim=dims)


def nft_loss(v: torch.Tensor, v_old: torch.Tensor, v_ref: torch.Tensor | None, x_t: torch.Tensor,
             x_0: torch.Tensor, t: torch.Tensor, r: torch.Tensor, beta: float = 1.0, adv_clip_max: float = 5.0,
             kl_beta: float = 1e-4, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DiffusionNFT's loss for one training point of a micro-batch (:932-971); returns ``(loss, per-sample
    terms)``.

    ``v`` ``(B, ...)``: the current policy's velocity at ``x_t`` (differentiable); ``v_old``: the old (rollout)
    policy's, ``v_ref``: the reference model's (the adapter off; ``None`` skips the KL term), both detached
    here; ``x_0``: the rollout's clean samples; ``t`` ``(B,)``: flow times; ``r`` ``(B,)``: :func:`reward_weight`.

    - positive policy ``v_+ = beta v + (1 - beta) v_old``; implicit negative ``v_- = (1 + beta) v_old - beta v``
      (:934-937);
    - their x_0 predictions ``x_t - t v_+-`` against ``x_0``, each divided by its own detached mean absolute error
      (:939-957);
    - ``loss = adv_clip_max * mean((r L_+ + (1 - r) L_-) / beta) + kl_beta * mean(mean((v - v_ref)^2))``
      (:959-971).

    ``weight`` ``(B,)``: optional per-sample weights inside both means (0 takes a sample out without changing the
    divisor). Per-sample terms (detached): ``policy`` (before the ``adv_clip_max`` factor), ``kl``, ``old_deviate``
    (``mean((v - v_old)^2)``)."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    v_old = v_old.detach()
    tb = t.reshape(-1, *([1] * (x_0.ndim - 1))).to(v.dtype)
    v_pos = beta * v + (1 - beta) * v_old
    v_neg = (1 + beta) * v_old - beta * v
    pos = _adaptive_x0_loss(x_t - tb * v_pos, x_0)
    neg = _adaptive_x0_loss(x_t - tb * v_neg, x_0)
    policy = r * pos / beta + (1 - r) * neg / beta  # (B,)
    w = torch.ones_like(policy) if weight is None else weight.to(policy.dtype)
    loss = adv_clip_max * (w * policy).mean()
    dims = tuple(range(1, x_0.ndim))
    if v_ref is not None:
        kl = ((v - v_ref.detach()) ** 2).mean(dim=dims)
        loss = loss + kl_beta * (w * kl).mean()
    else:
        kl = torch.zeros_like(policy)
    terms = {"policy": policy.detach(), "kl": kl.detach(), "old_deviate": ((v - v_old) ** 2).mean(dim=dims).detach()}
    return loss, terms
