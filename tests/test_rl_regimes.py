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


def test_process_group_timeout_comes_from_the_config(tmp_path, fresh_accelerator):
    """Every rank waits in a collective while the main process evaluates: the wait is bounded by
    ``train.dist_timeout_minutes`` (given to the process group), not by NCCL's 10-minute default."""
    from datetime import timedelta

    tr = trainer(tmp_path, "train.dist_timeout_minutes=7.5")
    assert tr.acc.init_handler is not None and tr.acc.init_handler.timeout == timedelta(minutes=7.5)
    default = trainer(tmp_path, name="default")
    assert default.acc.init_handler.timeout == timedelta(minutes=default.cfg.train.dist_timeout_minutes)


def test_launcher_gradient_accumulation_changes_nothing(tmp_path, fresh_accelerator, monkeypatch):
    """Stage III accumulates over micro-batches itself: a launcher's gradient accumulation (``accelerate launch
    --gradient_accumulation_steps 2`` sets this variable) must not divide its losses."""
    extra = ("optim.train_batch=4", "optim.steps_per_epoch=1", "ldam.enabled=false")
    plain = trainer(tmp_path, *extra, name="plain")
    roll = plain.rollout(0)
    adv, valid, _ = plain.advantages(roll)
    expect = plain.update(roll, adv, valid, 0)
    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    launched = trainer(tmp_path, *extra, name="launched")
    assert launched.acc.gradient_accumulation_steps == 1
    roll = launched.rollout(0)
    adv, valid, _ = launched.advantages(roll)
    got = launched.update(roll, adv, valid, 0)
    assert got["grad_norm"] == pytest.approx(expect["grad_norm"], rel=1e-6)
    for n, p in launched.params.items():
        torch.testing.assert_close(p, plain.params[n], rtol=0, atol=0, msg=n)
