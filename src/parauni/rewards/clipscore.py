"""CLIP score (Hessel et al. 2021): ``100 * max(cos(text, image), 0)`` under CLIP ViT-L/14, torchmetrics' convention.

``scale`` multiplies the result (Flow-GRPO's logits/30 is ``scale = 1/30`` for a CLIP whose logit scale is 100).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_common import ClipEmbedder

CLIP_L14 = "openai/clip-vit-large-patch14"


class ClipScoreReward:
    """CLIP score of each image for its prompt; ``model`` is a hub id or local folder."""

    def __init__(self, model: str | Path = CLIP_L14, processor: str | Path | None = None, scale: float = 1.0,
                 device: str = "cpu", dtype: str | torch.dtype = torch.float32):
        # transformers' CLIPProcessor, as the reward's reference code (Flow-GRPO) preprocesses: its crop rounds down
        self.clip = ClipEmbedder(model, processor, device=device, dtype=dtype, crop_rounding="floor")
        self.scale = scale

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None) -> torch.Tensor:
        cos = (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)  # (B,)
        return (self.scale * 100 * cos.clamp(min=0)).cpu()
