"""The corrected FLOP count (parauni.utils.flops) against hand counts: a grouped / depthwise convolution
pass by pass, and SANA's transformer (diffusers' SanaTransformer2DModel) layer by layer, tiny on the CPU
and SANA-1.6B on the ``meta`` device.  PyTorch's stock rule counts a grouped convolution's weight gradient
``groups`` times over, so the depthwise cases (and the SANA totals, through GLUMBConv's depthwise 3x3)
fail with the stock counter."""

from __future__ import annotations

import pytest
import torch
from diffusers import SanaTransformer2DModel

from parauni.models.presets import get_preset
from parauni.utils.flops import count_flops, gpu_peak_tflops

C, N, H, K = 6, 2, 5, 3  # channels, batch, height = width, kernel


def _conv_hand(groups: int, transposed: bool = False) -> int:
    """One pass (forward, input grad or weight grad): 2 FLOPs per multiply-add, each of the
    C_out * (C_in / groups) * K * K weights meeting one input value per output position of every sample."""
    positions = H * H  # stride 1, padding 1: output 5x5 (transposed: counted over its 5x5 input)
    return 2 * N * positions * C * (C // groups) * K * K


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv-transpose"])
@pytest.mark.parametrize("groups", [1, C], ids=["dense", "depthwise"])
@pytest.mark.parametrize("grads", ["none", "input", "weight", "both"])
def test_conv_passes_match_the_hand_count(groups, transposed, grads):
    torch.manual_seed(0)
    cls = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    conv = cls(C, C, K, padding=1, groups=groups, bias=False)
    x = torch.randn(N, C, H, H, requires_grad=grads in ("input", "both"))
    conv.weight.requires_grad_(grads in ("weight", "both"))

    def step():
        y = conv(x)
        if grads != "none":
            y.square().sum().backward()

    passes = {"none": 1, "input": 2, "weight": 2, "both": 3}[grads]
    assert count_flops(step) == passes * _conv_hand(groups, transposed)
    if grads in ("weight", "both"):  # the gradient really is there, of the weight's shape
        assert conv.weight.grad.shape == (C, C // groups, K, K)


def sana_hand_flops(cfg: dict, batch: int, text_len: int, latent: int, text_grad: bool) -> int:
    """Forward + backward FLOPs of ``SanaTransformer2DModel`` (diffusers; Xie et al. 2024, "SANA", fig. 5),
    counted by hand from its config: the linear layers and 1x1 convolutions (2 FLOPs per multiply-add), the
    depthwise 3x3 of GLUMBConv, ReLU linear attention and the cross-attention's two matmuls.  Backward: each
    of these costs its forward again for the input gradient (when the input needs one) and again for the
    weight gradient; norms, activations and element-wise products are not counted.  The latent enters
    without a gradient (patch embedding: weight gradient only), so does the sinusoidal timestep, and so
    does the text unless ``text_grad`` (stage II trains the queries behind it)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    x_heads, x_dim = cfg["num_cross_attention_heads"], cfg["cross_attention_head_dim"]
    inner_x = x_heads * x_dim
    hidden = int(cfg["mlp_ratio"] * d)  # GLUMBConv: d -> 2*hidden (1x1), depthwise 3x3, hidden -> d (1x1)
    n = latent * latent  # tokens (patch size 1)
    b, t = batch, text_len

    def mm(rows, k, cols):  # forward FLOPs of a (rows x k) @ (k x cols) product
        return 2 * rows * k * cols

    no_input_grad = mm(b * n, cfg["in_channels"], d) + mm(b, 256, d)  # patch embed; timestep MLP layer 1
    caption = mm(b * t, cfg["caption_channels"], d)  # PixArt caption projection, layer 1 (on the text)
    other = (mm(b * t, d, d)  # caption projection, layer 2
             + mm(b, d, d) + mm(b, d, 6 * d) + mm(b * n, d, cfg["out_channels"]))  # timestep MLP, adaLN, proj_out
    per_block = (
        4 * mm(b * n, d, d)  # self-attention q, k, v, out
        + b * heads * (mm(head_dim + 1, n, head_dim) + mm(head_dim + 1, head_dim, n))  # ReLU linear attention
        + mm(b * n, d, inner_x) + 2 * mm(b * t, cfg["cross_attention_dim"], inner_x)  # cross q; k, v
        + mm(b * n, inner_x, d)  # cross out
        + b * x_heads * (mm(n, x_dim, t) + mm(n, t, x_dim))  # softmax(Q K^T) V
        + mm(b * n, d, 2 * hidden) + 2 * b * n * 2 * hidden * 9 + mm(b * n, hidden, d)  # GLUMBConv
    )
    with_both_grads = other + cfg["num_layers"] * per_block
    return 2 * no_input_grad + 3 * with_both_grads + (3 if text_grad else 2) * caption


TINY_SANA = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
                 num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
                 caption_channels=12, mlp_ratio=2.5, sample_size=8, patch_size=1)


def _sana_step(model, cfg, batch, text_len, latent, device, text_grad):
    x = torch.randn(batch, cfg["in_channels"], latent, latent, device=device)
    text = torch.randn(batch, text_len, cfg["caption_channels"], device=device, requires_grad=text_grad)
    t = torch.rand(batch, device=device) * 1000

    def step():
        model(x, encoder_hidden_states=text, timestep=t, return_dict=False)[0].square().mean().backward()

    return step


@pytest.mark.parametrize("text_grad", [True, False], ids=["stage-II-text-grad", "frozen-text"])
def test_tiny_sana_forward_backward_matches_the_hand_count(text_grad):
    torch.manual_seed(0)
    model = SanaTransformer2DModel(**TINY_SANA)
    counted = count_flops(_sana_step(model, TINY_SANA, 2, 5, 8, "cpu", text_grad))
    # exact: every counted op is a matmul or convolution the hand count lists (tolerance: rounding only)
    assert counted == pytest.approx(sana_hand_flops(TINY_SANA, 2, 5, 8, text_grad), rel=1e-9)
    assert model.transformer_blocks[0].ff.conv_depth.weight.grad is not None


def test_sana_16b_on_meta_matches_the_hand_count():
    """SANA-1.6B at 512 px (16x16 latent), one sample, 300 text tokens, built on ``meta`` (no memory)."""
    cfg = dict(get_preset("internvl3-2b_sana-1.6b_512").transformer)
    with torch.device("meta"):
        model = SanaTransformer2DModel(**cfg)
    counted = count_flops(_sana_step(model, cfg, 1, 300, 16, "meta", True))
    hand = sana_hand_flops(cfg, 1, 300, 16, True)
    assert counted == pytest.approx(hand, rel=1e-9)
    # 2.51 TFLOP a sample (0.77 of them convolution backward); PyTorch's stock rule gives 14.07 (12.33)
    assert counted == pytest.approx(2.51e12, rel=0.01)


@pytest.mark.parametrize("name, gpu, tflops", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0), ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H200", "H200 SXM", 989.0), ("NVIDIA A100-SXM4-80GB", "A100 (SXM or PCIe)", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100 (SXM or PCIe)", 312.0), ("NVIDIA L40S", "L40S", 362.0),
    ("NVIDIA L4", "L4", 121.0), ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", 165.2),
])
def test_gpu_peaks_by_device_name(name, gpu, tflops):
    assert gpu_peak_tflops(name) == (gpu, tflops)


@pytest.mark.parametrize("name", ["NVIDIA A10G", "Tesla V100-SXM2-16GB", "AMD Instinct MI300X", ""])
def test_unknown_gpus_have_no_peak(name):
    assert gpu_peak_tflops(name) is None


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_attention_counts_its_matmuls_without_recomputation(backward):
    """softmax(Q K^T) V: 2 matmuls forward; backward 4 (dP, dV, dQ, dK), on the CPU kernel too."""
    q, k, v = (torch.randn(2, 3, 7, 4, requires_grad=True) for _ in range(3))

    def step():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        if backward:
            out.sum().backward()

    forward = 2 * (2 * 2 * 3 * 7 * 7 * 4)
    assert count_flops(step) == (3 if backward else 1) * forward
