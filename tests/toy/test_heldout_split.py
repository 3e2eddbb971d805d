"""No training sampler of world v2 emits a held-out composition; the split is fixed.

The samplers are checked three ways: the scenes they draw (:func:`scene_compositions`), the pixels they render
(the detector's objects, turned back into a scene) and the text they write (colour-shape phrases and pairs of
shape words in one caption, question or prompt).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from parauni.registry import DATASETS, PROMPT_SOURCES
from parauni.toy.data import TRAIN_DOMAIN, ToyStream, heldout_examples, make_example, qa_by_kind, sample_rng
from parauni.toy.detect import detect
from parauni.toy.prompts import TASKS, ToyPromptSource, all_metas, random_meta
from parauni.toy.split import heldout_set, meta_compositions, meta_split, scene_compositions, scene_is_seen
from parauni.toy.tokenizer import toy_corpus
from parauni.toy.train_rewards import make_pool
from parauni.toy.train_vlm import sample_dialogue
from parauni.toy.world import Scene, ToyObject
from parauni.toy.worlds import V1, V2

HELD = heldout_set(V2.heldout)


def word(shape: str) -> str:
    return rf"\b{shape}(e?s)?\b"


def text_leaks(text: str) -> list[str]:
    """Held-out colour-shape phrases and held-out pairs of shapes named together in ``text``."""
    out = [f"{c} {s}" for c, s in V2.heldout.color_shapes if re.search(rf"\b{c} {word(s)}", text)]
    out += [" & ".join(sorted(p)) for p in V2.heldout.shape_pairs if all(re.search(word(s), text) for s in p)]
    return out


def detected_scene(image: np.ndarray) -> Scene:
    """The scene the detector sees in a rendered image."""
    objs = [ToyObject(d.cls, d.color, (d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2,
                      d.bbox[2] - d.bbox[0]) for d in detect(image, world=V2)]
    return Scene(objs, image.shape[0], V2)


def test_the_split_is_fixed_and_every_kind_is_held_out():
    assert heldout_set(V2.heldout) == HELD and not heldout_set(V1.heldout)
    kinds = {c[0] for c in HELD}
    assert kinds == {"color_shape", "shape_pair", "relation", "count"}
    # the split of every prompt does not depend on the order prompts are asked in
    for tag in TASKS:
        held = [m["prompt"] for m in all_metas(tag, world="v2", split="heldout")]
        assert held == [m["prompt"] for m in all_metas(tag, world="v2") if meta_split(m) == "heldout"]
    assert meta_split({"tag": "position", "include": [{"class": "cross", "count": 1}, {
        "class": "square", "count": 1, "position": ["above", 0]}], "prompt": "", "world": "v2"}) == "heldout"
    # the same relation, said the other way round
    assert meta_split({"tag": "position", "include": [{"class": "square", "count": 1}, {
        "class": "cross", "count": 1, "position": ["below", 0]}], "prompt": "", "world": "v2"}) == "heldout"


def test_training_examples_never_compose_a_heldout_composition():
    n_template = 0
    for k in range(1500):
        ex = make_example(sample_rng(TRAIN_DOMAIN, 0, k), world="v2")
        assert not scene_compositions(ex.scene) & HELD, (k, ex.caption)
        assert not text_leaks(ex.caption), ex.caption
        if ex.meta is not None:
            n_template += 1
            assert meta_split(ex.meta) == "seen" and ex.meta["world"] == "v2"
        if k < 300:  # what the pixels show
            assert not scene_compositions(detected_scene(ex.image)) & HELD, (k, ex.caption)
    assert 600 < n_template < 900
    # the held-out split of the same world does show them
    held = heldout_examples(200, world="v2", split="heldout")
    assert all(scene_compositions(ex.scene) & HELD for ex in held)
    # ... and the checks above see them: in the pixels, and in the text
    assert sum(bool(scene_compositions(detected_scene(ex.image)) & HELD) for ex in held) >= 190
    assert sum(bool(text_leaks(ex.caption)) for ex in held) >= 50


def test_streams_and_sources_of_the_registry():
    stream = iter(ToyStream(seed=1, world="v2"))
    for _ in range(200):
        item = next(stream)
        image = ((item["image"].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        assert not scene_compositions(detected_scene(image)) & HELD
        assert not text_leaks(item["caption"])
        if item["meta"]:
            assert meta_split(json.loads(item["meta"])) == "seen"
    cfg = type("DataCfg", (), {"resolution": 32, "template_prob": 0.5})()
    source = DATASETS.get("toy_v2")(cfg, 2)
    for k in range(200):
        image, caption = source.get(k)
        assert not scene_compositions(detected_scene(np.asarray(image))) & HELD and not text_leaks(caption)
    assert DATASETS.get("toy")(cfg, 2).world is V1


@pytest.mark.parametrize("pool", [None, 64])
def test_rl_prompts_are_seen_prompts(pool):
    cfg = type("PromptCfg", (), {"pool": pool})()
    source = PROMPT_SOURCES.get("toy_v2")(cfg, 0)
    assert isinstance(source, ToyPromptSource)
    metas = [m for e in range(20) for m in source.epoch(e, 32)]
    assert {m["tag"] for m in metas} == set(TASKS) and all(m["world"] == "v2" for m in metas)
    assert all(meta_split(m) == "seen" and not text_leaks(m["prompt"]) for m in metas)
    v1 = PROMPT_SOURCES.get("toy")(cfg, 0).epoch(0, 8)
    assert all("world" not in m for m in v1)


def test_vlm_rewards_and_tokenizer_data():
    for k in range(300):
        _, pairs, _ = sample_dialogue(0, k, turns=6, world="v2")
        for q, a in pairs:
            assert not text_leaks(f"{q} {a}"), (q, a)
    _, captions = make_pool(400, seed=0, world="v2")
    assert not [c for c in captions if text_leaks(c)]
    lines = toy_corpus(n=300, world="v2")
    assert not [line for line in lines if text_leaks(line)]
    assert any("diamond" in line for line in lines) and any("white" in line for line in lines)


def test_questions_skip_heldout_colour_shape_pairs():
    scene = Scene([ToyObject("cross", "blue", 10, 10, 8)], 32, V2)
    questions = [q for pairs in qa_by_kind(scene).values() for q, _ in pairs]
    assert "is there a blue cross?" in questions and "is there a red cross?" not in questions
    assert "is there a green cross?" in questions


def test_random_meta_of_a_split():
    rng = np.random.default_rng(0)
    for _ in range(300):
        meta = random_meta(rng, world="v2", split="heldout")
        if meta["tag"] != "single_object":
            assert meta_compositions(meta) & HELD
    assert scene_is_seen(Scene([ToyObject("cross", "blue", 10, 10, 8)], 32, V2))
    assert not scene_is_seen(Scene([ToyObject("cross", "red", 10, 10, 8)], 32, V2))
