"""Does ``torch.compile`` of the policy transformer speed up the Flow-GRPO update?

On one trainer (the toy config, ``kl_beta`` 0.04, no zero-advantage drop), every epoch's rollout is updated
twice: once through the plain LoRA transformer, once through ``torch.compile`` of it; the median update times
(first epoch left out: it holds the compilation) give the ratio. The second update of an epoch starts from the
first one's weights, so the two see slightly different policies; the work is the same.

    OMP_NUM_THREADS=1 python benchmarks/bench_grpo_compile.py --epochs 4 --threads 1

Measured on the 2-core CPU (1 thread), two runs: 2.31 -> 2.20 s (1.05x) and 2.44 -> 2.27 s (1.08x); not
enough to add an option.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from parauni.rl.config import load_grpo_config
    from parauni.rl.grpo import GRPOTrainer

    torch.set_num_threads(args.threads)
    cfg = load_grpo_config("toy_grpo.yaml", [f"train.output_dir={tempfile.mkdtemp()}", "train.eval_geneval=false",
                                             "ldam.enabled=false", "train.logger=none", "optim.drop_zero_adv=false",
                                             "optim.kl_beta=0.04", "train.mixed_precision='no'"])
    trainer = GRPOTrainer(cfg, progress=False)
    plain = trainer.transformer
    compiled = torch.compile(plain, dynamic=False)
    times: dict[str, list[float]] = {"plain": [], "compiled": []}
    for epoch in range(args.epochs):
        roll = trainer.rollout(epoch)
        adv, valid, _ = trainer.advantages(roll)
        for name, model in (("plain", plain), ("compiled", compiled)):
            trainer.transformer = model
            t0 = time.perf_counter()
            trainer.update(roll, adv, valid, epoch)
            times[name].append(time.perf_counter() - t0)
            trainer.transformer = plain  # the rollout merges the LoRA of the plain module
            print(f"epoch {epoch} {name}: {times[name][-1]:.2f}s", flush=True)
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"update: plain {med['plain']:.2f}s, compiled {med['compiled']:.2f}s: {med['plain'] / med['compiled']:.2f}x")


if __name__ == "__main__":
    main()
