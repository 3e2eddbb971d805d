"""PickScore (Kirstain et al. 2023): a CLIP ViT-H/14 fine-tuned on human preferences (Pick-a-Pic).

Score = ``scale * logit_scale.exp() * cos(text, image)``; Flow-GRPO uses ``scale = 1/26``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .clip_common import ClipEmbedder

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScoreReward:
    """PickScore of each image for its prompt; ``model`` / ``processor`` are hub ids or local folders."""

    def __init__(self, model: str | Path = PICKSCORE_MODEL, processor: str | Path = PICKSCORE_PROCESSOR,
                 scale: float = 1 / 26, device: str = "cpu", dtype: str | torch.dtype = torch.float32):
        # transformers' CLIPProcessor, as the reward's reference code (Flow-GRPO) preprocesses: its crop rounds down
        self.clip = ClipEmbedder(model, processor, device=device, dtype=dtype, crop_rounding="floor")
        self.scale = scale

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None) -> torch.Tensor:
        cos = (self.clip.image_embeds(images) * self.clip.text_embeds(prompts)).sum(-1)  # (B,)
        return (self.scale * self.clip.logit_scale * cos).cpu()
