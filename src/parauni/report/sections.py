"""The report's sections, in reading order: the headline comparison across runs, the curves, then each run's
details (its tables, each with a note saying what its numbers are, GenEval samples under their task, configs)."""

from __future__ import annotations

import logging

from ..eval.geneval import TASK_ORDER
from ..eval.wise import CATEGORIES
from . import curves
from .page import Page, fmt, thumbnail_png
from .runs import Run
from .stats import is_number, mean_std_text, seed_groups

logger = logging.getLogger(__name__)


def _task_order(tags) -> list[str]:
    return [t for t in TASK_ORDER if t in tags] + sorted(t for t in tags if t not in TASK_ORDER)


def _settings(record: dict | None) -> str:
    """What made a benchmark's images, from its provenance.json: seed rule, steps, guidance, resolution."""
    if not record:
        return "settings: not recorded (no provenance.json)"
    parts = [f"seed {record.get('seed')} ({record.get('seed_rule')})", f"{record.get('steps')} steps",
             f"guidance {fmt(record.get('guidance'))}"]
    if record.get("resolution"):
        parts.append(f"{record['resolution']} px")
    if record.get("limit") is not None:
        parts.append(f"limit {record['limit']} ({record.get('limit_rule')})")
    return "; ".join(parts)


def _images_per_prompt(run: Run) -> str:
    g, record = run.geneval or {}, run.provenance.get("geneval") or {}
    if record.get("images_per_prompt"):
        return str(record["images_per_prompt"])
    if is_number(g.get("total_images")) and is_number(g.get("total_prompts")) and g["total_prompts"]:
        k = g["total_images"] / g["total_prompts"]
        return str(int(k)) if float(k).is_integer() else fmt(k)
    return "?"


def _weights(weights: dict | None) -> str:
    if not weights:
        return "–"
    return " + ".join(f"{w:g} {c.lower()}" for c, w in weights.items())


# ---- the headline comparison: one row per run (+ seed groups) ---------------------------------------------------

def headline(page: Page, runs: list[Run]) -> None:
    """The comparison tables: GenEval per task, WISE per category, DPG-Bench, one row per run (+ seed groups)."""
    _geneval_headline(page, runs)
    _wise_headline(page, runs)
    _dpg_headline(page, runs)


def _geneval_headline(page: Page, runs: list[Run]) -> None:
    groups = seed_groups(runs)
    scored = [r for r in runs if r.geneval]
    if not scored:
        return
    tags = _task_order({t for r in scored for t in r.geneval.get("tasks", {})})
    page.heading("GenEval across runs" if len(runs) > 1 else "GenEval", 2)
    rows = [[r.name, *[r.geneval.get("tasks", {}).get(t) for t in tags], r.geneval.get("overall"),
             _images_per_prompt(r), r.geneval.get("total_prompts")] for r in scored]
    for base, members in groups.items():
        members = [m for m in members if m.geneval]
        if len(members) >= 2:
            rows.append([f"{base} (mean ± std, {len(members)} seeds)",
                         *[mean_std_text(m.geneval.get("tasks", {}).get(t) for m in members) for t in tags],
                         mean_std_text(m.geneval.get("overall") for m in members), _images_per_prompt(members[0]),
                         members[0].geneval.get("total_prompts")])
    page.table(["run", *tags, "overall", "images / prompt", "prompts"], rows)
    seeds = ("; ± = sample std over the seeds of a group (runs named <name>_seed<k>)" if groups
             else "; one seed per run (no ± : a run is one seed)")
    page.para("Accuracy: the fraction of a task's images the detector judges correct (GenEval's rules); "
              "overall: the mean of the task accuracies; images / prompt: samples drawn per prompt, each "
              "with its own seed" + seeds + ". The settings of each run are under its GenEval table below.",
              cls="note")


def _wise_headline(page: Page, runs: list[Run]) -> None:
    wise = [r for r in runs if r.wise]
    if not wise:
        return
    page.heading("WISE", 2)
    page.table(["run", *CATEGORIES, "overall"],
               [[r.name, *[r.wise.get("categories", {}).get(c, {}).get("wiscore") for c in CATEGORIES],
                 r.wise.get("overall")] for r in wise])
    first = wise[0].wise
    page.para(f"Mean WiScore per category, 1 image per prompt, one seed; WiScore = {first.get('wiscore')}; "
              f"overall = {_weights(first.get('overall_weights'))} (– : not every category was scored).",
              cls="note")


def _dpg_headline(page: Page, runs: list[Run]) -> None:
    dpg = [r for r in runs if r.dpg]
    if not dpg:
        return
    l1 = sorted({k for r in dpg for k in r.dpg.get("l1", {})})
    page.heading("DPG-Bench", 2)
    page.table(["run", "DPG-Bench", *l1, "items", "VQA model"],
               [[r.name, r.dpg.get("score"), *[r.dpg.get("l1", {}).get(k) for k in l1], r.dpg.get("items"),
                 r.dpg.get("vqa")] for r in dpg])
    page.para("x 100. DPG-Bench: the mean over items of the mean over an item's 4 images (a 2x2 grid, one seed "
              "per image) of the share of questions answered yes, a question counting 0 when a parent question "
              "fails; categories: the yes rate of the last image's answers, as ELLA's compute_dpg_bench.py.",
              cls="note")


# ---- curves ---------------------------------------------------------------------------------------------------

def curves_section(page: Page, runs: list[Run]) -> None:
    figures = []
    for run in runs:
        figs = []
        if run.metrics:
            try:
                figs = curves.plot_metrics(run.metrics)
            except ImportError:
                logger.warning("matplotlib is not installed: metrics.jsonl curves left out")
        if figs or run.curves:
            figures.append((run, figs))
    if not figures:
        if any(r.metrics for r in runs):
            page.heading("Curves", 2)
            page.para("(metrics.jsonl curves left out: matplotlib is not installed)", cls="note")
        return
    page.heading("Curves", 2)
    page.para("From each run's metrics.jsonl, one panel per logged value against the training step (a noisy series "
              f"of more than 20 points: faint raw, solid EMA {curves.EMA_RATE:g}); curves/*.png as the run saved "
              "them.", cls="note")
    for run, figs in figures:
        if len(runs) > 1:
            page.heading(run.name, 3)
        page.image_row([(png, f"{run.name}_curve_{name}", f"{name} (metrics.jsonl)") for name, png in figs]
                       + [(p.read_bytes(), f"{run.name}_{p.stem}", str(p.relative_to(run.path))) for p in run.curves])


# ---- each run's details ---------------------------------------------------------------------------------------

def run_sections(page: Page, run: Run) -> None:
    page.heading(run.name, 2)
    page.para(str(run.path), cls="path")
    for section in (_geneval, _samples, _reconstruct, _wise, _dpg, _ldam, _probe, _configs):
        section(page, run)


def _geneval(page: Page, run: Run) -> None:
    if not run.geneval:
        return
    g = run.geneval
    tasks, counts = g.get("tasks", {}), g.get("task_images", {})
    page.heading("GenEval", 3)
    rows = [[t, tasks[t], counts.get(t)] for t in _task_order(tasks)]
    rows.append(["overall (mean of tasks)", g.get("overall"), g.get("total_images")])
    page.table(["task", "accuracy", "images"], rows)
    extra = [f"{k.replace('_', ' ')}: {fmt(g[k])}" for k in ("total_prompts", "correct_prompts",
                                                             "correct_images", "mean_partial") if k in g]
    page.para(f"Accuracy: the fraction of the task's images judged correct; {_images_per_prompt(run)} image(s) "
              f"per prompt; {_settings(run.provenance.get('geneval'))}"
              + (f"; {'; '.join(extra)}" if extra else "") + ".", cls="note")


def _samples(page: Page, run: Run) -> None:
    if not run.samples:
        return
    tasks = (run.geneval or {}).get("tasks", {})
    page.heading("GenEval samples", 3)
    page.para("The first image of the first prompts of each task, under the task it shows; small images are "
              "enlarged by an integer factor, nearest-neighbour (pixels kept square and sharp).", cls="note")
    for tag in _task_order(run.samples):
        acc = f" (accuracy {fmt(tasks[tag])})" if is_number(tasks.get(tag)) else ""
        page.heading(f"{tag}{acc}", 4)
        page.figures([(thumbnail_png(p), f"{run.name}_{tag}_{i}", prompt)
                      for i, (p, prompt) in enumerate(run.samples[tag])])


def _reconstruct(page: Page, run: Run) -> None:
    if not run.reconstruct:
        return
    rec = run.reconstruct
    page.heading("Reconstruction", 3)
    page.table(["model", "PSNR", "SSIM", "CLIP-sim", "images"],
               [[m, v.get("psnr"), v.get("ssim"), v.get("clip_sim"), v.get("n_images")]
                for m, v in rec.get("models", {}).items()])
    cap = rec.get("psnr_cap")
    note = ["Means over the input images, one reconstruction each: PSNR in dB, SSIM, CLIP image-image cosine",
            f"CLIP: {rec.get('clip')}"] + ([f"PSNR capped at {cap:g} dB"] if is_number(cap) else [])
    page.para("; ".join([*note, f"{rec.get('n_skipped', 0)} unreadable image(s) skipped"]) + ".", cls="note")


def _wise(page: Page, run: Run) -> None:
    if not run.wise:
        return
    w = run.wise
    page.heading("WISE", 3)
    page.table(["category", "WiScore", "images"],
               [[c, v.get("wiscore"), v.get("images")] for c, v in w.get("categories", {}).items()]
               + [["overall (weighted)", w.get("overall"), w.get("scored")]])
    page.para(f"Mean WiScore, 1 image per prompt ({w.get('protocol')} protocol: {w.get('wiscore')}); "
              f"{_settings(run.provenance.get('wise'))}; {len(w.get('unscored') or [])} prompt(s) unscored.",
              cls="note")


def _dpg(page: Page, run: Run) -> None:
    if not run.dpg:
        return
    d = run.dpg
    page.heading("DPG-Bench", 3)
    page.table(["category (L2)", "score"], [["DPG-Bench", d.get("score")], *[[k, v] for k, v in
                                                                           d.get("l2", {}).items()]])
    page.para(f"x 100; {d.get('items')} items x {d.get('images_per_item', 4)} images; {d.get('questions')} "
              f"questions; VQA model {d.get('vqa')}; {_settings(run.provenance.get('dpg'))}.", cls="note")


def _ldam(page: Page, run: Run) -> None:
    if not run.ldam:
        return
    page.heading("LDAM", 3)
    active = [d for d in run.ldam if d.get("active")]
    page.para(f"{len(active)} active of {len(run.ldam)} decisions")
    if active:
        keys = ["epoch", "reward", "g_s", "r_s", "gamma", "layers"]
        page.table(keys, [[d.get(k) for k in keys] for d in active])
        page.para("One row per active decision of ldam.jsonl, as logged: the epoch, the reward it acted on, "
                  "its g_s, r_s and gamma, and the VLM layers it targeted.", cls="note")


def _probe(page: Page, run: Run) -> None:
    if not run.probe:
        return
    p, attrs = run.probe, run.probe.get("attributes", {})
    page.heading("Layer probe", 3)
    rows = [[layer, *[f"{fmt(v['accuracy'][layer])} ({fmt(v['shuffled'][layer])})" for v in attrs.values()]]
            for layer in range(p.get("layers", 0))]
    rows.append(["chance", *[v.get("chance") for v in attrs.values()]])
    page.table(["layer", *attrs], rows)
    if run.probe_png is not None:
        page.image(run.probe_png.read_bytes(), f"{run.name}_layer_probe", "layer probe heat map")
    counts = ", ".join(f"{a} {v['n_train']}/{v['n_test']}" for a, v in attrs.items())
    page.para(f"Test accuracy of a linear (logistic) probe of each decoder layer's query states (mean over the "
              f"queries) of {p.get('model')}, in parentheses the same probe fitted on shuffled labels (the floor); "
              f"chance: the majority class of the test prompts; prompts train/test: {counts}.", cls="note")


def _configs(page: Page, run: Run) -> None:
    if not run.configs:
        return
    page.heading("Config", 3)
    for fname, text in run.configs:
        page.details(f"{fname} ({len(text.splitlines())} lines)", text, fname)
