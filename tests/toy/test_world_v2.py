"""World v2: vocabulary, the detector on rendered scenes and on garbage, the toy GenEval v2 prompts with their
seen and held-out splits, and the summaries of both."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from parauni.toy.detect import detect
from parauni.toy.detector_accuracy import detector_accuracy, format_accuracy_table
from parauni.toy.evaluation import random_latents_floor
from parauni.toy.geneval import (
    evaluate,
    load_toy_geneval,
    make_toy_geneval,
    score_dir,
    standard_errors,
    summarize,
    write_geneval_layout,
)
from parauni.toy.prior import load_prior
from parauni.toy.prompts import TASKS, all_metas
from parauni.toy.rewards.geneval import ToyGenEvalReward
from parauni.toy.rewards.quality import ToyQualityReward
from parauni.toy.split import meta_split, scene_compositions
from parauni.toy.world import Scene, ToyObject, render, scene_from_metadata
from parauni.toy.worlds import V1, V2, get_world

GENEVAL_COLORS = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"}


@pytest.fixture(scope="module")
def metas() -> list[dict]:
    return load_toy_geneval(world="v2")


def test_vocabulary():
    assert len(V2.shapes) >= 6 and len(V2.colors) >= 8 and set(V2.colors) <= GENEVAL_COLORS
    assert V1.shapes == ("circle", "square", "triangle") and len(V1.colors) == 6  # v1 as the shipped models know it
    ref = np.asarray([V2.background, *V2.palette.values()], dtype=float)
    d = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    assert d[~np.eye(len(ref), dtype=bool)].min() > 90
    assert get_world("v2") is V2 and get_world(None) is V1


def test_detector_accuracy_on_rendered_scenes():
    result = detector_accuracy("v2", n=80, seed=1)
    assert set(result["shapes"]) == set(V2.shapes) and set(result["colors"]) == set(V2.colors)
    for group in (*result["shapes"].values(), *result["colors"].values()):
        assert group["n"] >= 10 and group["both"] >= 0.99, result
    assert result["false_positives"] == 0 and result["exact_scenes"] >= 0.99
    assert "| shape cross |" in format_accuracy_table(result)


def test_each_new_shape_is_found_at_the_smallest_size():
    side = 0.22 * 32  # v1's smallest object, below the smallest of v2 (0.26 of the canvas)
    for shape in V2.shapes:
        for color in V2.colors:
            img = render(Scene([ToyObject(shape, color, 16.3, 15.8, side)], 32, V2))
            assert [(d.cls, d.color) for d in detect(img, world=V2)] == [(shape, color)]


def task_accuracy(images, metas) -> dict[str, float]:
    rows = [{"tag": m["tag"], "correct": evaluate(detect(im, world=V2), m)[0], "metadata": json.dumps(m),
             "partial": 0.0} for im, m in zip(images, metas, strict=True)]
    return summarize(rows)["tasks"]


def test_garbage_scores_zero_on_every_task(metas):
    rng = np.random.default_rng(0)
    palette = np.asarray([V2.background, *V2.palette.values()], np.uint8)
    makers = [
        lambda: rng.integers(0, 256, (32, 32, 3)).astype(np.uint8),
        lambda: palette[rng.choice(len(palette), (32, 32), p=[0.5] + [0.5 / (len(palette) - 1)] * (len(palette) - 1))],
        lambda: np.full((32, 32, 3), palette[rng.integers(len(palette))], np.uint8),
    ]
    images = [makers[i % len(makers)]() for i in range(len(metas))]
    acc = task_accuracy(images, metas)
    assert set(acc) == set(TASKS) and max(acc.values()) == 0.0, acc


def test_decoded_random_latents_score_zero(metas):
    summary = random_latents_floor(load_prior(), world="v2")
    assert summary["total_images"] == len(metas) and max(summary["tasks"].values()) == 0.0, summary
    assert {s: max(v["tasks"].values()) for s, v in summary["splits"].items()} == {"seen": 0.0, "heldout": 0.0}


def test_v2_prompts_split_and_standard_error(metas):
    assert metas == make_toy_geneval(world="v2") == make_toy_geneval(world=V2)  # the shipped file, deterministic
    assert all(m["world"] == "v2" for m in metas)
    for split in ("seen", "heldout"):
        mine = [m for m in metas if m["split"] == split]
        assert [m["tag"] for m in mine] == [t for t in TASKS for _ in range(50)]
        assert all(meta_split(m) == split for m in mine if m["tag"] != "single_object")
        # one image per prompt, every accuracy at 0.5 (the worst case): the standard error of overall
        rows = [{"tag": m["tag"], "correct": i % 2 == 0} for i, m in enumerate(mine)]
        se = standard_errors(rows)
        assert se["overall"] == pytest.approx(0.5 / np.sqrt(6 * 50)) and se["overall"] <= 0.03
    for tag in TASKS:  # the two splits partition each task's prompts
        seen, held = all_metas(tag, world="v2", split="seen"), all_metas(tag, world="v2", split="heldout")
        assert len(seen) + len(held) == len(all_metas(tag, world="v2"))
        assert not {m["prompt"] for m in seen} & {m["prompt"] for m in held}
    held_kinds = {c[0] for m in metas if m["split"] == "heldout" for c in scene_kinds(m)}
    assert held_kinds == {"color_shape", "shape_pair", "relation", "count"}


def scene_kinds(meta: dict) -> set[tuple]:
    from parauni.toy.split import heldout_set, meta_compositions

    return meta_compositions(meta) & heldout_set(V2.heldout)


def test_standard_errors_by_hand():
    rows = [{"tag": "colors", "correct": c} for c in [True] * 3 + [False]] + [{"tag": "counting", "correct": True}]
    se = standard_errors(rows)
    assert se["tasks"] == {"colors": pytest.approx((0.75 * 0.25 / 4) ** 0.5), "counting": 0.0}
    assert se["overall"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5 / 2)
    assert se["overall_max"] == pytest.approx((0.25 / 4 + 0.25 / 1) ** 0.5 / 2)


def test_summaries_report_seen_and_heldout(tmp_path, metas):
    picked = [m for split in ("seen", "heldout") for t in TASKS
              for m in [x for x in metas if x["split"] == split and x["tag"] == t][:2]]
    rng = np.random.default_rng(3)
    truth = [[render(scene_from_metadata(m, rng))] for m in picked]
    write_geneval_layout(tmp_path / "truth", picked, truth)
    summary = score_dir(tmp_path / "truth")
    assert summary["overall"] == 1.0
    for split in ("seen", "heldout"):
        part = summary["splits"][split]
        assert part["total_images"] == 12 and part["overall"] == 1.0 and set(part["tasks"]) == set(TASKS)
        assert part["stderr"]["overall"] == 0.0 and part["stderr"]["overall_max"] == pytest.approx(
            (6 * 0.25 / 2) ** 0.5 / 6)
    assert json.loads((tmp_path / "truth" / "summary.json").read_text())["splits"]["heldout"]["overall"] == 1.0
    v1 = load_toy_geneval()[:3]
    write_geneval_layout(tmp_path / "v1", v1, [[render(scene_from_metadata(m, rng))] for m in v1])
    assert "splits" not in score_dir(tmp_path / "v1")  # v1 summaries are unchanged


def test_rewards_read_the_world_from_the_record():
    meta = next(m for m in all_metas("color_attr", world="v2")
                if [(i["color"], i["class"]) for i in m["include"]] == [("white", "cross"), ("black", "diamond")])
    img = render(scene_from_metadata(meta, np.random.default_rng(0)))
    assert ToyGenEvalReward("strict")([img], [meta["prompt"]], [meta]).tolist() == [1.0]
    v1_meta = {k: v for k, v in meta.items() if k != "world"}
    assert ToyGenEvalReward("strict")([img], [meta["prompt"]], [v1_meta]).tolist() == [0.0]  # v1 has no cross
    quality = ToyQualityReward()
    assert quality([img], None, [meta]).item() > 8.5
    assert quality([img], None, [v1_meta]).item() < 2  # no v1 colour: no object, the lowest score
    assert ToyQualityReward(world="v2")([img]).item() == quality([img], None, [meta]).item()


def test_scene_compositions():
    a, b = ToyObject("square", "red", 8, 6, 8), ToyObject("cross", "white", 8, 24, 8)
    comps = scene_compositions(Scene([a, b], 32, V2))
    assert ("relation", "square", "above", "cross") in comps  # held out in v2
    assert {("color_shape", "red", "square"), ("shape_pair", "cross", "square"), ("count", "cross", 1)} <= comps
    c = ToyObject("circle", "blue", 24, 6, 6)
    comps3 = scene_compositions(Scene([a, b, c], 32, V2))
    assert {p for p in comps3 if p[0] == "shape_pair"} == {("shape_pair", *sorted(p)) for p in
                                                           combinations(("square", "cross", "circle"), 2)}


def test_v2_tokenizer_words_cover_its_corpus():
    from parauni.toy.tokenizer import _TEMPLATES, known_words, toy_corpus, unknown_words

    special = ("<|im_start|>", "<|im_end|>")
    lines = [line for line in toy_corpus(n=150, world="v2") if line not in _TEMPLATES]
    assert [w for line in lines for w in unknown_words(line, special, known_words("v2"))] == []
    assert "crosses" in known_words("v2") and "diamond" not in known_words("v1")


def test_detector_accuracy_command(tmp_path, capsys):
    from parauni.cli import main

    main(["toy", "detector-accuracy", "--world", "v2", "--n", "6", "--blur", "0.5", "--out", str(tmp_path / "d.json")])
    result = json.loads((tmp_path / "d.json").read_text())
    assert result["scenes"] == 6 and result["blur"] == 0.5 and result["world"] == "v2"
    assert (tmp_path / "d.md").read_text().strip() in capsys.readouterr().out


def test_toy_eval_of_v2_limits_each_split(tmp_path):
    from parauni.toy.evaluation import toy_geneval, with_splits

    summary = toy_geneval("prior", tmp_path / "ev", images_per_prompt=1, steps=2, limit=1, world="v2")
    assert summary["total_images"] == 12 and set(summary["splits"]) == {"seen", "heldout"}
    assert all(set(s["tasks"]) == set(TASKS) for s in summary["splits"].values())
    rows = with_splits("prior", summary)
    assert list(rows)[0] == "prior" and "heldout" in list(rows)[2] and len(rows) == 3
    assert list(with_splits("x", {"tasks": {}, "overall": 0.0})) == ["x"]
