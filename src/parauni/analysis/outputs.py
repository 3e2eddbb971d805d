"""The outputs of a layer-response analysis (:func:`parauni.analysis.analyze_layers`): ``layer_response.json``,
``layer_response.md`` (one table per mode: rows = groups, columns = reward deltas ± s.e. and the mean absolute
pixel change) and ``layer_response.png`` (a heat map per mode)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _fmt(stat: dict, signed: bool = True) -> str:
    if stat["mean"] is None:
        return "n/a"
    text = f"{stat['mean']:+.4g}" if signed else f"{stat['mean']:.4g}"
    return text + (f" ± {stat['se']:.2g}" if stat["se"] is not None else "")


def format_markdown(result: dict) -> str:
    """The Markdown report: the baseline, then one table per mode (rows = groups, columns = reward deltas)."""
    cols = result["rewards"]
    lines = ["# Layer response", "",
             f"Model {result['model'] or '?'} (LIM fusion `{result['fusion']}`, VLM layers read "
             f"{result['layers_read']}); {result['num_prompts']} prompts x {result['images_per_prompt']} images, "
             f"{result['steps']} steps, CFG {result['guidance']}, seed {result['seed']}. Values: mean change vs "
             "the baseline ± standard error over prompts (same latents, unconditional branch unchanged).", ""]
    if result["skipped_rewards"]:
        lines += [f"Left out: {', '.join(f'{k} ({v})' for k, v in result['skipped_rewards'].items())}.", ""]
    lines += ["| baseline | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols),
              "| mean | " + " | ".join(_fmt(result["baseline"][c], signed=False) for c in cols) + " |", ""]
    notes = {"perturb": f"perturb: {result['perturbation']}, scale {result['scale']}",
             "drop": f"drop: {result['drop_method']}"}
    for mode, rows in result["modes"].items():
        lines += [f"## {notes[mode]}", "",
                  "| group | VLM layers | " + " | ".join(f"Δ {c}" for c in cols) + " | mean abs Δpixel |",
                  "|---|---|" + "---:|" * (len(cols) + 1)]
        for g, row in rows.items():
            layers = result["groups"][g]["vlm_layers"]
            cells = [_fmt(row[c]) for c in cols] + [_fmt(row["pixel_change"], signed=False)]
            lines.append(f"| {g} | {','.join(map(str, layers))} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_heatmap(result: dict, path: str | Path) -> None:
    """Heat map per mode: rows groups, columns rewards; colour = delta / the column's max |delta| (both modes)."""
    cols, modes = result["rewards"], list(result["modes"])
    groups = list(result["groups"])
    delta = {m: np.array([[result["modes"][m][g][c]["mean"] if result["modes"][m][g][c]["mean"] is not None
                           else np.nan for c in cols] for g in groups]) for m in modes}  # (groups, rewards)
    scale = np.nanmax(np.stack([np.abs(d) for d in delta.values()]), axis=(0, 1))  # (rewards,)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    fig = Figure(figsize=(1.2 + 2.2 * len(cols) * len(modes), 1.2 + 0.6 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    for ax, m in zip(axes, modes, strict=True):
        im = ax.imshow(delta[m] / scale, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(cols)), [f"Δ {c}" for c in cols], rotation=20, ha="right")
        ax.set_yticks(range(len(groups)), groups)
        ax.set_title(m)
        for i, g in enumerate(groups):
            for j, c in enumerate(cols):
                st = result["modes"][m][g][c]
                text = "n/a" if st["mean"] is None else f"{st['mean']:+.3g}" + (
                    f"\n±{st['se']:.2g}" if st["se"] is not None else "")
                dark = np.isfinite(delta[m][i, j]) and abs(delta[m][i, j] / scale[j]) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    fig.colorbar(im, ax=list(axes), label="Δ / column max |Δ|", shrink=0.8)
    fig.savefig(path, dpi=120)


def write_outputs(result: dict, out: str | Path) -> dict[str, Path]:
    """``layer_response.json``, ``layer_response.md`` and ``layer_response.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"layer_response.{k}" for k in ("json", "md", "png")}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(format_markdown(result) + "\n")
    plot_heatmap(result, paths["png"])
    return paths
