"""Training streams, a held-out split and question-answer pairs from the toy world.

Every sample is drawn from its own generator, seeded by ``(domain, seed, index)``: domain 0 for
training streams and 1 for the held-out split, so the two never share a seed. Sample ``k`` of the
training stream is the same whatever the number of workers or ranks; worker ``w`` of ``W`` on rank
``r`` of ``R`` draws the indices ``k = r * W + w (mod R * W)``.

Every function takes a ``world`` (default v1, see :mod:`parauni.toy.worlds`). In a world with held-out
compositions (v2), the training streams, and every sample of ``split="seen"``, compose none of them
(:mod:`parauni.toy.split`): the template records are drawn among the seen prompts and a scene that shows a
held-out composition (a random colour, a chance relation) is drawn again from the same generator (a free
scene with the same number of objects, so that the number stays uniform over 1..4).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from parauni.toy.prompts import NUMBER_WORDS, TASKS, free_caption, make_plural, random_meta, with_article
from parauni.toy.split import SPLITS, heldout_set, scene_compositions
from parauni.toy.world import Scene, random_scene, relative_position, render, scene_from_metadata
from parauni.toy.worlds import V1, World, get_world
from parauni.utils.images import signed_to_uint8

TRAIN_DOMAIN = 0
HELDOUT_DOMAIN = 1
MAX_REDRAWS = 1000  # scenes drawn per sample before giving up on a split's condition


@dataclass
class Example:
    """One toy sample: RGB uint8 image, caption, GenEval record (``None`` for free captions), scene."""

    image: np.ndarray
    caption: str
    meta: dict | None
    scene: Scene


def sample_rng(domain: int, seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``domain`` (0: training, 1: held out) for ``seed``."""
    return np.random.default_rng([domain, seed, index])


def make_example(rng: np.random.Generator, size: int = 32, template_prob: float = 0.5,
                 world: World | str | None = None, split: str = "seen") -> Example:
    """A random sample: with ``template_prob`` a GenEval-template prompt of a random task rendered by
    :func:`scene_from_metadata`, otherwise a free scene of 1..4 objects with a free caption.

    ``split`` matters only in a world with held-out compositions: ``"seen"`` (training) composes none of them,
    ``"heldout"`` draws a held-out template prompt, or a free scene that shows at least one, and ``"all"`` draws
    from the whole world."""
    w = get_world(world)
    held = heldout_set(w.heldout)
    if not held:
        return _example(rng, size, template_prob, w)
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join((*SPLITS, 'all'))}")
    want = None if split == "all" else split == "seen"
    if rng.random() < template_prob:
        meta = random_meta(rng, None, w, None if split == "all" else split)
        for _ in range(MAX_REDRAWS):
            scene = scene_from_metadata(meta, rng, size, w)
            if split != "seen" or not scene_compositions(scene) & held:
                return Example(render(scene), meta["prompt"], meta, scene)
        raise RuntimeError(f"no scene of {meta['prompt']!r} without a held-out composition")
    n = int(rng.integers(1, 5))  # the number of objects is drawn once, so that it stays uniform
    for _ in range(MAX_REDRAWS):
        scene = random_scene(rng, size, n_objects=n, world=w)
        if want is None or want == (not scene_compositions(scene) & held):
            return Example(render(scene), free_caption(scene, rng), None, scene)
    raise RuntimeError(f"no free scene of split {split!r} in {MAX_REDRAWS} draws")


def _example(rng: np.random.Generator, size: int, template_prob: float, world: World) -> Example:
    if rng.random() < template_prob:
        meta = random_meta(rng, TASKS[rng.integers(len(TASKS))]) if world is V1 else random_meta(
            rng, TASKS[rng.integers(len(TASKS))], world)
        scene = scene_from_metadata(meta, rng, size, world)
        return Example(render(scene), meta["prompt"], meta, scene)
    scene = random_scene(rng, size, world=world)
    return Example(render(scene), free_caption(scene, rng), None, scene)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` -> float ``(3, H, W)`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Float ``(3, H, W)`` in [-1, 1] -> RGB uint8 ``(H, W, 3)``."""
    return signed_to_uint8(tensor[None])[0]


def _item(ex: Example, index: int) -> dict:
    return {"image": to_tensor(ex.image), "caption": ex.caption,
            "meta": json.dumps(ex.meta) if ex.meta else "", "index": index}


class ToyStream(IterableDataset):
    """Infinite, seeded stream of ``{"image": (3, H, W) in [-1, 1], "caption", "meta", "index"}``.

    ``meta`` is the GenEval record as a JSON string ("" for free captions). ``rank`` and
    ``world_size`` (processes, not the toy world) default to the initialised ``torch.distributed`` group, if any.
    ``world``: the toy world (default v1); its held-out compositions never appear.
    """

    def __init__(self, seed: int = 0, size: int = 32, template_prob: float = 0.5,
                 rank: int | None = None, world_size: int | None = None, start: int = 0,
                 world: World | str | None = None) -> None:
        super().__init__()
        self.seed, self.size, self.template_prob, self.start = seed, size, template_prob, start
        self.world = get_world(world)
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        self.world_size = world_size if world_size is not None else (
            torch.distributed.get_world_size() if dist else 1)

    def indices(self) -> Iterator[int]:
        """Sample indices drawn by this worker of this rank."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        stream, n_streams = self.rank * nw + wid, self.world_size * nw
        k = self.start + (stream - self.start) % n_streams
        while True:
            yield k
            k += n_streams

    def __iter__(self) -> Iterator[dict]:
        for k in self.indices():
            ex = make_example(sample_rng(TRAIN_DOMAIN, self.seed, k), self.size, self.template_prob, self.world)
            yield _item(ex, k)


def heldout_examples(n: int, seed: int = 0, size: int = 32, template_prob: float = 0.5,
                     world: World | str | None = None, split: str = "seen") -> list[Example]:
    """A fixed held-out list of ``n`` examples, seeded apart from every training stream (held-out seeds; in a
    world with held-out compositions, of ``split``: the seen compositions by default, see :func:`make_example`)."""
    return [make_example(sample_rng(HELDOUT_DOMAIN, seed, k), size, template_prob, world, split) for k in range(n)]


def heldout_split(n: int, seed: int = 0, size: int = 32, template_prob: float = 0.5,
                  world: World | str | None = None, split: str = "seen") -> list[dict]:
    """The held-out examples as dataset items (same keys as :class:`ToyStream`)."""
    return [_item(ex, k) for k, ex in enumerate(heldout_examples(n, seed, size, template_prob, world, split))]


def qa_by_kind(scene: Scene) -> dict[str, list[tuple[str, str]]]:
    """Questions with a well-defined one-word answer about ``scene`` (over its world's vocabulary), by kind.

    Kinds: ``count`` (objects, each shape, zero included), ``color`` (of a shape present once),
    ``shape`` (of a colour present once), ``exists_yes`` / ``exists_no`` (a colour-shape pair) and
    ``relation`` (the one shape in a relation to an object identified by colour and shape). A world's held-out
    colour-shape pairs are never asked about (a training scene never shows one, so the answer would always be no).
    """
    world = scene.world
    hidden = world.heldout.color_shapes
    objs = scene.objects
    kinds: dict[str, list[tuple[str, str]]] = {k: [] for k in ("count", "color", "shape", "exists_yes",
                                                                "exists_no", "relation")}
    kinds["count"].append(("how many objects are there?", NUMBER_WORDS[len(objs)]))
    for shape in world.shapes:
        same = [o for o in objs if o.shape == shape]
        kinds["count"].append((f"how many {make_plural(shape)} are there?", NUMBER_WORDS[len(same)]))
        if len(same) == 1:
            kinds["color"].append((f"what color is the {shape}?", same[0].color))
        for color in world.colors:
            if (color, shape) in hidden:
                continue
            there = any(o.color == color for o in same)
            kinds["exists_yes" if there else "exists_no"].append((f"is there {with_article(color)} {shape}?",
                                                                  "yes" if there else "no"))
    for color in world.colors:
        same = [o for o in objs if o.color == color]
        if len(same) == 1:
            kinds["shape"].append((f"what shape is the {color} object?", same[0].shape))
    for ref in objs:
        if sum(o.shape == ref.shape and o.color == ref.color for o in objs) != 1:
            continue
        for rel in world.relations:
            hits = [o for o in objs if o is not ref and rel in relative_position(o.bbox, ref.bbox)]
            if len(hits) == 1:
                kinds["relation"].append((f"what shape is {rel} the {ref.color} {ref.shape}?", hits[0].shape))
    return {k: v for k, v in kinds.items() if v}


def qa_pairs(scene: Scene, caption: str | None = None) -> list[tuple[str, str]]:
    """All questions of :func:`qa_by_kind`, plus ``("describe the image.", caption)`` if given."""
    out = [pair for pairs in qa_by_kind(scene).values() for pair in pairs]
    return out + [("describe the image.", caption)] if caption is not None else out


def sample_qa(ex: Example, rng: np.random.Generator, describe_prob: float = 0.2) -> tuple[str, str]:
    """One question-answer pair for ``ex``: the caption with ``describe_prob``, otherwise a question
    of a kind drawn uniformly among those the scene allows (so yes and no answers are balanced)."""
    if rng.random() < describe_prob:
        return ("describe the image.", ex.caption)
    kinds = qa_by_kind(ex.scene)
    names = sorted(kinds)
    pairs = kinds[names[int(rng.integers(len(names)))]]
    return pairs[int(rng.integers(len(pairs)))]


class ToySource:
    """The toy world's endless training stream for ``parauni train`` (``data.kind: toy``; no length): sample
    ``k`` is a fixed scene of the training domain, so the data order is exact across processes and resumes.
    ``data.kind: toy_v2`` is the v2 world's (``world``), without its held-out compositions."""

    length = None

    def __init__(self, seed: int, resolution: int = 32, template_prob: float = 0.5,
                 world: World | str | None = None):
        self.seed, self.resolution, self.template_prob = seed, resolution, template_prob
        self.world = get_world(world)

    def get(self, k: int) -> tuple[Image.Image, str]:
        ex = make_example(sample_rng(TRAIN_DOMAIN, self.seed, k), self.resolution, self.template_prob, self.world)
        return Image.fromarray(ex.image), ex.caption
