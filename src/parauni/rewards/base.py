"""The reward interface: a callable ``(images, prompts, metadata) -> one float per image``.

Higher is better.  ``images`` are RGB uint8 arrays ``(H, W, 3)`` or PIL images; ``metadata`` holds
one dict (or ``None``) per image, e.g. a GenEval record.  A reward that cannot score an image
returns NaN for it; :class:`WeightedReward` reports those and leaves them out of the sum.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..registry import REWARDS, import_target, resolve
from ..utils.images import as_uint8

logger = logging.getLogger(__name__)

ImageLike = np.ndarray | Image.Image


class Reward(Protocol):
    def __call__(self, images: Sequence[ImageLike], prompts: Sequence[str],
                 metadata: Sequence[dict | None] | None = None) -> torch.Tensor:  # (B,) float
        ...


def as_uint8_batch(images: Sequence[ImageLike]) -> list[np.ndarray]:
    """Every image as an RGB uint8 ``(H, W, 3)`` array."""
    return [as_uint8(im) for im in images]


def reward_factory(name: str) -> Any:
    """The factory of a reward: a registered name or a dotted path ``package.module:Factory``."""
    factory = resolve(REWARDS, name)
    return import_target(factory) if isinstance(factory, str) else factory  # registered lazily as a dotted path


def check_reward_options(name: str, options: dict[str, Any]) -> None:
    """A ``ConfigError`` naming the reward and what it takes when its factory does not accept ``options`` (checked
    on the signature: nothing is built)."""
    factory = reward_factory(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no inspectable signature: the call itself will say what is wrong
        return
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        takes = ", ".join(p for p in params if p not in ("self", "kwargs")) or "no options"
        raise ConfigError(f"rewards.options.{name}: {err} (the reward {name!r} takes: {takes})") from None


def build_reward(name: str, **options: Any) -> Reward:
    """A reward by registered name or dotted path ``package.module:Factory``, its options checked first."""
    check_reward_options(name, options)
    return reward_factory(name)(**options)


class WeightedReward:
    """A weighted sum of named rewards, e.g. ``{"pickscore": 0.5, "aesthetic": 0.5}``.

    Returns ``(total, parts)``: ``total`` is ``(B,)``, NaN where any part with a non-zero weight is NaN or raised
    (that sample should leave the update; a zero-weight part never enters it); ``parts`` maps each name to its raw
    ``(B,)`` scores.
    """

    def __init__(self, weights: dict[str, float], options: dict[str, dict] | None = None,
                 rewards: dict[str, Reward] | None = None):
        if not weights:
            raise ConfigError("give at least one reward weight")
        self.weights = dict(weights)
        options = options or {}
        self.rewards = rewards or {name: build_reward(name, **options.get(name, {})) for name in weights}

    def __call__(self, images, prompts, metadata=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        metadata = list(metadata) if metadata is not None else [None] * len(images)
        parts: dict[str, torch.Tensor] = {}
        for name, fn in self.rewards.items():
            try:
                parts[name] = torch.as_tensor(fn(images, prompts, metadata), dtype=torch.float32).reshape(-1)
            except Exception as err:  # noqa: BLE001 - one failing reward must not stop a run
                logger.warning("reward %s failed on the whole batch (%s); its samples leave the update", name, err)
                parts[name] = torch.full((len(images),), float("nan"))
        # a zero-weight reward is watched (its part is reported, e.g. for LDAM) but never enters the total: its NaN
        # must not take a sample out of the update
        total = torch.zeros(len(images))
        for n in self.rewards:
            if self.weights[n] != 0:
                total = total + self.weights[n] * parts[n]
        bad = int(torch.isnan(total).sum())
        if bad:
            logger.warning("%d of %d samples have a NaN reward and leave the update", bad, len(images))
        return total, parts
