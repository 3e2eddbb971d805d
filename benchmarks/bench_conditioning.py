"""Time and peak memory of conditioning (VLM + LIM) and of a full generation, per LIM variant.

Variants: the reference LIM over all layers ("mean"), the cheaper "prefuse" LIM over all
layers, and the last-layer baseline ("mean", layers=[-1]).  Each measurement runs in its own
process so peak memory is that workload's alone.

    python benchmarks/bench_conditioning.py                     # tiny, CPU (always)
    python benchmarks/bench_conditioning.py --size internvl3-1b_sana-0.6b_512 --no-generate  # real size, random
    python benchmarks/bench_conditioning.py --size internvl3-2b_sana-1.6b_512 --device cuda --dtype bf16

On CUDA, peak memory is torch.cuda.max_memory_allocated; on CPU it is the process's peak RSS
growth over the built model (ru_maxrss), which includes allocator slack.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from common import peak_mb, reset_peak, sync

VARIANTS = {"reference": dict(fusion="mean"), "prefuse": dict(fusion="prefuse"),
            "last-layer": dict(fusion="mean", layers=[-1])}


def worker(args) -> dict:
    """Runs one (variant, task) measurement in this process and returns the numbers."""
    import torch

    from parauni import ParaUniPipeline, build_preset, build_tiny
    from parauni.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    overrides = VARIANTS[args.variant]
    if args.size == "tiny":
        pipe = build_tiny(sample_size=16, **overrides).to(args.device, dtype)
    else:
        parts = build_preset(args.size, device=args.device, dtype=dtype, **overrides)
        pipe = ParaUniPipeline(tokenizer=build_tokenizer(), **parts)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a photo of a red circle left of a blue square"] * args.batch
    base = peak_mb(args.device)

    def run():
        with torch.no_grad():
            if args.task == "condition":
                pipe.encode_prompt(prompts)
            else:
                pipe(prompts, num_inference_steps=20, output_type="latent" if args.size != "tiny" else "np",
                     generator=torch.Generator(args.device).manual_seed(0))
        sync(args.device)

    run()  # warm-up
    reset_peak(args.device)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak = peak_mb(args.device) - (0 if args.device == "cuda" else base)
    return dict(variant=args.variant, task=args.task, median_s=statistics.median(times), peak_mb=peak)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", help="'tiny' or a real preset name (random weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-generate", action="store_true", help="only the conditioning pass")
    ap.add_argument("--worker", nargs=2, metavar=("VARIANT", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.variant, args.task = args.worker
        print(json.dumps(worker(args)))
        return
    tasks = ["condition"] + ([] if args.no_generate else ["generate"])
    rows = []
    for task in tasks:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", variant, task] + [
                a for k, v in [("--size", args.size), ("--device", args.device), ("--dtype", args.dtype),
                               ("--batch", str(args.batch)), ("--repeats", str(args.repeats))] for a in (k, v)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{variant}/{task} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {task:9s} {variant:10s} {rows[-1]['median_s'] * 1e3:9.1f} ms  {rows[-1]['peak_mb']:8.1f} MB",
                  flush=True)
    print(f"\n{args.size} on {args.device} ({args.dtype}, batch {args.batch}); ratios vs the last-layer baseline:")
    for task in tasks:
        r = {row["variant"]: row for row in rows if row["task"] == task}
        base = r["last-layer"]
        for v in ("reference", "prefuse"):
            print(f"  {task:9s} {v:10s} time x{r[v]['median_s'] / base['median_s']:.2f}  "
                  f"peak memory x{r[v]['peak_mb'] / max(base['peak_mb'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
