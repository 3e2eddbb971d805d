"""Stage III over seeds (and arms): runs ``parauni rl CONFIG`` once per seed and arm, then tables mean ± std.

    python benchmarks/rl_seeds.py configs/toy_grpo_geneval.yaml --seeds 0 1 2 --jobs 2 --out runs/rl_geneval
    python benchmarks/rl_seeds.py configs/toy_grpo.yaml --seeds 0 1 2 3 4 --jobs 2 --out runs/rl_ldam \\
        --arm ldam ldam.enabled=true --arm none ldam.enabled=false
    python benchmarks/rl_seeds.py configs/toy_grpo_redness.yaml --seeds 0 1 2 --jobs 1 --threads 2 \\
        --out runs/rl_redness --no-geneval

Every run is its own ``parauni rl`` process (``OMP_NUM_THREADS`` = ``--threads``; ``--jobs`` at a time; give each
job its own cores: 2 jobs of 1 thread on 2 cores) writing ``<out>/<arm>/seed<k>/``; finished runs are skipped and
interrupted ones resume (``--resume auto``). Arms share seeds, so with a fixed ``train.seed`` they see the same
prompts and initial noise: their differences are paired. The toy GenEval of the starting model is computed once
(``<out>/baseline``) with the evaluation settings of the runs; each run evaluates its final EMA model.

Reported per arm (mean ± std over seeds; ``±`` is the sample std): each reward's mean over the first and the last
``--window`` epochs; toy GenEval before and after with its per-task accuracies, the strict score (extra objects
of classes not in the prompt fail the image) and the mean number of detected objects per image; wall time. With two
arms, the paired difference of every number with its 95% t-interval. Written to ``<out>/table.md`` and
``<out>/results.json``, with reward curves (mean over seeds) in ``<out>/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# two-sided 95% Student-t quantiles by degrees of freedom
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def fmt(values: list[float], digits: int = 3) -> str:
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def paired(a: list[float], b: list[float], digits: int = 3) -> str:
    """``mean difference [95% CI]`` of ``a - b`` over paired seeds."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    m, s = mean_std(d)
    n = len(d)
    half = T95.get(n - 1, 1.96) * s / math.sqrt(n) if n > 1 else float("nan")
    return f"{m:+.{digits}f} [{m - half:+.{digits}f}, {m + half:+.{digits}f}]"


def run_job(cmd: list[str], log: Path, done: Path, threads: int) -> tuple[int, float]:
    """Run ``cmd`` with its output in ``log``; on success write ``done`` (so a rerun skips it)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc == 0:
        done.write_text(json.dumps({"seconds": time.perf_counter() - t0}) + "\n")
    return rc, time.perf_counter() - t0


def summarize_run(folder: Path, window: int) -> dict:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rewards = [k for k in rows[0] if k.startswith("reward/") and k != "reward/dropped"]
    out = {"epochs": len(rows), "seconds": sum(r["seconds"] for r in rows),
           "curves": {k.split("/", 1)[1]: [r[k] for r in rows] for k in rewards}}
    for k in rewards:
        name = k.split("/", 1)[1]
        out[f"{name}/first"] = statistics.fmean(r[k] for r in rows[:window])
        out[f"{name}/last"] = statistics.fmean(r[k] for r in rows[-window:])
    # per GenEval task (GenEval-format prompts): the rollout reward over the first and the last quarter of the run,
    # and the share of groups whose rewards were all equal (no advantage, nothing to learn from)
    quarter = max(1, len(rows) // 4)
    out["by_task"] = {}
    for k in sorted({k for r in rows for k in r if k.startswith("task/")}):
        tag = k.split("/", 1)[1]
        first = [r[k] for r in rows[:quarter] if k in r]
        last = [r[k] for r in rows[-quarter:] if k in r]
        zero = [r[f"zero_std/{tag}"] for r in rows if f"zero_std/{tag}" in r]
        out["by_task"][tag] = {"first": statistics.fmean(first) if first else float("nan"),
                               "last": statistics.fmean(last) if last else float("nan"),
                               "zero_std": statistics.fmean(zero) if zero else float("nan")}
    final = folder / "eval" / "geneval" / "summary.json"
    if final.is_file():
        out["geneval"] = json.loads(final.read_text())
    # evaluations at the other guidance scales (train.eval_guidance_scales): eval/geneval_cfg<scale>
    out["geneval_at"] = {f.parent.name[len("geneval_"):]: json.loads(f.read_text())
                         for f in sorted((folder / "eval").glob("geneval_cfg*/summary.json"))}
    return out


def geneval_numbers(summary: dict) -> dict[str, float]:
    nums = {"overall": summary["overall"], **{f"task/{k}": v for k, v in summary["tasks"].items()}}
    for key in ("strict_overall", "objects_per_image"):
        if key in summary:
            nums[key] = summary[key]
    return nums


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="section.key=value overrides for every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arm", nargs="+", action="append", metavar=("NAME", "OVERRIDE"),
                    help="an arm: a name and its overrides (repeat for several; default one arm 'run')")
    ap.add_argument("--out", required=True)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--window", type=int, default=5, help="epochs averaged for the first / last reward")
    ap.add_argument("--no-geneval", action="store_true", help="no toy GenEval before / after")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    arms = {a[0]: a[1:] for a in args.arm} if args.arm else {"run": []}
    exe = [sys.executable, "-m", "parauni.cli"]
    common = [*args.overrides, f"train.threads={args.threads}"]
    if args.no_geneval:
        common.append("train.eval_geneval=false")
    else:
        common += ["train.eval_geneval=true", "train.eval_before=false"]
    jobs = []
    for arm, extra in arms.items():
        for seed in args.seeds:
            folder = out / arm / f"seed{seed}"
            if (folder / "run.done").is_file():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [*exe, "rl", args.config, *common, *extra, f"train.seed={seed}", f"train.output_dir={folder}",
                   "--resume", "auto", "--no-progress"]
            jobs.append((cmd, folder / "run.log", folder / "run.done"))
    baseline = out / "baseline" / "summary.json"
    scales: list[float] = []
    if not args.no_geneval:
        from parauni.rl.config import load_grpo_config

        cfg = load_grpo_config(args.config, [*args.overrides, *next(iter(arms.values()))])
        t = cfg.train
        scales = [float(g) for g in (t.eval_guidance_scales or [cfg.sampling.guidance_scale])]
        for k, g in enumerate(scales):  # the starting model at each evaluation scale
            name = "baseline" if k == 0 else f"baseline_cfg{g:g}"
            if (out / f"{name}.done").is_file():
                continue
            cmd = [*exe, "toy", "eval", "--model", cfg.model.source, "--out", str(out / name),
                   "--images-per-prompt", str(t.eval_images_per_prompt), "--steps", str(t.eval_steps),
                   "--guidance", str(g)]
            if cfg.train.eval_limit:
                cmd += ["--limit", str(cfg.train.eval_limit)]
            jobs.insert(0, (cmd, out / f"{name}.log", out / f"{name}.done"))
    print(f"{len(jobs)} jobs, {args.jobs} at a time, {args.threads} thread(s) each")
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_job(*job, args.threads), jobs))
    failed = [str(log) for (_, log, _), (rc, _) in zip(jobs, results, strict=True) if rc != 0]
    if failed:
        sys.exit("failed runs, see: " + ", ".join(failed) + " (rerun the same command to resume)")
    print(f"all runs done in {time.perf_counter() - t0:.0f}s")

    summaries = {arm: [summarize_run(out / arm / f"seed{s}", args.window) for s in args.seeds] for arm in arms}
    before = None if args.no_geneval else geneval_numbers(json.loads(baseline.read_text()))
    lines = [f"# `{args.config}` {' '.join(args.overrides)}", "",
             f"Seeds {args.seeds}; mean ± std over seeds (sample std). Rewards: mean of the first and the last "
             f"{args.window} epochs' rollouts."]
    if before and len(scales) > 1:
        best = max(scales, key=lambda g: json.loads((out / ("baseline" if g == scales[0] else f"baseline_cfg{g:g}")
                                                     / "summary.json").read_text())["overall"])
        lines.append(f"Evaluated at guidance {', '.join(f'{g:g}' for g in scales)} (the first is the main one); "
                     f"the starting model scores best at guidance {best:g}.")
    if before:
        base_summary = json.loads(baseline.read_text())
        lines.append(f"Toy GenEval: {base_summary['total_images']} images ({base_summary['total_prompts']} "
                     "distinct prompts); before = the starting model (one evaluation), after = each run's final "
                     "EMA model.")
    lines += ["", "| arm | metric | first / before | last / after | change |", "|---|---|---|---|---|"]
    table: dict = {}
    for arm, runs in summaries.items():
        names = [k.split("/")[0] for k in runs[0] if k.endswith("/first")]
        for name in names:
            a, b = [r[f"{name}/first"] for r in runs], [r[f"{name}/last"] for r in runs]
            table[(arm, f"reward {name}")] = (a, b)
            change = [y - x for x, y in zip(a, b, strict=True)]
            lines.append(f"| {arm} | reward {name} | {fmt(a)} | {fmt(b)} | {fmt(change)} |")
        if before:
            for key, value in before.items():
                after = [geneval_numbers(r["geneval"]).get(key, float("nan")) for r in runs]
                a = [value] * len(after)
                table[(arm, key)] = (a, after)
                lines.append(f"| {arm} | toy GenEval {key} | {value:.3f} | {fmt(after)} | "
                             f"{fmt([y - value for y in after])} |")
        for g in scales[1:]:  # the other evaluation scales: overall, strict, objects per image
            extra = json.loads((out / f"baseline_cfg{g:g}" / "summary.json").read_text())
            for key, value in geneval_numbers(extra).items():
                if key.startswith("task/"):
                    continue
                after = [geneval_numbers(r["geneval_at"][f"cfg{g:g}"]).get(key, float("nan")) for r in runs]
                table[(arm, f"{key} @cfg{g:g}")] = ([value] * len(after), after)
                lines.append(f"| {arm} | toy GenEval {key} at guidance {g:g} | {value:.3f} | {fmt(after)} | "
                             f"{fmt([y - value for y in after])} |")
        lines.append(f"| {arm} | wall time per run (s) | | {fmt([r['seconds'] for r in runs], 0)} | |")
    for arm, runs in summaries.items():  # diagnostics per GenEval task
        tags = [t for t in runs[0].get("by_task", {}) if all(t in r.get("by_task", {}) for r in runs)]
        if not tags:
            continue
        lines += ["", f"**{arm}, per GenEval task**: the rollout reward over the first and the last quarter of the "
                      "epochs, the share of groups with all-equal rewards (no advantage), and toy GenEval before and "
                      "after:", "",
                  "| task | rollout reward first → last | all-equal groups | GenEval before → after |",
                  "|---|---|---|---|"]
        for t in tags:
            first = [r["by_task"][t]["first"] for r in runs]
            last = [r["by_task"][t]["last"] for r in runs]
            zero = [r["by_task"][t]["zero_std"] for r in runs]
            ev = ""
            if before and f"task/{t}" in before:
                after = [geneval_numbers(r["geneval"]).get(f"task/{t}", float("nan")) for r in runs]
                ev = f"{before[f'task/{t}']:.3f} → {fmt(after)}"
            lines.append(f"| {t} | {fmt(first)} → {fmt(last)} | {fmt(zero, 2)} | {ev} |")
    if len(arms) == 2:
        a_arm, b_arm = list(arms)
        lines += ["", f"Paired difference {a_arm} − {b_arm} of the change (95% t-interval over {len(args.seeds)} "
                      "seeds):", "", "| metric | difference |", "|---|---|"]
        for (arm, metric), (first, last) in table.items():
            if arm != a_arm:
                continue
            f2, l2 = table[(b_arm, metric)]
            da = [y - x for x, y in zip(first, last, strict=True)]
            db = [y - x for x, y in zip(f2, l2, strict=True)]
            lines.append(f"| {metric} | {paired(da, db)} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                                  "seeds": args.seeds, "arms": arms, "before": before,
                                                  "runs": summaries}, indent=1))
    from parauni.utils.plots import plot_overlay

    mean_curves = {}
    for arm, runs in summaries.items():
        names = runs[0]["curves"]
        n = min(len(r["curves"][k]) for r in runs for k in names)
        mean_curves[arm] = {k: [statistics.fmean(r["curves"][k][i] for r in runs) for i in range(n)] for k in names}
    plot_overlay(mean_curves, out / "curves.png", title=f"rollout rewards, mean of {len(args.seeds)} seeds")
    print(text)


if __name__ == "__main__":
    main()
