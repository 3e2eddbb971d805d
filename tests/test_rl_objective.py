"""Flow-GRPO's objective pieces against hand computations (yifan123/flow_grpo, scripts/train_sd3.py,
flow_grpo/ema.py, flow_grpo/stat_tracking.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from parauni.rl.objective import (
    clipped_policy_loss,
    ema_decay,
    ema_due,
    group_advantages,
    kl_to_reference,
    ratio_stats,
    split_evenly,
)
from parauni.rl.sde import sde_step


def test_kl_reference_form_divides_by_std_without_dt():
    # sigma 0.5 -> 0.4, a = 0.7: std_dev_t = 0.7 * sqrt(0.5 / 0.5) = 0.7, dt = -0.1
    x, v = torch.zeros(2, 3), torch.zeros(2, 3)
    step = sde_step(x, v, 0.5, 0.4, 0.7, noise=torch.zeros(2, 3))
    assert step.std_dev_t.item() == pytest.approx(0.7)
    assert step.std_dev_t_dt.item() == pytest.approx(0.7 * math.sqrt(0.1))
    ref_mean = step.mean + 0.1  # every element 0.1 apart
    kl_ref = kl_to_reference(step.mean, ref_mean, step.std_dev_t, step.std_dev_t_dt, "reference")
    kl_tr = kl_to_reference(step.mean, ref_mean, step.std_dev_t, step.std_dev_t_dt, "transition")
    assert kl_ref.tolist() == pytest.approx([0.01 / (2 * 0.49)] * 2, rel=1e-5)
    assert kl_tr.tolist() == pytest.approx([0.01 / (2 * 0.49 * 0.1)] * 2, rel=1e-5)  # 1 / -dt = 10x stronger
    with pytest.raises(ValueError, match="unknown KL form"):
        kl_to_reference(step.mean, ref_mean, step.std_dev_t, step.std_dev_t_dt, "exact")


def test_ema_schedule_by_hand():
    assert ema_decay(0) == pytest.approx(1 / 10)
    assert ema_decay(7) == pytest.approx(8 / 17)
    assert ema_decay(79) == pytest.approx(80 / 89)
    assert ema_decay(80) == pytest.approx(0.9)  # 81 / 90: the cap is reached at k = 80
    assert ema_decay(3, warmup=False) == 0.9
    assert [k for k in range(20) if ema_due(k, 8)] == [7, 15]


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0, float("nan"), 0.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    adv, stats = group_advantages(r, g)
    finite = np.array([1, 2, 3, 5, 5, 5, 0], dtype=np.float64)
    std = np.std(finite) + 1e-4
    expect = [(1 - 2) / std, 0.0, (3 - 2) / std, 0, 0, 0, 0, 0]  # group 1 all equal; group 2 has one finite
    np.testing.assert_allclose(adv.numpy(), expect, rtol=1e-5)
    assert stats["zero_std_share"] == pytest.approx(2 / 3)  # groups 1 and 2 (a single finite reward)
    per, _ = group_advantages(r, g, per_group_std=True, clip=0.5)
    np.testing.assert_allclose(per.numpy(), [-0.5, 0, 0.5, 0, 0, 0, 0, 0], rtol=1e-5)


def test_policy_loss_and_ratio_stats():
    adv = torch.tensor([1.0, 1.0, -1.0])
    ratio = torch.tensor([1.5, 0.5, 1.5])
    # A > 0: max(-1.5, -1.1) = -1.1 (clipped); max(-0.5, -0.9) = -0.5; A < 0: max(1.5, 1.1) = 1.5
    assert clipped_policy_loss(adv, ratio, 0.1).tolist() == pytest.approx([-1.1, -0.5, 1.5])
    lp, old = torch.tensor([0.0, 0.01]), torch.tensor([0.0, 0.0])
    st = ratio_stats(lp, old, 1e-3)
    assert st["clipped"].tolist() == [0.0, 1.0]
    assert st["approx_kl"].tolist() == pytest.approx([0.0, 0.5 * 0.01**2])


def test_split_evenly():
    assert split_evenly(5, 2) == [3, 2]
    assert split_evenly(2, 8) == [1, 1]
    assert sum(split_evenly(17, 4)) == 17
