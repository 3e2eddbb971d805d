"""The Flow-GRPO SDE step against hand-computed values, the Euler limit, replay and sampling statistics."""

import math

import pytest
import torch

from parauni.rl.sde import sde_step, sigma_grid


def _by_hand(x, v, s, s_next, a, eps, denominator_sigma=None):
    ds = s if denominator_sigma is None else denominator_sigma
    std = a * math.sqrt(s / (1 - ds))
    dt = s_next - s
    mean = x * (1 + std**2 * dt / (2 * s)) + v * (1 + std**2 * (1 - s) / (2 * s)) * dt
    scale = std * math.sqrt(-dt)
    x_next = mean + scale * eps
    logp = -((x_next - mean) ** 2) / (2 * scale**2) - math.log(scale) - 0.5 * math.log(2 * math.pi)
    return x_next, mean, scale, logp


@pytest.mark.parametrize("s, s_next, ratio", [(0.6, 0.4, None), (1.0, 0.9, 0.9), (0.3, 0.0, None)])
def test_one_element_matches_hand_computation(s, s_next, ratio):
    x, v, eps = 0.5, -0.3, 0.25
    f64 = dict(dtype=torch.float64)
    out = sde_step(torch.tensor([[x]], **f64), torch.tensor([[v]], **f64), s, s_next, 0.7,
                   noise=torch.tensor([[eps]], **f64))
    x_next, mean, scale, logp = _by_hand(x, v, s, s_next, 0.7, eps, ratio)
    assert out.prev_sample.item() == pytest.approx(x_next, rel=1e-12)
    assert out.mean.item() == pytest.approx(mean, rel=1e-12)
    assert out.std_dev_t_dt.item() == pytest.approx(scale, rel=1e-12)
    assert out.log_prob.shape == (1,) and out.log_prob.item() == pytest.approx(logp, rel=1e-12)


def test_per_sample_sigmas_and_log_prob_is_element_mean():
    g = torch.Generator().manual_seed(0)
    x, v, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4)
    sig, sig_next = torch.tensor([1.0, 0.5]), torch.tensor([0.8, 0.25])
    out = sde_step(x, v, sig, sig_next, noise=eps)
    for b in range(2):
        one = sde_step(x[b:b + 1], v[b:b + 1], float(sig[b]), float(sig_next[b]), noise=eps[b:b + 1])
        torch.testing.assert_close(out.prev_sample[b:b + 1], one.prev_sample)
        torch.testing.assert_close(out.log_prob[b:b + 1], one.log_prob)
        dist = torch.distributions.Normal(one.mean, one.std_dev_t_dt.expand_as(one.mean))
        torch.testing.assert_close(one.log_prob, dist.log_prob(one.prev_sample).mean().reshape(1))


def test_noise_level_zero_is_the_euler_step():
    x, v = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    out = sde_step(x, v, 0.7, 0.55, noise_level=0.0, noise=torch.randn_like(x))
    assert torch.equal(out.prev_sample, x + v * (0.55 - 0.7))
    x32, v32 = x.float(), v.float()
    out32 = sde_step(x32, v32, torch.tensor([0.7] * 3), torch.tensor([0.55] * 3), noise_level=0.0)
    assert torch.equal(out32.prev_sample, x32 + v32 * (torch.tensor(0.55) - torch.tensor(0.7)))
    assert torch.isnan(out.log_prob).all() and out.log_prob.shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_replay_reproduces_log_prob_and_differentiates_in_v(dtype):
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 8, 8, generator=g).to(dtype), torch.randn(2, 4, 8, 8, generator=g).to(dtype)
    first = sde_step(x, v, 0.8, 0.7, generator=torch.Generator().manual_seed(5))
    assert first.prev_sample.dtype == dtype
    v_new = v.clone().requires_grad_(True)
    replay = sde_step(x, v_new, 0.8, 0.7, prev_sample=first.prev_sample)
    assert torch.equal(replay.prev_sample, first.prev_sample)
    assert torch.equal(replay.log_prob.detach(), first.log_prob)
    replay.log_prob.sum().backward()
    assert v_new.grad is not None and v_new.grad.abs().sum() > 0
    other = sde_step(x, v + 0.5, 0.8, 0.7, prev_sample=first.prev_sample)
    assert (other.log_prob < first.log_prob).all()  # the sample is less likely under a shifted mean


def test_samples_have_the_stated_mean_and_scale():
    x, v = torch.full((1, 200_000), 0.3), torch.full((1, 200_000), -1.2)
    out = sde_step(x, v, 0.5, 0.4, generator=torch.Generator().manual_seed(0))
    m, s = out.mean[0, 0].item(), out.std_dev_t_dt.item()
    assert out.prev_sample.mean().item() == pytest.approx(m, abs=4 * s / math.sqrt(200_000))
    assert out.prev_sample.std().item() == pytest.approx(s, rel=0.01)


def test_rejects_non_decreasing_sigma():
    with pytest.raises(ValueError, match="below"):
        sde_step(torch.zeros(1, 2), torch.zeros(1, 2), 0.4, 0.5)


def test_sigma_grid_uniform():
    assert sigma_grid(4, kind="uniform").tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    grid = sigma_grid(4, shift=3.0, kind="uniform")
    expected = [3 * s / (1 + 2 * s) for s in (1.0, 0.75, 0.5, 0.25, 0.0)]
    assert grid.tolist() == pytest.approx(expected, abs=1e-7)
    assert grid[2].item() == pytest.approx(0.75)
    assert (grid[1:] < grid[:-1]).all()
    with pytest.raises(ValueError):
        sigma_grid(0)
    with pytest.raises(ValueError, match="unknown sigma grid"):
        sigma_grid(4, kind="cosine")


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sigma_grid_is_flow_grpos(shift):
    """The default grid is FlowMatchEulerDiscreteScheduler's: by hand, its training sigmas 1..1/1000 are warped
    by the shift, then ``set_timesteps(N)`` spaces N values from 1 to the smallest of them and warps those
    again (the shift is applied twice to the low end), then appends 0."""
    warp = lambda s: shift * s / (1 + (shift - 1) * s)  # noqa: E731
    low = warp(1 / 1000)
    expected = [warp(1 + (low - 1) * i / 9) for i in range(10)] + [0.0]
    grid = sigma_grid(10, shift=shift)
    assert grid.tolist() == pytest.approx(expected, abs=1e-6)
    if shift == 3.0:  # the numbers Flow-GRPO's 10-step SD3 runs use
        assert grid[-2].item() == pytest.approx(0.0089, abs=1e-4)
        step = sde_step(torch.zeros(1, 4), torch.zeros(1, 4), grid[-2].item(), 0.0, 0.7)
        assert step.std_dev_t_dt.item() == pytest.approx(0.0063, abs=2e-4)  # noise the last step adds
