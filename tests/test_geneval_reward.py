"""Flow-GRPO's / DiffusionNFT's GenEval reward (``evaluate_reward`` of the reference's GenEval server) on cases whose
values are worked out here by hand from the reference's rules, and the toy reward's modes on rendered scenes."""

from __future__ import annotations

import pytest

from parauni.errors import ConfigError
from parauni.eval.geneval_reward import flow_grpo_reward
from parauni.eval.geneval_rules import Detection
from parauni.toy.rewards.geneval import ToyGenEvalReward
from parauni.toy.world import Scene, ToyObject, render


def det(cls, x, y=50.0, color=None, size=10.0, conf=0.9):
    return Detection(cls, (x, y, x + size, y + size), conf, color=color)


def objects(*dets):
    out = {}
    for d in sorted(dets, key=lambda d: -d.confidence):
        out.setdefault(d.cls, []).append(d)
    return out


SINGLE = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
TWO = {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}],
       "prompt": "a photo of a dog and a cat"}
COLOR = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}
POSITION = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                           {"class": "dog", "count": 1, "position": ["right of", 0]}],
            "prompt": "a photo of a dog right of a cat"}
COUNT3 = {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}],
          "prompt": "a photo of three dogs"}
TWO_RED = {"tag": "colors", "include": [{"class": "dog", "count": 2, "color": "red"}], "prompt": "two red dogs"}
ATTR = {"tag": "color_attr", "include": [{"class": "dog", "count": 1, "color": "red"},
                                         {"class": "cat", "count": 1, "color": "blue"}],
        "prompt": "a photo of a red dog and a blue cat"}


@pytest.mark.parametrize("meta, dets, strict, partial", [
    # terms [dog 1-|1-2|/1 = 0, cat 1] -> 0.5
    (TWO, [det("dog", 0), det("dog", 30), det("cat", 60)], False, 0.5),
    # [1 - |1-3|/1] = -1: the count term is not clipped
    (SINGLE, [det("dog", 0), det("dog", 30), det("dog", 60)], False, -1.0),
    # [count 1, colour 1 - |1-0|/1 = 0] -> 0.5
    (COLOR, [det("dog", 0, color="blue")], False, 0.5),
    # [cat 1, dog 1, the failed pair 0, then 1 anyway (the reference's quirk)] -> 0.75
    (POSITION, [det("cat", 60), det("dog", 0)], False, 0.75),
    # [cat 1, dog 1 - 1/1 = 0, 0 for its position clause] -> 1/3
    (POSITION, [det("cat", 60)], False, 1 / 3),
    # the target entry missing: [cat 0, dog 1, 0 for "no target"] -> 1/3
    (POSITION, [det("dog", 60)], False, 1 / 3),
    (POSITION, [det("cat", 0), det("dog", 60)], True, 1.0),
    # [1 - |3-4|/3] = 2/3; exclude entries are not read
    (COUNT3, [det("dog", x) for x in (0, 20, 40, 60)], False, 2 / 3),
    # [count 1, colour 1 - |2-1|/2 = 0.5] -> 0.75
    (TWO_RED, [det("dog", 0, color="red"), det("dog", 30, color="green")], False, 0.75),
    # [dog 1, red 1, cat 1, blue 1 - 1 = 0] -> 0.75
    (ATTR, [det("dog", 0, color="red"), det("cat", 30, color="green")], False, 0.75),
    # an object of a class the prompt does not name costs nothing
    (SINGLE, [det("dog", 0), det("cat", 30)], True, 1.0),
])
def test_reference_cases(meta, dets, strict, partial):
    got_strict, got_partial = flow_grpo_reward(objects(*dets), meta)
    assert got_strict is strict
    assert got_partial == pytest.approx(partial)


def test_position_quirk_can_be_switched_off():
    # [cat 1, dog 1, failed pair 0] -> 2/3 without the extra 1
    assert flow_grpo_reward(objects(det("cat", 60), det("dog", 0)), POSITION, position_quirk=False)[1] == \
        pytest.approx(2 / 3)


def _scene(*objs):
    return render(Scene([ToyObject(shape, color, cx, cy, 8.0) for shape, color, cx, cy in objs], size=32))


def test_toy_reward_modes_on_rendered_scenes():
    meta = {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
            "exclude": [{"class": "circle", "count": 2}], "prompt": "a photo of a circle"}
    one = _scene(("circle", "red", 10, 16))
    two = _scene(("circle", "red", 8, 16), ("circle", "blue", 24, 16))
    extra = _scene(("circle", "red", 8, 16), ("square", "blue", 24, 16))
    scores = {mode: ToyGenEvalReward(mode)([one, two, extra], ["p"] * 3, [meta] * 3).tolist()
              for mode in ("partial", "strict", "geneval", "clipped")}
    assert scores["partial"] == pytest.approx([1.0, 0.0, 1.0])  # 1 - |1-2|/1 = 0 for two circles
    assert scores["strict"] == [1.0, 0.0, 1.0]
    assert scores["geneval"] == [1.0, 0.0, 1.0]  # GenEval's exclude fails the second circle
    assert scores["clipped"] == pytest.approx([1.0, 0.0, 1.0])
    assert ToyGenEvalReward()([one], ["p"], [None]).isnan().all()
    with pytest.raises(ConfigError, match="unknown mode"):
        ToyGenEvalReward("nope")
