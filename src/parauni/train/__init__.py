"""Stages I and II: configs, data, the training loop, checkpoints and export."""

from .config import Config, load_config
from .trainer import Trainer, export

__all__ = ["Config", "Trainer", "export", "load_config"]
