"""The toy VLM: a tiny ``InternVLForConditionalGeneration`` that understands the toy world.

The architecture class, the chat template and the image preprocessing are those of InternVL3; only the
sizes are tiny. A 32x32 image is cut into 8x8 patches of 4 px, and InternVL's pixel shuffle (ratio 0.5)
turns them into 16 image-context tokens. Pre-training (``parauni toy pretrain-vlm``) teaches it to answer
questions about toy scenes and to caption them; afterwards it is frozen and used exactly like InternVL3.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import InternVLConfig, InternVLForConditionalGeneration

from parauni.models.prompt import PromptTemplate
from parauni.toy.data import Example, qa_by_kind
from parauni.utils.images import vlm_pixel_values

IMAGE_SIZE = 32
PATCH_SIZE = 4
IMAGE_SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE // 2) ** 2  # 16 tokens after the 0.5 pixel shuffle
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "vlm"
IGNORE_INDEX = -100
TEMPLATE = PromptTemplate()
DESCRIBE = "describe the image."

VISION = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256,
              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, attention_bias=True, use_qk_norm=False,
              norm_type="layer_norm", layer_scale_init_value=0.1, use_mean_pooling=True, hidden_act="gelu")
TEXT = dict(model_type="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
            hidden_act="silu", tie_word_embeddings=False)


def toy_vlm_config(tokenizer, vision: dict | None = None, text: dict | None = None) -> InternVLConfig:
    """The toy VLM's ``InternVLConfig`` for ``tokenizer``; ``vision`` / ``text`` override the default sizes."""
    vision_cfg = {**VISION, **(vision or {})}
    text_cfg = {**TEXT, **(text or {}), "vocab_size": len(tokenizer)}
    n_tokens = (vision_cfg["image_size"] // vision_cfg["patch_size"] // 2) ** 2
    return InternVLConfig(
        vision_config=vision_cfg, text_config=text_cfg,
        image_token_id=tokenizer.convert_tokens_to_ids(TEMPLATE.image_context_token),
        image_seq_length=n_tokens, downsample_ratio=0.5, tie_word_embeddings=False,
    )


def build_toy_vlm(tokenizer, seed: int = 0, vision: dict | None = None,
                  text: dict | None = None) -> InternVLForConditionalGeneration:
    """A freshly initialised toy VLM (float32, train mode) with the default or overridden sizes."""
    torch.manual_seed(seed)
    return InternVLForConditionalGeneration(toy_vlm_config(tokenizer, vision, text)).train()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def user_turn(question: str, with_image: bool = True, num_image_tokens: int = IMAGE_SEQ_LENGTH) -> str:
    """The chat text up to the opened assistant turn, with the image block before the question."""
    image = TEMPLATE.image.format(context=TEMPLATE.image_context_token * num_image_tokens) if with_image else ""
    return TEMPLATE.chat.format(input=image + question)


def encode_dialogues(tokenizer, images_uint8: Sequence[np.ndarray | None] | None,
                     dialogues: Sequence[Sequence[tuple[str, str | None]]], image_size: int = IMAGE_SIZE,
                     num_image_tokens: int = IMAGE_SEQ_LENGTH) -> dict[str, torch.Tensor | None]:
    """Token ids, mask, pixel values and labels of a right-padded batch of (multi-turn) chats.

    ``dialogues[i]`` is a list of ``(question, answer)`` turns about ``images_uint8[i]`` (an RGB uint8
    ``(H, W, 3)`` array, or ``None`` for a text-only chat; ``None`` for the whole list: no images). The
    image block opens the first user turn; each answer is followed by ``<|im_end|>``, and turns are
    joined by a newline as in InternVL's chat template. ``labels`` keeps exactly the answer tokens and
    their ``<|im_end|>`` (everything else is -100). The last answer may be ``None``: the row then ends
    at the opened assistant turn.
    Returns ``input_ids``, ``attention_mask``, ``labels`` ``(B, S)`` and ``pixel_values``
    ``(n_images, 3, image_size, image_size)`` (``None`` when no row has an image).
    """
    images = list(images_uint8) if images_uint8 is not None else [None] * len(dialogues)
    if len(images) != len(dialogues):
        raise ValueError(f"{len(images)} image slots for {len(dialogues)} dialogues; pass one (or None) each")
    rows: list[list[int]] = []
    spans: list[list[tuple[int, int]]] = []  # (start, end) of every answer in its row
    for image, turns in zip(images, dialogues, strict=True):
        row: list[int] = []
        row_spans = []
        for t, (question, reply) in enumerate(turns):
            text = user_turn(question, image is not None and t == 0, num_image_tokens)
            row += _ids(tokenizer, ("\n" if t else "") + text)
            if reply is None:
                if t != len(turns) - 1:
                    raise ValueError("only the last turn of a dialogue may have no answer")
                continue
            target = _ids(tokenizer, reply + "<|im_end|>")
            row_spans.append((len(row), len(row) + len(target)))
            row += target
        rows.append(row)
        spans.append(row_spans)
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)  # (B, S)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    for i, (row, row_spans) in enumerate(zip(rows, spans, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        for a, b in row_spans:
            labels[i, a:b] = input_ids[i, a:b]
    pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images if im is not None]
    pixel_values = vlm_pixel_values(pil, image_size) if pil else None
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
            "labels": labels}


def encode_qa_batch(tokenizer, images_uint8: Sequence[np.ndarray | None] | None, questions: Sequence[str],
                    answers: Sequence[str] | None = None, image_size: int = IMAGE_SIZE,
                    num_image_tokens: int = IMAGE_SEQ_LENGTH) -> dict[str, torch.Tensor | None]:
    """Single-turn :func:`encode_dialogues`: one question (and answer) per image.

    Without ``answers`` the rows end at the opened assistant turn and ``labels`` is ``None``.
    Returns ``input_ids``, ``attention_mask``, ``labels`` ``(B, S)`` and ``pixel_values`` ``(B', 3, S', S')``.
    """
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    replies = list(answers) if answers is not None else [None] * len(questions)
    batch = encode_dialogues(tokenizer, images_uint8, [[(q, a)] for q, a in zip(questions, replies, strict=True)],
                             image_size, num_image_tokens)
    if answers is None:
        batch["labels"] = None
    return batch


@torch.no_grad()
def answer(model: InternVLForConditionalGeneration, tokenizer, images_uint8: Sequence[np.ndarray | None] | None,
           questions: Sequence[str], max_new_tokens: int = 16, batch_size: int = 256) -> list[str]:
    """Greedy answers (special tokens stripped), batched; deterministic for fixed weights and inputs.

    Each row stops at its first ``<|im_end|>`` or after ``max_new_tokens`` tokens. The prompts are
    left-aligned for decoding (padding first, position ids counted over the real tokens only), so all
    rows grow in the same column and the key-value cache of the first forward pass is reused.
    """
    images = list(images_uint8) if images_uint8 is not None else [None] * len(questions)
    cfg, eos = model.config, tokenizer.convert_tokens_to_ids("<|im_end|>")
    out: list[str] = []
    for start in range(0, len(questions), batch_size):
        batch = encode_qa_batch(tokenizer, images[start: start + batch_size], questions[start: start + batch_size],
                                image_size=cfg.vision_config.image_size[0], num_image_tokens=cfg.image_seq_length)
        dev = model.device
        right, right_mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)  # (B, S), right-padded
        n, width = right.shape
        lengths = right_mask.sum(1)  # (B,)
        shift = (width - lengths).tolist()
        ids = torch.stack([row.roll(k) for row, k in zip(right, shift, strict=True)])  # (B, S), left-padded
        mask = torch.stack([row.roll(k) for row, k in zip(right_mask, shift, strict=True)])
        positions = (mask.cumsum(1) - 1).clamp(min=0)  # (B, S)
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       pixel_values=None if batch["pixel_values"] is None else batch["pixel_values"].to(dev),
                       use_cache=True, logits_to_keep=1)
        next_pos = positions[:, -1] + 1  # (B,)
        done = torch.zeros(n, dtype=torch.bool, device=dev)
        generated: list[list[int]] = [[] for _ in range(n)]
        for step in range(max_new_tokens):
            token = result.logits[:, -1].argmax(-1)  # (B,)
            for i in torch.nonzero(~done).flatten().tolist():
                if int(token[i]) == eos:
                    done[i] = True
                else:
                    generated[i].append(int(token[i]))
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, mask.new_ones(n, 1)], dim=1)
            result = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                           past_key_values=result.past_key_values, use_cache=True)
            next_pos = next_pos + 1
        out.extend(tokenizer.decode(g, skip_special_tokens=True).strip() for g in generated)
    return out


def heldout_questions(examples: Sequence[Example]) -> list[tuple[int, str, str, str]]:
    """``(example index, kind, question, answer)`` for every question of :func:`qa_by_kind` of every
    example, then ``(index, "caption", "describe the image.", caption)`` per example."""
    rows = [(i, kind, q, a) for i, ex in enumerate(examples) for kind, pairs in qa_by_kind(ex.scene).items()
            for q, a in pairs]
    return rows + [(i, "caption", DESCRIBE, ex.caption) for i, ex in enumerate(examples)]


def qa_accuracy(model: InternVLForConditionalGeneration, tokenizer, examples: Sequence[Example],
                per_kind: bool = True, batch_size: int = 256) -> dict:
    """Exact-match accuracy of greedy answers on ``examples`` (e.g. from ``heldout_examples``).

    Returns ``{"accuracy", "n_questions", "caption_exact", "n_captions"}`` and, with ``per_kind``,
    ``"per_kind": {kind: accuracy}``. ``accuracy`` covers the questions of every kind of
    :func:`qa_by_kind`; captions (``"describe the image."``) are scored apart, since a scene has
    several correct captions and only the one it was drawn with counts as a match.
    """
    rows = heldout_questions(examples)
    preds = answer(model, tokenizer, [examples[i].image for i, *_ in rows], [q for _, _, q, _ in rows],
                   max_new_tokens=24, batch_size=batch_size)
    hits: dict[str, list[bool]] = defaultdict(list)
    for (_, kind, _, target), pred in zip(rows, preds, strict=True):
        hits[kind].append(pred == target)
    questions = [h for kind, hs in hits.items() if kind != "caption" for h in hs]
    result = {"accuracy": float(np.mean(questions)), "n_questions": len(questions),
              "caption_exact": float(np.mean(hits["caption"])), "n_captions": len(hits["caption"])}
    if per_kind:
        result["per_kind"] = {k: float(np.mean(v)) for k, v in sorted(hits.items()) if k != "caption"}
    return result


def format_accuracy(result: dict) -> str:
    """A plain-text table of a :func:`qa_accuracy` result."""
    lines = [f"{'kind':<12} {'accuracy':>9}"]
    lines += [f"{k:<12} {v:>9.4f}" for k, v in result.get("per_kind", {}).items()]
    lines.append(f"{'all':<12} {result['accuracy']:>9.4f}  ({result['n_questions']} questions)")
    lines.append(f"{'caption':<12} {result['caption_exact']:>9.4f}  (exact match, {result['n_captions']} captions)")
    return "\n".join(lines)


def load_toy_vlm(path: str | Path | None = None) -> tuple[InternVLForConditionalGeneration, object]:
    """The pre-trained toy VLM and its tokenizer from ``path`` (default: the shipped weights).

    The model is loaded in float32, in eval mode, with every parameter frozen.
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no toy VLM at {str(path)!r}; pre-train one with `parauni toy pretrain-vlm --out DIR` "
            "and pass that folder"
        )
    model = InternVLForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    from .tokenizer import load_toy_tokenizer  # lowercases, warns about words outside the toy vocabulary

    tokenizer = load_toy_tokenizer(path)
    model.eval().requires_grad_(False)
    return model, tokenizer


def is_toy_vlm_pipeline(pipe) -> bool:
    """True when a pipeline's VLM is the toy VLM (32-px images cut into 4-px patches): the toy family."""
    vision = getattr(getattr(getattr(pipe, "vlm", None), "config", None), "vision_config", None)
    if vision is None:
        return False
    size, patch = vision.image_size, vision.patch_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return size == IMAGE_SIZE and patch == PATCH_SIZE
