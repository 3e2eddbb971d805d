"""Prompt templates and tokenisation for the frozen VLM.

The VLM reads a chat-formatted instruction; the learnable queries are appended
after the (right-padded) prompt.  Only the caption is ever truncated, so the
template, and in particular the image-start token that the queries follow,
is always intact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import UsageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromptTemplate:
    """How a caption becomes the VLM's input text.

    chat: the chat turn with ``{input}`` where the user's text goes.
    generation: the user's text for a caption, with ``{caption}``.
    unconditional: the user's text of the unconditional (CFG) prompt.
    suffix: text after the chat turn that the queries follow (the image-start token).
    image: how an input image sits in the user's text; ``{context}`` is replaced by
        ``image_context_token`` repeated once per image feature.
    image_context_token: the VLM's placeholder token for image features.
    max_length: the most text tokens a prompt may have (image-context tokens not counted).
    """

    chat: str = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
    generation: str = "Generate an image: {caption}"
    unconditional: str = "Generate an image."
    suffix: str = "<img>"
    image: str = "<img>{context}</img>\n"
    image_context_token: str = "<IMG_CONTEXT>"
    max_length: int = 128

    def __post_init__(self) -> None:
        if "{input}" not in self.chat:
            raise ValueError(f"PromptTemplate.chat must contain '{{input}}', got {self.chat!r}")
        if "{caption}" not in self.generation:
            raise ValueError(f"PromptTemplate.generation must contain '{{caption}}', got {self.generation!r}")


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def tokenize_prompts(
    tokenizer,
    template: PromptTemplate,
    captions: list[str | None],
    num_image_tokens: list[int] | None = None,
    instruction: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of a batch of prompts, right-padded.

    ``None`` as a caption means the unconditional prompt.  ``num_image_tokens[i] > 0``
    places an image with that many context tokens before the user's text.  With
    ``instruction`` given, it is the user's text as is (e.g. ``"Keep the image as it is."``).
    Returns ``input_ids, attention_mask``, both ``(B, S)``.
    """
    head, tail = template.chat.split("{input}", 1)
    num_image_tokens = num_image_tokens or [0] * len(captions)
    rows: list[list[int]] = []
    for caption, n_img in zip(captions, num_image_tokens, strict=True):
        if instruction is not None:
            pre, text, post = "", instruction, ""
        elif caption is None:
            pre, text, post = "", template.unconditional, ""
        else:
            pre, post = template.generation.split("{caption}", 1)
            text = caption
        image_text = template.image.format(context=template.image_context_token * n_img) if n_img else ""
        prefix = _encode(tokenizer, head + image_text + pre)
        body = _encode(tokenizer, text)
        suffix = _encode(tokenizer, post + tail + template.suffix)
        budget = template.max_length + n_img - len(prefix) - len(suffix)
        if budget < 0:
            raise UsageError(
                f"the prompt template alone is {len(prefix) + len(suffix) - n_img} tokens, over "
                f"max_length={template.max_length}; raise max_length in the conditioner's config"
            )
        if len(body) > budget:
            logger.warning(
                "prompt truncated from %d to %d tokens (max_length=%d): %r",
                len(body), budget, template.max_length, (text[:60] + "...") if len(text) > 60 else text,
            )
            body = body[:budget]
        rows.append(prefix + body + suffix)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, : len(r)] = 1
    return input_ids, attention_mask
