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

A step whose output exists is skipped, so an interrupted run continues where it stopped (a training step
that was cut resumes from its last checkpoint); delete a step's folder to redo it.  ``--jobs N`` runs N
steps at a time (each with ``cpus / N`` threads).  ``--scale quick`` shortens every run (see ``SCALES``);
``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..eval.geneval import TASK_ORDER as TASKS
from ..utils.stats import mean_std

VARIANTS = {"all": ("toy_stage1.yaml", "toy_stage2.yaml", "toy-all-layers"),
            "last": ("toy_stage1_lastlayer.yaml", "toy_stage2_lastlayer.yaml", "toy-last-layer")}
VARIANT_NAMES = {"all": "all layers", "last": "last layer"}

# Run lengths. "full" is the shipped recipe (the configs' own lengths and the pretraining commands the
# shipped weights were made with); "quick" keeps every comparison but shortens every run.
SCALES: dict[str, dict] = {
    "full": dict(vlm=["--steps", "3000", "--batch-size", "128", "--lr", "2e-3"],
                 prior=["--space", "latent", "--vae-width", "16", "--ae-steps", "300", "--steps", "1350"],
                 rewards=["--steps", "1500", "--batch-size", "128", "--pool", "40000"], stage1=None, stage2=None,
                 grpo_epochs=None, eval_images=1, recon_images=32, layer_prompts=8),
    "quick": dict(vlm=["--steps", "300", "--batch-size", "32"], prior=["--steps", "300", "--ae-steps", "100"],
                  rewards=["--steps", "300"], stage1=200, stage2=200, grpo_epochs=None, eval_images=1,
                  recon_images=16, layer_prompts=4),
    # a smoke run of the whole pipeline (minutes on a laptop; the numbers mean nothing)
    "test": dict(vlm=["--steps", "2", "--batch-size", "4", "--eval-examples", "4"],
                 prior=["--steps", "2", "--ae-steps", "2", "--batch-size", "8"],
                 rewards=["--steps", "2", "--pool", "256", "--batch-size", "32"],
                 stage1=2, stage2=2, grpo_epochs=2, eval_images=1, recon_images=2, layer_prompts=1, eval_limit=1,
                 grpo=["prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4", "sampling.eval_steps=4",
                       "sampling.sde_window_range=[0, 3]", "optim.train_batch=4"],
                 layers=["--images-per-prompt", "1", "--steps", "4"], recon=["--steps", "4"],
                 stage=["train.eval_steps=4"]),
}


def config_file(name: str) -> Path:
    """A config shipped with the package (``parauni/configs/``, the repository's ``configs``)."""
    from ..utils.configs import shipped_config

    return shipped_config(name)


@dataclass
class Job:
    """One step: a ``parauni`` command, done when ``done`` exists; ``after`` names the jobs it needs."""

    name: str
    argv: list[str]
    done: Path
    after: list[str] = field(default_factory=list)
    before_run: Callable[[], None] | None = None  # e.g. copy a result the command can reuse


def _parauni(*args: str) -> list[str]:
    return [sys.executable, "-m", "parauni", *args]


def plan(out: Path, seeds: Sequence[int], start: str = "stage1", scale: str = "quick", device: str | None = None,
         grpo_epochs: int | None = None) -> list[Job]:
    """The jobs of a reproduction, in an order that respects their dependencies."""
    if start not in ("world", "stage1", "rl"):
        raise UsageError(f"--from must be world, stage1 or rl, got {start!r}")
    if scale not in SCALES:
        raise UsageError(f"--scale must be one of {sorted(SCALES)}, got {scale!r}")
    sc = SCALES[scale]
    jobs: list[Job] = []
    world = out / "world"
    model_over: list[str] = []  # stage I / II: which VLM and prior
    align_path: str | None = None  # the toy alignment reward's weights
    world_jobs: list[str] = []
    if start == "world":
        dev = ["--device", device] if device else []
        if device and device.startswith("cuda"):  # the GPU waits on data: draw it in worker processes
            dev += ["--workers", str(max(1, (os.cpu_count() or 2) - 2))]
        jobs += [Job("world-vlm", _parauni("toy", "pretrain-vlm", "--out", str(world / "vlm"), *sc["vlm"], *dev),
                     world / "vlm" / "config.json"),
                 Job("world-prior", _parauni("toy", "pretrain-prior", "--out", str(world / "prior"), *sc["prior"]),
                     world / "prior" / "transformer" / "config.json"),
                 Job("world-rewards", _parauni("toy", "train-rewards", "--out", str(world / "alignment"),
                                               *sc["rewards"]), world / "alignment" / "config.json")]
        world_jobs = [j.name for j in jobs]
        model_over = [f"model.vlm={world / 'vlm'}", f"model.transformer={world / 'prior'}"]
        align_path = str(world / "alignment")
    limit = sc.get("eval_limit")
    epochs = grpo_epochs or sc["grpo_epochs"]
    for seed in seeds:
        root = out / f"seed{seed}"
        models: dict[str, str] = {}
        model_jobs: dict[str, str] = {}  # variant -> the job that makes its stage-II model
        for variant, (cfg1, cfg2, shipped) in VARIANTS.items():
            if start == "rl":
                models[variant] = shipped
                continue
            base = root / variant
            common = [*model_over, f"train.seed={seed}", f"train.eval_images_per_prompt={sc['eval_images']}"] + (
                [f"train.eval_limit={limit}"] if limit else []) + sc.get("stage", [])
            s1 = [f"train.output_dir={base / 'stage1'}"] + ([f"train.steps={sc['stage1']}"] if sc["stage1"] else [])
            s2 = [f"train.output_dir={base / 'stage2'}", f"model.init={base / 'stage1'}"] + (
                [f"train.steps={sc['stage2']}"] if sc["stage2"] else [])
            if sc["stage1"] and sc["stage1"] < 100:  # warm-up and checkpoints fit a very short run
                s1 += ["optim.warmup_steps=1", "train.save_every=1"]
                s2 += ["optim.warmup_steps=1", "train.save_every=1"]
            j1 = Job(f"seed{seed}-{variant}-stage1",
                     _parauni("train", str(config_file(cfg1)), *common, *s1, "--resume", "auto", "--no-progress"),
                     base / "stage1" / "eval" / "geneval" / "summary.json", list(world_jobs))
            j2 = Job(f"seed{seed}-{variant}-stage2",
                     _parauni("train", str(config_file(cfg2)), *common, *s2, "--resume", "auto", "--no-progress"),
                     base / "stage2" / "eval" / "geneval" / "summary.json", [j1.name])
            jobs += [j1, j2]
            models[variant] = str(base / "stage2" / "final")
            model_jobs[variant] = j2.name
        recon_dir = root / "reconstruct"
        jobs.append(Job(f"seed{seed}-reconstruct",
                        _parauni("eval", "reconstruct", "--model", models["all"], "--model", models["last"],
                                 "--images", str(out / "recon_images"), "--out", str(recon_dir), "--seed", str(seed),
                                 "--clip", "toy" if align_path is None else f"toy:{align_path}", *sc.get("recon", [])),
                        recon_dir / "summary.json", list(model_jobs.values())))
        opts = json.dumps({"toy_alignment": {"path": align_path}}) if align_path else None
        layers_dir = root / "layers"
        jobs.append(Job(f"seed{seed}-layers",
                        _parauni("analyze", "layers", "--model", models["all"], "--prompts",
                                 str(out / "layer_prompts.jsonl"), "--out", str(layers_dir), "--seed", str(seed),
                                 *sc.get("layers", []),
                                 *(["--reward-options", opts] if opts else [])),
                        layers_dir / "layer_response.json", [model_jobs["all"]] if model_jobs else []))
        for ldam in (True, False):
            tag = "grpo_ldam" if ldam else "grpo_none"
            run_dir = root / tag
            over = [f"model.source={models['all']}", f"train.seed={seed}", f"ldam.enabled={str(ldam).lower()}",
                    f"train.output_dir={run_dir}", "train.eval_geneval=true",
                    f"sampling.eval_images_per_prompt={sc['eval_images']}"]
            if epochs:
                over.append(f"train.epochs={epochs}")
            if limit:
                over.append(f"train.eval_limit={limit}")
            if opts:
                over.append(f"rewards.options={opts}")
            over += sc.get("grpo", [])
            before = (root / "all" / "stage2" / "eval" / "geneval") if start != "rl" else None
            argv = _parauni("grpo", str(config_file("toy_grpo.yaml")), *over, "--resume", "auto", "--no-progress")
            jobs.append(Job(f"seed{seed}-{tag}", argv,
                            run_dir / "eval" / "geneval" / "summary.json", [model_jobs["all"]] if model_jobs else [],
                            before_run=_reuse_before(before, run_dir) if before else None))
    return jobs


def _reuse_before(stage2_eval: Path, run_dir: Path) -> Callable[[], None]:
    """The RL run's "before" score is its stage-II model's own toy GenEval (same prompts, steps, CFG, seeds)."""

    def copy() -> None:
        dest = run_dir / "eval" / "geneval_before"
        if stage2_eval.is_dir() and not (dest / "summary.json").is_file():
            shutil.copytree(stage2_eval, dest, dirs_exist_ok=True)

    return copy


def write_layer_prompts(path: Path, per_task: int) -> None:
    """The first ``per_task`` toy GenEval prompts of each task (the layer-response prompt set)."""
    from .geneval import load_toy_geneval

    by_task: dict[str, list[dict]] = {}
    for meta in load_toy_geneval():
        by_task.setdefault(meta["tag"], []).append(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(m) + "\n" for group in by_task.values() for m in group[:per_task]))


def write_recon_images(folder: Path, n: int, seed: int = 1234) -> None:
    """``n`` random toy scenes (32 px PNGs) to reconstruct, the same for every model and seed."""
    from PIL import Image

    from .world import random_scene, render

    if folder.is_dir() and len(list(folder.glob("*.png"))) >= n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(render(random_scene(rng))).save(folder / f"scene_{i:03d}.png")


def execute(jobs: Sequence[Job], logs: Path, workers: int = 1, dry_run: bool = False,
            echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run the jobs whose output is missing, ``workers`` at a time, in dependency order; returns each run
    job's wall time.  A failed job stops the run (the running ones finish) and names its log."""
    pending = [j for j in jobs if not j.done.is_file()]
    skipped = [j.name for j in jobs if j.done.is_file()]
    if skipped:
        echo(f"[reproduce] {len(skipped)} step(s) already done: {', '.join(skipped)}")
    if dry_run:
        for j in pending:
            echo(shlex.join(["parauni", *j.argv[3:]] if j.argv[:3] == _parauni() else j.argv))
        return {}
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    names = {j.name for j in pending}
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    finished: set[str] = set()
    times: dict[str, float] = {}
    failed: str | None = None
    total = len(pending)
    while pending or running:
        ready = [j for j in pending if all(a in finished or a not in names for a in j.after)]
        while ready and len(running) < workers and failed is None:
            job = ready.pop(0)
            pending.remove(job)
            if job.before_run:
                job.before_run()
            log = open(logs / f"{job.name}.log", "w")
            echo(f"[reproduce] start {job.name} ({len(finished) + len(running) + 1}/{total}); "
                 f"log {logs / job.name}.log")
            running[job.name] = (subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env),
                                 time.perf_counter(), log)
        if failed is not None and not running:
            break
        if not running and pending:
            raise RuntimeError(f"steps {[j.name for j in pending]} wait on steps that did not run")
        time.sleep(0.5)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            times[name] = time.perf_counter() - t0
            job = next(j for j in jobs if j.name == name)
            if proc.returncode != 0 or not job.done.is_file():
                failed = failed or name
                echo(f"[reproduce] FAILED {name} (exit {proc.returncode}); see {logs / name}.log")
            else:
                finished.add(name)
                echo(f"[reproduce] done  {name} in {times[name]:.0f}s")
    if failed is not None:
        raise RuntimeError(f"step {failed} failed; fix it and run the same command again to continue "
                           f"(finished steps are kept); log: {logs / failed}.log")
    return times


# ---- the results table ------------------------------------------------------------------------------------------

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
    n = len(seeds)
    lines = [f"# Toy reproduction: {n} seed(s) ({', '.join(seeds)}), mean ± std", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    # 1. toy GenEval of the stage I / II models
    keys = [f"{v}/{s}" for v in VARIANTS for s in ("stage1", "stage2")]
    if any(k in r["geneval"] for r in seeds.values() for k in keys):
        lines += ["## Toy GenEval: all layers vs the last layer", "",
                  "| model | " + " | ".join(TASKS) + " | overall |", "|---|" + "---|" * (len(TASKS) + 1)]
        for k in keys:
            vals = [r["geneval"].get(k) for r in seeds.values()]
            if not any(vals):
                continue
            variant, stage = k.split("/")
            cells = [fmt([_task(v, t) for v in vals]) for t in TASKS] + [fmt([_overall(v) for v in vals])]
            lines.append(f"| {VARIANT_NAMES[variant]}, stage {'I' if stage == 'stage1' else 'II'} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    # 2. reconstruction
    if any(r["reconstruct"] for r in seeds.values()):
        lines += ["## Reconstruction (\"Keep the image as it is.\")", "", "| model | PSNR | SSIM | CLIP-sim |",
                  "|---|---|---|---|"]
        for variant in VARIANTS:
            vals = [r["reconstruct"].get(variant, {}) for r in seeds.values()]
            lines.append(f"| {VARIANT_NAMES[variant]} | " + " | ".join(
                fmt([v.get(m) for v in vals]) for m in ("psnr", "ssim", "clip_sim")) + " |")
        lines.append("")
    # 3. RL with and without LDAM
    rl = {tag: [r["rl"].get(tag, {}) for r in seeds.values()] for tag in ("grpo_ldam", "grpo_none")}
    if any(e.get("rewards") for runs in rl.values() for e in runs):
        names = sorted({k for runs in rl.values() for e in runs for k in e.get("rewards", {})})
        lines += ["## Flow-GRPO from the all-layer stage-II model: with vs without LDAM", "",
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
        lines.append("")
    # 4. the layer response
    layer_rows = [r["layers"] for r in seeds.values() if "layers" in r]
    if layer_rows:
        lines += ["## Layer response of the all-layer model (reward change vs the unaltered model)", ""]
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
    return "\n".join(lines)


def plot_ldam_overlay(res: dict, out_png: Path) -> Path | None:
    """Mean-over-seeds reward curves with vs without LDAM (raw and EMA 0.1)."""
    from ..utils.plots import plot_overlay  # matplotlib: only to draw, not for `parauni --help`

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


def reproduce(out: str | Path, seeds: Sequence[int] = (0, 1, 2), start: str = "stage1", scale: str = "quick",
              jobs: int = 1, device: str | None = None, grpo_epochs: int | None = None, dry_run: bool = False,
              command: str | None = None) -> dict:
    out = Path(out)
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
    p.add_argument("--dry-run", action="store_true", help="print the commands that would run")
    p.set_defaults(func=run)


def run(args) -> dict:
    command = (f"parauni toy reproduce --from {args.start} --scale {args.scale} --seeds "
               + " ".join(map(str, args.seeds)) + (f" --grpo-epochs {args.grpo_epochs}" if args.grpo_epochs else ""))
    return reproduce(args.out, args.seeds, args.start, args.scale, args.jobs, args.device, args.grpo_epochs,
                     args.dry_run, command)
