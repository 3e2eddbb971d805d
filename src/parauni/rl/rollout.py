"""What a rollout stores for the update: Flow-GRPO's SDE path (:class:`Rollout`), or the clean samples of the
forward-process algorithms (:class:`CleanRollout`, made by :func:`clean_rollout`); and the CFG velocity all use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..flow import sigma_to_timestep
from ..sampling import guided_velocity
from ..utils.images import signed_to_uint8
from .ode import ode_sample


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


@dataclass
class CleanRollout:
    """One epoch's clean samples on this process (DiffusionNFT, AWM: the update noises them afresh); ``B`` images."""

    prompts: list[str]
    metadata: list[dict | None]
    group: torch.Tensor  # (B,) global prompt index
    states: torch.Tensor | None  # (L, B, N, D) query states (None: the LIM does not train)
    layer_noise: torch.Tensor | None  # (L, B, N, D) LDAM noise used for these samples, or None
    cond: torch.Tensor  # (B, N, C) the condition used (after LDAM noise)
    x_0: torch.Tensor  # (B, c, h, w) the clean latents
    sigmas: torch.Tensor  # (T + 1,) the rollout's grid; training points are indices into sigmas[:-1]
    images: list[np.ndarray]


@torch.no_grad()
def clean_rollout(tr, inp, model, solver: str) -> CleanRollout:
    """The clean samples of ``inp`` (the trainer ``tr``'s :meth:`rollout_inputs` of an epoch) drawn by ``model``
    with the deterministic ``solver`` on the run's σ grid, ``sampling.rollout_batch`` images a forward, under the
    update's autocast (one precision for rollout and update); each sample's initial noise from its own stream."""
    s, pipe, dev = tr.cfg.sampling, tr.pipe, tr.acc.device
    cfg_t = pipe.transformer.config
    x = inp.streams.randn((cfg_t.in_channels, cfg_t.sample_size, cfg_t.sample_size)).to(dev)  # (B, c, h, w)
    outs = []
    for a in range(0, len(inp.prompts), s.rollout_batch):
        sl = slice(a, a + s.rollout_batch)

        def velocity(z, sigma, cond=inp.cond[sl]):
            return cfg_velocity(model, z, sigma, cond, inp.uncond, s.guidance_scale)

        with tr.acc.autocast():
            outs.append(ode_sample(velocity, x[sl], tr.sigmas.tolist(), solver).float())
    x_0 = torch.cat(outs)
    images = signed_to_uint8(pipe.decode(x_0.to(pipe.transformer.dtype)))
    return CleanRollout(inp.prompts, inp.metadata, inp.group, None, inp.noise, inp.cond, x_0, tr.sigmas, images)


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
