"""A sanity reward: how red an image is. Any working policy-gradient method must climb it.

``redness = mean over pixels of (R - (G + B) / 2) / 255``, in [-0.5, 1] (1 for pure red, 0 for any grey).
It needs neither prompt nor metadata, works at any resolution, and is the reward of the shipped redness configs
and ``benchmarks/bench_rl_sanity.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from .base import as_uint8_batch


def redness(image: np.ndarray) -> float:
    """``mean((R - (G + B) / 2) / 255)`` of one RGB uint8 image ``(H, W, 3)``."""
    px = image.astype(np.float32)
    return float(((px[..., 0] - (px[..., 1] + px[..., 2]) / 2) / 255.0).mean())


class RednessReward:
    """:func:`redness` per image."""

    def __call__(self, images, prompts=None, metadata=None) -> torch.Tensor:
        return torch.tensor([redness(im) for im in as_uint8_batch(images)], dtype=torch.float32)
