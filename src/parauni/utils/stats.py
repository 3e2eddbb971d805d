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


# two-sided 95% quantiles of Student's t by degrees of freedom (scipy.stats.t.ppf(0.975, df)); 1.96 beyond 30
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
       20: 2.086, 25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile for ``df`` degrees of freedom (the nearest tabled ``df`` at or
    below it; the normal 1.96 past 30)."""
    if df < 1:
        return math.nan
    return 1.96 if df > 30 else T95[max(k for k in T95 if k <= df)]


def paired_interval(a: Iterable, b: Iterable) -> tuple[float, float, float, int]:
    """Mean of the paired differences ``a[i] - b[i]`` and its 95% t-interval: ``(mean, low, high, n)``.

    Pairs where either value is missing or not finite are left out; with fewer than 2 pairs the interval is
    ``nan``. ``b`` may be a number (a one-sample interval of ``a - b``)."""
    a = list(a)
    b = list(b) if isinstance(b, Iterable) else [b] * len(a)
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True) if _finite(x) and _finite(y)]
    m, s, n = mean_std(d)
    half = t95(n - 1) * s / math.sqrt(n) if n > 1 else math.nan
    return m, m - half, m + half, n


def _finite(x) -> bool:
    return isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(x)
