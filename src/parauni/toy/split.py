"""Held-out compositions: what a scene or a GenEval record composes, and whether a world holds it out.

A composition is one of four kinds (the world's :class:`parauni.toy.worlds.HeldOut` lists the held-out ones):

* ``("color_shape", colour, shape)`` -- an object of that colour and shape;
* ``("shape_pair", a, b)`` -- two different shapes together in one scene or prompt (``a < b``);
* ``("relation", a, rel, b)`` -- a shape ``a`` in relation ``rel`` to a shape ``b`` (GenEval's rule on their
  boxes; ``b`` ``inverse(rel)`` ``a`` is the same composition, kept in the form the world lists);
* ``("count", shape, n)`` -- exactly ``n`` objects of that shape.

A scene composes every one of these it shows (every object, every pair of shapes present, every relation
between two objects, the number of each shape present); a GenEval record composes what its prompt asks (the
colours it names, the pairs of classes it names, its position clause, its count). A record is **held out** when
it composes a held-out composition; a training sampler only emits scenes and records that compose none
(:func:`scene_is_seen`, :func:`meta_is_seen`). A single-object prompt composes nothing, so it is always seen.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

from parauni.eval.geneval_rules import relative_position

from .world import INVERSE_RELATION, Scene
from .worlds import HeldOut, World, get_world

SPLITS = ("seen", "heldout")


def _relation(a: str, rel: str, b: str) -> tuple[str, str, str, str]:
    """The canonical form of ``a rel b``: ``left of`` / ``above`` (or ``b``'s inverse relation to ``a``)."""
    if rel in ("right of", "below"):
        return ("relation", b, INVERSE_RELATION[rel], a)
    return ("relation", a, rel, b)


def _pair(a: str, b: str) -> tuple[str, str, str]:
    return ("shape_pair", *sorted((a, b)))


@lru_cache(maxsize=8)
def heldout_set(held: HeldOut) -> frozenset[tuple]:
    """The held-out compositions of ``held`` in the tuple forms of this module."""
    out: set[tuple] = {("color_shape", c, s) for c, s in held.color_shapes}
    out |= {_pair(*sorted(p)) for p in held.shape_pairs}
    out |= {_relation(*r) for r in held.relations}
    out |= {("count", s, n) for s, n in held.counts}
    return frozenset(out)


def scene_compositions(scene: Scene) -> set[tuple]:
    """Every composition ``scene`` shows (see the module docstring)."""
    objs = scene.objects
    out: set[tuple] = {("color_shape", o.color, o.shape) for o in objs}
    shapes = sorted({o.shape for o in objs})
    out |= {_pair(a, b) for a, b in combinations(shapes, 2)}
    out |= {("count", s, sum(o.shape == s for o in objs)) for s in shapes}
    for a in objs:
        for b in objs:
            if a is not b:
                out |= {_relation(a.shape, rel, b.shape) for rel in relative_position(a.bbox, b.bbox)}
    return out


def meta_compositions(meta: dict) -> set[tuple]:
    """Every composition a GenEval record asks for (see the module docstring)."""
    inc = meta["include"]
    out: set[tuple] = {("color_shape", r["color"], r["class"]) for r in inc if r.get("color")}
    classes = sorted({r["class"] for r in inc})
    out |= {_pair(a, b) for a, b in combinations(classes, 2)}
    if meta.get("tag") == "counting":
        out |= {("count", r["class"], int(r["count"])) for r in inc}
    for r in inc:
        if r.get("position"):
            rel, target = r["position"][0], int(r["position"][1])
            out.add(_relation(r["class"], rel, inc[target]["class"]))
    return out


def scene_is_seen(scene: Scene, world: World | str | None = None) -> bool:
    """True when ``scene`` shows no composition its world (or ``world``) holds out."""
    held = heldout_set(get_world(world if world is not None else scene.world).heldout)
    return not held or not (scene_compositions(scene) & held)


def meta_split(meta: dict, world: World | str | None = None) -> str:
    """``"heldout"`` when the record asks for a composition its world (or ``world``) holds out, else ``"seen"``."""
    w = get_world(world if world is not None else meta.get("world"))
    return "heldout" if meta_compositions(meta) & heldout_set(w.heldout) else "seen"


def meta_is_seen(meta: dict, world: World | str | None = None) -> bool:
    """True when the record asks for no held-out composition (a training sampler may emit it)."""
    return meta_split(meta, world) == "seen"
