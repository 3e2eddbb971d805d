"""Toy world: determinism, geometry, captions (GenEval wording), datasets and questions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from parauni.eval.bundled import geneval_metadata_path
from parauni.toy.data import (
    HELDOUT_DOMAIN,
    TRAIN_DOMAIN,
    ToyStream,
    heldout_examples,
    heldout_split,
    make_example,
    qa_pairs,
    sample_qa,
    sample_rng,
    to_image,
)
from parauni.toy.prompts import TASKS, free_caption, make_plural, meta_from_fields, random_meta, with_article
from parauni.toy.world import (
    BACKGROUND,
    COLORS,
    GAP_FRAC,
    MARGIN_FRAC,
    PALETTE,
    Scene,
    ToyObject,
    random_scene,
    relative_position,
    render,
    scene_from_metadata,
)

REAL_GENEVAL = geneval_metadata_path()  # GenEval's own prompts, bundled with the package


def test_same_seed_same_sample_different_seed_differs():
    a = make_example(sample_rng(TRAIN_DOMAIN, 0, 5))
    b = make_example(sample_rng(TRAIN_DOMAIN, 0, 5))
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.meta == b.meta
    others = [make_example(sample_rng(TRAIN_DOMAIN, s, 5)) for s in (1, 2, 3)]
    assert all(not np.array_equal(a.image, o.image) for o in others)


def test_render_sizes_and_background():
    scene = random_scene(np.random.default_rng(0), size=32)
    for size in (32, 64):
        img = render(scene, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert tuple(img[0, 0]) == BACKGROUND and tuple(img[-1, -1]) == BACKGROUND
    big = render(Scene(scene.objects, 32), 64)
    assert np.array_equal(big, render(Scene([ToyObject(o.shape, o.color, 2 * o.cx, 2 * o.cy, 2 * o.size)
                                             for o in scene.objects], 64)))


def test_palette_is_well_separated():
    ref = np.asarray([BACKGROUND, *PALETTE.values()], dtype=float)
    d = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    assert d[~np.eye(len(ref), dtype=bool)].min() > 90
    assert set(COLORS) <= {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}


@pytest.mark.parametrize("size", [32, 64])
def test_objects_do_not_touch_and_keep_a_margin(size):
    rng = np.random.default_rng(1)
    for _ in range(100):
        objs = random_scene(rng, size).objects
        for i, a in enumerate(objs):
            x1, y1, x2, y2 = a.bbox
            assert min(x1, y1) >= MARGIN_FRAC * size - 1e-6 and max(x2, y2) <= size * (1 - MARGIN_FRAC) + 1e-6
            for b in objs[i + 1:]:
                gx = max(b.bbox[0] - x2, a.bbox[0] - b.bbox[2])
                gy = max(b.bbox[1] - y2, a.bbox[1] - b.bbox[3])
                assert max(gx, gy) >= GAP_FRAC * size - 1e-6


def test_scene_from_metadata_follows_the_prompt():
    rng = np.random.default_rng(2)
    for tag in TASKS:
        for _ in range(20):
            meta = random_meta(rng, tag)
            objs = scene_from_metadata(meta, rng).objects
            assert len(objs) == sum(r["count"] for r in meta["include"])
            for req in meta["include"]:
                mine = [o for o in objs if o.shape == req["class"]]
                assert len(mine) == req["count"]
                assert all(o.color == req.get("color", o.color) for o in mine)
                if "position" in req:
                    rel, idx = req["position"]
                    targets = [o for o in objs if o.shape == meta["include"][idx]["class"]]
                    assert all(relative_position(o.bbox, t.bbox) == {rel} for o in mine for t in targets)


def test_template_captions_and_free_captions():
    word = r"(a|an|one|two|three|four)"
    noun = r"((red|orange|yellow|green|blue|purple) )?(circle|square|triangle)s?"
    free = re.compile(rf"((a photo|an image) of )?{word} {noun}((, | and ){word} {noun})*"
                      rf"|((a photo|an image) of )?{word} {noun} (left of|right of|above|below) {word} {noun}")
    seen = set()
    for k in range(300):
        ex = make_example(sample_rng(TRAIN_DOMAIN, 7, k))
        if ex.meta is not None:
            assert ex.caption == ex.meta["prompt"] == meta_from_fields(ex.meta)["prompt"]
            seen.add(ex.meta["tag"])
        else:
            assert free.fullmatch(ex.caption), ex.caption
            assert not re.search(r"\ba [aeiou]", ex.caption), ex.caption
    assert seen == set(TASKS)
    two = Scene([ToyObject("triangle", "green", 8, 6, 8), ToyObject("circle", "yellow", 8, 24, 8)], 32)
    captions = {free_caption(two, np.random.default_rng(s)) for s in range(40)}
    assert "a green triangle above a yellow circle" in captions
    assert "a photo of a yellow circle below a green triangle" in captions
    assert "a triangle and a circle" in captions or "a circle and a triangle" in captions


def test_article_and_plural_rules():
    assert with_article("orange") == "an orange" and with_article("red") == "a red"
    assert [make_plural(w) for w in ("circle", "bus", "bench", "toothbrush")] == [
        "circles", "buses", "benchs", "toothbrushs"]


def test_templates_rebuild_every_real_geneval_prompt():
    lines = REAL_GENEVAL.read_text().splitlines()
    assert len(lines) == 553
    for line in lines:
        meta = json.loads(line)
        assert json.dumps(meta_from_fields(meta)) == line


def test_stream_is_worker_and_rank_aware(monkeypatch):
    def first(stream: ToyStream, n: int) -> list[dict]:
        it = iter(stream)
        return [next(it) for _ in range(n)]

    single = first(ToyStream(seed=3, rank=0, world_size=1), 8)
    assert [x["index"] for x in single] == list(range(8))
    x = single[0]
    assert x["image"].shape == (3, 32, 32) and x["image"].dtype == torch.float32
    assert x["image"].min() >= -1 and x["image"].max() <= 1 and isinstance(x["caption"], str)
    parts = []
    for rank in range(2):
        for wid in range(2):
            info = type("Info", (), {"id": wid, "num_workers": 2})()
            monkeypatch.setattr("parauni.toy.data.get_worker_info", lambda info=info: info)
            parts.append(first(ToyStream(seed=3, rank=rank, world_size=2), 2))
    by_index = {item["index"]: item for part in parts for item in part}
    assert sorted(by_index) == list(range(8))
    for item in single:
        assert torch.equal(by_index[item["index"]]["image"], item["image"])
        assert by_index[item["index"]]["caption"] == item["caption"]


def test_heldout_is_fixed_and_disjoint_from_training():
    assert HELDOUT_DOMAIN != TRAIN_DOMAIN
    a, b = heldout_examples(50, seed=0), heldout_examples(50, seed=0)
    assert all(np.array_equal(x.image, y.image) and x.caption == y.caption for x, y in zip(a, b, strict=True))
    train = {make_example(sample_rng(TRAIN_DOMAIN, 0, k)).image.tobytes() for k in range(200)}
    assert not any(x.image.tobytes() in train for x in a)
    items = heldout_split(4, seed=0)
    assert np.array_equal(to_image(items[0]["image"]), a[0].image) and items[0]["caption"] == a[0].caption


def test_question_answers():
    scene = Scene([ToyObject("circle", "red", 6, 8, 7), ToyObject("circle", "red", 6, 24, 7),
                   ToyObject("square", "blue", 24, 16, 8)], 32)
    qa = dict(qa_pairs(scene, caption="two red circles and a blue square"))
    assert qa["how many circles are there?"] == "two"
    assert qa["how many triangles are there?"] == "zero"
    assert qa["how many objects are there?"] == "three"
    assert qa["what color is the square?"] == "blue"
    assert "what color is the circle?" not in qa
    assert qa["what shape is the blue object?"] == "square"
    assert qa["is there a red circle?"] == "yes" and qa["is there an orange circle?"] == "no"
    assert "what shape is left of the blue square?" not in qa  # two circles qualify
    assert qa["describe the image."] == "two red circles and a blue square"
    two = Scene([ToyObject("triangle", "green", 8, 16, 8), ToyObject("circle", "yellow", 24, 16, 8)], 32)
    qa2 = dict(qa_pairs(two))
    assert qa2["what shape is left of the yellow circle?"] == "triangle"
    assert qa2["what shape is right of the green triangle?"] == "circle"
    rng = np.random.default_rng(0)
    ex = make_example(rng)
    for _ in range(20):
        q, a = sample_qa(ex, rng)
        assert a == ex.caption or len(a.split()) == 1
