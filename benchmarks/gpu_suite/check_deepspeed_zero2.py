"""DeepSpeed ZeRO-2 against DDP for stage I of ``parauni train`` (needs CUDA and ``pip install deepspeed``).

NOT YET RUN: written on a CPU-only machine without DeepSpeed; run it on a GPU machine before relying on
the ZeRO-2 path.

What it does (float32 everywhere, so the two runs can agree to round-off):

1. DDP reference: ``accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes N
   --mixed_precision no -m parauni train configs/toy_stage1.yaml`` with the tiny model, a few steps,
   ``train.grad_accum`` > 1 and a checkpoint after every step.
2. The same run with ``configs/accelerate/deepspeed_zero2.yaml`` (ZeRO-2: optimizer states and gradients
   partitioned; the trainer fills ``train_micro_batch_size_per_gpu``, ``gradient_accumulation_steps`` and
   ``gradient_clipping`` from the training config, and leaves the 1/grad_accum loss scaling to DeepSpeed's
   ``engine.backward``).
3. Resume: the ZeRO-2 run's last checkpoint is deleted and the run is continued with ``--resume`` from the
   one before (DeepSpeed's ``load_checkpoint``: fp32 partitions, optimizer states).
4. Checks: the trainable weights (``trainable.safetensors``) of the uninterrupted and of the resumed ZeRO-2
   run equal DDP's within ``--atol`` (max abs difference), and so do the logged losses (``metrics.jsonl``;
   a double 1/grad_accum scaling would show as a DeepSpeed loss, gradient and update off by grad_accum).
   The result is printed and written to ``OUT/result.json``; the exit status is 1 when a check fails.

Processes: ``--nproc`` (default: 2 when there are 2+ GPUs, else 1). Two processes need two GPUs: NCCL,
the backend Accelerate and DeepSpeed use on CUDA, refuses two ranks on one device ("Duplicate GPU
detected"). On a one-GPU machine the check therefore runs one process: ZeRO-2's optimizer, the engine's
gradient accumulation and clipping and its checkpoints are exercised, the cross-rank partitioning is not.

    pip install deepspeed                    # in the project's environment
    python benchmarks/gpu_suite/check_deepspeed_zero2.py                  # ~1-2 min on one GPU
    python benchmarks/gpu_suite/check_deepspeed_zero2.py --nproc 2 --out runs/gpu_suite/zero2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = ROOT / "configs" / "accelerate"
CONFIG = ROOT / "configs" / "toy_stage1.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(launch_config: str, nproc: int, out: Path, overrides: list[str], *flags: str) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / launch_config),
           "--num_processes", str(nproc), "--mixed_precision", "no", "--main_process_port", str(free_port()),
           "-m", "parauni", "train", str(CONFIG), *overrides, f"train.output_dir={out}", "--no-progress", *flags]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        sys.exit(f"run failed ({proc.returncode}): {' '.join(cmd)}")


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "trainable.safetensors")), load_file(str(b / "trainable.safetensors"))
    if set(x) != set(y):
        sys.exit(f"{a} and {b} hold different trainable weights")
    return max((x[k] - y[k]).abs().max().item() for k in x)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nproc", type=int, default=None, help="processes (GPUs); default 2 with 2+ GPUs, else 1")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--out", default="runs/gpu_suite/deepspeed_zero2")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device (DeepSpeed ZeRO-2 does not run on CPU)")
    if importlib.util.find_spec("deepspeed") is None:
        sys.exit("needs DeepSpeed: pip install deepspeed")
    gpus = torch.cuda.device_count()
    nproc = args.nproc or (2 if gpus >= 2 else 1)
    if nproc > gpus:
        sys.exit(f"--nproc {nproc} needs {nproc} GPUs (NCCL allows one rank per device); found {gpus}")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    batch = nproc * args.micro_batch * args.grad_accum
    overrides = ["model.source=tiny", "data.resolution=16", f"train.batch_size={batch}",
                 f"train.grad_accum={args.grad_accum}", f"train.steps={args.steps}", "train.save_every=1",
                 f"train.keep_last={args.steps}", "train.logger=none", "train.eval_geneval=false",
                 "train.log_every=1", "optim.warmup_steps=2", "train.mixed_precision=no", "train.seed=0"]
    launch("ddp.yaml", nproc, out / "ddp", overrides)
    launch("deepspeed_zero2.yaml", nproc, out / "zero2", overrides)
    last, before = f"checkpoint-{args.steps:07d}", f"checkpoint-{args.steps - 1:07d}"
    if not (out / "zero2" / last / "pytorch_model").is_dir():
        sys.exit(f"{out / 'zero2' / last} has no DeepSpeed checkpoint (pytorch_model/): did DeepSpeed run?")
    full = max_diff(out / "zero2", out / "ddp")
    checkpoint = max_diff(out / "zero2" / before, out / "ddp" / before)
    loss_diff = max(abs(a - b) for a, b in zip(losses(out / "zero2"), losses(out / "ddp"), strict=True))
    shutil.rmtree(out / "zero2" / last)
    (out / "zero2" / "trainable.safetensors").unlink()
    launch("deepspeed_zero2.yaml", nproc, out / "zero2", overrides, "--resume")
    resumed = max_diff(out / "zero2", out / "ddp")
    moved = max_diff(out / "ddp", out / "ddp" / before)
    result = {"processes": nproc, "gpus": gpus, "steps": args.steps, "grad_accum": args.grad_accum,
              "max_abs_diff_zero2_vs_ddp": full, f"max_abs_diff_at_{before}": checkpoint,
              "max_abs_diff_resumed_zero2_vs_ddp": resumed, "max_abs_loss_diff": loss_diff,
              "last_step_moved_weights_by": moved, "atol": args.atol,
              "passed": max(full, checkpoint, resumed) <= args.atol and loss_diff <= args.atol}
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not result["passed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
