"""The report's curves: the numeric keys of a run's ``metrics.jsonl`` against the step, one figure per key prefix
(``reward/*`` share one), one panel per key."""

from __future__ import annotations

import io

from .stats import is_number

EMA_RATE = 0.1  # curve smoothing, as in the supplementary's reward figures


def curve_series(records: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{figure: {key: (steps, values)}}`` from metrics records; keys group by the prefix before ``/``."""
    figs: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for i, rec in enumerate(records):
        step = rec.get("step", i)
        if not is_number(step):
            continue
        for key, v in rec.items():
            if key == "step" or not is_number(v):
                continue
            xs, ys = figs.setdefault(key.split("/", 1)[0], {}).setdefault(key, ([], []))
            xs.append(float(step))
            ys.append(float(v))
    return figs


def is_noisy(ys: list[float]) -> bool:
    """True when the series changes direction on more than a fifth of its steps (a loss, a reward), so an EMA
    helps; a schedule (the learning rate) or a steady counter is drawn raw only."""
    d = [b - a for a, b in zip(ys, ys[1:], strict=False) if b != a]
    turns = sum((x > 0) != (y > 0) for x, y in zip(d, d[1:], strict=False))
    return turns > 0.2 * len(ys)


def _smooth(ys: list[float]) -> bool:
    return len(ys) > 20 and is_noisy(ys)


def plot_metrics(records: list[dict]) -> list[tuple[str, bytes]]:
    """PNG figures ``(name, bytes)`` of the numeric keys of metrics records, their points in step order."""
    figs = curve_series(records)
    if not figs:
        return []
    from ..utils.plots import plot_curves  # matplotlib: without it the report leaves the curves out

    out = []
    for name, series in figs.items():
        steps, values = {}, {}
        for key in sorted(series):
            xs, ys = series[key]
            order = sorted(range(len(xs)), key=xs.__getitem__)
            steps[key], values[key] = [xs[i] for i in order], [ys[i] for i in order]
        buf = io.BytesIO()
        plot_curves(values, buf, rate=EMA_RATE, steps=steps, xlabel="step", smooth=_smooth)
        out.append((name, buf.getvalue()))
    return out
