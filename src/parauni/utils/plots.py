"""Curves of logged values: the raw series (thin) and its EMA (thick), one panel per series.

Used for the reward curves of stage III (``<output_dir>/curves/*.png``) and the metrics curves of
``parauni report``. Plots use matplotlib's object API with the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def ema(values: Sequence[float], rate: float = 0.1) -> list[float]:
    """Exponential moving average: ``s_0 = v_0``, ``s_t = (1 - rate) * s_{t-1} + rate * v_t``; a NaN value
    (an epoch without that series) keeps the previous average."""
    if not 0 < rate <= 1:
        raise ValueError(f"rate must be in (0, 1], got {rate}")
    out: list[float] = []
    for v in map(float, values):
        prev = out[-1] if out else math.nan
        if math.isnan(v):
            out.append(prev)
        else:
            out.append(v if math.isnan(prev) else (1 - rate) * prev + rate * v)
    return out


def _panels(names: Sequence[str], title: str | None, xlabel: str) -> tuple[Figure, list]:
    n = len(names)
    if n == 0:
        raise ValueError("nothing to plot: give at least one reward series")
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.5 * cols, 3.4 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    for ax, name in zip(axes, names, strict=True):
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig, axes


def _draw(ax, xs: Sequence[float], values: Sequence[float], label: str, color: str, rate: float) -> None:
    ax.plot(xs, list(values), color=color, linewidth=0.8, alpha=0.35)
    ax.plot(xs, ema(values, rate), color=color, linewidth=2.2, label=label)


def _save(fig: Figure, out: str | Path | BinaryIO) -> Path | BinaryIO:
    if isinstance(out, (str, Path)):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_curves(series: Mapping[str, Sequence[float]], out: str | Path | BinaryIO, title: str | None = None,
                rate: float = 0.1, steps: Mapping[str, Sequence[float]] | None = None, xlabel: str = "RL step",
                smooth: Callable[[Sequence[float]], bool] | None = None) -> Path | BinaryIO:
    """One panel per series: the raw curve (thin) and its EMA (thick), as a PNG written to ``out`` (a path,
    whose folder is made, or a binary file); returns ``out``.

    ``steps``: the x values of a series (default ``0, 1, ...``). ``smooth``: whether a series gets its EMA
    (default: every one); one without it is drawn raw only, with markers when it has fewer than 3 points."""
    fig, axes = _panels(list(series), title, xlabel)
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        xs = list((steps or {}).get(name, range(len(values))))
        if smooth is None or smooth(values):
            _draw(ax, xs, values, f"EMA {rate:g}", "C0", rate)
            ax.legend(fontsize=8)
        else:
            ax.plot(xs, list(values), color="C0", marker="o" if len(values) < 3 else None)
    return _save(fig, out)


def plot_overlay(runs: dict[str, dict[str, list[float]]], out_png: str | Path, title: str | None = None,
                 rate: float = 0.1) -> Path:
    """Runs (e.g. ``{"with LDAM": ..., "without LDAM": ...}``) overlaid, one panel per reward."""
    names = list(dict.fromkeys(name for series in runs.values() for name in series))
    fig, axes = _panels(names, title, "RL step")
    for ax, name in zip(axes, names, strict=True):
        for i, (run, series) in enumerate(runs.items()):
            if name in series:
                _draw(ax, range(len(series[name])), series[name], run, f"C{i}", rate)
        ax.legend(fontsize=8)
    return _save(fig, out_png)
