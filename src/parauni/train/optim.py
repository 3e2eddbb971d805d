"""The optimizer pieces every training loop shares: AdamW's weight-decay groups and the warm-up + cosine
learning-rate schedule (stages I/II, stage III and the plugins' pre-training commands)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def _decayed(p: torch.nn.Parameter) -> bool:
    return p.ndim >= 2


def decay_groups(params: Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on >= 2-D tensors (matrices, embeddings) only; biases, norm
    scales and other 1-D vectors are not decayed (the usual grouping). Empty groups are left out."""
    params = list(params)
    groups = [{"params": [p for p in params if _decayed(p)], "weight_decay": weight_decay},
              {"params": [p for p in params if not _decayed(p)], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def group_weight_decay(group: dict, weight_decay: float) -> float:
    """The weight decay of one of :func:`decay_groups`' groups under a new setting (a resumed run whose config
    changed): ``weight_decay`` for the decayed group, 0 for the other."""
    return weight_decay if all(_decayed(p) for p in group["params"]) else 0.0


def cosine(progress: float, min_ratio: float = 0.0) -> float:
    """Cosine from 1 at ``progress = 0`` to ``min_ratio`` at ``progress >= 1``."""
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """The learning-rate factor of step ``s`` (0-based): ``(s + 1) / warmup`` during the linear warm-up, then
    a cosine from 1 to ``min_ratio`` over the remaining ``total - warmup`` steps (for ``LambdaLR``)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return cosine((step - warmup) / max(total - warmup, 1), min_ratio)

    return factor
