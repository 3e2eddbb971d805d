"""The toy world: a synthetic world of coloured shapes in which every stage of ParaUni runs on a CPU.

* :mod:`parauni.toy.worlds` -- the worlds by name (v1, v2): vocabulary, sizes, held-out compositions;
* :mod:`parauni.toy.world` -- scenes, rendering, scenes from GenEval prompts;
* :mod:`parauni.toy.split` -- what a scene or a prompt composes, seen and held-out prompts;
* :mod:`parauni.toy.prompts` -- GenEval's templates and records, free captions;
* :mod:`parauni.toy.data` -- training stream, held-out split, question-answer pairs;
* :mod:`parauni.toy.detect` -- the programmatic detector;
* :mod:`parauni.toy.geneval` -- toy GenEval prompts and GenEval's scoring rules.
"""

from parauni.toy.data import ToyStream, heldout_examples, heldout_split, make_example, qa_pairs, sample_qa
from parauni.toy.detect import Detection, detect
from parauni.toy.geneval import (
    evaluate,
    load_toy_geneval,
    make_toy_geneval,
    partial_credit,
    score_dir,
    score_image,
    write_geneval_layout,
)
from parauni.toy.prompts import TASKS, free_caption, meta_from_fields, random_meta
from parauni.toy.world import (
    BACKGROUND,
    COLORS,
    PALETTE,
    RELATIONS,
    SHAPES,
    Scene,
    ToyObject,
    random_scene,
    relative_position,
    render,
    scene_from_metadata,
)
from parauni.toy.worlds import V1, V2, WORLDS, World, get_world

__all__ = [
    "BACKGROUND", "COLORS", "PALETTE", "RELATIONS", "SHAPES", "TASKS", "Detection", "Scene",
    "ToyObject", "ToyStream", "detect", "evaluate", "free_caption", "heldout_examples", "heldout_split",
    "load_toy_geneval", "make_example", "make_toy_geneval", "meta_from_fields", "partial_credit",
    "qa_pairs", "random_meta", "random_scene", "relative_position", "render", "sample_qa",
    "scene_from_metadata", "score_dir", "score_image", "write_geneval_layout", "V1", "V2", "WORLDS", "World",
    "get_world",
]
