"""GenEval's prompt templates and metadata records, plus freer captions of toy scenes.

The wording follows GenEval's prompt generator exactly: ``an`` before a word starting with a vowel
letter ("an orange circle"), plurals by appending ``es`` to words ending in ``s`` and ``s``
otherwise ("buses", "toothbrushs", "circles"), number words for counts. Metadata dicts keep GenEval's
key order: ``tag``, ``include``, optional ``exclude``, ``prompt``; records of a world other than v1 add
``world`` (its name) after them, so that scorers and rewards detect that world's shapes and colours.
"""

from __future__ import annotations

import copy
from collections import Counter
from functools import lru_cache

import numpy as np

from parauni.eval.geneval import TASK_ORDER
from parauni.eval.geneval_rules import relative_position
from parauni.rl.prompts import FixedPrompts
from parauni.toy.split import SPLITS, meta_split
from parauni.toy.world import COLORS, RELATIONS, SHAPES, Scene
from parauni.toy.worlds import V1, World, get_world

from ..errors import UsageError

TASKS: tuple[str, ...] = TASK_ORDER  # GenEval's six tasks, in its order
NUMBER_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
)


def with_article(word: str) -> str:
    """``"an apple"`` / ``"a circle"``: GenEval's article rule (first letter a vowel)."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def make_plural(word: str) -> str:
    """GenEval's plural rule: ``es`` after a final ``s``, otherwise ``s``."""
    return f"{word}es" if word.endswith("s") else f"{word}s"


def single_object_meta(cls: str) -> dict:
    """``a photo of a {cls}``."""
    return {"tag": "single_object", "include": [{"class": cls, "count": 1}],
            "prompt": f"a photo of {with_article(cls)}"}


def two_object_meta(a: str, b: str) -> dict:
    """``a photo of a {a} and a {b}``."""
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def counting_meta(cls: str, n: int) -> dict:
    """``a photo of {n} {cls}s``, with GenEval's ``exclude`` of ``n + 1``."""
    return {"tag": "counting", "include": [{"class": cls, "count": n}],
            "exclude": [{"class": cls, "count": n + 1}],
            "prompt": f"a photo of {NUMBER_WORDS[n]} {make_plural(cls)}"}


def colors_meta(cls: str, color: str) -> dict:
    """``a photo of a {color} {cls}``."""
    return {"tag": "colors", "include": [{"class": cls, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color)} {cls}"}


def position_meta(a: str, relation: str, b: str) -> dict:
    """``a photo of a {a} {relation} a {b}``; the position sits on A (listed second) and points at B."""
    return {"tag": "position",
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}"}


def color_attr_meta(a: str, color_a: str, b: str, color_b: str) -> dict:
    """``a photo of a {color_a} {a} and a {color_b} {b}``."""
    return {"tag": "color_attr",
            "include": [{"class": a, "count": 1, "color": color_a},
                        {"class": b, "count": 1, "color": color_b}],
            "prompt": f"a photo of {with_article(color_a)} {a} and {with_article(color_b)} {b}"}


def meta_from_fields(meta: dict) -> dict:
    """Rebuild a GenEval record (prompt included) from the structured fields of ``meta``."""
    inc, tag = meta["include"], meta["tag"]
    if tag == "single_object":
        return single_object_meta(inc[0]["class"])
    if tag == "two_object":
        return two_object_meta(inc[0]["class"], inc[1]["class"])
    if tag == "counting":
        return counting_meta(inc[0]["class"], int(inc[0]["count"]))
    if tag == "colors":
        return colors_meta(inc[0]["class"], inc[0]["color"])
    if tag == "position":
        return position_meta(inc[1]["class"], inc[1]["position"][0], inc[0]["class"])
    if tag == "color_attr":
        return color_attr_meta(inc[0]["class"], inc[0]["color"], inc[1]["class"], inc[1]["color"])
    raise UsageError(f"unknown GenEval tag {tag!r}")


def all_metas(tag: str, shapes: tuple[str, ...] = SHAPES, colors: tuple[str, ...] = COLORS,
              world: World | str | None = None, split: str | None = None) -> list[dict]:
    """Every distinct prompt of a task over the vocabulary, in a fixed order.

    As in GenEval, two-object, position and colour-attribution prompts use two different classes,
    and colour attribution two different colours; counts run over 2..4. With ``world`` the vocabulary is that
    world's (its records carry ``world`` unless it is v1) and ``split`` (``"seen"`` or ``"heldout"``, see
    :mod:`parauni.toy.split`) keeps only the prompts of that split.
    """
    if world is None and split is None:
        return _metas(tag, shapes, colors)
    w = get_world(world)
    if split is not None and split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return [copy.deepcopy(m) for m in _world_metas(tag, w, split)]


@lru_cache(maxsize=64)
def _world_metas(tag: str, world: World, split: str | None) -> tuple[dict, ...]:
    metas = _metas(tag, world.shapes, world.colors)
    if world.name != V1.name:
        metas = [{**m, "world": world.name} for m in metas]
    return tuple(m for m in metas if split is None or meta_split(m, world) == split)


def _metas(tag: str, shapes: tuple[str, ...], colors: tuple[str, ...]) -> list[dict]:
    pairs = [(a, b) for a in shapes for b in shapes if a != b]
    if tag == "single_object":
        return [single_object_meta(s) for s in shapes]
    if tag == "two_object":
        return [two_object_meta(a, b) for a, b in pairs]
    if tag == "counting":
        return [counting_meta(s, n) for s in shapes for n in (2, 3, 4)]
    if tag == "colors":
        return [colors_meta(s, c) for s in shapes for c in colors]
    if tag == "position":
        return [position_meta(a, r, b) for a, b in pairs for r in RELATIONS]
    if tag == "color_attr":
        return [color_attr_meta(a, ca, b, cb) for a, b in pairs for ca in colors for cb in colors if ca != cb]
    raise UsageError(f"unknown GenEval tag {tag!r}")


def random_meta(rng: np.random.Generator, tag: str | None = None, world: World | str | None = None,
                split: str | None = None) -> dict:
    """A random toy GenEval record of ``tag`` (uniform over the six tasks when ``None``) of ``world`` (default
    v1), of ``split`` when given (training samplers ask for ``"seen"``; ``"heldout"`` with no ``tag``: uniform
    over the tasks that hold some, all but single-object)."""
    if world is None and split is None:
        tag = tag or TASKS[rng.integers(len(TASKS))]
        options = all_metas(tag)
        return options[rng.integers(len(options))]
    w = get_world(world)
    if tag is None:
        tags = [t for t in TASKS if _world_metas(t, w, split)]
        tag = tags[rng.integers(len(tags))]
    options = _world_metas(tag, w, split)
    if not options:
        raise UsageError(f"the {w.name} world has no {split} prompt of task {tag!r}")
    return copy.deepcopy(options[rng.integers(len(options))])


def _phrase(n: int, color: str | None, shape: str) -> str:
    words = f"{color} " if color else ""
    if n == 1:
        return with_article(f"{words}{shape}")
    return f"{NUMBER_WORDS[n]} {words}{make_plural(shape)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def free_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A freer description of ``scene``: counted groups with or without colours, or a relation.

    Examples: ``"two red circles and a blue square"``, ``"three circles"``,
    ``"a green triangle above a yellow circle"``, ``"an image of an orange square"``.
    """
    objs = scene.objects
    style = rng.integers(3)
    if style == 2 and len(objs) == 2:
        i = int(rng.integers(2))
        a, b = objs[i], objs[1 - i]
        rels = sorted(relative_position(a.bbox, b.bbox))
        if len(rels) == 1:
            text = f"{_phrase(1, a.color, a.shape)} {rels[0]} {_phrase(1, b.color, b.shape)}"
            return _prefix(text, rng)
        style = 0
    key = (lambda o: (o.color, o.shape)) if style != 1 else (lambda o: (None, o.shape))
    counts = Counter(key(o) for o in objs)
    groups = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    order = rng.permutation(len(groups))
    text = _join([_phrase(groups[i][1], groups[i][0][0], groups[i][0][1]) for i in order])
    return _prefix(text, rng)


def _prefix(text: str, rng: np.random.Generator) -> str:
    return [text, f"a photo of {text}", f"an image of {text}"][int(rng.integers(3))]


class ToyPromptSource:
    """``prompts.kind: toy`` (v1) / ``toy_v2`` for ``parauni grpo``: random toy GenEval records (prompt +
    metadata for the rewards), fresh every epoch, or with ``pool`` a fixed set of that many drawn once and walked
    in shuffled passes (:class:`parauni.rl.prompts.FixedPrompts`). Deterministic from the seed. A world with
    held-out compositions gives its seen prompts only."""

    def __init__(self, seed: int, pool: int | None = None, world: World | str | None = None):
        self.seed = seed
        self.fixed = None
        w = get_world(world)
        self.world, self.split = (None, None) if w is V1 else (w, "seen")
        if pool:
            rng = np.random.default_rng([seed, 4242])
            self.fixed = FixedPrompts([dict(self._draw(rng)) for _ in range(pool)], seed)

    def _draw(self, rng: np.random.Generator) -> dict:
        return random_meta(rng, world=self.world, split=self.split)

    @property
    def records(self) -> list[dict]:
        return self.fixed.records if self.fixed else []

    def epoch(self, epoch: int, n: int) -> list[dict]:
        if self.fixed:
            return self.fixed.epoch(epoch, n)
        rng = np.random.default_rng([self.seed, epoch, 17])
        return [dict(self._draw(rng)) for _ in range(n)]
