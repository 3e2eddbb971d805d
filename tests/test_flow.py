"""Rectified-flow maths against hand-computed values."""

import pytest
import torch

from parauni.flow import flow_loss, interpolate, predict_x0, sample_sigmas, sigma_to_timestep, velocity_target


def test_interpolation_and_target_by_hand():
    x_0 = torch.tensor([[[[2.0]]], [[[-1.0]]]])
    noise = torch.tensor([[[[0.0]]], [[[3.0]]]])
    sigma = torch.tensor([0.25, 1.0])
    x_t = interpolate(x_0, noise, sigma)
    assert x_t.flatten().tolist() == [1.5, 3.0]  # 0.75*2 + 0.25*0 ; 0*(-1) + 1*3
    assert velocity_target(x_0, noise).flatten().tolist() == [-2.0, 4.0]
    torch.testing.assert_close(predict_x0(x_t, velocity_target(x_0, noise), sigma), x_0)


def test_loss_is_mse_and_zero_at_the_target():
    x_0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert flow_loss(noise - x_0, x_0, noise) == 0
    v = torch.zeros_like(x_0)
    torch.testing.assert_close(flow_loss(v, x_0, noise), ((noise - x_0) ** 2).mean())


def test_sigmas_uniform_and_seeded():
    a = sample_sigmas(10000, torch.Generator().manual_seed(0))
    b = sample_sigmas(10000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and 0 <= a.min() and a.max() < 1 and abs(a.mean() - 0.5) < 0.01
    assert sigma_to_timestep(torch.tensor([0.5])).item() == 500


def test_sigmas_logit_normal_and_unknown_mode():
    s = sample_sigmas(20000, torch.Generator().manual_seed(0), mode="logit-normal")
    logit = torch.log(s) - torch.log1p(-s)  # a logit-normal's logit is a standard normal
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03
    assert torch.equal(s, sample_sigmas(20000, torch.Generator().manual_seed(0), mode="logit-normal"))
    with pytest.raises(ValueError, match="expected one of uniform, logit-normal"):
        sample_sigmas(2, mode="cosine")
