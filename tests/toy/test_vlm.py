"""The toy VLM: config and tokenizer round trip, batching, training, greedy answers, the shipped weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, InternVLForConditionalGeneration

from parauni.toy.data import heldout_examples, make_example, qa_pairs, sample_rng
from parauni.toy.tokenizer import build_toy_tokenizer
from parauni.toy.vlm import (
    DEFAULT_WEIGHTS,
    IGNORE_INDEX,
    IMAGE_SEQ_LENGTH,
    answer,
    build_toy_vlm,
    encode_qa_batch,
    load_toy_vlm,
    qa_accuracy,
)

SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
SMALL_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)


@pytest.fixture(scope="module")
def tokenizer():
    return build_toy_tokenizer()


@pytest.fixture(scope="module")
def shipped():
    if not (DEFAULT_WEIGHTS / "config.json").is_file():
        pytest.fail(f"the shipped toy VLM is missing at {DEFAULT_WEIGHTS}")
    return load_toy_vlm()


def _examples(n: int, start: int = 0):
    return [make_example(sample_rng(0, 123, k)) for k in range(start, start + n)]


def test_config_and_tokenizer_round_trip(tokenizer, tmp_path):
    model = build_toy_vlm(tokenizer, text=SMALL_TEXT, vision=SMALL_VISION)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    cfg = AutoConfig.from_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert cfg.model_type == "internvl" and cfg.text_config.model_type == "qwen2"
    assert cfg.image_seq_length == IMAGE_SEQ_LENGTH == 16
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert cfg.text_config.vocab_size == len(tok) == len(tokenizer)
    assert not cfg.tie_word_embeddings and not cfg.text_config.tie_word_embeddings
    text = "<|im_start|>user\n<img><IMG_CONTEXT></img>\nhow many circles are there?<|im_end|>\n"
    assert tok(text)["input_ids"] == tokenizer(text)["input_ids"]
    for special in ("<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    reloaded = InternVLForConditionalGeneration.from_pretrained(tmp_path)
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_encode_qa_batch_labels_only_the_answer(tokenizer):
    exs = _examples(3)
    questions = ["how many objects are there?", "describe the image.", "what color is the circle?"]
    answers = ["two", exs[1].caption, "red"]
    batch = encode_qa_batch(tokenizer, [e.image for e in exs], questions, answers)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    ctx = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    for i in range(3):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # right-padded
        assert int((ids[i] == ctx).sum()) == IMAGE_SEQ_LENGTH
        kept = labels[i] != IGNORE_INDEX
        assert tokenizer.decode(ids[i][kept]) == answers[i] + "<|im_end|>"
        assert kept[:n].nonzero().max() == n - 1  # the answer ends the row
        prompt = tokenizer.decode(ids[i, : int(kept.nonzero().min())])
        assert prompt.startswith("<|im_start|>user\n<img><IMG_CONTEXT>")
        assert prompt.endswith(f"</img>\n{questions[i]}<|im_end|>\n<|im_start|>assistant\n")
    no_answer = encode_qa_batch(tokenizer, [e.image for e in exs], questions)
    assert no_answer["labels"] is None


def test_a_few_training_steps_reduce_the_loss(tokenizer):
    exs = _examples(8)
    pairs = [qa_pairs(e.scene, e.caption)[k % 3] for k, e in enumerate(exs)]
    batch = encode_qa_batch(tokenizer, [e.image for e in exs], [q for q, _ in pairs], [a for _, a in pairs])
    model = build_toy_vlm(tokenizer, seed=0, text=SMALL_TEXT, vision=SMALL_VISION).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_answer_is_deterministic_and_independent_of_batching(shipped):
    model, tok = shipped
    exs = heldout_examples(6)
    questions = ["how many objects are there?", "describe the image.", "is there a red circle?"] * 2
    images = [e.image for e in exs]
    first = answer(model, tok, images, questions)
    assert first == answer(model, tok, images, questions)
    assert first == [answer(model, tok, [im], [q])[0] for im, q in zip(images, questions, strict=True)]


def test_shipped_model_is_frozen_float32(shipped):
    model, _ = shipped
    assert not model.training
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())


def test_shipped_model_answers_heldout_questions(shipped):
    model, tok = shipped
    result = qa_accuracy(model, tok, heldout_examples(40))
    assert result["accuracy"] >= 0.95, result


def test_missing_weights_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="parauni toy pretrain-vlm --out DIR"):
        load_toy_vlm(tmp_path / "nowhere")
