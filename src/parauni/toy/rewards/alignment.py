"""A toy image-text alignment model (the CLIP-score role) and its reward.

``ToyCLIP`` embeds 32x32 toy images (a small CNN that keeps the spatial layout) and captions
(token + position embeddings, a bidirectional encoder, masked mean pooling) into one space; it is
trained contrastively by ``parauni toy train-rewards``.  The reward is torchmetrics' CLIP-score
convention: ``100 * max(cos(image, text), 0)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from PIL import Image
from torch import nn

from ...eval.reconstruct import to_tensor
from ...models.connector import Connector
from ...rewards.base import as_uint8_batch

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "weights" / "rewards" / "alignment"


class ToyCLIP(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, vocab_size: int, embed_dim: int = 128, width: int = 128, text_depth: int = 2,
                 text_heads: int = 4, max_text_len: int = 32, image_size: int = 32, channels: int = 32):
        super().__init__()
        c = channels
        self.image_encoder = nn.Sequential(
            nn.Conv2d(3, c, 4, stride=2, padding=1), nn.GELU(),  # /2
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GELU(),  # /4
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), nn.GELU(),  # /8
            nn.Flatten(), nn.Linear(4 * c * (image_size // 8) ** 2, embed_dim),
        )
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_text_len, width) * 0.02)
        self.text_encoder = Connector(width, text_depth, text_heads, 2 * width)
        self.text_norm = nn.LayerNorm(width)
        self.text_projection = nn.Linear(width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> unit vectors ``(B, E)``."""
        size = self.config.image_size
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return F.normalize(self.image_encoder(pixels), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, T)`` -> unit vectors ``(B, E)``."""
        t = input_ids.shape[1]
        h = self.token_embedding(input_ids) + self.position_embedding[:t]
        h = self.text_norm(self.text_encoder(h))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1)
        return F.normalize(self.text_projection(pooled), dim=-1)


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` images -> ``(B, 3, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


def tokenize(tokenizer, texts: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(list(texts), add_special_tokens=False, padding=True, truncation=True, max_length=max_len,
                    return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every pair with the same caption (``same`` ``(B, B)`` bool) is a positive."""
    logits = scale.exp().clamp(max=100) * img @ txt.T  # (B, B)
    target = same.float() / same.float().sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean()
                  + torch.sum(-target * logits.T.log_softmax(1), 1).mean())


class ToyAlignmentReward:
    """``100 * max(cos, 0)`` between a toy image and its prompt under the shipped ``ToyCLIP``."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        from transformers import AutoTokenizer

        path = Path(path) if path else DEFAULT_PATH
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no toy alignment model at {str(path)!r}; train one with "
                                    f"`parauni toy train-rewards --out DIR`")
        self.model = ToyCLIP.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = device

    @torch.no_grad()
    def __call__(self, images, prompts, metadata=None) -> torch.Tensor:
        pixels = images_to_tensor(as_uint8_batch(images)).to(self.device)
        ids, mask = tokenize(self.tokenizer, list(prompts), self.model.config.max_text_len)
        cos = (self.model.encode_image(pixels) * self.model.encode_text(ids.to(self.device),
                                                                        mask.to(self.device))).sum(-1)
        return (100 * cos.clamp(min=0)).float().cpu()


class ToyImageEmbedder:
    """Unit image embeddings from the toy alignment model's image encoder (the toy world's CLIP)."""

    def __init__(self, path: str | Path | None = None, device: str = "cpu"):
        path = Path(path) if path else DEFAULT_PATH
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"no toy alignment model at {str(path)!r}")
        self.name = "toy"
        self.model = ToyCLIP.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
        self.device = device

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        size = self.model.config.image_size
        x = to_tensor([im.convert("RGB").resize((size, size), Image.BICUBIC) for im in images]) * 2 - 1
        return self.model.encode_image(x.to(self.device)).float().cpu()
