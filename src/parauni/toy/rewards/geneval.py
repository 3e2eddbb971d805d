"""Toy GenEval as a reward (the GenEval-reward role in the toy world), in the references' forms.

``mode`` chooses the score of each image from the toy detector's objects:

- ``partial`` (default): Flow-GRPO's and DiffusionNFT's training reward, the mean of count, colour and position
  terms with the count term ``1 - |N - n| / N`` unclipped (:func:`parauni.eval.geneval_reward.flow_grpo_reward`;
  its position quirk is kept): in [-inf, 1], so extra objects of a named class cost reward;
- ``strict``: the same code's exact verdict (1 when every named class has exactly its count, colours and
  relations; else 0);
- ``geneval``: GenEval's own verdict (1 or 0, :func:`parauni.toy.geneval.evaluate`), which passes extra objects;
- ``clipped``: this project's earlier partial credit (:func:`parauni.toy.geneval.partial_credit`: count x colour
  share x pair share, clipped at 0, excess counted only past an ``exclude`` limit), kept to reproduce earlier runs.
"""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ...eval.geneval_reward import flow_grpo_reward
from ...rewards.base import as_uint8_batch
from ..detect import detect
from ..geneval import evaluate, group_by_class, partial_credit
from ..worlds import world_of

MODES = ("partial", "strict", "geneval", "clipped")


class ToyGenEvalReward:
    """One score per image from the toy detector and the prompt's GenEval record (see the module docstring for
    ``mode``). An image without a record scores NaN (it leaves the update). The objects are those of the record's
    world (its ``world`` key, else v1)."""

    def __init__(self, mode: str = "partial"):
        if mode not in MODES:
            raise ConfigError(f"rewards.options.toy_geneval.mode: unknown mode {mode!r}; choose one of "
                              f"{', '.join(MODES)}")
        self.mode = mode

    def score(self, image, meta: dict) -> float:
        dets = detect(image, world=world_of(meta))
        if self.mode == "clipped":
            return partial_credit(dets, meta)
        if self.mode == "geneval":
            return float(evaluate(dets, meta)[0])
        strict, partial = flow_grpo_reward(group_by_class(dets, meta.get("tag")), meta)
        return float(strict) if self.mode == "strict" else partial

    def __call__(self, images, prompts, metadata=None) -> torch.Tensor:
        metadata = metadata or [None] * len(images)
        out = [self.score(im, meta) if meta else math.nan
               for im, meta in zip(as_uint8_batch(images), metadata, strict=True)]
        return torch.tensor(out, dtype=torch.float32)
