"""Toy GenEval: prompts in GenEval's schema over the toy vocabulary, and a programmatic scorer.

The scorer feeds the detections of :func:`parauni.toy.detect.detect` into GenEval's rules, the core's one rule
engine :mod:`parauni.eval.geneval_rules` (shared with the native Mask2Former scorer): per ``include`` entry the
most confident ``count`` detections of the class must exist, have the asked colour, and stand in the asked relation
to every object of the entry they refer to; per ``exclude`` entry fewer than ``count`` detections of the class may
exist.  Which detections count is :data:`TOY_SELECTION`: every detection the toy detector reports, without
GenEval's confidence thresholds and per-class cap (see there for why and what differs).
It reads and writes GenEval's layouts: ``<dir>/<index:05d>/metadata.jsonl`` and
``<dir>/<index:05d>/samples/<k:04d>.png`` in, ``results.jsonl`` (one line per image) and a summary out.
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
from parauni.toy.world import COLORS, SHAPES
from parauni.utils.images import as_uint8
from parauni.utils.jsonl import parse_jsonl, read_jsonl

PROMPTS_PER_TASK = 50
METADATA_FILE = "toy_geneval_metadata.jsonl"
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


def make_toy_geneval(seed: int = 0, per_task: int = PROMPTS_PER_TASK) -> list[dict]:
    """``per_task`` prompts for each of the six tasks, in GenEval's order and JSONL schema.

    Each task draws its distinct prompts in a seeded random order. Where the toy vocabulary has
    fewer distinct prompts than ``per_task`` (single object: 3, two object: 6, counting: 9,
    colours: 18, position: 24), the shuffled list is repeated until ``per_task`` is reached, so that
    every task keeps the same weight in sample counts.
    """
    rng = np.random.default_rng(seed)
    out: list[dict] = []
    for tag in TASKS:
        options = all_metas(tag)
        order = rng.permutation(len(options))
        out.extend(json.loads(json.dumps(options[order[i % len(options)]])) for i in range(per_task))
    return out


def toy_vocabulary() -> Vocabulary:
    """What the toy scorer can detect: the toy shapes, the palette's colours, GenEval's six tasks."""
    return Vocabulary(frozenset(SHAPES), frozenset(COLORS), frozenset(TASKS))


def check_toy_records(records: list[tuple[int, dict]], source: str) -> None:
    """Refuse records the toy scorer cannot score, naming ``source``, the line and the field: the schema, and a
    class, colour or task (``tag``) outside :func:`toy_vocabulary` (a made-up task would score 0 silently)."""
    validate_records(records, source, toy_vocabulary())


def load_toy_geneval(path: str | Path | None = None) -> list[dict]:
    """The prompts of a GenEval metadata file (default: the toy file shipped with the package), checked
    (:func:`check_toy_records`)."""
    if path is None:
        return parse_jsonl(resources.files("parauni.toy").joinpath("data", METADATA_FILE).read_text(), METADATA_FILE)
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
    """Detect objects in one RGB image and judge it: ``(correct, reason, partial credit)``."""
    dets = detect(image)
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


def summarize(results: Sequence[dict]) -> dict:
    """GenEval's summary (:func:`parauni.eval.geneval_rules.summarize`: per-task accuracy, overall = mean of the
    task accuracies) plus ``mean_partial``, the mean partial credit (before ``overall``, as the shipped summaries).

    Where the results carry their detections (``details``), also the strict per-task accuracy and its mean
    (:func:`strictly_correct`: ``strict_tasks``, ``strict_overall``) and the mean number of detected objects
    per image (``objects_per_image``).

    Always ``any_correct_tasks``: per task, the share of prompt entries (the ``<index>`` folders) with at least
    one correct image among their k, pass@k with k the images per prompt (rows without a ``filename``: the
    prompt record stands for the folder). One minus it is the share of groups in which an exact-verdict reward
    would find no positive sample: where the base model is the limit of RL."""
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
        dets = detect(Image.open(path))
        correct, reason = evaluate(dets, meta, selection)
        results.append(rules.result_record(path, meta, correct, reason, [d.to_json() for d in dets],
                                           partial=partial_credit(dets, meta, selection)))
    out = Path(outfile) if outfile is not None else Path(image_dir) / "results.jsonl"
    return rules.write_results(results, out, summarize)


if __name__ == "__main__":
    write_metadata(make_toy_geneval(), Path(__file__).parent / "data" / METADATA_FILE)
