"""Reward curves: the EMA by hand, and the plots are real PNGs."""

import math

import pytest
from PIL import Image

from parauni.utils.plots import ema, plot_curves, plot_overlay


def test_ema_by_hand():
    assert ema([1.0, 2.0, 3.0]) == pytest.approx([1.0, 1.1, 1.29])
    assert ema([4.0, 0.0, 2.0], rate=0.5) == pytest.approx([4.0, 2.0, 2.0])
    assert ema([]) == []
    with pytest.raises(ValueError):
        ema([1.0], rate=0.0)


def _check_png(path):
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_plots_write_readable_pngs(tmp_path):
    series = {"pickscore": [20 + 0.01 * i for i in range(50)], "aesthetic": [5.0 - 0.001 * i for i in range(50)]}
    _check_png(plot_curves(series, tmp_path / "a" / "curves.png", "run 1"))
    other = {"pickscore": [20.0] * 30, "clipscore": [30.0 + i % 3 for i in range(30)]}
    out = plot_overlay({"with LDAM": series, "without LDAM": other}, tmp_path / "overlay.png")
    _check_png(out)
    with pytest.raises(ValueError, match="at least one"):
        plot_curves({}, tmp_path / "empty.png")


def test_ema_carries_over_missing_values():
    from parauni.utils.plots import ema

    nan = float("nan")
    out = ema([nan, 1.0, nan, 3.0], rate=0.5)
    assert math.isnan(out[0]) and out[1:] == [1.0, 1.0, 2.0]
