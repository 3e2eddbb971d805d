"""Toy GenEval: prompts in GenEval's schema over the toy vocabulary, and a programmatic scorer.

The scorer feeds the detections of :func:`parauni.toy.detect.detect` into GenEval's rules, the core's one rule
engine :mod:`parauni.eval.geneval_rules` (shared with the native Mask2Former scorer): per ``include`` entry the
most confident ``count`` detections of the class must exist, have the asked colour, and stand in the asked relation
to every object of the entry they refer to; per ``exclude`` entry fewer than ``count`` detections of the class may
exist.  Which detections count is :data:`TOY_SELECTION`: every detection the toy detector reports, without
GenEval's confidence thresholds and per-class cap (see there for why and what differs).
It reads and writes GenEval's layouts: ``<dir>/<index:05d>/metadata.jsonl`` and
``<dir>/<index:05d>/samples/<k:04d>.png`` in, ``results.jsonl`` (one line per image) and a summary out.

Each record is judged with the detector of its world (its ``world`` key, else v1). The v2 prompts
(:data:`METADATA_FILES` ``["v2"]``) hold a ``seen`` and a ``heldout`` split (each record's ``split`` key; see
:mod:`parauni.toy.split`), and the summary of records that carry a split gives each split's own summary with its
standard errors (:func:`split_summaries`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from parauni.eval import geneval_rules as rules
from parauni.eval.geneval_rules import Selection, check_record, relative_position
from parauni.eval.geneval_schema import Vocabulary, validate_records
from parauni.toy.detect import Detection, detect
from parauni.toy.prompts import TASKS, all_metas
from parauni.toy.split import SPLITS
from parauni.toy.worlds import World, get_world, world_of
from parauni.utils.images import as_uint8
from parauni.utils.jsonl import parse_jsonl, read_jsonl

PROMPTS_PER_TASK = 50
METADATA_FILE = "toy_geneval_metadata.jsonl"
# the shipped prompt files by world (v2: both splits, PROMPTS_PER_TASK prompts per task each)
METADATA_FILES = {"v1": METADATA_FILE, "v2": "toy_geneval_v2_metadata.jsonl"}
TOY_SELECTION = Selection(threshold=None, counting_threshold=None, max_objects=None)
"""Which toy detections the rules judge: all of them, most confident first.

GenEval keeps detections above 0.3, above 0.9 for the ``counting`` task, and at most 16 per class
(``evaluation/evaluate_images.py:230-234``, :data:`parauni.eval.geneval_rules.GENEVAL`).  The toy scorer has
never applied these: its detector already drops everything below its own ``min_confidence`` (0.5), so the 0.3
threshold could not change a verdict, but the 0.9 counting threshold would change shipped numbers: the toy
confidence is calibrated to be >= 0.5 on objects (it is not a class probability like Mask2Former's), and on the
shipped stage-II models' 50 counting images only 5 of 120 / 3 of 119 detections exceed 0.9, so their toy counting
accuracy would fall from 0.30 / 0.26 (toy-all-layers / toy-last-layer, as in their ``toy_geneval_summary.json``)
to 0.00 (clean rendered scenes keep their verdicts).  The cap of 16 per class never binds on 32-px toy images.
Pass ``selection=rules.GENEVAL`` to :func:`evaluate` / :func:`score_dir` for GenEval's selection on toy images."""


def make_toy_geneval(seed: int = 0, per_task: int = PROMPTS_PER_TASK, world: World | str | None = None
                     ) -> list[dict]:
    """``per_task`` prompts for each of the six tasks, in GenEval's order and JSONL schema.

    Each task draws its distinct prompts in a seeded random order. Where the toy vocabulary has
    fewer distinct prompts than ``per_task`` (v1: single object: 3, two object: 6, counting: 9,
    colours: 18, position: 24), the shuffled list is repeated until ``per_task`` is reached, so that
    every task keeps the same weight in sample counts.

    A world with held-out compositions (v2) gives its ``seen`` prompts, then its ``heldout`` ones, each
    ``per_task`` per task and each record marked with its ``split``. A single-object prompt composes nothing, so
    both splits draw those from all of them.
    """
    w = get_world(world)
    if not w.heldout:
        return _draw(np.random.default_rng(seed), per_task, lambda tag: all_metas(tag, world=world), {})
    rng = np.random.default_rng([seed, 2])
    out = []
    for split in SPLITS:
        def options(tag: str, split: str = split) -> list[dict]:
            return all_metas(tag, world=w, split=None if tag == "single_object" else split)

        out += _draw(rng, per_task, options, {"split": split})
    return out


def _draw(rng: np.random.Generator, per_task: int, options_of, extra: dict) -> list[dict]:
    out: list[dict] = []
    for tag in TASKS:
        options = options_of(tag)
        order = rng.permutation(len(options))
        out.extend({**json.loads(json.dumps(options[order[i % len(options)]])), **extra} for i in range(per_task))
    return out


def toy_vocabulary(world: World | str | None = None) -> Vocabulary:
    """What the toy scorer can detect in ``world`` (default v1): its shapes, its palette's colours, GenEval's six
    tasks."""
    w = get_world(world)
    return Vocabulary(frozenset(w.shapes), frozenset(w.palette), frozenset(TASKS))


def check_toy_records(records: list[tuple[int, dict]], source: str) -> None:
    """Refuse records the toy scorer cannot score, naming ``source``, the line and the field: the schema, and a
    class, colour or task (``tag``) outside :func:`toy_vocabulary` of the record's world (a made-up task would
    score 0 silently)."""
    by_world: dict[str, list[tuple[int, dict]]] = {}
    for line, meta in records:
        by_world.setdefault(world_of(meta).name, []).append((line, meta))
    for name, group in by_world.items():  # every problem of a world's records in one message
        validate_records(group, source, toy_vocabulary(name))


def load_toy_geneval(path: str | Path | None = None, world: World | str | None = None) -> list[dict]:
    """The prompts of a GenEval metadata file (default: the toy file of ``world`` shipped with the package),
    checked (:func:`check_toy_records`)."""
    if path is None:
        name = METADATA_FILES[get_world(world).name]
        return parse_jsonl(resources.files("parauni.toy").joinpath("data", name).read_text(), name)
    metas = read_jsonl(path)
    check_toy_records(list(enumerate(metas, 1)), str(path))
    return metas


def write_metadata(metas: Sequence[dict], path: str | Path) -> None:
    """Write prompt dicts as GenEval JSONL (one ``json.dumps`` object a line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(m) + "\n" for m in metas))


def group_by_class(dets: Sequence[Detection], tag: str | None = None,
                   selection: Selection = TOY_SELECTION) -> dict[str, list[Detection]]:
    """Detections per class, most confident first (:func:`parauni.eval.geneval_rules.select_objects`)."""
    return rules.select_objects(dets, tag, selection)


def evaluate(dets: Sequence[Detection], meta: dict, selection: Selection = TOY_SELECTION) -> tuple[bool, str]:
    """GenEval's verdict for one image's detections against one prompt: ``(correct, reason)``.

    The rules are :func:`parauni.eval.geneval_rules.evaluate` with each detection's own colour; the colour tally
    of a reason lists the colours in the order they appear (the toy palette is not GenEval's).  A record without
    ``include`` entries is an error (:func:`check_record`)."""
    return rules.evaluate(group_by_class(dets, meta.get("tag"), selection), meta, palette=None)


def partial_credit(dets: Sequence[Detection], meta: dict, selection: Selection = TOY_SELECTION) -> float:
    """GenEval-style partial credit in [0, 1]; it is 1 exactly when :func:`evaluate` says correct.

    Mean over ``include`` entries of ``count_term * colour_term * position_term``:
    ``count_term = max(0, 1 - (shortfall + excess) / count)`` where the excess counts detections at or
    beyond an ``exclude`` limit on the same class; ``colour_term`` is the share of the ``count``
    slots filled by a detection of the right colour; ``position_term`` the share of (object, target)
    pairs in the right relation (0 without targets). A violated ``exclude`` on a class not included
    sets the credit to 0.
    """
    check_record(meta)
    objects = group_by_class(dets, meta.get("tag"), selection)
    includes = meta.get("include", [])
    limits = {r["class"]: int(r["count"]) for r in meta.get("exclude", [])}
    terms = []
    for req in includes:
        cls, count = req["class"], int(req["count"])
        all_found = objects.get(cls, [])
        found = all_found[:count]
        excess = max(0, len(all_found) - limits[cls] + 1) if cls in limits else 0
        term = max(0.0, 1 - (count - len(found) + excess) / count)
        if "color" in req:
            term *= sum(d.color == req["color"] for d in found) / count
        if "position" in req:
            rel, target = req["position"][0], int(req["position"][1])
            targets = objects.get(includes[target]["class"], [])[: int(includes[target]["count"])]
            pairs = [rel in relative_position(a.bbox, b.bbox) for a in found for b in targets]
            term *= sum(pairs) / len(pairs) if pairs else 0.0
        terms.append(term)
    credit = float(np.mean(terms)) if terms else 1.0
    included = {r["class"] for r in includes}
    for cls, limit in limits.items():
        if cls not in included and len(objects.get(cls, [])) >= limit:
            return 0.0
    return credit


def score_image(image: np.ndarray | Image.Image, meta: dict) -> tuple[bool, str, float]:
    """Detect the objects of the record's world in one RGB image and judge it: ``(correct, reason, partial
    credit)``."""
    dets = detect(image, world=world_of(meta))
    correct, reason = evaluate(dets, meta)
    return correct, reason, partial_credit(dets, meta)


def write_geneval_layout(out_dir: str | Path, metadata_list: Sequence[dict],
                         images_per_prompt: Sequence[Sequence[np.ndarray | Image.Image]]) -> None:
    """Write images in GenEval's layout: ``<out_dir>/<i:05d>/metadata.jsonl`` + ``samples/<k:04d>.png``."""
    if len(metadata_list) != len(images_per_prompt):
        raise ValueError("one list of images is needed per prompt")
    for i, (meta, images) in enumerate(zip(metadata_list, images_per_prompt, strict=True)):
        folder = Path(out_dir) / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta))
        for k, img in enumerate(images):
            Image.fromarray(as_uint8(img)).save(folder / "samples" / f"{k:04d}.png")


def strictly_correct(correct: bool, dets: Sequence[dict], meta: dict) -> bool:
    """GenEval's verdict, and no detection of a class the prompt does not name.

    GenEval does not fail an image for extra objects; in a world of three shapes, an image with one of
    each passes every single- and two-object prompt. This stricter verdict closes that shortcut."""
    named = {r["class"] for r in meta.get("include", [])}
    return bool(correct) and all(d["class"] in named for d in dets)


def standard_errors(results: Sequence[dict]) -> dict:
    """Binomial standard errors of a summary: per task ``sqrt(p (1 - p) / n)`` over its ``n`` images, and of
    ``overall`` (the mean of the task accuracies, tasks independent) ``sqrt(sum of the squares) / tasks``;
    ``overall_max`` is the largest it can be whatever the accuracies (every ``p = 0.5``)."""
    tasks: dict[str, list[bool]] = {}
    for r in results:
        tasks.setdefault(r["tag"], []).append(bool(r["correct"]))
    se = {tag: float(np.sqrt(np.mean(v) * (1 - np.mean(v)) / len(v))) for tag, v in tasks.items()}
    k = max(len(tasks), 1)
    return {"tasks": se, "overall": float(np.sqrt(sum(x * x for x in se.values()))) / k,
            "overall_max": float(np.sqrt(sum(0.25 / len(v) for v in tasks.values()))) / k}


def split_summaries(results: Sequence[dict]) -> dict[str, dict]:
    """Per split (the ``split`` key of each row's record: ``seen``, ``heldout``), that split's
    :func:`summarize` with its :func:`standard_errors` (``stderr``); empty when no record carries a split."""
    by: dict[str, list[dict]] = {}
    for r in results:
        split = json.loads(r["metadata"]).get("split") if isinstance(r.get("metadata"), str) else None
        if split:
            by.setdefault(split, []).append(r)
    order = sorted(by, key=lambda s: (SPLITS.index(s) if s in SPLITS else len(SPLITS), s))
    return {s: {**_summarize(by[s]), "stderr": standard_errors(by[s])} for s in order}


def summarize(results: Sequence[dict]) -> dict:
    """GenEval's summary (:func:`parauni.eval.geneval_rules.summarize`: per-task accuracy, overall = mean of the
    task accuracies) plus ``mean_partial``, the mean partial credit (before ``overall``, as the shipped summaries).

    Where the results carry their detections (``details``), also the strict per-task accuracy and its mean
    (:func:`strictly_correct`: ``strict_tasks``, ``strict_overall``) and the mean number of detected objects
    per image (``objects_per_image``).

    Always ``any_correct_tasks``: per task, the share of prompt entries (the ``<index>`` folders) with at least
    one correct image among their k, pass@k with k the images per prompt (rows without a ``filename``: the
    prompt record stands for the folder). One minus it is the share of groups in which an exact-verdict reward
    would find no positive sample: where the base model is the limit of RL.

    Where the records carry a ``split`` (the v2 prompts), also ``splits``: each split's own summary with its
    standard errors (:func:`split_summaries`); the held-out one is the headline."""
    summary = _summarize(results)
    splits = split_summaries(results)
    return {**summary, "splits": splits} if splits else summary


def _summarize(results: Sequence[dict]) -> dict:
    strict: dict[str, list[bool]] = {}
    counts: list[int] = []
    groups: dict[tuple[str, str], bool] = {}
    for r in results:
        key = (r["tag"], Path(r["filename"]).parent.parent.name if "filename" in r else r["metadata"])
        groups[key] = groups.get(key, False) or bool(r["correct"])
        if "details" in r:
            dets = json.loads(r["details"])
            counts.append(len(dets))
            strict.setdefault(r["tag"], []).append(strictly_correct(r["correct"], dets, json.loads(r["metadata"])))
    extra = {}
    if strict and len(counts) == len(results):
        strict_acc = {tag: float(np.mean(v)) for tag, v in strict.items()}
        extra = {"strict_tasks": strict_acc, "strict_overall": float(np.mean(list(strict_acc.values()))),
                 "objects_per_image": float(np.mean(counts))}
    summary = rules.summarize(results)
    overall = summary.pop("overall")
    summary["mean_partial"] = float(np.mean([r["partial"] for r in results])) if results else 0.0
    any_correct: dict[str, list[bool]] = {}
    for (tag, _), ok in groups.items():
        any_correct.setdefault(tag, []).append(ok)
    extra["any_correct_tasks"] = {tag: float(np.mean(v)) for tag, v in any_correct.items()}
    return {**summary, "overall": overall, **extra}


def score_dir(image_dir: str | Path, outfile: str | Path | None = None,
              selection: Selection = TOY_SELECTION) -> dict:
    """Score every ``<index>/samples/<k>.png`` under ``image_dir`` against its ``metadata.jsonl``.

    Writes GenEval-format ``results.jsonl`` (``filename, tag, prompt, correct, reason, metadata,
    details`` plus ``partial``; ``metadata`` and ``details`` hold JSON strings, ``details`` the
    detections) to ``outfile`` (default ``<image_dir>/results.jsonl``) and ``summary.json`` next to
    it; returns the summary (see :func:`summarize`).
    """
    results = []
    files = rules.image_files(image_dir)
    seen = {}
    for path, meta in files:
        seen.setdefault(str(path.parent.parent / "metadata.jsonl"), meta)
    for source, meta in seen.items():  # before scoring: a record the toy scorer cannot score is refused
        check_toy_records([(1, meta)], source)
    for path, meta in files:
        dets = detect(Image.open(path), world=world_of(meta))
        correct, reason = evaluate(dets, meta, selection)
        results.append(rules.result_record(path, meta, correct, reason, [d.to_json() for d in dets],
                                           partial=partial_credit(dets, meta, selection)))
    out = Path(outfile) if outfile is not None else Path(image_dir) / "results.jsonl"
    return rules.write_results(results, out, summarize)


if __name__ == "__main__":
    for world_name, file_name in METADATA_FILES.items():
        write_metadata(make_toy_geneval(world=world_name), Path(__file__).parent / "data" / file_name)
