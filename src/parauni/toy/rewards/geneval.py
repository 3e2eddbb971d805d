"""Toy GenEval partial credit as a reward (the GenEval-reward role in the toy world)."""

from __future__ import annotations

import math

import torch

from ...rewards.base import as_uint8_batch
from ..detect import detect
from ..geneval import partial_credit


class ToyGenEvalReward:
    """Partial credit in [0, 1] from the toy detector and GenEval's rules (1 = judged correct).

    Needs each image's GenEval record in ``metadata``; an image without one scores NaN.
    """

    def __call__(self, images, prompts, metadata=None) -> torch.Tensor:
        metadata = metadata or [None] * len(images)
        out = []
        for im, meta in zip(as_uint8_batch(images), metadata, strict=True):
            out.append(partial_credit(detect(im), meta) if meta else math.nan)
        return torch.tensor(out, dtype=torch.float32)
