"""The results of ``parauni toy reproduce``: every seed's numbers read back from the steps' outputs, and the
Markdown tables of their mean ± std over seeds."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...eval.geneval import TASK_ORDER as TASKS
from ...utils.stats import mean_std
from .jobs import VARIANT_NAMES, VARIANTS


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def collect(out: Path, seeds: Sequence[int], start: str) -> dict:
    """Every seed's numbers: toy GenEval per model and stage, reconstruction, layer response, RL runs."""
    res: dict = {"seeds": list(seeds), "from": start, "per_seed": {}}
    for seed in seeds:
        root = out / f"seed{seed}"
        row: dict = {"geneval": {}, "reconstruct": {}, "rl": {}}
        for variant in VARIANTS:
            for stage in ("stage1", "stage2"):
                summ = _read(root / variant / stage / "eval" / "geneval" / "summary.json")
                if summ:
                    row["geneval"][f"{variant}/{stage}"] = summ
        recon = _read(root / "reconstruct" / "summary.json")
        if recon:
            for i, (_, m) in enumerate(recon["models"].items()):
                row["reconstruct"][list(VARIANTS)[i]] = {k: m.get(k) for k in ("psnr", "ssim", "clip_sim")}
        layers = _read(root / "layers" / "layer_response.json")
        if layers:
            row["layers"] = layers
        for tag in ("grpo_ldam", "grpo_none"):
            run = root / tag
            metrics = _rows(run / "metrics.jsonl")
            entry: dict = {"before": _read(run / "eval" / "geneval_before" / "summary.json"),
                           "after": _read(run / "eval" / "geneval" / "summary.json"),
                           "rewards": {k[7:]: [r[k] for r in metrics] for k in (metrics[0] if metrics else {})
                                       if k.startswith("reward/") and k != "reward/dropped"},
                           "seconds": sum(r.get("seconds", 0.0) for r in metrics),
                           "ldam_fired": sum(1 for d in _rows(run / "ldam.jsonl") if d.get("active"))}
            row["rl"][tag] = entry
        res["per_seed"][str(seed)] = row
    return res


def _overall(summary: dict | None) -> float | None:
    return None if not summary else summary.get("correct_images")


def _task(summary: dict | None, task: str) -> float | None:
    return None if not summary else summary.get("tasks", {}).get(task)


def edge_mean(values: Sequence[float], k: int = 5, last: bool = False) -> float:
    """Mean of the first (or the last) ``k`` finite values; NaN when there are none."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v[-k:] if last else v[:k])) if v else float("nan")


def format_results(res: dict, command: str | None = None) -> str:
    """The Markdown tables of :func:`collect`'s result (mean ± std over seeds)."""
    seeds = res["per_seed"]
    lines = [f"# Toy reproduction: {len(seeds)} seed(s) ({', '.join(seeds)}), mean ± std", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += _geneval_table(seeds) + _reconstruct_table(seeds) + _rl_table(seeds) + _layer_tables(seeds)
    return "\n".join(lines)


def _geneval_table(seeds: dict) -> list[str]:
    """Toy GenEval of the stage I / II models, per task and overall."""
    keys = [f"{v}/{s}" for v in VARIANTS for s in ("stage1", "stage2")]
    if not any(k in r["geneval"] for r in seeds.values() for k in keys):
        return []
    lines = ["## Toy GenEval: all layers vs the last layer", "",
             "| model | " + " | ".join(TASKS) + " | overall |", "|---|" + "---|" * (len(TASKS) + 1)]
    for k in keys:
        vals = [r["geneval"].get(k) for r in seeds.values()]
        if not any(vals):
            continue
        variant, stage = k.split("/")
        cells = [fmt([_task(v, t) for v in vals]) for t in TASKS] + [fmt([_overall(v) for v in vals])]
        lines.append(f"| {VARIANT_NAMES[variant]}, stage {'I' if stage == 'stage1' else 'II'} | "
                     + " | ".join(cells) + " |")
    return lines + [""]


def _reconstruct_table(seeds: dict) -> list[str]:
    """Reconstruction by both stage-II models: PSNR, SSIM, CLIP-sim."""
    if not any(r["reconstruct"] for r in seeds.values()):
        return []
    lines = ["## Reconstruction (\"Keep the image as it is.\")", "", "| model | PSNR | SSIM | CLIP-sim |",
             "|---|---|---|---|"]
    for variant in VARIANTS:
        vals = [r["reconstruct"].get(variant, {}) for r in seeds.values()]
        lines.append(f"| {VARIANT_NAMES[variant]} | " + " | ".join(
            fmt([v.get(m) for v in vals]) for m in ("psnr", "ssim", "clip_sim")) + " |")
    return lines + [""]


def _rl_table(seeds: dict) -> list[str]:
    """Flow-GRPO with and without LDAM: the rewards' first and last epochs, toy GenEval before and after,
    LDAM's firings and the RL epochs' wall time."""
    rl = {tag: [r["rl"].get(tag, {}) for r in seeds.values()] for tag in ("grpo_ldam", "grpo_none")}
    if not any(e.get("rewards") for runs in rl.values() for e in runs):
        return []
    names = sorted({k for runs in rl.values() for e in runs for k in e.get("rewards", {})})
    lines = ["## Flow-GRPO from the all-layer stage-II model: with vs without LDAM", "",
             "Rewards on the rollouts: mean of the first 5 → the last 5 epochs (fresh prompts every epoch). "
             "Toy GenEval (300 prompts × 1 image) before and after (EMA weights). LDAM firings: "
             "(epoch, reward) decisions that switched noise on. RL epochs: the epochs' wall time, "
             "evaluation excluded.", "",
             "| run | " + " | ".join(names) + " | toy GenEval before | after | change | LDAM firings | "
             "RL epochs (s) |", "|---|" + "---|" * (len(names) + 5)]
    for tag, label in (("grpo_ldam", "with LDAM"), ("grpo_none", "without LDAM")):
        runs = rl[tag]
        cells = []
        for name in names:
            first = [edge_mean(e.get("rewards", {}).get(name, [])) for e in runs]
            last = [edge_mean(e.get("rewards", {}).get(name, []), last=True) for e in runs]
            d = 2 if name == "toy_alignment" else 3
            cells.append(f"{fmt(first, d)} → {fmt(last, d)}")
        before = [_overall(e.get("before")) for e in runs]
        after = [_overall(e.get("after")) for e in runs]
        change = [a - b if a is not None and b is not None else None for a, b in zip(after, before, strict=True)]
        cells += [fmt(before), fmt(after), fmt(change), fmt([e.get("ldam_fired", 0) for e in runs], 1),
                  fmt([e.get("seconds") for e in runs], 0)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _layer_tables(seeds: dict) -> list[str]:
    """The layer response of the all-layer model: one table per mode, each reward's change per layer group."""
    layer_rows = [r["layers"] for r in seeds.values() if "layers" in r]
    if not layer_rows:
        return []
    lines = ["## Layer response of the all-layer model (reward change vs the unaltered model)", ""]
    first = layer_rows[0]
    rewards = list(first["baseline"]) + ["pixel_change"]
    for mode, groups in first["modes"].items():
        lines += [f"{mode}:", "", "| group | " + " | ".join(rewards) + " |", "|---|" + "---|" * len(rewards)]
        for group in groups:
            cells = []
            for rw in rewards:
                vals = [lr["modes"][mode][group][rw]["mean"] for lr in layer_rows
                        if group in lr["modes"].get(mode, {}) and rw in lr["modes"][mode][group]]
                cells.append(fmt(vals, 2 if rw == "toy_alignment" else 3))
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
