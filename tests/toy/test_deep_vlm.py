"""The deep toy VLM of world v2: its config, the next-token objective on captions, a few training steps."""

from __future__ import annotations

import torch

from parauni.toy.config import load_pretrain_vlm_config
from parauni.toy.tokenizer import build_toy_tokenizer
from parauni.toy.train_vlm import IGNORE_INDEX, DialogueBatches, answer_loss, encode_captions
from parauni.toy.vlm import build_toy_vlm
from parauni.toy.worlds import V2


def test_the_v2_config():
    cfg = load_pretrain_vlm_config("toy_pretrain_vlm_v2.yaml")
    assert cfg.model.text["num_hidden_layers"] >= 12 and cfg.data.world == "v2" and 0 < cfg.data.caption_lm <= 1


def test_caption_rows_and_a_few_steps():
    tok = build_toy_tokenizer("v2")
    assert tok.world is V2
    rows = encode_captions(tok, ["a white cross", "two bars and a black diamond"])
    ids, labels = rows["input_ids"], rows["labels"]
    assert rows["pixel_values"] is None and ids.shape == labels.shape == rows["attention_mask"].shape
    assert int((labels[0] != IGNORE_INDEX).sum()) == len(tok("a white cross<|im_end|>",
                                                                add_special_tokens=False)["input_ids"])
    assert torch.equal(labels[1], ids[1])  # the longer row: every token is a label
    data = DialogueBatches(tok, seed=0, batch_size=8, turns=3, world="v2", caption_lm=0.5)
    batch = data.batch(0)
    assert len(batch) == 3 and batch[-1]["pixel_values"] is None and batch[-1]["input_ids"].shape[0] == 4
    torch.manual_seed(0)
    model = build_toy_vlm(tok, text={"num_hidden_layers": 12, "hidden_size": 32, "intermediate_size": 64,
                                     "num_attention_heads": 2, "num_key_value_heads": 1},
                          vision={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2})
    assert model.config.text_config.num_hidden_layers == 12
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad(set_to_none=True)
        losses.append(answer_loss(model, batch))
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
