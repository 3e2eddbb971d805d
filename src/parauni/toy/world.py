"""The toy world: coloured shapes on a plain grey canvas.

The vocabulary of each world (shapes, colours, relations, object sizes, held-out compositions) is in
:mod:`parauni.toy.worlds`, the shapes' geometry in :mod:`parauni.toy.shapes`. The module constants below are the
v1 world's (the shipped models'); every function takes a ``world`` (default v1).

Geometry: object size scales with the canvas and shrinks with the number of objects (``World.size_ranges``);
objects keep a margin from the border and a gap between their boxes, so rendered objects never touch. Rendering
is anti-aliased by 4x supersampling.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from parauni.eval.geneval_rules import POSITION_THRESHOLD
from parauni.eval.geneval_rules import relative_position as relative_position  # GenEval's rule, one copy

from ..errors import UsageError
from .shapes import inside
from .worlds import BACKGROUND as BACKGROUND
from .worlds import RELATIONS as RELATIONS
from .worlds import SIZE_RANGES as SIZE_RANGES
from .worlds import V1, World, get_world

SHAPES: tuple[str, ...] = V1.shapes
PALETTE: dict[str, tuple[int, int, int]] = V1.palette
COLORS: tuple[str, ...] = V1.colors
INVERSE_RELATION: dict[str, str] = {
    "left of": "right of", "right of": "left of", "above": "below", "below": "above",
}
MARGIN_FRAC = 0.05  # free border around the canvas
GAP_FRAC = 0.07  # minimum free space between two objects' boxes
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ToyObject:
    """One shape: ``cx``, ``cy`` (centre) and ``size`` (box side) in pixels of the scene's canvas."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box ``(x1, y1, x2, y2)`` in pixels."""
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)

    @property
    def centre(self) -> tuple[float, float]:
        """Centre ``(x, y)`` in pixels."""
        return (self.cx, self.cy)


@dataclass
class Scene:
    """A list of objects on a ``size`` x ``size`` canvas of ``world``."""

    objects: list[ToyObject] = field(default_factory=list)
    size: int = 32
    world: World = V1

    def describe(self) -> list[dict]:
        """Plain-dict description: shape, colour, bbox and centre of every object."""
        return [
            {"shape": o.shape, "color": o.color, "bbox": list(o.bbox), "centre": list(o.centre)}
            for o in self.objects
        ]


def clear_relation(a: ToyObject, b: ToyObject, relation: str,
                   main: float = 0.75, cross: float = 0.35) -> bool:
    """True when A is unambiguously ``relation`` B: the GenEval component along the relation's axis
    is beyond ``main`` and the other one below ``cross`` (so no second relation holds)."""
    ba, bb = np.asarray(a.bbox), np.asarray(b.bbox)
    offset = (ba[:2] + ba[2:]) / 2 - (bb[:2] + bb[2:]) / 2
    dims = (ba[2:] - ba[:2]) + (bb[2:] - bb[:2])
    revised = np.maximum(np.abs(offset) - POSITION_THRESHOLD * dims, 0) * np.sign(offset)
    norm = np.linalg.norm(offset)
    if norm == 0:
        return False
    dx, dy = revised / norm
    axes = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}
    along, other = axes[relation]
    return along > main and abs(other) < cross


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, o: ToyObject) -> np.ndarray:
    """Mask of the points ``(x, y)`` (pixel coordinates, broadcastable) inside ``o`` drawn as ``shape``."""
    return inside(shape, x, y, o.cx, o.cy, o.size)


def render(scene: Scene, size: int | None = None) -> np.ndarray:
    """Render ``scene`` as an RGB uint8 array of shape ``(size, size, 3)`` (default: ``scene.size``)."""
    size = size or scene.size
    scale = size / scene.size
    palette = scene.world.palette
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = scene.world.background
    ss = SUPERSAMPLE
    for o in scene.objects:
        o = ToyObject(o.shape, o.color, o.cx * scale, o.cy * scale, o.size * scale)
        x1, y1, x2, y2 = o.bbox
        c0, c1 = max(int(np.floor(x1)) - 1, 0), min(int(np.ceil(x2)) + 1, size)
        r0, r1 = max(int(np.floor(y1)) - 1, 0), min(int(np.ceil(y2)) + 1, size)
        if c1 <= c0 or r1 <= r0:
            continue
        ys = r0 + (np.arange((r1 - r0) * ss) + 0.5) / ss
        xs = c0 + (np.arange((c1 - c0) * ss) + 0.5) / ss
        mask = shape_mask(o.shape, xs[None, :], ys[:, None], o)
        cover = mask.reshape(r1 - r0, ss, c1 - c0, ss).mean(axis=(1, 3), dtype=np.float32)[..., None]
        patch = img[r0:r1, c0:c1]
        img[r0:r1, c0:c1] = patch * (1 - cover) + np.asarray(palette[o.color], np.float32) * cover
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _separated(a: ToyObject, b: ToyObject, gap: float) -> bool:
    ax1, ay1, ax2, ay2 = a.bbox
    bx1, by1, bx2, by2 = b.bbox
    return ax2 + gap <= bx1 or bx2 + gap <= ax1 or ay2 + gap <= by1 or by2 + gap <= ay1


def place_objects(
    rng: np.random.Generator,
    specs: Sequence[tuple[str, str]],
    size: int = 32,
    constraint: Callable[[list[ToyObject]], bool] | None = None,
    max_tries: int = 2000,
    world: World | str = V1,
) -> Scene:
    """Place ``(shape, colour)`` specs at random, without overlaps, on a ``size`` canvas of ``world``.

    Sizes are drawn from the world's ``size_ranges`` for the number of objects; positions by rejection
    sampling until no two boxes come closer than the gap and ``constraint(objects)`` (if given) holds.
    """
    world = get_world(world)
    ranges = world.size_ranges
    n = len(specs)
    if not 1 <= n <= max(ranges):
        raise UsageError(f"scenes hold 1..{max(ranges)} objects, got {n}")
    lo, hi = ranges[n]
    margin, gap = MARGIN_FRAC * size, GAP_FRAC * size
    for _ in range(max_tries):
        objs: list[ToyObject] = []
        for shape, color in specs:
            s = float(rng.uniform(lo, hi)) * size
            for _ in range(50):
                cx, cy = rng.uniform(margin + s / 2, size - margin - s / 2, size=2)
                cand = ToyObject(shape, color, float(cx), float(cy), s)
                if all(_separated(cand, o, gap) for o in objs):
                    objs.append(cand)
                    break
            else:
                break
        if len(objs) == n and (constraint is None or constraint(objs)):
            return Scene(objs, size, world)
    raise RuntimeError(f"could not place {list(specs)} on a {size}px canvas")


def random_scene(rng: np.random.Generator, size: int = 32, n_objects: int | None = None,
                 world: World | str = V1) -> Scene:
    """A free scene: 1..4 objects (uniform unless ``n_objects``), random shapes and colours of ``world``."""
    world = get_world(world)
    shapes, colors = world.shapes, world.colors
    n = int(rng.integers(1, 5)) if n_objects is None else n_objects
    specs = [(shapes[rng.integers(len(shapes))], colors[rng.integers(len(colors))]) for _ in range(n)]
    return place_objects(rng, specs, size, world=world)


def scene_from_metadata(meta: dict, rng: np.random.Generator, size: int = 32, world: World | str | None = None
                        ) -> Scene:
    """A scene satisfying a GenEval-format prompt dict (``include`` with class/count/colour/position).

    Exactly ``count`` objects are drawn per ``include`` entry (so ``exclude`` limits of the form
    ``count + 1`` hold); objects without a colour get a random one; a ``position`` ``[rel, idx]`` is
    placed so that each of the entry's objects is clearly ``rel`` each object of ``include[idx]``.
    ``world``: default the record's own (its ``world`` key, else v1).
    """
    world = get_world(world if world is not None else meta.get("world"))
    colors = world.colors
    specs: list[tuple[str, str]] = []
    groups: list[list[int]] = []
    for req in meta["include"]:
        idx = []
        for _ in range(int(req["count"])):
            color = req.get("color") or colors[rng.integers(len(colors))]
            idx.append(len(specs))
            specs.append((req["class"], color))
        groups.append(idx)
    rules = [(gi, *req["position"]) for gi, req in enumerate(meta["include"]) if req.get("position")]

    def ok(objs: list[ToyObject]) -> bool:
        return all(
            clear_relation(objs[i], objs[j], rel)
            for gi, rel, target in rules
            for i in groups[gi]
            for j in groups[int(target)]
        )

    return place_objects(rng, specs, size, constraint=ok if rules else None, world=world)
