"""Sharded and DeepSpeed-style training of the stage I / II trainer on CPU.

* FSDP2 through Accelerate on 2 CPU processes (gloo): ``torchrun --nproc_per_node 2 -m parauni train``
  with the environment that ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` derives from
  the shipped config (``ACCELERATE_USE_FSDP``, ``FSDP_VERSION=2``, the wrap classes, the state-dict type).
  ``accelerate launch --cpu`` itself starts a single plain process, and ``AcceleratorState`` leaves CPU
  processes ``MULTI_CPU``; the trainer switches them to Accelerate's FSDP2 path (``fully_shard`` on a CPU
  device mesh), so ``Accelerator.prepare`` / ``no_sync`` / ``clip_grad_norm_`` / ``save_state`` /
  ``load_state`` are Accelerate's own FSDP2 code. The run saves checkpoints, is resumed from one, and must
  reach the trainable weights of the same run under DDP (2 processes) within 1e-4.
* The ``train.grad_accum`` loss scaling under DeepSpeed, without DeepSpeed: Accelerate's real
  ``DeepSpeedEngineWrapper`` around a minimal engine that does what ``DeepSpeedEngine.backward`` /
  ``step`` do with gradient accumulation (divide the loss by ``gradient_accumulation_steps``; step at the
  boundary). The real DeepSpeed ZeRO-2 and ZeRO-3 runs, on 2 CPU processes, are in tests/test_regimes.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from parauni.train.config import load_config
from parauni.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "toy_stage1.yaml"
FSDP_YAML = ROOT / "configs" / "accelerate" / "fsdp.yaml"
# tiny model (has the SanaTransformerBlock / Qwen2DecoderLayer classes fsdp.yaml wraps), 3 steps of a global
# batch of 4 = 2 processes x micro-batch 1 x grad_accum 2, a checkpoint after every step
RUN = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.grad_accum=2", "train.steps=3",
       "train.save_every=1", "train.keep_last=3", "train.logger=none", "train.eval_geneval=false",
       "train.log_every=1", "optim.warmup_steps=2", "train.seed=0"]


def _fsdp_env() -> dict[str, str]:
    """The ACCELERATE_* / FSDP_* variables `accelerate launch --config_file fsdp.yaml --num_processes 2
    --mixed_precision no` gives its processes (float32 on CPU)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    raw = launch_command_parser().parse_args(["--config_file", str(FSDP_YAML), "--num_processes", "2",
                                              "--mixed_precision", "no", "-m", "parauni", "train", str(CONFIG)])
    args, *_ = _validate_launch_command(raw)
    env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def _torchrun(out: Path, port: int, extra_env: dict[str, str], *flags: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", **extra_env)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(port), "-m", "parauni", "train", str(CONFIG), *RUN, f"train.output_dir={out}",
           "--no-progress", *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "trainable.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b) and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


# three torchrun launches (two processes each): minutes on a shared CPU. The default run keeps the two-process path
# (test_train.py::test_two_processes_match_one, test_grpo.py's torchrun tests) and exact resume per recipe
@pytest.mark.slow
def test_fsdp2_checkpoint_resume_matches_ddp(tmp_path, free_port):
    t0 = time.perf_counter()
    fsdp_env = _fsdp_env()
    assert fsdp_env["ACCELERATE_USE_FSDP"] == "true" and fsdp_env["FSDP_VERSION"] == "2"
    _torchrun(tmp_path / "ddp", free_port(), {})
    fsdp = tmp_path / "fsdp"
    _torchrun(fsdp, free_port(), fsdp_env)
    ckpt = fsdp / "checkpoint-0000002"
    # Accelerate's FSDP save_state wrote the sharded model and optimizer (DCP); each rank its RNG state
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir()
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    assert not (tmp_path / "ddp" / "checkpoint-0000002" / "pytorch_model_fsdp_0").exists()
    # the gathered trainable weights of a checkpoint equal DDP's
    gathered = _max_diff(_weights(ckpt), _weights(tmp_path / "ddp" / "checkpoint-0000002"))
    assert gathered <= 1e-4
    # interrupt after step 2: drop what step 3 wrote, resume from checkpoint-0000002
    shutil.rmtree(fsdp / "checkpoint-0000003")
    (fsdp / "trainable.safetensors").unlink()
    _torchrun(fsdp, free_port(), fsdp_env, "--resume")
    state = json.loads((fsdp / "checkpoint-0000003" / "trainer_state.json").read_text())
    assert state["step"] == 3
    ddp, resumed = _weights(tmp_path / "ddp"), _weights(fsdp)
    moved = _max_diff(ddp, _weights(tmp_path / "ddp" / "checkpoint-0000002"))
    assert moved > 1e-3  # step 3 changes the weights far more than the tolerance
    diff = _max_diff(resumed, ddp)
    print(f"\nFSDP2 (resumed at step 2) vs DDP: max abs difference {diff:.3g} (checkpoint 2: {gathered:.3g}; "
          f"step 3 moved the weights by {moved:.3g}); {time.perf_counter() - t0:.1f} s")
    assert diff <= 1e-4


class _AccumulatingEngine:
    """What ``deepspeed.runtime.engine.DeepSpeedEngine`` does with ``gradient_accumulation_steps`` > 1,
    and only that: ``backward`` divides the loss by it (``scale_wrt_gas``) and accumulates; ``step`` at
    the boundary updates. Here ``step`` records the accumulated gradients instead of updating."""

    def __init__(self, module: torch.nn.Module, gas: int):
        self.module, self.gas = module, gas
        self.boundaries: list[bool] = []
        self.stepped: list[dict[str, torch.Tensor]] = []

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self.boundaries.append(is_boundary)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.gas).backward()

    def step(self) -> None:
        self.stepped.append({n: p.grad.clone() for n, p in self.module.named_parameters() if p.requires_grad})


def _grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in trainer.module.named_parameters() if p.requires_grad}


def _trainer(tmp_path, name: str, grad_accum: int) -> Trainer:
    over = [*RUN, f"train.grad_accum={grad_accum}", "train.stage=II", f"train.output_dir={tmp_path / name}"]
    return Trainer(load_config(CONFIG, over), progress=False)


def test_grad_accum_scaling_is_the_same_under_deepspeed_and_plain(tmp_path, monkeypatch):
    """One global batch of 4: grad_accum=1 (plain), grad_accum=2 (plain: Accelerator.backward divides by
    2) and grad_accum=2 through Accelerate's DeepSpeed branch (the engine divides by 2) give one gradient."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from accelerate.utils.deepspeed import DeepSpeedEngineWrapper

    one = _trainer(tmp_path, "one", 1)
    one.accumulate_gradients()
    ref = _grads(one)
    two = _trainer(tmp_path, "two", 2)
    two.accumulate_gradients()
    for k, g in _grads(two).items():
        torch.testing.assert_close(g, ref[k], rtol=1e-5, atol=1e-7, msg=k)

    ds = _trainer(tmp_path, "ds", 2)
    engine = _AccumulatingEngine(ds.module, gas=2)
    monkeypatch.setattr(Accelerator, "distributed_type", property(lambda self: DistributedType.DEEPSPEED))
    monkeypatch.setattr(ds.acc, "deepspeed_engine_wrapped", DeepSpeedEngineWrapper(engine), raising=False)
    loss = ds.accumulate_gradients()
    assert engine.boundaries == [False, True]  # one engine.step, after the last micro-batch
    assert len(engine.stepped) == 1
    for k, g in engine.stepped[0].items():
        torch.testing.assert_close(g, ref[k], rtol=1e-5, atol=1e-7, msg=k)
    assert torch.isfinite(loss)


def test_deepspeed_config_is_filled_from_the_training_config(tmp_path):
    """train_micro_batch_size_per_gpu (which Accelerate otherwise takes from a prepared DataLoader),
    gradient_accumulation_steps and gradient_clipping come from the training config."""
    from types import SimpleNamespace

    from parauni.train.distributed import configure_deepspeed

    plugin = SimpleNamespace(zero_stage=2, deepspeed_config={
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}})
    acc = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin), gradient_accumulation_steps=1)
    configure_deepspeed(acc, micro_batch=8, grad_accum=4, global_batch=256, max_grad_norm=0.5)
    conf = plugin.deepspeed_config
    assert conf["train_micro_batch_size_per_gpu"] == 8 and conf["gradient_accumulation_steps"] == 4
    assert conf["train_batch_size"] == 256 and conf["gradient_clipping"] == 0.5
    assert acc.gradient_accumulation_steps == 4
