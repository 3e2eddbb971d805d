"""Rewards: callables ``(images, prompts, metadata) -> (B,)`` floats, chosen by name, combined by weights."""

from .base import REWARDS, Reward, WeightedReward, build_reward

__all__ = ["REWARDS", "Reward", "WeightedReward", "build_reward"]
