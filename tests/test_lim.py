"""The Layer Integration Module: reference form, variants, costs, and the conditioner."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from parauni.models import LayerIntegrationModule, ParaUniConditioner

L, B, N, D, C = 4, 2, 5, 32, 24


def _lim(fusion="mean", layers=L):
    torch.manual_seed(0)
    return LayerIntegrationModule(layers, D, C, fusion=fusion, connector_depth=2, connector_heads=4, connector_ffn=64)


def _one_layer(lim, h):  # connector -> projector -> norm of one layer's (B, N, D)
    return lim.norm(lim.projector(lim.connector(h)))


def test_reference_equals_loop_over_layers():
    lim = _lim()
    x = torch.randn(L, B, N, D)
    expected = torch.stack([_one_layer(lim, x[i]) for i in range(L)]).mean(0)
    torch.testing.assert_close(lim(x), expected, rtol=1e-5, atol=1e-5)


def test_softmax_starts_as_mean_and_learns_weights():
    x = torch.randn(L, B, N, D)
    ref, soft = _lim("mean"), _lim("softmax")
    torch.testing.assert_close(soft(x), ref(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        soft.layer_logits[1] = 10.0
    torch.testing.assert_close(soft(x), _one_layer(soft, x[1]), rtol=1e-3, atol=1e-3)


def test_prefuse_fuses_before_the_connector():
    lim = _lim("prefuse")
    x = torch.randn(L, B, N, D)
    torch.testing.assert_close(lim(x), _one_layer(lim, x.mean(0)), rtol=1e-5, atol=1e-5)
    assert lim.layer_weights().shape == (L, D)


def test_last_layer_baseline_is_the_same_module():
    torch.manual_seed(0)
    cond = ParaUniConditioner(llm_hidden_size=D, llm_num_layers=L, num_queries=N, layers=[-1], connector_depth=2,
                              connector_heads=4, connector_ffn=64, caption_channels=C)
    assert cond.layer_indices == [L - 1]
    x = torch.randn(1, B, N, D)
    torch.testing.assert_close(cond(x), _one_layer(cond.lim, x[0]))


def _flops(lim, layers):
    with FlopCounterMode(display=False) as counter:
        lim(torch.randn(layers, B, N, D))
    return counter.get_total_flops()


def test_costs_of_the_variants():
    last = _flops(_lim("mean", 1), 1)
    assert _flops(_lim("prefuse"), L) <= 1.2 * last
    assert _flops(_lim("mean"), L) >= 0.95 * L * last


def test_layer_noise_is_added_before_the_lim():
    torch.manual_seed(0)
    cond = ParaUniConditioner(llm_hidden_size=D, llm_num_layers=L, num_queries=N, connector_depth=1,
                              connector_heads=4, connector_ffn=64, caption_channels=C)
    x, noise = torch.randn(L, B, N, D), torch.randn(L, B, N, D)
    torch.testing.assert_close(cond(x, layer_noise=noise), cond(x + noise))


def test_bad_configs_are_errors():
    with pytest.raises(ValueError, match="unknown LIM fusion"):
        _lim("attention")
    with pytest.raises(ValueError, match="out of range"):
        ParaUniConditioner(llm_hidden_size=D, llm_num_layers=L, layers=[9])
    with pytest.raises(ValueError, match="not divisible"):
        LayerIntegrationModule(1, 30, C, connector_depth=1, connector_heads=4, connector_ffn=8)
    with pytest.raises(ValueError, match="built for 4 layers"):
        _lim()(torch.randn(3, B, N, D))
