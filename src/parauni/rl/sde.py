"""The Flow-GRPO exploration step (Liu et al. 2025, yifan123/flow_grpo) as pure functions.

Flow time ``sigma`` runs from 1 (noise) to 0 (data) and ``v`` is the predicted velocity
``noise - x_0``.  One step from ``sigma`` to ``sigma_next`` (``dt = sigma_next - sigma < 0``)::

    std  = a * sqrt(s / (1 - s)),  s = sigma, or sigma_next where sigma == 1 (the ratio is infinite there)
    mean = x * (1 + std^2 * dt / (2 sigma)) + v * (1 + std^2 * (1 - sigma) / (2 sigma)) * dt
    x_next = mean + std * sqrt(-dt) * eps,  eps ~ N(0, I)

The log-probability is the Gaussian log-density of ``x_next`` under ``N(mean, (std * sqrt(-dt))^2)``,
averaged (not summed) over every non-batch element, so ratios of new to old policies stay near 1.
Arithmetic is float32 (float64 for float64 inputs); sigmas are cast to that dtype before ``dt`` is taken.
``a = 0`` is the plain Euler ODE step ``x + v * dt``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class SDEStepOutput(NamedTuple):
    prev_sample: torch.Tensor  # (B, ...) x at sigma_next, in x's dtype
    mean: torch.Tensor  # (B, ...) compute dtype, differentiable in v
    std_dev_t_dt: torch.Tensor  # (B or 1, 1, ...) the transition scale std * sqrt(-dt)
    log_prob: torch.Tensor  # (B,) compute dtype; NaN when noise_level == 0 (a point mass has no density)
    std_dev_t: torch.Tensor  # (B or 1, 1, ...) the SDE's std before the sqrt(-dt) factor (0 for the ODE step)


def _as_column(sigma: float | torch.Tensor, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float or ``(B,)`` / ``()`` tensor as ``(B or 1, 1, ...)``, broadcastable against ``like``."""
    s = torch.as_tensor(sigma, dtype=None if torch.is_tensor(sigma) else dtype, device=like.device)
    s = s.to(dtype).reshape(-1)
    if s.numel() not in (1, like.shape[0]):
        raise ValueError(f"sigma has {s.numel()} values for a batch of {like.shape[0]}")
    return s.reshape(-1, *([1] * (like.ndim - 1)))


def sde_step(x: torch.Tensor, v: torch.Tensor, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor,
             noise_level: float = 0.7, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
             prev_sample: torch.Tensor | None = None) -> SDEStepOutput:
    """One SDE step of ``x`` ``(B, ...)`` with velocity ``v`` ``(B, ...)`` from ``sigma`` to ``sigma_next``.

    ``sigma`` / ``sigma_next`` are floats or ``(B,)`` tensors.  With ``prev_sample`` (replay during the
    policy update) no noise is drawn: that sample is returned and its log-probability computed under the
    (new) mean.  Otherwise ``noise`` (``eps``, same shape as ``x``) is used if given, else drawn from
    ``generator``.  ``prev_sample`` is returned in ``x.dtype`` and the log-prob
    is that of the rounded sample, so replaying it reproduces the sampling-time log-prob exactly.
    """
    cdt = torch.promote_types(x.dtype, torch.float32)  # compute in float32, or float64 for float64 inputs
    s = _as_column(sigma, x, cdt)  # (B|1, 1, ...)
    s_next = _as_column(sigma_next, x, cdt)
    if torch.any(s_next >= s):
        raise ValueError("sigma_next must be below sigma (time runs from 1 = noise to 0 = data)")
    dt = s_next - s  # < 0
    xf, vf = x.to(cdt), v.to(cdt)
    if noise_level == 0:  # exactly the Euler step; the transition is a point mass, so no log density
        mean = xf + vf * dt
        scale = torch.zeros_like(dt)
        sample = (mean if prev_sample is None else prev_sample).to(x.dtype)
        log_prob = torch.full((x.shape[0],), float("nan"), device=x.device, dtype=cdt)
        return SDEStepOutput(sample, mean, scale, log_prob, scale)
    # sigma / (1 - sigma) is infinite at sigma = 1: there the denominator takes the next grid value,
    # as Flow-GRPO's reference code does (the numerator stays sigma)
    denom_s = torch.where(s >= 1, s_next, s)
    std = noise_level * torch.sqrt(s / (1 - denom_s))
    mean = xf * (1 + std**2 * dt / (2 * s)) + vf * (1 + std**2 * (1 - s) / (2 * s)) * dt
    scale = std * torch.sqrt(-dt)  # (B|1, 1, ...)
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=cdt)
        prev_sample = (mean + scale * noise.to(cdt)).to(x.dtype)
    z = prev_sample.detach().to(cdt) - mean
    log_density = -(z**2) / (2 * scale**2) - torch.log(scale) - _LOG_SQRT_2PI  # (B, ...)
    log_prob = log_density.reshape(x.shape[0], -1).mean(1)  # (B,)
    return SDEStepOutput(prev_sample, mean, scale, log_prob, std)


GRIDS = ("scheduler", "uniform")


def sigma_grid(num_steps: int, shift: float = 1.0, device: torch.device | str | None = None,
               kind: str = "scheduler") -> torch.Tensor:
    """The descending flow-time grid ``(num_steps + 1,)`` from 1 to 0 used by the SDE rollouts.

    ``kind="scheduler"`` (the default) is Flow-GRPO's grid: the ``sigmas`` of diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps)``
    (yifan123/flow_grpo ``scripts/train_sd3.py`` samples with that scheduler and
    ``flow_grpo/diffusers_patch/sd3_sde_with_logprob.py:42-43`` reads ``sigmas[i]``, ``sigmas[i + 1]``).
    Its ``num_steps`` values run from 1 down to about 1/1000, warped by the shift, then 0 (shift 3, 10
    steps: last non-zero sigma 0.0089), so the last, untrained step adds almost no noise to what the
    rewards see.

    ``kind="uniform"`` warps ``linspace(1, 0, num_steps + 1)`` by ``sigma' = shift * s / (1 + (shift - 1) * s)``
    (end points 1 and 0; shift 3, 10 steps: last non-zero sigma 0.25).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if kind == "scheduler":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=float(shift))
        scheduler.set_timesteps(num_steps)
        return scheduler.sigmas.to(device=device, dtype=torch.float32)
    if kind != "uniform":
        raise ValueError(f"unknown sigma grid {kind!r}; choose one of {GRIDS}")
    s = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).to(device=device, dtype=torch.float32)
