"""What a Flow-GRPO rollout stores for the update, and the CFG velocity both use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..flow import sigma_to_timestep
from ..sampling import guided_velocity


@dataclass
class Rollout:
    """One epoch's samples on this process; ``T`` SDE steps, ``B`` images."""

    prompts: list[str]
    metadata: list[dict | None]
    group: torch.Tensor  # (B,) global prompt index
    states: torch.Tensor | None  # (L, B, N, D) query states (kept when the LIM trains)
    layer_noise: torch.Tensor | None  # (L, B, N, D) LDAM noise used for these samples, or None
    cond: torch.Tensor  # (B, N, C) condition used (after LDAM noise)
    latents: torch.Tensor  # (B, T + 1, c, h, w) the path from noise (index 0) to the sample (index T)
    log_probs: torch.Tensor  # (B, T); NaN for ODE transitions (outside an SDE window)
    sigmas: torch.Tensor  # (T + 1,)
    images: list[np.ndarray]
    trainable: list[int]  # the transitions the update may train (the SDE ones, never the last)


def cfg_velocity(transformer, x: torch.Tensor, sigma: float | torch.Tensor, cond: torch.Tensor,
                 uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """CFG velocity (float32) at flow time ``sigma`` (a float, or one per row ``(B,)``) with the unconditional and
    conditional rows in one forward (:func:`parauni.sampling.guided_velocity`). ``x`` ``(B, c, h, w)``, ``cond``
    ``(B, N, C)``, ``uncond`` ``(1 or B, N, C)`` (unused, and may be ``None``, at scale 1)."""
    # (2B, N, C): unconditional first; a scale of 1 runs the conditional rows alone
    emb = cond if scale == 1.0 else torch.cat([uncond.expand(x.shape[0], -1, -1), cond])
    t = sigma_to_timestep(torch.as_tensor(sigma, dtype=torch.float64, device=x.device))
    return guided_velocity(transformer, x, t, emb, None, scale, combine_dtype=torch.float32)


def trained_transitions(trainable: int, fraction: float) -> int:
    """Transitions trained per sample: ``fraction`` of the ``trainable`` ones (every SDE transition but the last,
    or the SDE window's), at least one."""
    return max(1, int(round(trainable * fraction)))
