"""Toy GenEval: prompt file, detector validity on rendered truth and wrong images, scoring rules, layout."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parauni.eval.bundled import geneval_metadata_path
from parauni.eval.geneval_rules import relative_position
from parauni.toy.detect import Detection, detect, gaussian_blur
from parauni.toy.geneval import (
    evaluate,
    load_toy_geneval,
    make_toy_geneval,
    partial_credit,
    score_dir,
    score_image,
    write_geneval_layout,
)
from parauni.toy.prompts import TASKS, meta_from_fields
from parauni.toy.world import INVERSE_RELATION, render, scene_from_metadata

REAL_GENEVAL = geneval_metadata_path()  # GenEval's own prompts, bundled with the package
SEEDS = (0, 1)


def signature(meta: dict) -> frozenset:
    """What a prompt asks for; two prompts with the same signature accept the same images."""
    inc = meta["include"]
    if meta["tag"] == "position":
        a, b, rel = inc[1]["class"], inc[0]["class"], inc[1]["position"][0]
        return frozenset({(a, rel, b), (b, INVERSE_RELATION[rel], a)})
    return frozenset((r["class"], r["count"], r.get("color")) for r in inc)


@pytest.fixture(scope="module")
def metas() -> list[dict]:
    return load_toy_geneval()


def accuracy(results: list[tuple[str, bool]]) -> dict[str, float]:
    per = defaultdict(list)
    for tag, ok in results:
        per[tag].append(ok)
    return {tag: float(np.mean(v)) for tag, v in per.items()}


def test_metadata_file_is_the_generator_output(metas):
    assert metas == make_toy_geneval() == make_toy_geneval(seed=0)
    assert make_toy_geneval(seed=1) != metas
    counts = {tag: sum(m["tag"] == tag for m in metas) for tag in TASKS}
    assert all(n >= 50 for n in counts.values()), counts
    assert [m["tag"] for m in metas] == sorted((m["tag"] for m in metas), key=TASKS.index)
    for m in metas:
        assert meta_from_fields(m) == m
        assert list(m) == (["tag", "include", "exclude", "prompt"] if m["tag"] == "counting"
                           else ["tag", "include", "prompt"])
    distinct = {tag: len({json.dumps(m) for m in metas if m["tag"] == tag}) for tag in TASKS}
    assert distinct == {"single_object": 3, "two_object": 6, "counting": 9, "colors": 18,
                        "position": 24, "color_attr": 50}


def test_same_schema_as_real_geneval(metas):
    real = [json.loads(line) for line in REAL_GENEVAL.read_text().splitlines()]
    shape = lambda m: (m["tag"], tuple(m), tuple(tuple(r) for r in m["include"]),  # noqa: E731
                       tuple(tuple(r) for r in m.get("exclude", [])))
    assert {shape(m) for m in metas} == {shape(m) for m in real}


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    """Per-channel Gaussian blur (zero padding, as in the reward tests)."""
    out = np.stack([gaussian_blur(img[..., c].astype(np.float32), sigma) for c in range(3)], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_ground_truth_is_judged_correct(metas):
    rng = np.random.default_rng(0)
    clean, noisy, blurry = [], [], []
    for seed in SEEDS:
        for i, meta in enumerate(metas):
            img = render(scene_from_metadata(meta, np.random.default_rng([seed, i])))
            ok, reason, partial = score_image(img, meta)
            assert (partial == 1.0) == ok
            clean.append((meta["tag"], ok))
            noise = rng.normal(0, 8, img.shape)
            ok_noisy, _, _ = score_image(np.clip(np.rint(img + noise), 0, 255).astype(np.uint8), meta)
            noisy.append((meta["tag"], ok_noisy))
            blurry.append((meta["tag"], score_image(blurred(img, 1.2), meta)[0]))
    for name, res in (("clean", clean), ("noise 8/255", noisy), ("blur 1.2 px", blurry)):
        acc = accuracy(res)
        print(name, acc)
        assert set(acc) == set(TASKS) and min(acc.values()) >= 0.99, (name, acc)


def test_ground_truth_at_64px(metas):
    res = []
    for i, meta in enumerate(metas[::2]):
        img = render(scene_from_metadata(meta, np.random.default_rng([2, i]), size=64))
        res.append((meta["tag"], score_image(img, meta)[0]))
    acc = accuracy(res)
    assert min(acc.values()) >= 0.99, acc


def test_images_of_a_different_prompt_are_judged_wrong(metas):
    res = []
    for i, meta in enumerate(metas):
        same_task = [m for m in metas if m["tag"] == meta["tag"] and signature(m) != signature(meta)]
        other = same_task[i % len(same_task)]
        for seed in SEEDS:
            img = render(scene_from_metadata(other, np.random.default_rng([seed, i])))
            ok, reason, partial = score_image(img, meta)
            assert (partial == 1.0) == ok and 0.0 <= partial <= 1.0
            assert ok or reason
            res.append((meta["tag"], ok))
    acc = accuracy(res)
    print("wrong prompt", acc)
    assert set(acc) == set(TASKS) and max(acc.values()) <= 0.05, acc


def test_detector_finds_every_rendered_object(metas):
    meta = next(m for m in metas if m["tag"] == "counting" and m["include"][0]["count"] == 4)
    scene = scene_from_metadata(meta, np.random.default_rng(0))
    img = render(scene)
    for image in (img, Image.fromarray(img), img.astype(np.float32) / 255):
        dets = detect(image)
        assert sorted((d.cls, d.color) for d in dets) == sorted((o.shape, o.color) for o in scene.objects)
    for o in scene.objects:
        d = min(dets, key=lambda d: np.abs(np.subtract(d.bbox, o.bbox)).sum())
        assert np.abs(np.subtract(d.bbox, o.bbox)).max() < 0.5
    assert detect(np.full((32, 32, 3), 128, np.uint8)) == []


def test_position_rule_on_hand_computed_boxes():
    assert relative_position((0, 0, 10, 10), (20, 0, 30, 10)) == {"left of"}  # dx = -18 / 20
    assert relative_position((20, 0, 30, 10), (0, 0, 10, 10)) == {"right of"}
    assert relative_position((0, 20, 10, 30), (0, 0, 10, 10)) == {"below"}
    assert relative_position((0, 0, 10, 10), (0, 20, 10, 30)) == {"above"}
    # offset (-10, -10), dims 2 + 2: revised (-9.6, -9.6) / 14.14 = (-0.68, -0.68) -> both relations
    assert relative_position((-1, -1, 1, 1), (9, 9, 11, 11)) == {"left of", "above"}
    # offset (-10, -3): revised (-9.6, -2.6) / 10.44 = (-0.92, -0.25)
    assert relative_position((-1, -1, 1, 1), (9, 2, 11, 4)) == {"left of"}
    # offset (-1, -1) shrinks to zero with dims 10 + 10: no relation
    assert relative_position((0, 0, 10, 10), (1, 1, 11, 11)) == set()
    # offset (-6, 0), dims 10 + 10: revised -4, dx = -4 / 6 = -0.67 -> left of; offset (-2.5, 0): none
    assert relative_position((0, 0, 10, 10), (6, 0, 16, 10)) == {"left of"}
    assert relative_position((0, 0, 10, 10), (2.5, 0, 12.5, 10)) == set()


def det(cls, color, box, conf=0.9):
    return Detection(cls, color, box, conf, 10)


def test_geneval_rules_on_detections():
    pos = {"tag": "position", "include": [{"class": "square", "count": 1},
                                          {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    left = [det("square", "red", (20, 0, 30, 10)), det("circle", "blue", (0, 0, 10, 10))]
    assert evaluate(left, pos) == (True, "")
    ok, reason = evaluate([det("square", "red", (0, 0, 10, 10)), det("circle", "blue", (20, 0, 30, 10))], pos)
    assert not ok and reason == "expected circle left of target, found right of target"
    ok, reason = evaluate([det("circle", "blue", (0, 0, 10, 10))], pos)
    assert not ok and "expected square>=1, found 0" in reason and "no target for circle" in reason
    color = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}
    dets = [det("circle", "blue", (0, 0, 5, 5), 0.95), det("circle", "red", (9, 9, 14, 14), 0.6)]
    assert not evaluate(dets, color)[0]  # only the most confident circle is checked
    assert partial_credit(dets, color) == 0.0
    count = {"tag": "counting", "include": [{"class": "circle", "count": 2}],
             "exclude": [{"class": "circle", "count": 3}]}
    circles = [det("circle", "red", (i * 8, 0, i * 8 + 5, 5)) for i in range(4)]
    assert evaluate(circles[:2], count)[0] and partial_credit(circles[:2], count) == 1.0
    assert evaluate(circles[:3], count) == (False, "expected circle<3, found 3")
    assert partial_credit(circles[:3], count) == 0.5 and partial_credit(circles[:1], count) == 0.5
    assert partial_credit(circles, count) == 0.0 and partial_credit([], count) == 0.0


def test_layout_roundtrip(tmp_path, metas):
    chosen = [next(m for m in metas if m["tag"] == tag) for tag in TASKS] * 2
    images = []
    for i, meta in enumerate(chosen):
        imgs = [render(scene_from_metadata(meta, np.random.default_rng([i, k]))) for k in range(2)]
        if i >= len(TASKS):  # second copy: one wrong image (another task's prompt)
            imgs[1] = render(scene_from_metadata(chosen[(i + 1) % len(TASKS)], np.random.default_rng(i)))
        images.append(imgs)
    write_geneval_layout(tmp_path, chosen, images)
    assert (tmp_path / "00000" / "samples" / "0001.png").is_file()
    assert json.loads((tmp_path / "00003" / "metadata.jsonl").read_text()) == chosen[3]
    summary = score_dir(tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * len(chosen) == summary["total_images"]
    for r in lines:
        assert {"filename", "tag", "prompt", "correct", "reason", "metadata", "details", "partial"} <= set(r)
        assert json.loads(r["metadata"])["prompt"] == r["prompt"] and Path(r["filename"]).is_file()
        assert isinstance(json.loads(r["details"]), list)
    assert set(summary["tasks"]) == set(TASKS)
    assert summary["overall"] == pytest.approx(np.mean(list(summary["tasks"].values())))
    assert sum(not r["correct"] for r in lines) >= 5 and summary["overall"] < 1.0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_strict_score_fails_extra_classes_and_counts_objects():
    """The shortcut of the three-shape world: one of each shape passes GenEval's single-object rule, not the
    strict one; the summary counts detected objects per image."""
    from parauni.toy.geneval import strictly_correct, summarize

    meta = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    all_three = [det("circle", "red", (0, 0, 8, 8)), det("square", "blue", (12, 0, 20, 8)),
                 det("triangle", "green", (24, 0, 32, 8))]
    assert evaluate(all_three, meta)[0]
    as_json = [d.to_json() for d in all_three]
    assert not strictly_correct(True, as_json, meta) and strictly_correct(True, as_json[:1], meta)
    rows = [{"tag": "single_object", "correct": True, "partial": 1.0, "metadata": json.dumps(meta),
             "details": json.dumps(d)}
            for d in (as_json, as_json[:1])]
    s = summarize(rows)
    assert s["tasks"]["single_object"] == 1.0 and s["strict_tasks"]["single_object"] == 0.5
    assert s["strict_overall"] == 0.5 and s["objects_per_image"] == 2.0


def test_any_correct_is_pass_at_k_per_prompt_folder():
    """``any_correct_tasks``: per task, the share of prompt folders with at least one correct image among their
    k. Two single-object folders (one image of two right, none right) and a two-object folder with both right:
    accuracy 0.25 and 1.0, pass@2 0.5 and 1.0. Folders with the same prompt stay apart."""
    from parauni.toy.geneval import summarize

    one = json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                      "prompt": "a photo of a circle"})
    two = json.dumps({"tag": "two_object", "include": [{"class": "circle", "count": 1},
                                                       {"class": "square", "count": 1}],
                      "prompt": "a photo of a circle and a square"})
    verdicts = {("00000", one): [True, False], ("00001", one): [False, False], ("00002", two): [True, True]}
    rows = [{"filename": f"out/{folder}/samples/{k:04d}.png", "tag": json.loads(meta)["tag"], "correct": ok,
             "partial": float(ok), "metadata": meta} for (folder, meta), oks in verdicts.items()
            for k, ok in enumerate(oks)]
    s = summarize(rows)
    assert s["tasks"] == {"single_object": 0.25, "two_object": 1.0}
    assert s["any_correct_tasks"] == {"single_object": 0.5, "two_object": 1.0}
    assert s["correct_prompts"] == 1.0  # GenEval's own count merges the two folders of one prompt


def test_record_without_objects_is_an_error(tmp_path, capsys):
    """A record with an unknown tag and no ``include`` used to pass every image; now it names the tag."""
    from parauni.cli import main

    with pytest.raises(ValueError, match="tag 'mystery'.*no 'include'"):
        evaluate([], {"tag": "mystery", "prompt": "a photo of a unicorn"})
    with pytest.raises(ValueError, match="tag 'mystery'"):
        partial_credit([], {"tag": "mystery", "prompt": "a photo of a unicorn"})
    meta = tmp_path / "m.jsonl"
    meta.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                "prompt": "a photo of a circle"}) + "\n"
                    + json.dumps({"tag": "mystery", "prompt": "a photo of a unicorn"}) + "\n")
    assert main(["eval", "geneval", "--model", "prior", "--metadata", str(meta), "--out", str(tmp_path / "g"),
                 "--images-per-prompt", "1", "--steps", "1", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert "a photo of a unicorn" in err and "'mystery'" in err
    assert main(["toy", "eval", "--model", "prior", "--metadata", str(meta), "--images-per-prompt", "1",
                 "--steps", "1", "--threads", "1"]) == 2
    assert not (tmp_path / "g" / "summary.json").exists()


def test_toy_scorer_runs_the_core_rule_engine(metas):
    """The toy scorer is GenEval's rule engine (parauni.eval.geneval_rules) fed with toy detections: every toy
    detection counts (TOY_SELECTION), colours are the detector's own; GenEval's selection is an explicit option."""
    from parauni.eval import geneval_rules as rules
    from parauni.toy.geneval import TOY_SELECTION

    rng = np.random.default_rng(3)
    for i, meta in enumerate(metas[::10]):
        img = render(scene_from_metadata(metas[(i * 7) % len(metas)], np.random.default_rng([3, i])))
        dets = detect(img)
        objects = rules.select_objects(dets, meta["tag"], TOY_SELECTION)
        assert evaluate(dets, meta) == rules.evaluate(objects, meta, palette=None)
    for _ in range(200):  # one position rule for the toy world and the rules
        a, b = rng.uniform(0, 32, 2), rng.uniform(0, 32, 2)
        box_a, box_b = (*a, *(a + rng.uniform(1, 12, 2))), (*b, *(b + rng.uniform(1, 12, 2)))
        assert relative_position(box_a, box_b) == rules.relative_position(box_a, box_b)
    # GenEval's counting threshold (0.9) is not the toy scorer's: a 0.8 detection counts only for the toy one
    meta = {"tag": "counting", "include": [{"class": "circle", "count": 2}],
            "exclude": [{"class": "circle", "count": 3}], "prompt": "a photo of two circles"}
    two = [det("circle", "red", (0, 0, 5, 5), 0.95), det("circle", "red", (9, 0, 14, 5), 0.8)]
    assert evaluate(two, meta) == (True, "")
    assert evaluate(two, meta, rules.GENEVAL) == (False, "expected circle>=2, found 1")
