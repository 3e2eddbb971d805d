"""The prompts of a Flow-GRPO run: a fixed set walked in shuffled passes (a file), or a plugin's source."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..registry import PROMPT_SOURCES
from ..utils.jsonl import read_jsonl


class FixedPrompts:
    """A fixed set of records (prompts and, for GenEval records, their metadata, passed to the rewards), walked
    in shuffled passes like a data loader: every record comes once per pass, deterministic from the seed."""

    def __init__(self, records: list[dict], seed: int):
        if not records:
            raise UsageError("the prompt set is empty")
        self.records, self.seed = list(records), seed

    def epoch(self, epoch: int, n: int) -> list[dict]:
        """Epoch ``epoch``'s ``n`` records; with ``n`` equal to the set's size every epoch sees the same records
        (in another order), so the reward curve follows the same prompts."""
        size = len(self.records)
        orders: dict[int, np.ndarray] = {}  # pass -> its shuffled order
        out = []
        for pos in range(epoch * n, (epoch + 1) * n):
            k = pos // size
            if k not in orders:
                orders[k] = np.random.default_rng([self.seed, k, 17]).permutation(size)
            out.append(self.records[int(orders[k][pos % size])])
        return out


def read_prompt_file(path: str | Path) -> list[dict]:
    """``{"prompt": ...}`` records of a ``.txt`` file (one prompt a line) or GenEval-style ``.jsonl`` records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts.path {str(path)!r} not found")
    if path.suffix == ".jsonl":
        records = read_jsonl(path)
    else:
        records = [{"prompt": line.strip()} for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise UsageError(f"{path}: no prompts")
    return records


def prompt_source(cfg, seed: int):
    """The ``prompts`` section's source: ``kind: file`` (:class:`FixedPrompts` of :func:`read_prompt_file`) or
    a plugin's kind (:data:`parauni.registry.PROMPT_SOURCES`). A source has
    ``epoch(epoch, n) -> list[dict]``."""
    if cfg.kind == "file":
        return FixedPrompts(read_prompt_file(cfg.path), seed)
    return PROMPT_SOURCES.get(cfg.kind)(cfg, seed)
