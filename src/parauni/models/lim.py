"""The Layer Integration Module (LIM): L stacks of N query states -> one condition sequence.

Variants, chosen by name (``fusion``):

- ``"mean"`` (the reference form): one shared connector on every layer's tokens (layers
  folded into the batch, no attention across layers) -> projector to ``out_channels`` ->
  one shared affine LayerNorm -> mean over the L layers.  Costs L connector passes.
- ``"softmax"``: as ``"mean"`` but a learnable softmax weighting over layers.
- ``"prefuse"``: fuse first, with learnable per-layer, per-channel softmax weights
  (initialised to the plain mean), then one connector pass -> projector -> norm.
  Costs one connector pass whatever L is.

The last-layer baseline (OpenUni / MetaQuery style) is ``"mean"`` with one layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .connector import Connector

FUSIONS = ("mean", "softmax", "prefuse")


class LayerIntegrationModule(nn.Module):
    def __init__(
        self,
        num_layers: int,
        in_channels: int,
        out_channels: int,
        fusion: str = "mean",
        connector_depth: int = 6,
        connector_heads: int = 24,
        connector_ffn: int = 8960,
        eps: float = 1e-6,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"unknown LIM fusion {fusion!r}; choose one of {FUSIONS}")
        self.fusion, self.num_layers = fusion, num_layers
        self.connector = Connector(in_channels, connector_depth, connector_heads, connector_ffn, eps)
        self.projector = nn.Linear(in_channels, out_channels)
        self.norm = nn.LayerNorm(out_channels, eps=eps)
        if fusion == "softmax":
            self.layer_logits = nn.Parameter(torch.zeros(num_layers))
        elif fusion == "prefuse":
            self.layer_logits = nn.Parameter(torch.zeros(num_layers, in_channels))

    def layer_weights(self) -> torch.Tensor:
        """The weights over layers: ``(L,)`` (``(L, D)`` for prefuse); uniform for mean."""
        if self.fusion == "mean":
            return torch.full((self.num_layers,), 1.0 / self.num_layers)
        return self.layer_logits.softmax(dim=0)

    def forward(self, states: torch.Tensor, keep: list[int] | None = None) -> torch.Tensor:
        """``states`` ``(L, B, N, D)`` -> condition ``(B, N, C)``.

        ``keep``: fuse only these of the L layers (positions in ``states``), as if the LIM had read just them:
        the mean over the kept layers, or the softmax over their weights renormalised (the layer analysis drops
        a group this way). ``None``: every layer.
        """
        num_layers = states.shape[0]
        if num_layers != self.num_layers:
            raise ValueError(f"LIM built for {self.num_layers} layers got {num_layers}")
        logits = getattr(self, "layer_logits", None)
        if keep is not None:
            if not keep:
                raise ValueError("the LIM needs at least one layer to fuse")
            states = states[list(keep)]
            logits = logits[list(keep)] if logits is not None else None
        k, b, n, d = states.shape
        if self.fusion == "prefuse":
            w = logits.softmax(dim=0).to(states.dtype)  # (K, D)
            fused = torch.einsum("lbnd,ld->bnd", states, w)
            return self.norm(self.projector(self.connector(fused)))
        y = self.connector(states.reshape(k * b, n, d))
        y = self.norm(self.projector(y)).view(k, b, n, -1)  # (K, B, N, C)
        if self.fusion == "mean":
            return y.mean(dim=0)
        w = logits.softmax(dim=0).to(y.dtype)
        return torch.einsum("lbnc,l->bnc", y, w)
