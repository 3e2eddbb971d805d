"""The trainable part of ParaUni: the learnable queries and the LIM, saved on their own."""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..errors import WeightsMismatchError
from .backbone import resolve_layers
from .lim import LayerIntegrationModule
from .prompt import PromptTemplate


class ParaUniConditioner(ModelMixin, ConfigMixin):
    """Queries ``(N, D)`` + LIM, with the settings that say how the VLM is read.

    Args:
        llm_hidden_size: width D of the VLM's language model.
        llm_num_layers: number of decoder layers of the VLM's language model.
        num_queries: N learnable query tokens (init normal, std 1/sqrt(D)).
        layers: decoder layers to read (``None`` = all; ``[-1]`` = the last-layer baseline).
        final_norm: apply the LLM's final norm to every layer's states.
        fusion: LIM variant, ``"mean"`` (reference), ``"softmax"`` or ``"prefuse"``.
        connector_depth / connector_heads / connector_ffn: the connector's encoder layers.
        caption_channels: output width; must equal the diffusion model's ``caption_channels``.
        prompt: overrides of :class:`PromptTemplate` fields (the chat template, the
            generation and unconditional prompts, ``max_length``).
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        llm_hidden_size: int,
        llm_num_layers: int,
        num_queries: int = 256,
        layers: list[int] | None = None,
        final_norm: bool = True,
        fusion: str = "mean",
        connector_depth: int = 6,
        connector_heads: int = 24,
        connector_ffn: int = 8960,
        caption_channels: int = 2304,
        norm_eps: float = 1e-6,
        prompt: dict | None = None,
    ):
        super().__init__()
        self.layer_indices = resolve_layers(layers, llm_num_layers)
        self.template = PromptTemplate(**(prompt or {}))
        self.queries = nn.Parameter(torch.randn(num_queries, llm_hidden_size) / math.sqrt(llm_hidden_size))
        self.lim = LayerIntegrationModule(
            num_layers=len(self.layer_indices),
            in_channels=llm_hidden_size,
            out_channels=caption_channels,
            fusion=fusion,
            connector_depth=connector_depth,
            connector_heads=connector_heads,
            connector_ffn=connector_ffn,
            eps=norm_eps,
        )

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """diffusers' loader, strict: a saved conditioner missing weights (e.g. the LIM's norm), holding
        unknown ones or of other shapes is an error naming them, not a warning and random weights."""
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        problems = {k: info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)}
        if problems:
            detail = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, sorted(v, key=str)[:8]))}"
                               for k, v in problems.items())
            where = args[0] if args else kwargs.get("pretrained_model_name_or_path")
            raise WeightsMismatchError(f"{where} does not fit ParaUniConditioner ({detail})")
        return (model, info) if want_info else model

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.lim.connector.gradient_checkpointing = enable

    def enable_gradient_checkpointing(self, gradient_checkpointing_func=None) -> None:  # noqa: D102
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:  # noqa: D102
        self._set_gradient_checkpointing(False)

    def forward(self, layer_states: torch.Tensor, layer_noise: torch.Tensor | None = None,
                keep: list[int] | None = None) -> torch.Tensor:
        """``(L, B, N, D)`` query states (+ optional additive noise of the same shape) -> ``(B, N, C)``.
        ``keep``: fuse only these layer positions (:meth:`LayerIntegrationModule.forward`)."""
        if layer_noise is not None:
            layer_states = layer_states + layer_noise.to(layer_states.dtype)
        return self.lim(layer_states.to(self.dtype), keep=keep)
