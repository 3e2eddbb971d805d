"""The optimizer pieces every training loop shares: AdamW's weight-decay groups, the warm-up + cosine
learning-rate schedule (stages I/II, stage III and the plugins' pre-training commands), and what a resumed run whose
config changed does with them."""

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


def schedule_change(warmup: int, min_ratio: float, done: int, key: str = "train.steps",
                    per_unit: int = 1) -> Callable[[object, int], str | None]:
    """The condition on a resume that changes ``key`` (``train.steps``; stage III: ``train.epochs``, each of
    ``per_unit`` optimizer steps) after ``done`` of them: the cosine decay spans the run, so the optimizer steps
    already taken must keep their learning rates (a reason when they would not)."""

    def rule(old, new: int) -> str | None:
        if not isinstance(old, int):
            return f"the checkpoint's {key} is unknown"
        before = warmup_cosine(warmup, old * per_unit, min_ratio)
        after = warmup_cosine(warmup, new * per_unit, min_ratio)
        changed = [k for k in range(done * per_unit) if before(k) != after(k)]
        return (f"the cosine learning-rate decay spans {key}, so optimizer steps {changed[0] + 1}..{done * per_unit} "
                f"already taken ran on another schedule") if changed else None

    return rule


def retune(opt: torch.optim.Optimizer, optim, lr: float, **extra) -> None:
    """After ``--allow-config-change``: every group of ``opt`` (built by :func:`decay_groups`) takes learning rate
    ``lr`` and the config ``optim``'s betas and weight decay (``load_state`` restored the checkpoint's), and
    ``extra`` (e.g. ``eps``)."""
    for group in opt.param_groups:
        group.update(lr=lr, betas=tuple(optim.betas), weight_decay=group_weight_decay(group, optim.weight_decay),
                     **extra)
