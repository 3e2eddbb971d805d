"""Two stage-III algorithms head to head: toy GenEval of every checkpoint against training wall time, paired seeds.

    python benchmarks/rl_head_to_head.py --arm nft runs/h2h/nft/run/seed0 runs/h2h/nft/run/seed1 ... \\
        --arm grpo runs/h2h/grpo/run/seed0 ... --out runs/h2h/curve --baseline runs/h2h/nft/baseline/summary.json

Each run's ``checkpoint-<epoch>`` folders are scored as ``benchmarks/rl_curve.py`` does (EMA weights, 300 prompts ×
``--images-per-prompt``, seed 0, at the run's own guidance scale: 1 for DiffusionNFT, 4.5 for Flow-GRPO), and placed
at the training time up to that epoch (the sum of ``seconds`` in ``metrics.jsonl``: rollout, reward and update,
without evaluations). ``--baseline`` adds time 0 (the starting model at its best setting). Writes
``<out>/head_to_head.png`` (overall against minutes, every run and the mean of each arm), ``<out>/head_to_head.md``
(per checkpoint index: minutes and overall, mean ± std; the per-task table of the last checkpoints) and
``<out>/head_to_head.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rl_curve import checkpoint_scores


def minutes_at(run: Path) -> dict[int, float]:
    """Training minutes up to the end of each epoch of ``run`` (from its metrics.jsonl)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    total, out = 0.0, {0: 0.0}
    for r in rows:
        total += r["seconds"]
        out[int(r["step"])] = total / 60
    return out


def fmt(vals: list[float]) -> str:
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", nargs="+", action="append", required=True, metavar=("NAME", "RUN"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--images-per-prompt", type=int, default=1)
    ap.add_argument("--baseline", help="summary.json of the starting model (time 0), same evaluation settings")
    args = ap.parse_args()
    out = Path(args.out)
    arms = {a[0]: [Path(r) for r in a[1:]] for a in args.arm}
    base = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    data: dict[str, list[list[tuple[float, dict]]]] = {}
    for arm, runs in arms.items():
        data[arm] = []
        for run in runs:
            scores = checkpoint_scores(run, out / arm, "ema", args.images_per_prompt)
            mins = minutes_at(run)
            points = [(mins[e], scores[e]) for e in sorted(scores)]
            data[arm].append(([(0.0, base)] if base else []) + points)
    lines = ["Toy GenEval of the checkpoints (EMA weights, 300 prompts × "
             f"{args.images_per_prompt}) against training minutes; mean ± std over runs", ""]
    for arm, runs in data.items():
        n = min(len(r) for r in runs)
        lines += [f"**{arm}** ({len(runs)} runs)", "", "| checkpoint | minutes | overall | strict | objects / image |",
                  "|---|---|---|---|---|"]
        for i in range(n):
            mins = [r[i][0] for r in runs]
            summ = [r[i][1] for r in runs]
            lines.append(f"| {i} | {fmt(mins)} | {fmt([s['overall'] for s in summ])} | "
                         f"{fmt([s.get('strict_overall', float('nan')) for s in summ])} | "
                         f"{fmt([s.get('objects_per_image', float('nan')) for s in summ])} |")
        lines.append("")
    tasks = list(next(iter(data.values()))[0][-1][1]["tasks"])
    lines += ["Per task, the last checkpoint of each run:", "", "| arm | " + " | ".join(tasks) + " | overall |",
              "|---" * (len(tasks) + 2) + "|"]
    if base:
        cells = " | ".join(f"{base['tasks'][t]:.3f}" for t in tasks)
        lines.append(f"| start | {cells} | {base['overall']:.3f} |")
    for arm, runs in data.items():
        last = [r[-1][1] for r in runs]
        lines.append(f"| {arm} | " + " | ".join(fmt([s["tasks"][t] for s in last]) for t in tasks)
                     + f" | {fmt([s['overall'] for s in last])} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "head_to_head.md").write_text(text)
    (out / "head_to_head.json").write_text(json.dumps(
        {arm: [[(m, s["overall"], s.get("strict_overall"), s.get("objects_per_image"), s["tasks"]) for m, s in r]
               for r in runs] for arm, runs in data.items()}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k, (arm, runs) in enumerate(data.items()):
        color = f"C{k}"
        for r in runs:
            ax.plot([m for m, _ in r], [s["overall"] for _, s in r], color=color, alpha=0.3, lw=1)
        n = min(len(r) for r in runs)
        ax.plot([statistics.fmean(r[i][0] for r in runs) for i in range(n)],
                [statistics.fmean(r[i][1]["overall"] for r in runs) for i in range(n)], color=color, lw=2.5,
                marker="o", label=f"{arm} (mean of {len(runs)})")
    ax.set_xlabel("training minutes (rollout + reward + update, one CPU thread)")
    ax.set_ylabel("toy GenEval overall")
    ax.set_title("stage III head to head: toy GenEval of checkpoints against wall time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "head_to_head.png", dpi=110)
    print(text)


if __name__ == "__main__":
    main()
