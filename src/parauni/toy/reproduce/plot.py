"""The reward-curve plot of ``parauni toy reproduce``: with vs without LDAM, the mean over seeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_ldam_overlay(res: dict, out_png: Path) -> Path | None:
    """Mean-over-seeds reward curves with vs without LDAM (raw and EMA 0.1)."""
    from ...utils.plots import plot_overlay  # matplotlib: only to draw, not for `parauni --help`

    curves: dict[str, dict[str, list[float]]] = {}
    for tag, label in (("grpo_ldam", "with LDAM"), ("grpo_none", "without LDAM")):
        per_seed = [r["rl"].get(tag, {}).get("rewards", {}) for r in res["per_seed"].values()]
        per_seed = [p for p in per_seed if p]
        if not per_seed:
            continue
        names = per_seed[0].keys()
        curves[label] = {}
        for name in names:
            length = min(len(p.get(name, [])) for p in per_seed)
            if length:
                curves[label][name] = np.mean([p[name][:length] for p in per_seed], axis=0).tolist()
    if not curves:
        return None
    return plot_overlay(curves, out_png, title=f"mean over {len(res['per_seed'])} seed(s)")
