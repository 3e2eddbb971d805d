"""The former name of :mod:`parauni.rl.trainer` (stage III's loop), kept so that imports of it keep working."""

from __future__ import annotations

from .trainer import GRPOTrainer, RLTrainer, export_checkpoint

__all__ = ["GRPOTrainer", "RLTrainer", "export_checkpoint"]
