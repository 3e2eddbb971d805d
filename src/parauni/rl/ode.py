"""Deterministic flow solvers for rollouts that need no log-probability (DiffusionNFT).

Flow time ``sigma`` runs from 1 (noise) to 0 (data); the model predicts the velocity ``v = noise - x_0``, so its
data prediction is ``x_0 = x - sigma v``. Two solvers, as the DiffusionNFT reference offers them
(NVlabs/DiffusionNFT @ 24af555, ``flow_grpo/diffusers_patch/solver.py``, ``run_sampling`` / ``dpm_step``):

- ``euler``: ``x + (sigma_next - sigma) v`` (the reference's ``flow`` solver with ``eta = 0``; for a rectified flow
  it equals deterministic DDIM).
- ``dpm2``: DPM-Solver++(2M) in data prediction with ``alpha = 1 - sigma``: the first and the last step are
  first order (Euler), every other step the multistep second-order update (``dpm_step``: ``lower_order_final``
  and the first step's ``lower_order_nums``; ``multistep_dpm_solver_second_order_update``, the "midpoint" form).
  It is what diffusers' ``DPMSolverMultistepScheduler`` computes for flow models (SANA's scheduler), which the
  tests check step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

SOLVERS = ("euler", "dpm2")

Velocity = Callable[[torch.Tensor, float], torch.Tensor]


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """``x + (sigma_next - sigma) v``."""
    return x + (sigma_next - sigma) * v


def dpm2_step(x: torch.Tensor, x0: torch.Tensor, x0_prev: torch.Tensor, sigma_prev: float, sigma: float,
              sigma_next: float) -> torch.Tensor:
    """One DPM-Solver++(2M) step from ``sigma`` to ``sigma_next`` (both in (0, 1)) with the data predictions
    ``x0`` at ``sigma`` and ``x0_prev`` at the previous ``sigma_prev``."""
    def lam(s: float) -> float:  # log-SNR: log(alpha / sigma)
        return math.log(1 - s) - math.log(s)

    h, h_0 = lam(sigma_next) - lam(sigma), lam(sigma) - lam(sigma_prev)
    d1 = (x0 - x0_prev) * (h / h_0)
    phi = (1 - sigma_next) * math.expm1(-h)  # alpha_t (exp(-h) - 1)
    return (sigma_next / sigma) * x - phi * x0 - 0.5 * phi * d1


def ode_sample(velocity: Velocity, x: torch.Tensor, sigmas: Sequence[float], solver: str = "euler",
               callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Integrate from ``x`` at ``sigmas[0]`` to ``sigmas[-1]`` (usually 0) with ``solver``; ``velocity(x, sigma)``
    returns the velocity ``(B, ...)``. Arithmetic in float32 (float64 for float64 ``x``). ``callback(j, x)`` sees
    the state after step ``j``."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    sig = [float(s) for s in sigmas]
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    n = len(sig) - 1
    x0_prev = None
    for j in range(n):
        v = velocity(x, sig[j]).to(dtype)
        x0 = x - sig[j] * v
        # first order: the first and last steps, a step to sigma 0 and one after sigma 1 (log-SNR -inf there: the
        # second-order correction vanishes, as in the reference's arithmetic)
        first_order = solver == "euler" or j == 0 or j == n - 1 or sig[j + 1] <= 0 or sig[j - 1] >= 1
        if first_order:
            x = euler_step(x, v, sig[j], sig[j + 1])
        else:
            x = dpm2_step(x, x0, x0_prev, sig[j - 1], sig[j], sig[j + 1])
        x0_prev = x0
        if callback is not None:
            callback(j, x)
    return x
