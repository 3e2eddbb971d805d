"""Summary statistics over seeds: the paired 95% interval against SciPy's paired t-test."""

from __future__ import annotations

import math

import pytest

from parauni.utils.stats import T95, paired_interval, t95

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("n", [3, 5, 8, 12])
def test_paired_interval_matches_scipy_paired_t_test(n):
    a = [0.41 + 0.013 * ((7 * i) % 5) for i in range(n)]
    b = [0.40 + 0.011 * ((3 * i) % 4) for i in range(n)]
    m, lo, hi, k = paired_interval(a, b)
    ci = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert k == n and m == pytest.approx(sum(a) / n - sum(b) / n)
    assert (lo, hi) == (pytest.approx(ci.low, abs=2e-4), pytest.approx(ci.high, abs=2e-4))


def test_t_table_is_scipy_quantiles_and_conservative_between_rows():
    for df, q in T95.items():
        assert q == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-3), df
    assert t95(23) >= scipy_stats.t.ppf(0.975, 23)  # an untabled df takes the row below: never narrower
    assert t95(31) == 1.96 and math.isnan(t95(0))


def test_paired_interval_drops_missing_pairs_and_takes_a_constant():
    m, lo, hi, n = paired_interval([0.5, None, 0.7, float("nan")], [0.4, 0.1, 0.5, 0.2])
    assert n == 2 and m == pytest.approx(0.15)
    m, _, _, n = paired_interval([0.5, 0.6, 0.7], 0.5)
    assert (n, m) == (3, pytest.approx(0.1))
    assert math.isnan(paired_interval([0.5], [0.4])[1])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_interval([1.0, 2.0], [1.0])
