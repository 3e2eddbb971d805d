"""Stage-III algorithms side by side, paired by seed: each written by ``benchmarks/rl_seeds.py`` into its own folder.

    python benchmarks/rl_compare.py --arm awm runs/h2h/awm --arm nft runs/h2h/nft --arm grpo runs/h2h/grpo \\
        --seeds 0 1 2 --out benchmarks/results/toy_rl/h2h_awm_nft_grpo

For every arm (``<folder>/run/seed<k>``, its starting model's toy GenEval in ``<folder>/baseline``): toy GenEval
before (the arm's own evaluation setting) and after, the strict score, objects per image and the training minutes
(the sum of ``seconds`` in ``metrics.jsonl``: rollout, reward and update, wall time of a one-thread run, so they
compare only between runs made side by side on the same machine); mean ± std over the seeds that
every arm has finished, and the paired difference of each pair of arms with its 95% t-interval. Writes
``<out>/table.md`` and ``<out>/results.json`` (every seed's numbers).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from rl_seeds import fmt, geneval_numbers, paired, summarize_run

KEYS = ("overall", "strict_overall", "objects_per_image")


def arm_numbers(folder: Path, seeds: list[int]) -> dict:
    """Per seed: the final toy GenEval numbers and the CPU minutes; the baseline."""
    out = {"baseline": geneval_numbers(json.loads((folder / "baseline" / "summary.json").read_text())), "seeds": {}}
    for s in seeds:
        run = folder / "run" / f"seed{s}"
        if not (run / "run.done").is_file():
            continue
        summary = summarize_run(run, 5)
        out["seeds"][s] = {**geneval_numbers(summary["geneval"]), "minutes": summary["seconds"] / 60,
                           "epochs": summary["epochs"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", nargs=2, action="append", metavar=("NAME", "FOLDER"), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    arms = {name: arm_numbers(Path(folder), args.seeds) for name, folder in args.arm}
    seeds = [s for s in args.seeds if all(s in a["seeds"] for a in arms.values())]
    if not seeds:
        raise SystemExit("no seed has finished in every arm yet")
    lines = [f"Seeds {seeds} (finished in every arm); mean ± std over seeds; paired differences with 95% t-intervals.",
             "", "| arm | epochs | toy GenEval before | after | strict after | objects / image (before → after) "
             "| training minutes |", "|---|---|---|---|---|---|---|"]
    for name, a in arms.items():
        per = [a["seeds"][s] for s in seeds]
        b = a["baseline"]
        lines.append(f"| {name} | {per[0]['epochs']} | {b['overall']:.3f} | {fmt([p['overall'] for p in per])} | "
                     f"{fmt([p['strict_overall'] for p in per])} | {b.get('objects_per_image', float('nan')):.2f} → "
                     f"{fmt([p['objects_per_image'] for p in per], 2)} | {fmt([p['minutes'] for p in per], 1)} |")
    lines += ["", "| pair | Δ toy GenEval after | Δ gain over own start | Δ strict | Δ objects / image "
              "| Δ training minutes |", "|---|---|---|---|---|---|"]
    for (n1, a1), (n2, a2) in itertools.combinations(arms.items(), 2):
        def col(key, a=a1, b=a2):
            return [a["seeds"][s][key] for s in seeds], [b["seeds"][s][key] for s in seeds]

        g1 = [a1["seeds"][s]["overall"] - a1["baseline"]["overall"] for s in seeds]
        g2 = [a2["seeds"][s]["overall"] - a2["baseline"]["overall"] for s in seeds]
        lines.append(f"| {n1} − {n2} | {paired(*col('overall'))} | {paired(g1, g2)} | "
                     f"{paired(*col('strict_overall'))} | {paired(*col('objects_per_image'), 2)} | "
                     f"{paired(*col('minutes'), 1)} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "arms": arms}, indent=1, default=str) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
