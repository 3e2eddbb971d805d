"""All-layer extraction: one forward, exact hidden states, position ids, images, prompts."""

import logging

import pytest
import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from parauni.models import VLMBackbone, query_position_ids, resolve_layers, tokenize_prompts
from parauni.utils.images import vlm_pixel_values


def _inputs(pipe, prompts):
    return tokenize_prompts(pipe.tokenizer, pipe.conditioner.template, prompts)


def _reference_hidden_states(body, ids, mask, queries, embed):
    """A plain ``output_hidden_states=True`` run over prompt + queries."""
    n = queries.shape[0]
    embeds = torch.cat([embed(ids), queries.unsqueeze(0).expand(ids.shape[0], -1, -1)], dim=1)
    full_mask = torch.cat([mask, mask.new_ones(ids.shape[0], n)], dim=1)
    out = body(inputs_embeds=embeds, attention_mask=full_mask, position_ids=query_position_ids(mask, n),
               output_hidden_states=True, use_cache=False)
    return torch.stack([h[:, -n:] for h in out.hidden_states[1:]])  # (L, B, N, D)


def test_position_ids_continue_after_each_prompt():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    pos = query_position_ids(mask, num_queries=3)
    assert pos.tolist() == [
        [0, 1, 2, 3, 4, 5, 6],
        [0, 1, 1, 1, 2, 3, 4],
        [0, 0, 0, 0, 1, 2, 3],
    ]


@torch.no_grad()
def test_one_forward_equals_hidden_states(tiny_pipe):
    backbone = VLMBackbone(tiny_pipe.vlm)
    ids, mask = _inputs(tiny_pipe, ["a red circle", "two blue squares and a long tail of words", None])
    queries = tiny_pipe.conditioner.queries
    calls = []
    handle = backbone.body.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        states = backbone(ids, mask, queries, final_norm=False)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert states.shape == (4, 3, queries.shape[0], backbone.hidden_size)
    ref = _reference_hidden_states(backbone.body, ids, mask, queries, backbone.body.get_input_embeddings())
    torch.testing.assert_close(states, ref, rtol=0, atol=1e-6)
    # default: the final norm on every layer (the last entry already carries it)
    normed = backbone(ids, mask, queries)
    torch.testing.assert_close(normed[:-1], backbone.body.norm(ref[:-1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(normed[-1], ref[-1], rtol=0, atol=1e-6)


@torch.no_grad()
def test_layer_selection_and_early_stop(tiny_pipe):
    backbone = VLMBackbone(tiny_pipe.vlm)
    ids, mask = _inputs(tiny_pipe, ["a red circle", "a square"])
    q = tiny_pipe.conditioner.queries
    full = backbone(ids, mask, q)
    called = []
    handle = backbone.body.layers[3].register_forward_pre_hook(lambda *a: called.append(1))
    try:
        part = backbone(ids, mask, q, layers=[2, 0])
    finally:
        handle.remove()
    assert not called, "layers after the deepest selected one must not run"
    torch.testing.assert_close(part, full[[2, 0]])
    torch.testing.assert_close(backbone(ids, mask, q, layers=[-1])[0], full[-1])


def test_unknown_layer_index_is_an_error():
    with pytest.raises(ValueError, match="out of range.*4 decoder layers"):
        resolve_layers([0, 4], 4)
    with pytest.raises(ValueError, match="twice"):
        resolve_layers([1, -3], 4)
    assert resolve_layers(None, 3) == [0, 1, 2]


@torch.no_grad()
def test_image_inserted_like_the_vlm(tiny_pipe):
    """With queries equal to a token's embedding, the stack equals the VLM's own forward with images."""
    from PIL import Image

    backbone = VLMBackbone(tiny_pipe.vlm)
    n_img = backbone.num_image_tokens
    ids, mask = tokenize_prompts(tiny_pipe.tokenizer, tiny_pipe.conditioner.template, [None, None], [n_img, n_img],
                                 instruction="Keep the image as it is.")
    images = [Image.new("RGB", (20, 20), c) for c in ("red", "blue")]
    pixels = vlm_pixel_values(images, tiny_pipe.vlm.config.vision_config.image_size[0])
    token = 7
    q = backbone.body.get_input_embeddings().weight[token].expand(3, -1)
    states = backbone(ids, mask, q, pixel_values=pixels, final_norm=False)
    full_ids = torch.cat([ids, torch.full((2, 3), token)], dim=1)
    full_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)
    out = tiny_pipe.vlm.model(input_ids=full_ids, pixel_values=pixels, attention_mask=full_mask,
                              position_ids=query_position_ids(mask, 3), output_hidden_states=True)
    ref = torch.stack([h[:, -3:] for h in out.hidden_states[1:]])
    torch.testing.assert_close(states, ref, rtol=0, atol=1e-6)
    assert not torch.allclose(states[:, 0], states[:, 1]), "different images must give different states"


def test_image_count_mismatch_is_an_error(tiny_pipe):
    backbone = VLMBackbone(tiny_pipe.vlm)
    ids, mask = _inputs(tiny_pipe, ["no image placeholder here"])
    pixels = torch.zeros(1, 3, 56, 56)
    with pytest.raises(ValueError, match="image-context tokens"):
        backbone(ids, mask, tiny_pipe.conditioner.queries, pixel_values=pixels)


@torch.no_grad()
@pytest.mark.parametrize("kind", ["qwen2.5-vl", "causal-lm"])
def test_other_backbones(kind):
    torch.manual_seed(0)
    text = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    if kind == "causal-lm":
        model = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
    else:
        text["rope_parameters"] = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e4}
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(depth=1, hidden_size=16, intermediate_size=32,
                                                                    num_heads=2, out_hidden_size=32))
        model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    backbone = VLMBackbone(model)
    ids = torch.randint(2, 64, (2, 6))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    q = torch.randn(5, 32)
    states = backbone(ids, mask, q, final_norm=False)
    ref = _reference_hidden_states(backbone.body, ids, mask, q, backbone.body.get_input_embeddings())
    torch.testing.assert_close(states, ref, rtol=0, atol=1e-5)
    assert not backbone.supports_images


def test_not_a_backbone():
    with pytest.raises(TypeError, match="not a supported backbone"):
        VLMBackbone(torch.nn.Linear(2, 2))


def test_prompt_template_and_truncation(tiny_pipe, caplog):
    tok, template = tiny_pipe.tokenizer, tiny_pipe.conditioner.template
    ids, mask = tokenize_prompts(tok, template, ["a red circle", None])
    text = tok.decode(ids[0][mask[0].bool()])
    assert text == "<|im_start|>user\nGenerate an image: a red circle<|im_end|>\n<|im_start|>assistant\n<img>"
    uncond = tok.decode(ids[1][mask[1].bool()])
    assert uncond.endswith("user\nGenerate an image.<|im_end|>\n<|im_start|>assistant\n<img>")
    assert mask[1].sum() < mask[0].sum() and (mask[1, mask[1].sum():] == 0).all(), "right padding"
    long = " ".join(["circle"] * 400)
    with caplog.at_level(logging.WARNING):
        ids, mask = tokenize_prompts(tok, template, [long])
    assert "truncated" in caplog.text
    assert mask.sum() == template.max_length
    assert tok.convert_ids_to_tokens(int(ids[0, -1])) == "<img>", "the template survives truncation"
