"""The flow sampling loop shared by every generator in the project."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


@torch.no_grad()
def sample_flow(transformer, scheduler, latents: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                num_inference_steps: int, guidance_scale: float,
                progress: Callable[[Iterable], Iterable] = lambda it: it) -> torch.Tensor:
    """Integrate from noise ``latents`` ``(B, C, h, w)`` to samples with ``scheduler``.

    With ``guidance_scale != 1``, ``cond`` / ``mask`` hold the unconditional rows first and the
    conditional rows after (``(2B, T, C)`` / ``(2B, T)``), run as one batched forward, and the
    velocities are combined as ``v_u + scale * (v_c - v_u)``; otherwise they are ``(B, T, ·)``.
    """
    do_cfg = guidance_scale != 1.0
    dtype = transformer.dtype
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for t in progress(scheduler.timesteps):
        x_in = torch.cat([latents] * 2) if do_cfg else latents
        v = transformer(x_in, encoder_hidden_states=cond, encoder_attention_mask=mask,
                        timestep=t.expand(x_in.shape[0]).to(dtype), return_dict=False)[0]
        if do_cfg:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance_scale * (v_cond - v_uncond)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents
