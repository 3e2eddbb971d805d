"""Stage III outside fp32 / one process / one accumulation step: precision of rollouts and updates, the process
group's timeout, the optimizer steps per rank, gradient accumulation under a launcher, per-sample normalisation and
zero-weight rewards."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState

from test_grpo import trainer


@pytest.fixture
def fresh_accelerator():
    """Accelerate keeps one process-wide state: a test that asks for another precision (or launcher setting)
    starts from a clean one and leaves a clean one behind."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("merge", ["true", "false"])
def test_bf16_first_on_policy_update_has_ratio_one(tmp_path, fresh_accelerator, merge):
    """One optimizer step an epoch: every micro-batch of the first update is on-policy, so the new
    log-probabilities equal the stored ones when rollout and update run at the same precision. A trained
    (non-zero) LoRA makes a merged copy differ from the adapter under bf16."""
    tr = trainer(tmp_path, "train.mixed_precision=bf16", "optim.train_batch=8", "optim.steps_per_epoch=1",
                 f"sampling.merge_lora={merge}", "ldam.enabled=false", "optim.clip_range=1e-4")
    assert tr.acc.mixed_precision == "bf16"
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in tr.params.items():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    roll = tr.rollout(0)
    adv, valid, _ = tr.advantages(roll)
    stats = tr.update(roll, adv, valid, 0)
    assert stats["clip_frac"] == 0.0 and stats["ratio_dev"] < 1e-6, stats
