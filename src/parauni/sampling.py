"""The flow sampling loop shared by every generator in the project."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def guided_velocity(transformer, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor,
                    mask: torch.Tensor | None, guidance_scale: float,
                    combine_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The transformer's velocity at ``x`` ``(B, C, h, w)``, classifier-free guided.

    ``timestep``: the transformer's timestep input (flow time x 1000), a scalar or one per row ``(B,)``.
    With ``guidance_scale != 1``, ``cond`` / ``mask`` hold the unconditional rows first and the conditional
    rows after (``(2B, T, C)`` / ``(2B, T)``), run as one batched forward, and the velocities are combined as
    ``v_u + scale * (v_c - v_u)`` (in ``combine_dtype``, default the transformer's); otherwise they are
    ``(B, T, ·)``.
    """
    do_cfg = guidance_scale != 1.0
    dtype = getattr(transformer, "module", transformer).dtype  # DDP wraps the transformer in several processes
    x_in = torch.cat([x] * 2) if do_cfg else x
    t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(x.shape[0])
    t = torch.cat([t] * 2) if do_cfg else t
    if mask is None:
        mask = torch.ones(cond.shape[:2], dtype=torch.long, device=x.device)
    v = transformer(x_in.to(dtype), encoder_hidden_states=cond.to(dtype), encoder_attention_mask=mask,
                    timestep=t.to(dtype), return_dict=False)[0]
    v = v if combine_dtype is None else v.to(combine_dtype)
    if not do_cfg:
        return v
    v_uncond, v_cond = v.chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


@torch.no_grad()
def sample_flow(transformer, scheduler, latents: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor,
                num_inference_steps: int, guidance_scale: float,
                progress: Callable[[Iterable], Iterable] = lambda it: it,
                callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate from noise ``latents`` ``(B, C, h, w)`` to samples with ``scheduler``; the velocity is
    :func:`guided_velocity`. ``callback(step, timestep, latents)`` runs after every step; a tensor it returns
    replaces the latents."""
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    for i, t in enumerate(progress(scheduler.timesteps)):
        v = guided_velocity(transformer, latents, t, cond, mask, guidance_scale)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
        if callback is not None:
            out = callback(i, t, latents)
            latents = latents if out is None else out
    return latents
