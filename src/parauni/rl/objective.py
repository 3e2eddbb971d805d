"""Flow-GRPO's objective as small pure functions: advantages, the clipped policy loss, the KL term,
the EMA schedule and the per-epoch diagnostics.

The reference is yifan123/flow_grpo; line numbers below are those of ``scripts/train_sd3.py``,
``flow_grpo/stat_tracking.py`` and ``flow_grpo/ema.py`` at commit ac4c86e.
"""

from __future__ import annotations

import math

import torch

KL_FORMS = ("reference", "transition")


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, per_group_std: bool = False,
                     clip: float = 5.0, eps: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
    """Group-relative advantages ``(B,)`` and statistics of the groups.

    ``A = (r - mean of the prompt's group) / (std + eps)`` with ``std`` over all finite rewards of the
    epoch (Flow-GRPO's ``global_std``, ``stat_tracking.py:26-27``) or over the group's own rewards
    (``per_group_std``; ``stat_tracking.py:29``), then clipped to ``+-clip`` (``train_sd3.py:881-885``).
    Stds are population stds (numpy's ``np.std`` in the reference). Non-finite rewards get advantage 0 and
    stay out of the means. A group whose finite rewards are all equal gets exactly 0 (it has no
    preference to learn from).

    Statistics: ``zero_std_share`` (the share of groups with all-equal rewards, ``train_sd3.py:132-166``),
    ``group_reward_std`` (the mean within-group std), ``adv_mean``, ``adv_std`` (over finite samples).
    """
    rewards = rewards.double()
    valid = torch.isfinite(rewards)
    adv = torch.zeros_like(rewards)
    if valid.sum() == 0:
        return adv.float(), {"zero_std_share": float("nan"), "group_reward_std": float("nan"),
                             "adv_mean": float("nan"), "adv_std": float("nan")}
    global_std = rewards[valid].std(unbiased=False)
    stds, zero = [], 0
    ids = groups[valid].unique()
    for gid in ids:
        sel = (groups == gid) & valid
        r = rewards[sel]
        g_std = r.std(unbiased=False)
        stds.append(float(g_std))
        if bool((r == r[0]).all()):
            zero += 1
            continue  # exactly zero advantage
        std = g_std if per_group_std else global_std
        adv[sel] = (r - r.mean()) / (std + eps)
    adv = adv.clamp(-clip, clip)
    stats = {"zero_std_share": zero / len(ids), "group_reward_std": float(sum(stds) / len(stds)),
             "adv_mean": float(adv[valid].mean()), "adv_std": float(adv[valid].std(unbiased=False))}
    return adv.float(), stats


def clipped_policy_loss(adv: torch.Tensor, ratio: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's pessimistic loss per sample ``(B,)``: ``max(-A * ratio, -A * clip(ratio, 1 - e, 1 + e))``
    (``train_sd3.py:886-892``; the reference then takes the mean)."""
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_range, 1 + clip_range))


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std_dev_t: torch.Tensor,
                    std_dev_t_dt: torch.Tensor, form: str = "reference") -> torch.Tensor:
    """The KL penalty per sample ``(B,)`` between the policy's and the reference's transition means.

    ``form="reference"`` is Flow-GRPO's code (``train_sd3.py:895``):
    ``mean over elements of (mean - ref_mean)^2 / (2 * std_dev_t^2)``, with ``std_dev_t`` the SDE's std
    *without* the ``sqrt(-dt)`` factor; the paper's beta values (0.04; 0.01 for PickScore) assume this form.
    ``form="transition"`` divides by the transition's own variance ``(std_dev_t * sqrt(-dt))^2``, which is
    the exact KL of the two Gaussian transitions; at a fixed beta it is ``1 / -dt`` times stronger (5.6-28x
    on a 10-step shift-3 grid).
    """
    if form == "reference":
        scale = std_dev_t
    elif form == "transition":
        scale = std_dev_t_dt
    else:
        raise ValueError(f"unknown KL form {form!r}; choose one of {KL_FORMS}")
    diff2 = (mean - ref_mean).float() ** 2
    return (diff2 / (2 * scale.float() ** 2)).flatten(1).mean(1)


def ema_decay(step: int, max_decay: float = 0.9, warmup: bool = True) -> float:
    """The EMA decay at ``step``: ``min((1 + k) / (10 + k), max_decay)`` with warm-up (``flow_grpo/ema.py:33-37``,
    DiffusionNFT ``flow_grpo/ema.py:26``), else ``max_decay``. ``step`` is the references' ``global_step`` at the
    call: the optimizer steps taken, this one included (1 after the first)."""
    return min((1 + step) / (10 + step), max_decay) if warmup else max_decay


def ema_due(step: int, every: int) -> bool:
    """Whether the EMA is updated at ``step`` (as for :func:`ema_decay`: the optimizer steps taken, this one
    included), as ``flow_grpo/ema.py:45`` does (``(step + 1) % every == 0``)."""
    return (step + 1) % every == 0


def ratio_stats(log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip_range: float) -> dict[str, torch.Tensor]:
    """Per-sample quantities for the diagnostics (detached): ``ratio``, ``clipped`` (``|ratio - 1| > e``) and
    ``approx_kl`` (``0.5 * (logp - logp_old)^2``, ``train_sd3.py:901-904``)."""
    d = (log_prob - old_log_prob).detach().float()
    ratio = d.exp()
    return {"ratio": ratio, "clipped": ((ratio - 1).abs() > clip_range).float(), "approx_kl": 0.5 * d**2}


def split_evenly(n: int, parts: int) -> list[int]:
    """``n`` items into ``min(parts, n)`` consecutive chunks whose sizes differ by at most one."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    return [base + (i < extra) for i in range(parts)]


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values (NaN when there are none)."""
    ok = [v for v in values if math.isfinite(v)]
    return sum(ok) / len(ok) if ok else float("nan")
