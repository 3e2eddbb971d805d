"""Stage II in every training regime on CPU, each compared with the one-process float32 run.

Regimes: float32 and bf16; one process, 2-process DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, each launched the
way a user launches it (``accelerate launch --num_processes 2 --config_file configs/accelerate/<x>.yaml -m
parauni train ...``; on CPU processes over gloo, DeepSpeed with ``DS_ACCELERATOR=cpu``); gradient accumulation
1 and 2. Every run takes 3 optimizer steps of the same global batch of 4 samples (tiny model, stage II: the
queries, the LIM and the transformer train), from the same initial weights and the same sample order.

What is compared with the one-process float32 run, and why these tolerances:

* the loss of every step (the first one included) and the pre-clipping gradient norm of every step, relative
  ``FP32_RTOL`` = 1e-5 in float32. The regimes compute the same sums in another order (gradients all-reduced
  over 2 processes, or accumulated over 2 micro-batches, or reduce-scattered by ZeRO) so they agree to float32
  round-off (measured: <= 4e-7 relative), not bit for bit. The gradient norm is there because AdamW and the
  clipping (``optim.max_grad_norm``) hide a gradient's scale from the weights: a sum instead of a mean over
  processes, or a loss divided twice by ``grad_accum``, leaves the weights nearly unchanged but doubles or
  halves the norm.
* the trainable weights after the 3 steps: the largest difference at most ``FP32_WEIGHT_ATOL`` = 1e-3 = lr / 10
  and the relative L2 difference at most 1e-4. AdamW's first steps move each weight by about lr x
  sign(gradient) (lr = 1e-2 here, the weights move up to 1.5e-2 in steps 2 and 3): a weight whose gradient is
  near zero may take round-off as its sign, so single weights differ by a fraction of lr (measured: <= 8e-4)
  while the whole vector agrees to 6e-5 relative. A regime that trained another batch or another model differs
  by about the movement itself (a relative L2 of order 1).
* bf16: see ``BF16`` below (bounds measured against the float32 run and explained there). Under DeepSpeed,
  bf16 is DeepSpeed's own (bf16 weights, float32 master weights), not autocast.

Exact resume under DeepSpeed ZeRO-2 and ZeRO-3: a run interrupted after step 2 and resumed from its checkpoint
(the engine's own checkpoint: fp32 master weights, optimizer and RNG states) ends with the same weights, bit for
bit, as the uninterrupted run.

ZeRO-3 runs with ``stage3_param_persistence_threshold: 0`` (a DeepSpeed config file written by the test): by
default ZeRO-3 leaves parameters under 100k elements unpartitioned, which at tiny size is all of them.

Stage III (``parauni grpo``, both algorithms) is in tests/test_regimes_rl.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zero3_launch import zero3_launch_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy_stage1.yaml"
ACCELERATE = ROOT / "configs" / "accelerate"
STEPS, LR = 3, 1e-2
RUN = ["model.source=tiny", "data.resolution=16", "train.stage=II", "train.batch_size=4", f"train.steps={STEPS}",
       "train.save_every=1", f"train.keep_last={STEPS}", "train.log_every=1", "train.logger=none",
       "train.eval_geneval=false", f"optim.lr={LR}", "optim.warmup_steps=1", "train.seed=0"]

FP32_RTOL = 1e-5
FP32_WEIGHT_ATOL = LR / 10
FP32_WEIGHT_REL = 1e-4

# bf16 against the float32 run (3 steps, lr 1e-2), bounds = the measured differences with a margin of 3 or more.
# bf16 keeps 8 significant bits: each rounding is off by up to 2^-9 = 2e-3 relative, and a step sums many.
# - autocast (one process, DDP): float32 weights, gradients and AdamW; matmuls in bf16. Measured: losses 4e-3,
#   gradient norms 6e-3 relative; weights 9.5e-3 relative L2 (largest single difference 3e-2: near-zero
#   gradient elements whose sign bf16's rounding decides, each moved by about lr).
# - DeepSpeed's own bf16 (ZeRO-2 / ZeRO-3): the module's weights themselves are bf16 (the frozen VLM's too), the
#   gradients are bf16 and reduced in bf16, float32 master weights in the optimizer. Measured: losses 8e-3,
#   gradient norms 9e-3 at step 1, 2.8e-2 by step 3 (computed from weights that already differ); weights 1.6e-2.
# What they still catch: a gradient summed instead of averaged, or divided twice, moves a norm by 50-100%;
# another batch or another model moves the weights by their whole movement (7e-2 relative in steps 2 and 3).
BF16 = {"autocast": {"loss_rtol": 1.5e-2, "norm_rtol": 2e-2, "weight_rel": 3e-2},
        "deepspeed": {"loss_rtol": 3e-2, "norm_rtol": 1e-1, "weight_rel": 5e-2}}

needs_deepspeed = pytest.mark.skipif(find_spec("deepspeed") is None,
                                     reason="DeepSpeed is not installed: pip install 'parauni[deepspeed]'")

def launch(out: Path, launch_config: str | Path | None, precision: str = "no", *extra: str, port: int = 0,
           resume: bool = False) -> None:
    """``parauni train`` of RUN into ``out``: one process (``launch_config`` None) or ``accelerate launch
    --num_processes 2`` with ``launch_config`` (a file name under configs/accelerate, or a path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    train = ["-m", "parauni", "train", str(CONFIG), *RUN, f"train.output_dir={out}",
             f"train.mixed_precision='{precision}'", *extra, "--no-progress", *(["--resume"] if resume else [])]
    if launch_config is None:
        cmd = [sys.executable, *train]
    else:
        path = launch_config if isinstance(launch_config, Path) else ACCELERATE / launch_config
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--mixed_precision",
               precision, "--main_process_port", str(port), "--config_file", str(path), *train]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "trainable.safetensors"))


def weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(largest absolute difference, relative L2 difference to ``b``)."""
    assert set(a) == set(b) and a
    diff = torch.cat([(a[k] - b[k]).flatten() for k in b])
    return diff.abs().max().item(), (diff.norm() / torch.cat([b[k].flatten() for k in b]).norm()).item()


def compare(run: Path, ref: Path, loss_rtol: float, norm_rtol: float, weight_atol: float | None,
            weight_rel: float) -> dict:
    """The losses and gradient norms of every step, then the final trainable weights, of ``run`` against ``ref``;
    returns the measured differences (printed with ``pytest -s``)."""
    got, want = metrics(run), metrics(ref)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, STEPS + 1))
    loss = max(abs(g["loss"] - w["loss"]) / abs(w["loss"]) for g, w in zip(got, want, strict=True))
    norm = max(abs(g["grad_norm"] - w["grad_norm"]) / w["grad_norm"] for g, w in zip(got, want, strict=True))
    big, rel = weight_diff(weights(run), weights(ref))
    seen = {"loss_rel": loss, "grad_norm_rel": norm, "weight_max_abs": big, "weight_rel_l2": rel}
    print(f"\n{run.name} vs {ref.name}: " + ", ".join(f"{k} {v:.2g}" for k, v in seen.items()))
    assert loss <= loss_rtol and norm <= norm_rtol, seen
    assert rel <= weight_rel and (weight_atol is None or big <= weight_atol), seen
    return seen


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The one-process float32 run, grad_accum 1; its steps 2 and 3 must move the weights far more than the
    tolerances (else comparing weights could not fail)."""
    out = tmp_path_factory.mktemp("regimes") / "one_fp32"
    launch(out, None)
    moved, rel = weight_diff(weights(out), weights(out / "checkpoint-0000001"))
    assert moved > 10 * FP32_WEIGHT_ATOL and rel > 100 * FP32_WEIGHT_REL
    return out


FP32 = {  # name: (launch config, extra overrides)
    "one_accum2": (None, ["train.grad_accum=2"]),
    "ddp": ("ddp.yaml", []),
    "ddp_accum2": ("ddp.yaml", ["train.grad_accum=2"]),
    "fsdp2": ("fsdp.yaml", []),
    "fsdp2_accum2": ("fsdp.yaml", ["train.grad_accum=2"]),
    "zero2": ("deepspeed_zero2.yaml", []),
    "zero2_accum2": ("deepspeed_zero2.yaml", ["train.grad_accum=2"]),
    "zero3": ("zero3", []),
    "zero3_accum2": ("zero3", ["train.grad_accum=2"]),
}
FAST = {"zero3_accum2"}  # the default run's slice: DeepSpeed on CPU, every weight partitioned, accumulation


def _config(name: str, tmp_path: Path):
    config = FP32[name][0] if name in FP32 else name
    return zero3_launch_config(tmp_path) if config == "zero3" else config


def _marks(name: str, config) -> list:
    marks = [] if name in FAST else [pytest.mark.slow]
    return marks + ([needs_deepspeed] if config and config.startswith(("deepspeed", "zero")) else [])


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n, c)) for n, (c, _) in FP32.items()])
def test_float32_regime_matches_one_process(name, reference, tmp_path, free_port):
    config, extra = FP32[name]
    out = tmp_path / name
    launch(out, _config(name, tmp_path), "no", *extra, port=free_port())
    compare(out, reference, FP32_RTOL, FP32_RTOL, FP32_WEIGHT_ATOL, FP32_WEIGHT_REL)
    if config and config.startswith(("deepspeed", "zero")):  # DeepSpeed did run: the engine's checkpoint
        assert (out / "checkpoint-0000003" / "pytorch_model").is_dir()


BF16_RUNS = {"one_bf16": None, "ddp_bf16": "ddp.yaml", "zero2_bf16": "deepspeed_zero2.yaml", "zero3_bf16": "zero3"}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n, c)) for n, c in BF16_RUNS.items()])
def test_bf16_regime_matches_one_process_float32(name, reference, tmp_path, free_port):
    config = BF16_RUNS[name]
    out = tmp_path / name
    launch(out, zero3_launch_config(tmp_path) if config == "zero3" else config, "bf16", port=free_port())
    bound = BF16["autocast" if config in (None, "ddp.yaml") else "deepspeed"]
    compare(out, reference, bound["loss_rtol"], bound["norm_rtol"], None, bound["weight_rel"])


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_resumes_exactly(stage, tmp_path, free_port):
    """Interrupted after step 2 (what step 3 wrote removed), resumed from checkpoint 2: bit-identical weights."""
    config = "deepspeed_zero2.yaml" if stage == 2 else zero3_launch_config(tmp_path)
    full, cut = tmp_path / "full", tmp_path / "cut"
    launch(full, config, "no", "train.grad_accum=2", port=free_port())
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoint-0000003")
    (cut / "trainable.safetensors").unlink()
    launch(cut, config, "no", "train.grad_accum=2", port=free_port(), resume=True)
    assert json.loads((cut / "checkpoint-0000003" / "trainer_state.json").read_text())["step"] == 3
    moved, _ = weight_diff(weights(full), weights(full / "checkpoint-0000002"))
    assert moved > 1e-3  # step 3 moved the weights
    a, b = weights(cut), weights(full)
    for k in b:
        assert torch.equal(a[k], b[k]), k
    assert [r["loss"] for r in metrics(cut)] == [r["loss"] for r in metrics(full)]
