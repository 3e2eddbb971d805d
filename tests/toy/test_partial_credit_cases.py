"""Hand-computed cases of the toy GenEval partial credit (``parauni.toy.geneval.partial_credit``) for counts of two
and more with colour and position clauses, and the ``exclude`` rule, written against its documented behaviour:
mean over ``include`` entries of ``count_term * colour_term * position_term`` with
``count_term = max(0, 1 - (shortfall + excess) / count)`` (excess: detections at or beyond an ``exclude`` limit on
the same class), ``colour_term`` = right-coloured detections among the ``count`` most confident / ``count``,
``position_term`` = share of (object, target) pairs in the relation (0 without targets), and 0 for a violated
``exclude`` on a class not included."""

import pytest

from parauni.toy.detect import Detection
from parauni.toy.geneval import evaluate, partial_credit


def det(cls, color, x, conf, y=10.0, size=8.0):
    return Detection(cls, color, (x, y, x + size, y + size), conf, int(size * size))


RED2 = {"tag": "color_attr", "prompt": "two red circles", "include": [{"class": "circle", "count": 2, "color": "red"}]}


def test_colour_with_count_two():
    two_red = [det("circle", "red", 0, 0.9), det("circle", "red", 12, 0.8)]
    assert partial_credit(two_red, RED2) == 1.0 and evaluate(two_red, RED2)[0]
    one_red_one_blue = [det("circle", "red", 0, 0.9), det("circle", "blue", 12, 0.8)]
    assert partial_credit(one_red_one_blue, RED2) == 0.5  # count 1, colour 1 of 2 slots
    # only the two most confident circles are judged: the third, red one does not fill the blue one's slot
    third = [*one_red_one_blue, det("circle", "red", 24, 0.7)]
    assert partial_credit(third, RED2) == 0.5 and not evaluate(third, RED2)[0]
    # one red circle: count term 1 - 1/2, colour term 1/2 (the slot count stays 2)
    assert partial_credit([det("circle", "red", 0, 0.9)], RED2) == 0.25
    assert partial_credit([det("square", "red", 0, 0.9)], RED2) == 0.0


def test_colour_with_count_two_and_an_exclude_limit():
    meta = {**RED2, "exclude": [{"class": "circle", "count": 3}]}
    three_red = [det("circle", "red", 12 * i, 0.9 - 0.1 * i) for i in range(3)]
    # excess = 3 - 3 + 1 = 1: count term 1 - (0 + 1) / 2; colour term 2 / 2
    assert partial_credit(three_red, meta) == 0.5 and not evaluate(three_red, meta)[0]
    four = [*three_red, det("circle", "red", 40, 0.5)]
    assert partial_credit(four, meta) == 0.0  # excess 2 of count 2


POSITION = {"tag": "position", "prompt": "two circles left of a square",
            "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 2, "position": ["left of", 0]}]}


def test_position_with_count_two():
    square = det("square", "blue", 20, 0.9)
    left_a, left_b = det("circle", "red", 0, 0.8), det("circle", "red", 2, 0.7, y=20)
    right = det("circle", "red", 40, 0.6)
    assert partial_credit([square, left_a, left_b], POSITION) == 1.0 and evaluate([square, left_a, left_b], POSITION)[0]
    # one of the two (circle, square) pairs in the relation: entries (1, 1 x 1/2), mean 0.75
    assert partial_credit([square, left_a, right], POSITION) == 0.75
    # one circle only: count term 1/2 and its one pair is right: (1, 1/2) -> 0.75
    assert partial_credit([square, left_a], POSITION) == 0.75
    # the less confident third circle is not judged
    assert partial_credit([square, left_a, left_b, right], POSITION) == 1.0
    # no target: the square's entry 0, the circles' position term 0 (no pairs)
    assert partial_credit([left_a, left_b], POSITION) == 0.0


def test_position_against_two_targets():
    meta = {"tag": "position", "prompt": "a circle above two squares",
            "include": [{"class": "square", "count": 2}, {"class": "circle", "count": 1, "position": ["above", 0]}]}
    circle = det("circle", "red", 10, 0.9, y=0)
    below_1, below_2, beside = det("square", "blue", 4, 0.8, y=30), det("square", "blue", 16, 0.7, y=30), \
        det("square", "blue", 40, 0.6, y=0)
    assert partial_credit([circle, below_1, below_2], meta) == 1.0
    # the circle is above one of its two targets: (1, 1/2) -> 0.75
    assert partial_credit([circle, below_1, beside], meta) == 0.75


def test_exclude_on_a_class_not_included():
    meta = {"tag": "single_object", "prompt": "a circle", "include": [{"class": "circle", "count": 1}],
            "exclude": [{"class": "square", "count": 2}]}
    circle = det("circle", "red", 0, 0.9)
    assert partial_credit([circle, det("square", "red", 20, 0.8)], meta) == 1.0  # one square: below the limit
    squares = [circle, det("square", "red", 20, 0.8), det("square", "red", 40, 0.7)]
    assert partial_credit(squares, meta) == 0.0 and not evaluate(squares, meta)[0]  # at the limit: no credit
    # the exclude zeroes even partial credit of the includes
    two = {**meta, "include": [{"class": "circle", "count": 2}]}
    assert partial_credit([circle], two) == 0.5
    assert partial_credit(squares, two) == 0.0


@pytest.mark.parametrize("n, expected", [(0, 0.0), (1, 1 / 3), (2, 2 / 3), (3, 1.0), (4, 2 / 3), (5, 1 / 3)])
def test_counting_three_with_exclude_four(n, expected):
    meta = {"tag": "counting", "prompt": "three circles", "include": [{"class": "circle", "count": 3}],
            "exclude": [{"class": "circle", "count": 4}]}
    dets = [det("circle", "red", 10 * i, 0.9 - 0.05 * i) for i in range(n)]
    assert partial_credit(dets, meta) == pytest.approx(expected)
