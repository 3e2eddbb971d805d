"""The frozen VLM seen as a stack of decoder layers.

``VLMBackbone`` appends learnable queries after the right-padded prompt and reads the
hidden states at the query positions of every selected decoder layer from **one**
forward pass of the language-model body (no LM head).  Forward hooks on the decoder
layers copy out only the last N positions, so nothing but the query states is kept
beyond what autograd itself needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError


class _StopForward(Exception):
    """Raised by the hook of the deepest selected layer to skip the layers after it."""


def query_position_ids(attention_mask: torch.Tensor, num_queries: int) -> torch.Tensor:
    """Position ids of a right-padded prompt followed by ``num_queries`` queries.

    ``attention_mask`` is ``(B, S)``; the queries' mask is all ones, and the position ids
    are ``cumsum(mask) - 1`` clamped at 0, so that each sample's queries continue right
    after its last real token.  Returns ``(B, S + N)``.
    """
    ones = attention_mask.new_ones(attention_mask.shape[0], num_queries)
    full = torch.cat([attention_mask, ones], dim=1)
    return (full.cumsum(dim=1) - 1).clamp(min=0)


def resolve_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Turn a layer selection (``None`` = all, negatives count from the end) into indices."""
    if layers is None:
        return list(range(num_layers))
    out = []
    for i in layers:
        if not -num_layers <= int(i) < num_layers:
            raise ConfigError(
                f"layer index {i} is out of range for a VLM with {num_layers} decoder layers "
                f"(valid: {-num_layers}..{num_layers - 1}, or null for all layers)"
            )
        out.append(int(i) % num_layers)
    if len(set(out)) != len(out):
        raise ConfigError(f"layer selection {list(layers)} names a layer twice")
    return out


class VLMBackbone:
    """A view of a ``transformers`` VLM or causal LM that extracts all-layer query states.

    Supported: ``InternVLForConditionalGeneration`` (text and image prompts),
    ``Qwen2_5_VLForConditionalGeneration`` and plain causal LMs (text prompts).
    The wrapped model is not copied and holds no new parameters.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        inner = getattr(model, "model", model)
        if hasattr(inner, "language_model"):  # VLMs: vision tower + language model
            self.vlm, self.body = inner, inner.language_model
        elif hasattr(inner, "layers") and hasattr(inner, "norm"):  # causal LMs
            self.vlm, self.body = None, inner
        else:
            raise TypeError(
                f"{type(model).__name__} is not a supported backbone: expected a transformers VLM "
                "(InternVLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration) or a causal LM"
            )
        self.config = model.config
        self.text_config = getattr(self.config, "text_config", self.config)

    @property
    def num_layers(self) -> int:
        return len(self.body.layers)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def supports_images(self) -> bool:
        return self.vlm is not None and type(self.model).__name__.startswith("InternVL")

    @property
    def num_image_tokens(self) -> int:
        """Image-context tokens per image (InternVL: ``image_seq_length``)."""
        return int(getattr(self.config, "image_seq_length", 0))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings ``(B, S, D)``, with image features scattered at the image-context tokens."""
        embeds = self.body.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        if not self.supports_images:
            raise NotImplementedError(
                f"image input is implemented for InternVL backbones, not {type(self.model).__name__}"
            )
        dtype = next(self.vlm.vision_tower.parameters()).dtype
        feats = self.vlm.get_image_features(pixel_values=pixel_values.to(dtype), return_dict=True).pooler_output
        mask = input_ids == self.config.image_token_id  # (B, S)
        if int(mask.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"{int(mask.sum())} image-context tokens in the prompts but {feats.shape[0]} image(s) × "
                f"{feats.shape[1]} features; pass one image per prompt that has an image placeholder"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        queries: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        layers: Sequence[int] | None = None,
        final_norm: bool = True,
    ) -> torch.Tensor:
        """Hidden states at the query positions, ``(L, B, N, D)``, from one body forward.

        queries: ``(N, D)`` learnable vectors, appended after every (padded) prompt.
        layers: decoder layers to read (``None`` = all); the output follows this order.
        final_norm: apply the LLM's final norm to every layer's states.  When off, the
            states equal ``output_hidden_states=True``'s ``hidden_states[1:]`` (where only
            the last entry carries the norm).
        """
        index = resolve_layers(layers, self.num_layers)
        batch, n = input_ids.shape[0], queries.shape[0]
        embeds = self.embed(input_ids, pixel_values)
        q = queries.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        embeds = torch.cat([embeds, q], dim=1)  # (B, S + N, D)
        mask = torch.cat([attention_mask, attention_mask.new_ones(batch, n)], dim=1)
        position_ids = query_position_ids(attention_mask, n)

        wanted, deepest, captured = set(index), max(index), {}

        def make_hook(i: int):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                captured[i] = h[:, -n:].clone()  # (B, N, D); the rest of the sequence is not kept
                if i == deepest and deepest < self.num_layers - 1:
                    raise _StopForward

            return hook

        handles = [self.body.layers[i].register_forward_hook(make_hook(i)) for i in wanted]
        try:
            self.body(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        last = self.num_layers - 1
        states = [
            self.body.norm(captured[i]) if (final_norm or i == last) else captured[i] for i in index
        ]
        return torch.stack(states, dim=0)
