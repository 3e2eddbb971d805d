"""Recount the model FLOPs of a stored ``bench_train.py`` run and recompute its MFU.

Builds each (stage, LIM variant) at real size on the ``meta`` device (no memory, no compute) with
``bench_train._real_step``, the same module and step the benchmark times, and counts one forward + backward
at batch 1 without checkpointing, times the batch, twice: with PyTorch's stock ``FlopCounterMode`` rules
and with ``parauni.utils.flops`` (grouped-convolution backward counted right, attention backward without
recomputation).  The step times come from the stored results file; MFU = FLOPs per step / step time /
peak.  A few seconds per row on a CPU.

    python benchmarks/mfu_recount.py benchmarks/results/bench_train_h100_internvl3-2b_sana-1.6b_512.txt \\
        --size internvl3-2b_sana-1.6b_512 --batch 32 --gpu "NVIDIA H100 80GB HBM3" \\
        --out benchmarks/results/bench_train_h100_internvl3-2b_sana-1.6b_512_mfu_corrected
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

ROW = re.compile(r"^\s+(I|II)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%")


def stored_rows(path: Path) -> list[dict]:
    """The table rows of a ``bench_train.py`` text output: stage, variant, step time, old FLOPs and MFU."""
    rows = []
    for line in path.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append(dict(stage=m[1], variant=m[2], step_ms=float(m[3]), samples_per_s=float(m[4]),
                             peak_mb=float(m[5]), stored_gflop_per_step=float(m[6]), stored_mfu=float(m[7]) / 100))
    if not rows:
        sys.exit(f"error: no result rows (stage, variant, step ms, ..., GFLOP/step, MFU) in {path}")
    return rows


def meta_counts(size: str, stage: str, variant: str) -> dict:
    """Per-sample FLOPs at real size on ``meta``: stock and corrected totals, and the corrected split by op."""
    import torch
    from bench_train import _real_step
    from torch.utils.flop_counter import FlopCounterMode

    from parauni.utils.flops import flop_counter

    torch.manual_seed(0)
    args = SimpleNamespace(size=size, device="meta", dtype="bf16", batch=1)
    _, count, _, _ = _real_step(args, variant, stage)
    with FlopCounterMode(display=False) as stock:
        count()
    with flop_counter() as fixed:
        count()
    def by_op(counter) -> dict:
        out = defaultdict(int)
        for op, n in counter.get_flop_counts().get("Global", {}).items():
            out[str(op).removeprefix("aten.")] += n
        return dict(out)

    return dict(stock=stock.get_total_flops(), corrected=fixed.get_total_flops(), by_op=by_op(fixed),
                stock_by_op=by_op(stock))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="a bench_train.py text output (its table rows are read)")
    ap.add_argument("--size", required=True, help="the preset the results were measured with")
    ap.add_argument("--batch", type=int, required=True, help="samples per step of the stored run")
    ap.add_argument("--gpu", help="torch.cuda.get_device_name() of the GPU that ran it (peak from the table)")
    ap.add_argument("--peak-tflops", type=float, help="dense peak TFLOP/s (overrides --gpu)")
    ap.add_argument("--out", type=Path, help="write OUT.txt (this table) and OUT.json")
    args = ap.parse_args()

    from parauni.utils.flops import METHOD, gpu_peak_tflops

    if args.peak_tflops:
        gpu, peak = args.gpu or "given", args.peak_tflops
    else:
        found = gpu_peak_tflops(args.gpu or "")
        if found is None:
            sys.exit(f"error: no peak known for --gpu {args.gpu!r}; pass --peak-tflops")
        gpu, peak = found
    rows = stored_rows(args.results)
    lines = [f"  {'stage':5s} {'variant':10s} {'step ms':>8s} {'TFLOP/step':>11s} {'MFU':>7s}   "
             f"{'old TFLOP/step':>14s} {'old MFU':>8s}  {'stock meta':>10s}  conv-bwd share (stock)"]
    print(lines[0], flush=True)
    for r in rows:
        c = meta_counts(args.size, r["stage"], r["variant"])
        r["flops_per_step"] = c["corrected"] * args.batch
        r["stock_meta_flops_per_step"] = c["stock"] * args.batch
        r["flops_per_step_by_op"] = {k: v * args.batch for k, v in c["by_op"].items()}
        r["mfu"] = r["flops_per_step"] / (r["step_ms"] / 1e3) / (peak * 1e12)
        conv_stock = c["stock_by_op"].get("convolution_backward", 0)
        line = (f"  {r['stage']:5s} {r['variant']:10s} {r['step_ms']:8.1f} {r['flops_per_step'] / 1e12:11.2f} "
                f"{r['mfu'] * 100:6.2f}%   {r['stored_gflop_per_step'] / 1e3:14.2f} {r['stored_mfu'] * 100:7.2f}%  "
                f"{r['stock_meta_flops_per_step'] / 1e12:10.2f}  {conv_stock / c['stock'] * 100:.1f}%")
        lines.append(line)
        print(line, flush=True)
    notes = [
        "",
        f"{args.size}, batch {args.batch}; step times from {args.results.name}, measured on {gpu} "
        f"(as given: --gpu {args.gpu!r}, --peak-tflops {args.peak_tflops}; the stored text does not name the GPU).",
        f"MFU = corrected FLOPs per step / step time / {peak:g} TFLOP/s ({gpu}, dense bf16).",
        f"FLOPs: {METHOD}; one forward + backward at batch 1 on the meta device without checkpointing "
        f"(the benchmark's count), times {args.batch}.",
        "old = the stored run's counts (PyTorch's stock rules on CUDA: the depthwise conv's weight gradient "
        "counted groups times, 11,200x in SANA-1.6B); stock meta = the stock rules recounted here "
        "(meta attention runs as bmm, so it differs from the CUDA count by the attention recomputation only).",
    ]
    for n in notes:
        print(n)
    if args.out:
        Path(f"{args.out}.txt").write_text("\n".join(lines + notes) + "\n")
        meta = dict(size=args.size, batch=args.batch, source=str(args.results), gpu=gpu, peak_tflops=peak,
                    flop_count_method=METHOD + "; meta device, batch 1 x batch, no checkpointing")
        Path(f"{args.out}.json").write_text(json.dumps(dict(meta, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))  # bench_train, common
    main()
