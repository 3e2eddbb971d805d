"""``parauni toy probe-layers``: where in the toy VLM colour, shape, count and relation can be read.

The prompts are composed from a toy world's vocabulary (every composition, seen and held-out: the probe trains
nothing of the model), one pool per attribute, each prompt labelled with what it names:

* ``colour``: ``a photo of a red circle`` / ``... and a blue square``: the first object's colour;
* ``shape``: the same phrases, with or without colours: the first object's shape;
* ``count``: ``a photo of three (green) triangles``: the number, 1 to 4;
* ``relation``: ``a photo of a (red) circle left of a (blue) square``: the relation.

The probe itself (features, logistic regression, chance and the shuffled-label control, table and heat map) is
:mod:`parauni.analysis.probe`. ``--vlm``: a shipped stage-II toy model (``toy-all-layers``, ``toy-last-layer``:
their trained queries), ``vlm`` (the shipped toy VLM) or a toy VLM folder (``parauni toy pretrain-vlm --out``);
a bare VLM is read through a fresh conditioner's queries (seeded by ``--seed``), the positions stage I trains.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from ..analysis.probe import probe_layers, write_probe
from ..errors import UsageError
from .prompts import _phrase
from .worlds import RELATIONS, get_world

ATTRIBUTES = ("colour", "shape", "count", "relation")
MAX_COUNT = 4


def probe_tasks(world: str = "v2", n: int = 600, seed: int = 0) -> dict[str, tuple[list[str], list]]:
    """Attribute -> ``(prompts, labels)``: at most ``n`` distinct prompts of ``world`` each, drawn with ``seed``."""
    w = get_world(world)
    shapes, colors = w.shapes, w.colors
    maybe = (None, *colors)
    pools: dict[str, list[tuple[str, object]]] = {
        "colour": [(f"a photo of {_phrase(1, c, s)}", c) for c in colors for s in shapes]
        + [(f"a photo of {_phrase(1, c, s)} and {_phrase(1, c2, s2)}", c)
           for c, s, c2, s2 in itertools.product(colors, shapes, colors, shapes) if s != s2],
        "shape": [(f"a photo of {_phrase(1, c, s)}", s) for c in maybe for s in shapes]
        + [(f"a photo of {_phrase(1, c, s)} and {_phrase(1, c2, s2)}", s)
           for c, s, c2, s2 in itertools.product(maybe, shapes, maybe, shapes) if s != s2],
        "count": [(f"a photo of {_phrase(k, c, s)}", k) for k in range(1, MAX_COUNT + 1) for c in maybe
                  for s in shapes],
        "relation": [(f"a photo of {_phrase(1, c, a)} {r} {_phrase(1, c2, b)}", r)
                     for r, c, a, c2, b in itertools.product(RELATIONS, maybe, shapes, maybe, shapes) if a != b],
    }
    rng = np.random.default_rng(seed)
    tasks = {}
    for name, pool in pools.items():
        pick = rng.permutation(len(pool))[: min(n, len(pool))]
        tasks[name] = ([pool[i][0] for i in pick], [pool[i][1] for i in pick])
    return tasks


def load_probe_model(vlm: str, seed: int = 0):
    """The pipeline whose VLM and queries are probed (see the module docstring)."""
    from ..pipelines.loading import refuse_shadowed_folder
    from .models import TOY_MODELS, build_toy_pipeline, load_toy_model

    if vlm in TOY_MODELS or vlm == "vlm":
        refuse_shadowed_folder(vlm)
    if vlm in TOY_MODELS:
        return load_toy_model(vlm)
    if vlm == "vlm":
        return build_toy_pipeline(None, seed=seed)
    if not (Path(vlm) / "config.json").is_file():
        raise UsageError(f"--vlm {vlm!r}: not a toy VLM folder (no config.json) nor one of vlm, "
                         f"{', '.join(TOY_MODELS)}; give `parauni toy pretrain-vlm`'s --out folder")
    return build_toy_pipeline(vlm, seed=seed)


def add_parser(sub) -> None:
    p = sub.add_parser("probe-layers", help="per-layer linear probes of the toy VLM: colour, shape, count, relation")
    p.add_argument("--vlm", default="vlm", help="toy-all-layers, toy-last-layer, vlm (the shipped toy VLM; default) "
                                                "or a toy VLM folder")
    p.add_argument("--world", default="v2", choices=("v1", "v2"), help="the prompts' vocabulary (default v2)")
    p.add_argument("--n", type=int, default=600, help="distinct prompts per attribute (default 600; 30%% test)")
    p.add_argument("--seed", type=int, default=0, help="the prompts drawn, the split, a bare VLM's queries")
    p.add_argument("--out", required=True, help="folder for layer_probe.json / .md / .png (e.g. a run folder)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    if args.n < 10:
        raise UsageError(f"--n {args.n}: give at least 10 prompts per attribute")
    pipe = load_probe_model(args.vlm, args.seed)
    result = probe_layers(pipe, probe_tasks(args.world, args.n, args.seed), seed=args.seed)
    result.update(model=args.vlm, world=args.world)
    paths = write_probe(result, args.out)
    print(paths["md"].read_text(), end="")
    print(f"written to {paths['json'].parent}")
    return result
