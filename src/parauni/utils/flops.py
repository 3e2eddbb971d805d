"""Model FLOPs of a forward + backward, and the GPU peaks that turn them into MFU.

``count_flops`` runs a function under ``torch.utils.flop_counter.FlopCounterMode`` with corrected rules:

* ``aten.convolution_backward``.  PyTorch's rule (torch 2.x, ``conv_backward_flop``) counts the weight
  gradient as a convolution of the input with the output gradient over *all* input channels, ignoring
  ``groups``: a depthwise convolution (``groups == channels``, SANA's 3x3 ``GLUMBConv.conv_depth``) is
  over-counted ``groups`` times (11,200x for SANA-1.6B, 578 GFLOP instead of 0.05 per layer and sample at
  512 px).  Here every product of a convolution is counted once per pass: the forward multiplies each
  weight with one input value per output position (``N * weight.numel() * positions`` multiply-adds, the
  weight's shape ``(C_out, C_in / groups, *k)`` already holding the grouping); the input gradient
  multiplies the same pairs (weight x output gradient) and so does the weight gradient (input x output
  gradient), so each costs what the forward does.  ``positions`` are the output positions of a
  convolution and the input positions of a transposed one (as in PyTorch's forward rule, padding and
  borders not discounted).
* Attention backward (``scaled_dot_product_attention``).  The fused CUDA kernels' rule adds the
  recomputation of ``Q K^T`` (5 matmuls); model FLOPs leave recomputation out (MFU as defined by Chowdhery
  et al. 2022, "PaLM", appendix B), so the backward is the 4 matmuls of the gradients (dP = dO V^T,
  dV = P^T dO, dQ = dS K, dK = dS^T Q), twice the forward: the same on CUDA, on CPU and on ``meta``
  (where attention runs as plain ``bmm``).  The CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``),
  which PyTorch does not count at all, is counted the same way.

Everything else (``mm``/``addmm``/``bmm``, forward convolutions) uses PyTorch's own rules, which are right.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from math import prod

import torch
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

METHOD = ("torch.utils.flop_counter.FlopCounterMode with parauni.utils.flops rules (convolution backward "
          "honours groups; attention backward = 4 matmuls, no recomputation)")


def conv_pass_flops(x_shape, w_shape, out_shape, transposed: bool) -> int:
    """FLOPs (2 per multiply-add) of one pass of a convolution: the forward, the input gradient or the
    weight gradient each cost this.  ``x_shape``/``out_shape`` are the forward's input and output."""
    positions = prod((x_shape if transposed else out_shape)[2:])
    return 2 * x_shape[0] * prod(w_shape) * positions


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward``: one forward's worth per gradient asked for (input, weight)."""
    one = conv_pass_flops(x_shape, w_shape, grad_out_shape, transposed)
    return one * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def attention_forward_flops(q_shape, k_shape, v_shape) -> int:
    """``softmax(Q K^T) V``: two batched matmuls over the query heads (grouped KV heads are broadcast)."""
    b, h, s_q, d_q = q_shape
    s_k, d_v = k_shape[-2], v_shape[-1]
    return 2 * b * h * s_q * s_k * (d_q + d_v)


def _sdpa_forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return attention_forward_flops(query, key, value)


def _sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * attention_forward_flops(query, key, value)


FLOP_RULES: dict = {
    aten.convolution_backward: conv_backward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward,
    aten._scaled_dot_product_efficient_attention_backward: _sdpa_backward,
    aten._scaled_dot_product_flash_attention_backward: _sdpa_backward,
    aten._scaled_dot_product_cudnn_attention_backward: _sdpa_backward,
}


def flop_counter():
    """A ``FlopCounterMode`` (no display) with the corrected rules; ``.get_total_flops()`` after use."""
    return FlopCounterMode(display=False, custom_mapping=FLOP_RULES)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of running ``fn()`` (a forward + ``backward()``, say), counted with the corrected rules."""
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


# Dense BF16 tensor-core peaks (TFLOP/s) from NVIDIA's datasheets (GeForce cards: the Ampere / Ada
# architecture whitepapers, BF16 with FP32 accumulation).  The datasheets' headline BF16 figures are with
# 2:4 structured sparsity; these are half of them, the dense rate a training step can reach.
# (pattern on torch.cuda.get_device_name(), GPU, TFLOP/s); the first match wins, so variants come first.
GPU_PEAKS: list[tuple[str, str, float]] = [
    (r"GH200", "GH200", 989.0),
    (r"H200 NVL", "H200 NVL", 835.0),
    (r"H200", "H200 SXM", 989.0),
    (r"H100 NVL", "H100 NVL", 835.0),
    (r"H100 PCIe", "H100 PCIe", 756.0),
    (r"H100 (80GB HBM3|SXM)", "H100 SXM", 989.0),
    (r"B200", "B200", 2250.0),
    (r"A100", "A100 (SXM or PCIe)", 312.0),
    (r"L40S", "L40S", 362.0),
    (r"\bL40\b", "L40", 181.0),
    (r"\bL4\b", "L4", 121.0),
    (r"\bA10\b", "A10", 125.0),
    (r"RTX 4090", "GeForce RTX 4090", 165.2),
    (r"RTX 3090", "GeForce RTX 3090", 71.0),
]


def gpu_peak_tflops(device_name: str) -> tuple[str, float] | None:
    """(GPU, dense BF16 TFLOP/s) for a ``torch.cuda.get_device_name()`` string, or None when unknown."""
    for pattern, gpu, tflops in GPU_PEAKS:
        if re.search(pattern, device_name):
            return gpu, tflops
    return None
