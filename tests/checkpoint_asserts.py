"""A helper shared by the stage-III resume tests: two checkpoints hold the same tensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file


def assert_same_checkpoint(a: Path, b: Path, files=("trainable", "ema", "old"), atol: float = 1e-6) -> None:
    """Every tensor of ``<a>/<f>.safetensors`` equals the one in ``b`` (same keys; within ``atol``) for each ``f``."""
    for f in files:
        x, y = load_file(str(a / f"{f}.safetensors")), load_file(str(b / f"{f}.safetensors"))
        assert set(x) == set(y), f"{f}: different tensors"
        for k in x:
            torch.testing.assert_close(x[k], y[k], rtol=0, atol=atol, msg=f"{f}: {k}")
