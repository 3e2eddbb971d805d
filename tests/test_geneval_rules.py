"""GenEval's rules (parauni.eval.geneval_rules) on hand-made detections: every task, the detection and counting
thresholds, the 16-object cap, the position margin, colours, exclusions, the results files and the summary."""

import json

import pytest

from parauni.eval import geneval_rules as rules
from parauni.eval.geneval_rules import GENEVAL, Detection, Selection, evaluate, relative_position, select_objects


def det(cls, box, conf=0.95, color=None):
    return Detection(cls, tuple(float(v) for v in box), conf, color=color)


def judge(dets, meta, classify_colors=None, selection=GENEVAL):
    return evaluate(select_objects(dets, meta["tag"], selection), meta, classify_colors)


def test_constants_are_genevals():
    """evaluate_images.py:76,84,113-117,286-290."""
    assert (rules.THRESHOLD, rules.COUNTING_THRESHOLD, rules.MAX_OBJECTS, rules.MAX_OVERLAP,
            rules.POSITION_THRESHOLD) == (0.3, 0.9, 16, 1.0, 0.1)
    assert rules.COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
    assert [t.format(c="red", classname="car") for t in rules.COLOR_TEMPLATES] == [
        "a photo of a red car", "a photo of a red-colored car", "a photo of a red object"]
    assert rules.COLOR_BACKGROUND == "#999"
    assert rules.TASKS == ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def test_single_object_threshold_is_strict():
    meta = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    assert judge([det("dog", (0, 0, 10, 10), 0.31)], meta) == (True, "")
    # kept only when strictly above 0.3 (evaluate_images.py:233)
    assert judge([det("dog", (0, 0, 10, 10), 0.3)], meta) == (False, "expected dog>=1, found 0")
    # extra objects of other classes do not fail an image
    assert judge([det("dog", (0, 0, 10, 10)), det("cat", (20, 0, 30, 10))], meta)[0]


def test_two_object():
    meta = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
            "prompt": "a photo of a dog and a cat"}
    assert judge([det("dog", (0, 0, 10, 10)), det("cat", (20, 0, 30, 10), 0.4)], meta) == (True, "")
    assert judge([det("dog", (0, 0, 10, 10))], meta) == (False, "expected cat>=1, found 0")


def test_counting_uses_the_stricter_threshold_and_exclusions():
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}],
            "prompt": "a photo of three dogs"}
    dogs = [det("dog", (i * 20, 0, i * 20 + 10, 10), c) for i, c in enumerate((0.99, 0.95, 0.91, 0.85))]
    # 0.85 is above 0.3 but not above the counting threshold 0.9 (evaluate_images.py:230)
    assert judge(dogs, meta) == (True, "")
    assert judge(dogs[:2] + dogs[3:], meta) == (False, "expected dog>=3, found 2")
    four = dogs[:3] + [det("dog", (80, 0, 90, 10), 0.92)]
    assert judge(four, meta) == (False, "expected dog<4, found 4")
    # the same detections under another tag use 0.3: the fourth dog counts and the exclusion fails the image
    assert judge(dogs, {**meta, "tag": "two_object"}) == (False, "expected dog<4, found 4")
    # no counting threshold (the toy selection): 0.85 counts
    assert not judge(dogs, meta, selection=Selection(counting_threshold=None))[0]


def test_at_most_16_objects_per_class():
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 17}],
            "prompt": "a photo of two cups"}
    cups = [det("cup", (i, 0, i + 1, 1), 0.91 + i / 1000) for i in range(20)]
    kept = select_objects(cups, "counting")["cup"]
    assert len(kept) == 16 and [d.confidence for d in kept] == sorted((d.confidence for d in cups), reverse=True)[:16]
    # 20 detections, but GenEval judges at most 16 of a class (evaluate_images.py:234): the exclusion holds
    assert judge(cups, meta) == (True, "")
    assert judge(cups, meta, selection=Selection(max_objects=None)) == (False, "expected cup<17, found 20")


def test_optional_nms_uses_genevals_iou():
    assert rules.compute_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert rules.compute_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)  # +1 pixel areas
    dets = [det("cup", (0, 0, 9, 9), 0.9), det("cup", (1, 0, 10, 9), 0.8), det("cup", (30, 0, 39, 9), 0.7)]
    assert len(select_objects(dets)["cup"]) == 3  # GenEval's default: no NMS
    assert [d.confidence for d in select_objects(dets, selection=Selection(max_overlap=0.5))["cup"]] == [0.9, 0.7]


def test_position_margin():
    # offset (-6, 0), sizes 10 + 10: shrunk by 0.1 * 20 = 2 to -4, dx = -4 / 6 -> left of
    assert relative_position((0, 0, 10, 10), (6, 0, 16, 10)) == {"left of"}
    # offset (-2.5, 0) shrinks to 0 with the margin: no relation (without a margin it would be left of)
    assert relative_position((0, 0, 10, 10), (2.5, 0, 12.5, 10)) == set()
    assert relative_position((0, 0, 10, 10), (2.5, 0, 12.5, 10), threshold=0.0) == {"left of"}
    # diagonal: both components beyond 0.5
    assert relative_position((-1, -1, 1, 1), (9, 9, 11, 11)) == {"left of", "above"}
    assert relative_position((0, 20, 10, 30), (0, 0, 10, 10)) == {"below"}
    assert relative_position((20, 0, 30, 10), (0, 0, 10, 10)) == {"right of"}

    meta = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["left of", 0]}],
            "prompt": "a photo of a dog left of a cat"}
    assert judge([det("cat", (6, 0, 16, 10)), det("dog", (0, 0, 10, 10))], meta) == (True, "")
    assert judge([det("cat", (2.5, 0, 12.5, 10)), det("dog", (0, 0, 10, 10))], meta) == (
        False, "expected dog left of target, found  target")
    assert judge([det("cat", (0, 0, 10, 10)), det("dog", (20, 0, 30, 10))], meta) == (
        False, "expected dog left of target, found right of target")
    assert judge([det("dog", (0, 0, 10, 10))], meta) == (
        False, "expected cat>=1, found 0\nno target for dog to be left of")


def test_colors_use_the_classifier_on_the_judged_objects_only():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
            "prompt": "a photo of a red car"}
    calls = []

    def classify(found, classname):
        calls.append((classname, [d.confidence for d in found]))
        return [d.color for d in found]

    cars = [det("car", (0, 0, 10, 10), 0.9, "blue"), det("car", (20, 0, 30, 10), 0.8, "red")]
    # only the most confident car is checked (evaluate_images.py:176,183)
    assert judge(cars, meta, classify) == (False, "expected red car>=1, found 0 red; and 1 blue")
    assert calls == [("car", [0.9])]
    assert judge(cars[1:], meta, classify) == (True, "")
    calls.clear()
    assert judge([], meta, classify) == (False, "expected car>=1, found 0") and calls == []
    # two objects: the tally lists GenEval's colour order (red before blue), not the order found
    two = {**meta, "include": [{"class": "car", "count": 2, "color": "red"}]}
    pair = [det("car", (0, 0, 10, 10), 0.9, "blue"), det("car", (20, 0, 30, 10), 0.8, "red")]
    assert judge(pair, two) == (False, "expected red car>=2, found 1 red; and 1 red, 1 blue")


def test_color_attr_and_a_failed_colour_is_no_position_target():
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"},
                                             {"class": "bench", "count": 1, "color": "green"}],
            "prompt": "a photo of a red car and a green bench"}
    good = [det("car", (0, 0, 10, 10), color="red"), det("bench", (20, 0, 30, 10), color="green")]
    assert judge(good, meta) == (True, "")
    bad = [det("car", (0, 0, 10, 10), color="red"), det("bench", (20, 0, 30, 10), color="white")]
    assert judge(bad, meta) == (False, "expected green bench>=1, found 0 green; and 1 white")
    pos = {"tag": "position", "include": [{"class": "bench", "count": 1, "color": "green"},
                                          {"class": "car", "count": 1, "position": ["left of", 0]}], "prompt": "p"}
    assert judge(bad, pos) == (False, "expected green bench>=1, found 0 green; and 1 white\n"
                                      "no target for car to be left of")


def test_record_without_include_is_an_error():
    with pytest.raises(ValueError, match="tag 'mystery'.*no 'include'"):
        evaluate({}, {"tag": "mystery", "prompt": "a unicorn"})


def test_results_and_summary_in_the_official_format(tmp_path):
    meta_a = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    meta_b = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "a photo of two dogs"}
    objects = select_objects([det("dog", (0, 0, 10, 10), 0.5)], "single_object")
    row = rules.result_record("x/00000/samples/0000.png", meta_a, True, "", rules.official_details(objects))
    assert list(row) == list(rules.RESULT_KEYS)
    assert json.loads(row["metadata"]) == meta_a and json.loads(row["details"]) == {"dog": [[0, 0, 10, 10, 0.5]]}
    rows = [row, {**row, "correct": False},  # single_object: 1 of 2 images, one prompt
            rules.result_record("y", meta_b, True, "", {})]  # counting: 1 of 1
    summary = rules.write_results(rows, tmp_path / "results.jsonl")
    assert summary["tasks"] == {"single_object": 0.5, "counting": 1.0}
    assert summary["overall"] == 0.75  # the mean of the tasks, not of the images (summary_scores.py:45)
    assert summary["correct_images"] == pytest.approx(2 / 3)
    assert (summary["total_images"], summary["total_prompts"], summary["correct_prompts"]) == (3, 2, 1.0)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()] == rows


def test_image_files_walks_genevals_layout(tmp_path):
    for i in (1, 0):
        (tmp_path / f"{i:05d}" / "samples").mkdir(parents=True)
        (tmp_path / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps({"tag": "t", "prompt": str(i)}) + "\n")
        for name in ("0001.png", "0000.png", "grid.png"):
            (tmp_path / f"{i:05d}" / "samples" / name).write_bytes(b"")
    (tmp_path / "notes").mkdir()
    got = [(p.relative_to(tmp_path).as_posix(), m["prompt"]) for p, m in rules.image_files(tmp_path)]
    assert got == [("00000/samples/0000.png", "0"), ("00000/samples/0001.png", "0"),
                   ("00001/samples/0000.png", "1"), ("00001/samples/0001.png", "1")]
