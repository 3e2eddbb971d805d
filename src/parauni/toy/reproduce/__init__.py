"""``parauni toy reproduce``: retrain the toy world's models and reproduce, over several seeds, the shipped
numbers and the paper's comparisons in miniature.

What runs (every step is a ``parauni`` command in its own process, logged to ``<out>/logs/<job>.log``):

1. ``--from world`` only: the toy VLM, the toy prior and the toy alignment reward, once (seed 0), into
   ``<out>/world``; later steps use them instead of the shipped ones.
2. ``--from world|stage1``, per seed: stage I then stage II for the all-layer model (``configs/toy_stage*.yaml``)
   and the last-layer baseline (``configs/toy_stage*_lastlayer.yaml``), each scored on toy GenEval at the end
   of its run; ``<out>/seed<S>/<variant>/stage2/final`` is the stage-II pipeline.
   ``--from rl`` uses the shipped stage-II models (``toy-all-layers``, ``toy-last-layer``) for every seed.
3. Per seed: reconstruction of the scale's ``recon_images`` toy scenes (``SCALES``: 32 full, 16 quick; PSNR,
   SSIM, CLIP-sim with the toy alignment encoder) by both stage-II models; the layer-response analysis of the
   all-layer model (perturb and drop each third of the read layers, the three toy rewards); Flow-GRPO from the
   all-layer stage-II model on the three toy rewards, with LDAM and without (``configs/toy_grpo.yaml``), each
   scored on toy GenEval after.
4. ``<out>/table.md`` and ``<out>/results.json``: mean ± std over seeds of every number, and
   ``<out>/curves/ldam_vs_none.png`` (reward curves with vs without LDAM, the mean over seeds, raw and EMA).

``--world v2`` runs the v2 pipeline from scratch instead (the v2 VLM, prior and reward model, the probe, stages
I/II of both variants, reconstruction, DiffusionNFT, AWM and Flow-GRPO; see :mod:`parauni.toy.reproduce.v2`), and
its table gives toy GenEval on seen and held-out prompts.

A step whose output exists is skipped, so an interrupted run continues where it stopped (a training step
that was cut resumes from its last checkpoint); delete a step's folder to redo it.  ``--jobs N`` runs N
steps at a time (each with ``cpus / N`` threads).  ``--scale quick`` shortens every run (see ``SCALES``);
``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from ...utils.stats import mean_std
from .jobs import SCALES, VARIANT_NAMES, VARIANTS, Job, config_file, plan, write_layer_prompts, write_recon_images
from .plot import plot_ldam_overlay
from .results import collect, edge_mean, fmt, format_results
from .runner import execute
from .v2 import V2_SCALES, collect_v2, format_v2, plan_v2

# the package's parts: jobs (the job graph), runner (the processes), results (the tables), plot (the curves)
__all__ = ["SCALES", "VARIANTS", "VARIANT_NAMES", "Job", "add_parser", "collect", "config_file", "edge_mean",
           "execute", "fmt", "format_results", "mean_std", "plan", "plot_ldam_overlay", "reproduce", "run",
           "write_layer_prompts", "write_recon_images"]


def reproduce(out: str | Path, seeds: Sequence[int] = (0, 1, 2), start: str = "stage1", scale: str = "quick",
              jobs: int = 1, device: str | None = None, grpo_epochs: int | None = None, dry_run: bool = False,
              command: str | None = None, world: str = "v1") -> dict:
    out = Path(out)
    if world == "v2":
        return _reproduce_v2(out, seeds, scale, jobs, dry_run, command)
    todo = plan(out, seeds, start, scale, device, grpo_epochs)
    if not dry_run:
        write_recon_images(out / "recon_images", SCALES[scale]["recon_images"])
        write_layer_prompts(out / "layer_prompts.jsonl", SCALES[scale]["layer_prompts"])
    t0 = time.perf_counter()
    times = execute(todo, out / "logs", jobs, dry_run)
    if dry_run:
        return {}
    res = collect(out, seeds, start)
    res.update(scale=scale, jobs=jobs, step_seconds=times, wall_seconds=time.perf_counter() - t0, command=command)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    table = format_results(res, command)
    overlay = plot_ldam_overlay(res, out / "curves" / "ldam_vs_none.png")
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\n{out / 'table.md'}, {out / 'results.json'}" + (f", {overlay}" if overlay else "")
          + f"; this call ran {len(times)} step(s) in {res['wall_seconds']:.0f}s")
    return res


def _reproduce_v2(out: Path, seeds: Sequence[int], scale: str, jobs: int, dry_run: bool, command: str | None) -> dict:
    """``--world v2``: every v2 step from scratch (:func:`plan_v2`), then the seen / held-out table."""
    todo = plan_v2(out, seeds, scale)
    if not dry_run:
        write_recon_images(out / "recon_images", V2_SCALES[scale]["recon_images"], world="v2")
    t0 = time.perf_counter()
    times = execute(todo, out / "logs", jobs, dry_run)
    if dry_run:
        return {}
    res = collect_v2(out, seeds)
    res.update(scale=scale, jobs=jobs, step_seconds=times, wall_seconds=time.perf_counter() - t0, command=command)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    table = format_v2(res, command)
    (out / "table.md").write_text(table + "\n")
    print(table)
    print(f"\n{out / 'table.md'}, {out / 'results.json'}; this call ran {len(times)} step(s) in "
          f"{res['wall_seconds']:.0f}s")
    return res


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="retrain the toy models over several seeds and tabulate mean ± std",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/toy_reproduce", help="output folder (re-run the command to continue)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--from", dest="start", default="stage1", choices=["world", "stage1", "rl"],
                   help="world: also retrain the toy VLM, prior and reward model; stage1: start from the shipped "
                        "world models (default); rl: start from the shipped stage-II models")
    p.add_argument("--scale", default="quick", choices=sorted(SCALES), help="run lengths (see SCALES)")
    p.add_argument("--grpo-epochs", type=int, help="Flow-GRPO epochs (default: configs/toy_grpo.yaml's)")
    p.add_argument("--jobs", type=int, default=1, help="steps run at a time (each gets cpus / jobs threads)")
    p.add_argument("--device", help="world pretraining of the VLM: e.g. cuda (training steps use the GPU by "
                                    "themselves when there is one)")
    p.add_argument("--world", default="v1", choices=["v1", "v2"],
                   help="v2: the v2 pipeline from scratch (its VLM, prior and reward model first; --from is not used)")
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    p.set_defaults(func=run)


def run(args) -> dict:
    world = getattr(args, "world", "v1")
    if world == "v2":
        command = f"parauni toy reproduce --world v2 --scale {args.scale} --seeds " + " ".join(map(str, args.seeds))
    else:
        command = (f"parauni toy reproduce --from {args.start} --scale {args.scale} --seeds "
                   + " ".join(map(str, args.seeds))
                   + (f" --grpo-epochs {args.grpo_epochs}" if args.grpo_epochs else ""))
    return reproduce(args.out, args.seeds, args.start, args.scale, args.jobs, args.device, args.grpo_epochs,
                     args.dry_run, command, world)
