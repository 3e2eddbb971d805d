"""Stages I and II: configs, data, the training loop, checkpoints and export."""

from .config import Config, load_config
from .export import export
from .trainer import Trainer

__all__ = ["Config", "Trainer", "export", "load_config"]
