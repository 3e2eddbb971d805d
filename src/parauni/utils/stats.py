"""Summary statistics over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from numbers import Real


def mean_std(values: Iterable) -> tuple[float, float, int]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of the finite numbers among ``values``
    (``None``, booleans and other objects are left out), and how many there are; ``(nan, nan, 0)`` for none."""
    v = [float(x) for x in values if isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)
