"""Rectified-flow maths as small pure functions.

Conventions (rectified flow as in SD3, Esser et al. 2024, and SANA): flow time ``sigma`` runs from 1
(pure noise) to 0 (data);
``x_t = (1 - sigma) * x_0 + sigma * noise`` and the network predicts the velocity
``v = noise - x_0``.  The diffusion transformer takes ``timestep = sigma * 1000``.
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000


TIMESTEP_SAMPLINGS = ("uniform", "logit-normal")


def sample_sigmas(batch_size: int, generator: torch.Generator | None = None, device=None,
                  mode: str = "uniform") -> torch.Tensor:
    """Training flow times ``(B,)``, with no shift: ``uniform`` on [0, 1), or ``logit-normal`` (the sigmoid of a
    standard normal, SD3's choice, Esser et al. 2024, Sec. 3.1)."""
    if mode == "uniform":
        return torch.rand(batch_size, generator=generator, device=device)
    if mode == "logit-normal":
        return torch.sigmoid(torch.randn(batch_size, generator=generator, device=device))
    raise ValueError(f"flow-time sampling {mode!r}: expected one of {', '.join(TIMESTEP_SAMPLINGS)}")


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim)).to(like.dtype)


def interpolate(x_0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) x_0 + sigma * noise``; ``sigma`` is ``(B,)``, images ``(B, C, H, W)``."""
    s = _expand(sigma, x_0)
    return (1 - s) * x_0 + s * noise


def velocity_target(x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``noise - x_0`` (constant along the straight path)."""
    return noise - x_0


def flow_loss(v_pred: torch.Tensor, x_0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity (a scalar)."""
    return torch.mean((v_pred.float() - velocity_target(x_0, noise).float()) ** 2)


def sigma_to_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """The diffusion transformer's timestep input for flow time ``sigma``."""
    return sigma * NUM_TRAIN_TIMESTEPS


def predict_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Recover the clean sample from ``x_t`` and a velocity: ``x_0 = x_t - sigma * v``."""
    return x_t - _expand(sigma, x_t) * v
