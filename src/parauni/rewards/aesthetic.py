"""The LAION aesthetic predictor v2: CLIP ViT-L/14 image embedding -> MLP -> score on 1-10.

The head is ``christophschuhmann/improved-aesthetic-predictor``'s ``sac+logos+ava1-l14-linearMSE.pth``: a
state dict of ``Linear(768, 1024), Dropout, Linear(1024, 128), Dropout, Linear(128, 64), Dropout,
Linear(64, 16), Linear(16, 1)`` (keys ``layers.0/2/4/6/7``, no activations) applied to the L2-normalised
embedding.  It loads with ``weights_only=True`` (or from ``.safetensors``) and strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import UsageError
from .clip_common import ClipEmbedder
from .clipscore import CLIP_L14

HEAD_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/"
            "sac+logos+ava1-l14-linearMSE.pth")


class AestheticMLP(nn.Module):
    """The LAION head; ``in_dim`` is the CLIP projection size (768 for ViT-L/14)."""

    def __init__(self, in_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        """Unit embeddings ``(B, in_dim)`` -> scores ``(B,)``."""
        return self.layers(embeds).squeeze(-1)

    @classmethod
    def from_file(cls, path: str | Path) -> AestheticMLP:
        """Load a ``.pth`` (weights only) or ``.safetensors`` state dict, strictly."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no aesthetic head at {str(path)!r}; download {HEAD_URL} and pass its path "
                                    f"as head=...")
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        head = cls(in_dim=state["layers.0.weight"].shape[1])
        head.load_state_dict(state, strict=True)
        return head.eval().requires_grad_(False)


class AestheticReward:
    """Aesthetic score of each image (prompts are ignored); ``head`` is the path of the MLP weights."""

    def __init__(self, head: str | Path | None = None, model: str | Path = CLIP_L14,
                 processor: str | Path | None = None, device: str = "cpu", dtype: str | torch.dtype = torch.float32):
        if head is None:
            raise FileNotFoundError(f"the aesthetic reward needs its MLP head: download {HEAD_URL} and pass "
                                    f"head=PATH (e.g. in the reward options)")
        self.head = AestheticMLP.from_file(head).to(device)
        # transformers' CLIPProcessor, as the reward's reference code (Flow-GRPO) preprocesses: its crop rounds down
        self.clip = ClipEmbedder(model, processor, device=device, dtype=dtype, crop_rounding="floor")
        dim = self.clip.model.config.projection_dim
        if dim != self.head.layers[0].in_features:
            raise UsageError(f"the head expects {self.head.layers[0].in_features}-d embeddings but the CLIP model "
                             f"{str(model)!r} gives {dim}-d ones (the LAION head needs ViT-L/14)")

    @torch.no_grad()
    def __call__(self, images, prompts=None, metadata=None) -> torch.Tensor:
        return self.head(self.clip.image_embeds(images)).float().cpu()  # (B,)
