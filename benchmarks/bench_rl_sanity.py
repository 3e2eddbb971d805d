"""Stage III sanity benchmark: the redness reward must at least triple within 5 minutes on every seed.

    python benchmarks/bench_rl_sanity.py --seeds 0 1 2 --threads 2 --out runs/rl_redness

Runs ``configs/toy_grpo_redness.yaml`` once per seed (one at a time, ``--threads`` each, through
``benchmarks/rl_seeds.py``), then prints per seed the first epoch's reward, the mean of the last 5 epochs, their
ratio and the run's wall time, and mean ± std over seeds. Exits 1 when a seed misses ``--ratio`` (3) or
``--seconds`` (300).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/rl_redness")
    ap.add_argument("--config", default=str(HERE.parent / "configs" / "toy_grpo_redness.yaml"))
    ap.add_argument("--ratio", type=float, default=3.0)
    ap.add_argument("--seconds", type=float, default=300.0)
    args, overrides = ap.parse_known_args()
    cmd = [sys.executable, str(HERE / "rl_seeds.py"), args.config, *overrides, "--seeds", *map(str, args.seeds),
           "--jobs", "1", "--threads", str(args.threads), "--out", args.out, "--no-geneval"]
    subprocess.run(cmd, check=True)
    out = Path(args.out)
    ratios, ok = [], True
    print("| seed | epoch 1 | last 5 epochs | ratio | wall time (s) |\n|---|---|---|---|---|")
    for seed in args.seeds:
        folder = out / "run" / f"seed{seed}"
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines() if x.strip()]
        first = rows[0]["reward/redness"]
        last = statistics.fmean(r["reward/redness"] for r in rows[-5:])
        wall = json.loads((folder / "run.done").read_text())["seconds"]
        ratios.append(last / first)
        ok &= last / first >= args.ratio and wall <= args.seconds
        print(f"| {seed} | {first:.4f} | {last:.4f} | {last / first:.2f} | {wall:.0f} |")
    sd = statistics.stdev(ratios) if len(ratios) > 1 else 0.0
    print(f"\nratio {statistics.fmean(ratios):.2f} ± {sd:.2f} over {len(ratios)} seeds; "
          f"{'PASS' if ok else 'FAIL'} (every seed >= {args.ratio}x within {args.seconds:.0f}s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
