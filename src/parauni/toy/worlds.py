"""The toy worlds by name: ``v1`` (3 shapes, 6 colours; the shipped models' world) and ``v2`` (6 shapes, 8
colours, held-out compositions).

A :class:`World` is the vocabulary (shapes, palette, relations), the object sizes and the held-out split of
the composition space (:class:`HeldOut`, see :mod:`parauni.toy.split`). Every toy function that draws, renders,
detects or phrases takes a ``world`` (a :class:`World` or its name, default ``"v1"``), so v1 is reproduced
bit for bit and v2 is chosen by name: ``data.kind: toy_v2`` / ``prompts.kind: toy_v2`` in training and RL
configs, ``data.world: v2`` in the toy pre-training configs, ``--world v2`` on the toy commands; GenEval
records of v2 carry ``"world": "v2"``, so the scorer and the rewards pick the v2 detector from the record.

Colours (RGB; all are GenEval colour words). Every pair, and every colour and the background, are at least ~100
apart in RGB Euclidean distance (v2: 99.6 and 108). v2 adds black and white (the two ends of the grey axis through
the background); every colour of v2 lies at least 90 from the segment between the background and any other colour
(where that colour's anti-aliased edge pixels lie)::

    red    (220,  40,  40)    orange (255, 140,   0)    yellow (240, 230,  40)    green  ( 40, 170,  60)
    blue   ( 40,  90, 230)    purple (150,  50, 200)    black  ( 25,  25,  25)    white  (240, 240, 240)

Background: mid grey (128, 128, 128), which maps to ~0 in the [-1, 1] range used for training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import UsageError
from .shapes import KNOWN_SHAPES

V1_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (255, 140, 0),
    "yellow": (240, 230, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (150, 50, 200),
}
V2_PALETTE: dict[str, tuple[int, int, int]] = {**V1_PALETTE, "black": (25, 25, 25), "white": (240, 240, 240)}
BACKGROUND: tuple[int, int, int] = (128, 128, 128)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
# Object side as a fraction of the canvas, by the number of objects in the scene.
SIZE_RANGES: dict[int, tuple[float, float]] = {
    1: (0.40, 0.55), 2: (0.30, 0.40), 3: (0.24, 0.32), 4: (0.22, 0.28),
}
# v2: scenes of three and four objects draw them larger (8.3-10.9 px and 8.3-9.6 px at 32 px against v1's 7-10 and
# 7-9), which keeps the six shapes apart under a 1.2-px blur (see docs/toy_world.md)
V2_SIZE_RANGES: dict[int, tuple[float, float]] = {
    1: (0.40, 0.55), 2: (0.30, 0.40), 3: (0.26, 0.34), 4: (0.26, 0.30),
}


@dataclass(frozen=True)
class HeldOut:
    """The compositions no training sees (empty in v1).

    ``color_shapes``: ``(colour, shape)`` pairs; ``shape_pairs``: unordered pairs of shapes that never appear
    together; ``relations``: ``(shape A, relation, shape B)``, A never stands in that relation to B (nor,
    equivalently, B in the inverse one to A); ``counts``: ``(shape, n)``, never exactly ``n`` of that shape."""

    color_shapes: frozenset[tuple[str, str]] = frozenset()
    shape_pairs: frozenset[frozenset[str]] = frozenset()
    relations: frozenset[tuple[str, str, str]] = frozenset()
    counts: frozenset[tuple[str, int]] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.color_shapes or self.shape_pairs or self.relations or self.counts)


@dataclass(frozen=True)
class World:
    """A toy world: its name, shapes, colours (name -> RGB), background, relations, sizes and held-out split."""

    name: str
    shapes: tuple[str, ...]
    palette: dict[str, tuple[int, int, int]]
    heldout: HeldOut = field(default_factory=HeldOut)
    background: tuple[int, int, int] = BACKGROUND
    relations: tuple[str, ...] = RELATIONS
    size_ranges: dict[int, tuple[float, float]] = field(default_factory=lambda: dict(SIZE_RANGES))

    @property
    def colors(self) -> tuple[str, ...]:
        return tuple(self.palette)

    def __hash__(self) -> int:
        return hash(self.name)


V1 = World("v1", ("circle", "square", "triangle"), V1_PALETTE)

# The v2 split (fixed; documented in docs/toy_world.md). Each colour is in exactly one held-out colour-shape pair,
# each shape in one (circle and triangle: two); the three held-out shape pairs share no shape; the held-out
# relations are on other pairs, among the four shapes in one colour-shape pair each; the held-out counts are of
# circles and triangles (so that every shape is held out about as often).
V2_HELDOUT = HeldOut(
    color_shapes=frozenset({("red", "cross"), ("orange", "bar"), ("yellow", "circle"), ("green", "diamond"),
                            ("blue", "triangle"), ("purple", "square"), ("black", "circle"),
                            ("white", "triangle")}),
    shape_pairs=frozenset({frozenset({"circle", "cross"}), frozenset({"square", "diamond"}),
                           frozenset({"triangle", "bar"})}),
    relations=frozenset({("square", "above", "cross"), ("diamond", "left of", "bar"),
                         ("bar", "above", "square"), ("cross", "right of", "diamond")}),
    counts=frozenset({("circle", 3), ("triangle", 4)}),
)
V2 = World("v2", ("circle", "square", "triangle", "diamond", "cross", "bar"), V2_PALETTE, V2_HELDOUT,
           size_ranges=V2_SIZE_RANGES)

WORLDS: dict[str, World] = {"v1": V1, "v2": V2}


def get_world(world: World | str | None = None) -> World:
    """A :class:`World` from itself or its name (``None``: v1)."""
    if world is None:
        return V1
    if isinstance(world, World):
        return world
    if world not in WORLDS:
        raise UsageError(f"unknown toy world {world!r}; choose one of {', '.join(WORLDS)}")
    return WORLDS[world]


def world_of(meta: dict | None) -> World:
    """The world of a GenEval record: its ``world`` key (v2 records carry one), else v1."""
    return get_world((meta or {}).get("world"))


def _check(world: World) -> None:
    unknown = set(world.shapes) - set(KNOWN_SHAPES)
    if unknown:
        raise UsageError(f"world {world.name}: unknown shapes {sorted(unknown)}")


for _w in WORLDS.values():
    _check(_w)
