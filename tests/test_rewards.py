"""Rewards: the interface, the weighted sum, and the three toy rewards."""

import logging
import math

import numpy as np
import pytest
import torch

from parauni.rewards import WeightedReward, build_reward
from parauni.toy.data import heldout_examples
from parauni.toy.detect import gaussian_blur
from parauni.toy.geneval import load_toy_geneval
from parauni.toy.rewards.alignment import ToyAlignmentReward, ToyCLIP, contrastive_loss, images_to_tensor, tokenize
from parauni.toy.rewards.geneval import ToyGenEvalReward
from parauni.toy.rewards.quality import quality_score
from parauni.toy.world import render, scene_from_metadata


@pytest.fixture(scope="module")
def examples():
    return heldout_examples(24, seed=3)


def test_quality_orders_clean_blurred_noisy_and_empty(examples):
    rng = np.random.default_rng(0)
    clean = [quality_score(e.image) for e in examples]
    blurred = [quality_score(np.stack([gaussian_blur(e.image[..., c].astype(np.float32), 1.2) for c in range(3)],
                                      -1).clip(0, 255).astype(np.uint8)) for e in examples]
    noisy = [quality_score(np.clip(e.image + rng.normal(0, 25, e.image.shape), 0, 255).astype(np.uint8))
             for e in examples]
    assert min(clean) > 9.0
    assert np.mean(clean) > np.mean(blurred) + 1 > np.mean(noisy) + 2
    assert quality_score(rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)) < 2
    assert quality_score(np.full((32, 32, 3), 128, np.uint8)) == 1.0


def test_geneval_reward_is_partial_credit():
    metas = [m for m in load_toy_geneval() if m["tag"] == "counting"][:4]
    rng = np.random.default_rng(0)
    right = [render(scene_from_metadata(m, rng)) for m in metas]
    reward = ToyGenEvalReward()
    assert reward(right, [m["prompt"] for m in metas], metas).tolist() == [1.0] * 4
    wrong = reward(right[1:] + right[:1], [m["prompt"] for m in metas], metas)
    assert (wrong < 1).any()
    assert math.isnan(reward(right[:1], ["no metadata"], [None])[0])


class _Broken:
    def __call__(self, images, prompts, metadata=None):
        raise RuntimeError("model crashed")


def test_weighted_sum_and_failures(caplog):
    images = [np.full((32, 32, 3), 128, np.uint8)] * 3
    const = lambda v: (lambda im, p, m=None: torch.tensor(v))  # noqa: E731
    w = WeightedReward({"a": 0.5, "b": 2.0}, rewards={"a": const([1.0, 2.0, 3.0]), "b": const([1.0, math.nan, 0.0])})
    total, parts = w(images, ["x"] * 3)
    assert total[0] == 2.5 and math.isnan(total[1]) and total[2] == 1.5
    assert parts["a"].tolist() == [1.0, 2.0, 3.0]
    with caplog.at_level(logging.WARNING):
        total, _ = WeightedReward({"ok": 1.0, "bad": 1.0}, rewards={"ok": const([1.0] * 3), "bad": _Broken()})(
            images, ["x"] * 3)
    assert torch.isnan(total).all() and "model crashed" in caplog.text


def test_build_reward_by_name_and_path():
    """Registered names and ``module:Factory`` paths build the right reward, options reach its constructor,
    and the built rewards score real toy scenes as the reward functions themselves do."""
    from parauni.toy.rewards.alignment import DEFAULT_PATH
    from parauni.toy.rewards.quality import ToyQualityReward

    metas = [m for m in load_toy_geneval() if m["tag"] == "two_object"][:3]
    rng = np.random.default_rng(1)
    scenes = [render(scene_from_metadata(m, rng)) for m in metas]
    blank = np.full((32, 32, 3), 128, np.uint8)
    prompts = [m["prompt"] for m in metas]

    quality = build_reward("toy_quality")
    assert type(quality) is ToyQualityReward
    assert quality(scenes + [blank]).tolist() == pytest.approx([quality_score(im) for im in scenes] + [1.0])

    geneval = build_reward("parauni.toy.rewards.geneval:ToyGenEvalReward")
    assert type(geneval) is ToyGenEvalReward
    assert geneval(scenes, prompts, metas).tolist() == [1.0, 1.0, 1.0]
    assert geneval([blank], prompts[:1], metas[:1]).tolist() == [0.0]

    alignment = build_reward("toy_alignment", path=str(DEFAULT_PATH))
    assert type(alignment) is ToyAlignmentReward
    matched = alignment(scenes, prompts)
    shuffled = alignment(scenes, prompts[1:] + prompts[:1])
    assert matched.shape == (3,) and (matched > shuffled).all()
    with pytest.raises(FileNotFoundError, match="no toy alignment model"):
        build_reward("toy_alignment", path="/nonexistent")
    with pytest.raises(KeyError, match="unknown reward"):
        build_reward("pickscoore")


def test_alignment_model_trains_and_round_trips(tmp_path, examples):
    from parauni.models.tokenizer import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer([e.caption for e in examples], vocab_size=300)
    model = ToyCLIP(vocab_size=len(tok), embed_dim=32, width=32, text_depth=1, channels=8)
    x = images_to_tensor([e.image for e in examples])
    ids, mask = tokenize(tok, [e.caption for e in examples], 32)
    same = torch.tensor([[a.caption == b.caption for b in examples] for a in examples])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = contrastive_loss(model.encode_image(x), model.encode_text(ids, mask), model.logit_scale, same)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    reward = ToyAlignmentReward(tmp_path)
    direct = 100 * (model.encode_image(x) * model.encode_text(ids, mask)).sum(-1).clamp(min=0)
    torch.testing.assert_close(reward([e.image for e in examples], [e.caption for e in examples]),
                               direct.detach(), rtol=1e-4, atol=1e-3)


def test_alignment_missing_weights_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="parauni toy train-rewards"):
        ToyAlignmentReward(tmp_path / "none")


def test_shipped_alignment_model_prefers_the_true_caption(examples):
    reward = ToyAlignmentReward()
    images = [e.image for e in examples]
    true = reward(images, [e.caption for e in examples])
    shifted = [examples[(i + 1) % len(examples)].caption for i in range(len(examples))]
    other = reward(images, shifted)
    differs = torch.tensor([e.caption != s for e, s in zip(examples, shifted, strict=True)])
    assert ((true > other) | ~differs).float().mean() >= 0.9


def test_redness_by_hand():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    grey = np.full((4, 4, 3), 128, np.uint8)
    half = grey.copy()
    half[:2] = red[:2]  # top half pure red: (255 - 0) / 255 on half the pixels, 0 elsewhere
    out = build_reward("redness")([red, grey, half], ["a", "b", "c"])
    assert out.tolist() == pytest.approx([1.0, 0.0, 0.5])
