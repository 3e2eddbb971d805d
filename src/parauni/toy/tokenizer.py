"""The toy world's tokenizer: the project's byte-level BPE trained on the toy vocabulary.

Built deterministically from a fixed corpus of toy captions, questions and answers, plus the
prompt templates, so that every toy word is one token; any other text still encodes (bytes).
"""

from __future__ import annotations

import numpy as np

from ..models.tokenizer import build_tokenizer
from .data import make_example, qa_pairs, sample_rng
from .prompts import TASKS, random_meta

TOY_VOCAB_SIZE = 512
_TEMPLATES = ("Generate an image: ", "Generate an image.", "Keep the image as it is.",
              "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n")


def toy_corpus(n: int = 1500, seed: int = 12345) -> list[str]:
    """Captions, GenEval-style prompts, questions and answers of the toy world, and the templates."""
    lines = list(_TEMPLATES)
    for i in range(n):
        ex = make_example(sample_rng(7, seed, i))
        lines.append(ex.caption)
        lines.extend(f"{q} {a}" for q, a in qa_pairs(ex.scene))
    rng = np.random.default_rng(seed)
    lines.extend(random_meta(rng, TASKS[i % len(TASKS)])["prompt"] for i in range(600))
    return lines


def build_toy_tokenizer():
    """The toy tokenizer (a ``PreTrainedTokenizerFast``); identical on every call."""
    return build_tokenizer(toy_corpus(), vocab_size=TOY_VOCAB_SIZE)
