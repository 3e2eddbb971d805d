"""Numbers in the report: which values count, and mean ± std over the seeds of a group of runs."""

from __future__ import annotations

import math
import re

from ..utils.stats import mean_std
from .page import fmt
from .runs import Run

SEED_SUFFIX = re.compile(r"[-_.](?:seed|s)[-_]?(\d+)$")


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def seed_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs whose names differ only by a seed suffix (``x_seed0``, ``x-seed1``, ``x_s2``), two or more a group."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        m = SEED_SUFFIX.search(r.name)
        if m:
            groups.setdefault(r.name[:m.start()], []).append(r)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def mean_std_text(values) -> str | None:
    """``"m ± s"`` (sample std over seeds, ddof=1) of the numbers among ``values``; one number as itself."""
    m, s, n = mean_std(v for v in values if is_number(v))
    if n == 0:
        return None
    if n == 1:
        return fmt(m)
    return f"{m:.3f} ± {s:.3f}"
