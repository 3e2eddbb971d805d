"""Build a small byte-level BPE tokenizer locally (no download), saved like a real one."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# The chat and image tokens of InternVL's (Qwen2's) tokenizer, in the same roles.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>")

_DEFAULT_CORPUS = (
    "Generate an image: a photo of a red circle. Generate an image. Keep the image as it is. "
    "a photo of two blue squares and a green triangle left of a yellow cat above a dog right of a car below "
    "three four purple orange white black brown pink the of and with on in is are how many what color shape"
)


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus`` with InternVL's special tokens.

    Any text can be encoded (byte fallback); the special tokens are single tokens.
    Deterministic for a given corpus and vocabulary size.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) if corpus is not None else [_DEFAULT_CORPUS], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                              "context_image_token": "<IMG_CONTEXT>"},
        model_max_length=4096,
    )
