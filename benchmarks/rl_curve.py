"""Toy GenEval of every checkpoint of Flow-GRPO runs: the learning curve on a fixed evaluation, mean ± std over runs.

    python benchmarks/rl_curve.py runs/rl_geneval_lr1e-3/run/seed0 runs/rl_geneval_lr1e-3/run/seed1 \\
        runs/rl_geneval_lr1e-3/run/seed2 --out runs/rl_geneval_lr1e-3/curve --images-per-prompt 1

Each ``checkpoint-<epoch>`` of each run is loaded with its own config (``--weights ema`` or ``raw``), merged and
scored on toy GenEval (300 prompts, ``--images-per-prompt``, the runs' evaluation steps and guidance, seed 0:
the same prompts and noise for every checkpoint). ``--baseline SUMMARY`` adds epoch 0 from a summary.json of the
starting model made with the same settings. Writes ``<out>/curve.json``, ``<out>/curve.md`` and
``<out>/curve.png`` (overall and per task against epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def checkpoint_scores(run: Path, out: Path, weights: str, images_per_prompt: int) -> dict[int, dict]:
    from parauni.rl.config import load_grpo_config
    from parauni.rl.grpo import GRPOTrainer
    from parauni.toy.evaluation import toy_geneval

    scores = {}
    for ckpt in sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        epoch = int(ckpt.name.split("-")[1])
        folder = out / run.name / f"epoch{epoch:05d}"
        summary = folder / "summary.json"
        if not summary.is_file():
            cfg = load_grpo_config(run / "config.yaml", [f"train.output_dir={run}", "train.logger=none"], migrate=True)
            trainer = GRPOTrainer(cfg, resume=str(ckpt), progress=False)
            toy_geneval(trainer.merged_pipeline(ema=weights == "ema"), folder, images_per_prompt,
                        cfg.train.eval_steps, cfg.sampling.guidance_scale)
        scores[epoch] = json.loads(summary.read_text())
        print(run, epoch, round(scores[epoch]["overall"], 3), flush=True)
    return scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--weights", default="ema", choices=["ema", "raw"])
    ap.add_argument("--images-per-prompt", type=int, default=1)
    ap.add_argument("--baseline", help="summary.json of the starting model (epoch 0), same evaluation settings")
    args = ap.parse_args()
    out = Path(args.out)
    per_run = {r: checkpoint_scores(Path(r), out, args.weights, args.images_per_prompt) for r in args.runs}
    if args.baseline:
        base = json.loads(Path(args.baseline).read_text())
        for scores in per_run.values():
            scores[0] = base
    epochs = sorted(set.intersection(*(set(s) for s in per_run.values())))
    keys = ["overall", *next(iter(per_run.values()))[epochs[0]]["tasks"]]

    def value(summary: dict, key: str) -> float:
        return summary["overall"] if key == "overall" else summary["tasks"][key]

    table = {k: [[value(s[e], k) for s in per_run.values()] for e in epochs] for k in keys}
    lines = [f"Toy GenEval ({args.weights} weights, 300 prompts × {args.images_per_prompt}) of {len(per_run)} runs; "
             "mean ± std over runs", "", "| epoch | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for i, e in enumerate(epochs):
        cells = []
        for k in keys:
            vals = table[k][i]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.3f} ± {sd:.3f}")
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.md").write_text(text)
    (out / "curve.json").write_text(json.dumps({"epochs": epochs, "runs": list(per_run), "values": table}, indent=1))
    from parauni.utils.plots import plot_overlay

    series = {r: {k: [value(per_run[r][e], k) for e in epochs] for k in keys} for r in per_run}
    plot_overlay(series, out / "curve.png", title=f"toy GenEval against epochs ({args.weights} weights)", rate=1.0)
    print(text)


if __name__ == "__main__":
    main()
