"""GenEval's rules as pure functions over detections: one engine for every detector.

GenEval (Ghosh et al., NeurIPS 2023 Datasets and Benchmarks; https://github.com/djghosh13/geneval) judges an
image from the objects a detector finds in it.  This module holds the judging part of its
``evaluation/evaluate_images.py`` (cited below as ``evaluate_images.py:LINE``, commit af4902f) and of
``evaluation/summary_scores.py``, apart from the detector itself:

- which detections count (:func:`select_objects`): per class, most confident first, those above the detection
  threshold (0.3; 0.9 for the ``counting`` task), at most 16, optionally a greedy box NMS (off by default);
- the relative position of two boxes (:func:`relative_position`, margin 0.1 of the two boxes' sizes);
- the verdict of one image against one prompt (:func:`evaluate`): ``include`` entries (count, colour, position
  relative to an earlier entry) and ``exclude`` entries;
- the results files (:func:`result_record`, :func:`write_results`) and the summary (:func:`summarize`): per-task
  accuracy and the overall score, the mean over tasks;
- the schema of metadata records and results rows (:func:`validate_records`, :func:`load_metadata`,
  :func:`read_results`): every error names the file, the line and the field.

A detection is any object with ``cls`` (GenEval class name), ``bbox`` (``x1, y1, x2, y2`` in pixels),
``confidence`` and, where the detector classifies colours itself, ``color``: a plugin's own detections and this
module's :class:`Detection` both qualify.  Detectors without a
colour of their own (Mask2Former) pass a ``classify_colors`` function to :func:`evaluate`, which is called, as in
the reference, only on the objects a colour clause checks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError
from ..utils.names import closest_name
from .bundled import geneval_object_names_path

logger = logging.getLogger(__name__)

# The six tasks, in the order of GenEval's prompts/evaluation_metadata.jsonl.
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# evaluate_images.py:286-290 (the defaults of its --options): detection threshold, the stricter threshold of the
# counting task, the cap on objects per class, the NMS IoU (max_overlap; 1 = no NMS), the position margin.
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
MAX_OVERLAP = 1.0
POSITION_THRESHOLD = 0.1
# evaluate_images.py:76: the colours of the zero-shot colour classifier, in the order its reasons list them.
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# evaluate_images.py:113-117: the classifier's prompt templates ({c}: a colour, {classname}: the object).
COLOR_TEMPLATES = ("a photo of a {c} {classname}", "a photo of a {c}-colored {classname}", "a photo of a {c} object")
# evaluate_images.py:84-88,98,101-102: the object's mask keeps its pixels, the rest is painted this colour, then
# the image is cropped to the object's box before CLIP sees it.
COLOR_BACKGROUND = "#999"
# the official results.jsonl keys (evaluate_images.py:247-257)
RESULT_KEYS = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")
# the relations relative_position can find (evaluate_images.py:153-156), the only ones a position clause can ask
RELATIONS = ("left of", "right of", "above", "below")


class Detected(Protocol):
    """What the rules read of a detection (``color`` only when no ``classify_colors`` is given)."""

    cls: str
    bbox: Sequence[float]
    confidence: float


@dataclass(frozen=True)
class Detection:
    """One detected object: GenEval class name, box ``(x1, y1, x2, y2)`` in pixels (x2, y2 exclusive, as
    mmdetection's ``mask2bbox``), confidence, and optionally its binary mask ``(H, W)`` and a colour name."""

    cls: str
    bbox: tuple[float, float, float, float]
    confidence: float
    mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    color: str | None = None

    def box_and_score(self) -> list[float]:
        """``[x1, y1, x2, y2, score]``: one row of the official ``details`` (evaluate_images.py:254-257)."""
        return [float(v) for v in self.bbox] + [float(self.confidence)]


@dataclass(frozen=True)
class Selection:
    """Which detections GenEval keeps (evaluate_images.py:229-244); ``None`` switches a limit off.

    ``threshold``: keep confidences strictly above it (evaluate_images.py:233); ``counting_threshold``: the same
    for prompts tagged ``counting`` (evaluate_images.py:230); ``max_objects``: at most this many per class, the
    most confident (evaluate_images.py:234); ``max_overlap``: greedy NMS, dropping a box whose IoU with a kept box
    of its class is at least this (evaluate_images.py:236-242; 1 keeps every box, GenEval's default)."""

    threshold: float | None = THRESHOLD
    counting_threshold: float | None = COUNTING_THRESHOLD
    max_objects: int | None = MAX_OBJECTS
    max_overlap: float = MAX_OVERLAP

    def threshold_for(self, tag: str | None) -> float | None:
        """The confidence a detection must exceed for a prompt of task ``tag``."""
        return self.counting_threshold if tag == "counting" else self.threshold


GENEVAL = Selection()
"""GenEval's own selection (the defaults of evaluate_images.py:286-289)."""


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two ``x1, y1, x2, y2`` boxes with GenEval's inclusive-pixel areas (``+ 1``;
    evaluate_images.py:130-137)."""
    def area(b):
        return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)

    inter = area([max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])])
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def select_objects(dets: Iterable[Detected], tag: str | None = None,
                   selection: Selection = GENEVAL) -> dict[str, list]:
    """The detections GenEval judges, per class, most confident first (evaluate_images.py:228-244).

    Ties keep the detector's order (a stable sort; the reference's ``argsort()[::-1]`` leaves tie order to
    numpy).  Classes with nothing kept are absent."""
    limit = selection.threshold_for(tag)
    out: dict[str, list] = {}
    for d in sorted(dets, key=lambda d: -d.confidence):
        if limit is not None and not d.confidence > limit:
            continue
        out.setdefault(d.cls, []).append(d)
    for cls, group in out.items():
        if selection.max_objects is not None:
            group = group[:selection.max_objects]
        if selection.max_overlap < 1:
            kept: list = []
            for d in group:
                if all(compute_iou(k.bbox, d.bbox) < selection.max_overlap for k in kept):
                    kept.append(d)
            group = kept
        out[cls] = group
    return out


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Where box A lies relative to box B (``x1, y1, x2, y2``; y grows downward), by evaluate_images.py:140-157.

    The centre offset A - B is shrunk on each axis by ``threshold * (width_a + width_b)`` (resp. heights), never
    past zero; when nothing is left (below 1e-3 on both axes) there is no relation.  Otherwise the shrunk offset
    divided by the length of the true offset gives ``(dx, dy)`` and each component beyond 0.5 names a relation:
    ``left of`` (dx < -0.5), ``right of``, ``above`` (dy < -0.5), ``below``; two can hold at once."""
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(0) - b.mean(0)
    dims = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def check_record(meta: dict) -> None:
    """Refuse a record that gives nothing to check: without ``include`` entries every image would pass.

    GenEval's six tasks all name their objects in ``include``; a record without them (an unknown ``tag``,
    a typo, another benchmark's file) is an error that names the record and its tag."""
    if not isinstance(meta, dict):
        raise UsageError(f"a GenEval record must be a JSON object, got {type(meta).__name__}: {meta!r}")
    include = meta.get("include")
    if include and isinstance(include, list):
        return
    tag = meta.get("tag")
    known = "one of GenEval's tasks" if tag in TASKS else f"not one of GenEval's tasks {', '.join(TASKS)}"
    raise UsageError(f"GenEval record {json.dumps(meta)[:200]} has tag {tag!r} ({known}) and no 'include' list "
                     "of objects, so no image could fail it; give each record 'include': [{\"class\": ..., "
                     "\"count\": ...}] (GenEval's evaluation_metadata.jsonl schema)")


@dataclass(frozen=True)
class Vocabulary:
    """The names a scorer knows: object classes, colours and tasks (``tag``).  ``None`` accepts any name."""

    classes: frozenset[str] | None
    colors: frozenset[str] | None
    tags: frozenset[str] | None = frozenset(TASKS)


def geneval_vocabulary() -> Vocabulary:
    """GenEval's own: the 80 COCO names of ``object_names.txt``, the ten colours (evaluate_images.py:76), the six
    tasks.  What the native and the official scorer can detect and classify."""
    names = frozenset(x.strip() for x in geneval_object_names_path().read_text().splitlines() if x.strip())
    return Vocabulary(names, frozenset(COLORS))


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _unknown(value, known: frozenset[str]) -> str:
    close = closest_name(str(value), known)
    return f"{json.dumps(value)} is not one of the {len(known)} known names" + (
        f" (did you mean {json.dumps(close)}?)" if close else f" ({', '.join(sorted(known)[:10])}, ...)")


def record_problems(meta, vocabulary: Vocabulary | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(errors, unknown names)`` of one GenEval metadata record, each ``(field, message)`` (pure).

    The schema of GenEval's ``prompts/evaluation_metadata.jsonl`` as ``evaluate_images.py:160-220`` reads it: a
    JSON object with ``prompt`` (text) and ``tag`` (text), ``include`` a non-empty list and ``exclude`` an optional
    list of ``{"class": name, "count": whole number >= 1}``; an ``include`` entry may add ``color`` (a name) and
    ``position``: ``[relation, k]`` with a relation of :data:`RELATIONS` and ``k`` an earlier entry's index.  Names
    missing from ``vocabulary`` (class, colour, tag) are returned apart, for the caller to refuse or warn."""
    errors: list[tuple[str, str]] = []
    unknown: list[tuple[str, str]] = []
    if not isinstance(meta, dict):
        return [("(record)", f"a GenEval record is a JSON object, got {type(meta).__name__} "
                             f"{json.dumps(meta)[:60]}; write one {{\"tag\": ..., \"prompt\": ..., \"include\": "
                             "[...]} object a line")], []
    if "prompt" not in meta:
        errors.append(("prompt", "missing; every record needs \"prompt\": the text the images were made from"))
    elif not isinstance(meta["prompt"], str) or not meta["prompt"].strip():
        errors.append(("prompt", f"{json.dumps(meta['prompt'])[:40]} is not a non-empty text"))
    tag = meta.get("tag")
    if not isinstance(tag, str):
        errors.append(("tag", "missing; every record needs \"tag\", its task (one of " + ", ".join(TASKS) + ")"
                       if "tag" not in meta else f"{json.dumps(tag)} is not text; give the task's name"))
    elif vocabulary is not None and vocabulary.tags is not None and tag not in vocabulary.tags:
        unknown.append(("tag", _unknown(tag, vocabulary.tags)))
    include = meta.get("include")
    if not isinstance(include, list) or not include:
        known = "one of GenEval's tasks" if tag in TASKS else f"not one of GenEval's tasks {', '.join(TASKS)}"
        errors.append(("include", f"missing or empty in the record with tag {tag!r} ({known}), prompt "
                                  f"{json.dumps(meta.get('prompt'))[:60]}: without objects to check every image "
                                  "would pass; give \"include\": [{\"class\": ..., \"count\": ...}]"
                       if not include else f"must be a list of objects, got {type(include).__name__}"))
        include = []
    exclude = meta.get("exclude", [])
    if not isinstance(exclude, list):
        errors.append(("exclude", f"must be a list of objects, got {type(exclude).__name__}"))
        exclude = []
    for part, entries in (("include", include), ("exclude", exclude)):
        for k, e in enumerate(entries):
            where = f"{part}[{k}]"
            if not isinstance(e, dict):
                errors.append((where, f"must be an object {{\"class\": ..., \"count\": ...}}, got {json.dumps(e)}"))
                continue
            cls = e.get("class")
            if not isinstance(cls, str) or not cls:
                errors.append((f"{where}.class", "missing; name the object (e.g. \"dog\")" if "class" not in e
                               else f"{json.dumps(cls)} is not a class name"))
            elif vocabulary is not None and vocabulary.classes is not None and cls not in vocabulary.classes:
                unknown.append((f"{where}.class", _unknown(cls, vocabulary.classes)))
            if "count" not in e:
                errors.append((f"{where}.count", "missing; give a whole number >= 1, e.g. \"count\": 2"))
            elif not _is_count(e["count"]):
                errors.append((f"{where}.count", f"{json.dumps(e['count'])} is not a count; a count is a whole number "
                                                 ">= 1 written as a number, e.g. \"count\": 2"))
            if part == "exclude":
                continue
            if "color" in e:
                color = e["color"]
                if not isinstance(color, str):
                    errors.append((f"{where}.color", f"{json.dumps(color)} is not a colour name"))
                elif vocabulary is not None and vocabulary.colors is not None and color not in vocabulary.colors:
                    unknown.append((f"{where}.color", _unknown(color, vocabulary.colors)))
            if "position" in e:
                pos = e["position"]
                ok = (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[1], int)
                      and not isinstance(pos[1], bool))
                if not ok:
                    errors.append((f"{where}.position", f"{json.dumps(pos)} is not [relation, k]; write e.g. "
                                                        "[\"left of\", 0] (k: the index of an earlier include entry)"))
                else:
                    if pos[0] not in RELATIONS:
                        errors.append((f"{where}.position", f"relation {json.dumps(pos[0])} is not one of "
                                                            f"{', '.join(RELATIONS)} (the relations GenEval can find)"))
                    if not 0 <= pos[1] < k:
                        errors.append((f"{where}.position", f"target {pos[1]} is not an earlier include entry "
                                                            f"(0..{k - 1}); the target must come first"
                                       if k else "the first include entry has no earlier entry to be placed "
                                                 "against; put the target object first"))
    return errors, unknown


def validate_records(records: Iterable[tuple[int, Any]], source: str, vocabulary: Vocabulary | None = None,
                     open_vocabulary: bool = False) -> list[str]:
    """Check GenEval metadata records ``(line, record)`` read from ``source``; return the warnings.

    Every problem names ``source``, the line and the field.  Schema errors (:func:`record_problems`) are
    raised together in one ``UsageError``; names outside ``vocabulary`` are errors too, unless
    ``open_vocabulary`` (a scorer that may know other names, such as a user's own scorer command): then they are
    returned (and logged) as warnings."""
    errors, warnings = [], []
    for line, meta in records:
        bad, unknown = record_problems(meta, vocabulary)
        errors += [f"{source}, line {line}, field '{f}': {m}" for f, m in bad]
        named = [f"{source}, line {line}, field '{f}': {m}" for f, m in unknown]
        if open_vocabulary:
            warnings += named
        else:
            errors += named
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UsageError(f"{len(errors)} problem(s) in GenEval metadata (the schema of GenEval's "
                         "evaluation_metadata.jsonl):\n  " + "\n  ".join(errors[:20]) + more)
    for w in warnings:
        logger.warning("%s (this scorer may know it; GenEval's own cannot detect it)", w)
    return warnings


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    out = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            out.append((n, json.loads(text)))
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}, line {n}, column {err.colno}: not valid JSON ({err.msg})") from None
    return out


def metadata_lines(path: str | Path) -> list[tuple[int, Any]]:
    """``(line, record)`` of every non-blank line of a GenEval metadata JSONL file, checked for the schema only
    (:func:`validate_records` without a vocabulary; a line that is not JSON is an error naming it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata {str(path)!r} does not exist or is not a file")
    rows = _json_lines(path)
    validate_records(rows, str(path))
    return rows


def load_metadata(path: str | Path, vocabulary: Vocabulary | None = None,
                  open_vocabulary: bool = False) -> list[dict]:
    """The records of a GenEval metadata JSONL file, validated (:func:`validate_records`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata {str(path)!r} does not exist or is not a file")
    rows = _json_lines(path)
    validate_records(rows, str(path), vocabulary, open_vocabulary)  # every problem at once
    return [meta for _, meta in rows]


def check_result_rows(rows: Iterable[tuple[int, Any]], source: str) -> None:
    """A scorer's ``results.jsonl`` rows ``(line, row)``: each a JSON object with the keys the summary reads,
    ``tag`` (text), ``correct`` (true/false) and ``metadata`` (the prompt record as a JSON string,
    evaluate_images.py:247-257).  Every error names ``source``, the line and the field."""
    errors = []
    for line, row in rows:
        if not isinstance(row, dict):
            errors.append(f"{source}, line {line}: a results row is a JSON object, got {type(row).__name__}")
            continue
        if not isinstance(row.get("tag"), str):
            errors.append(f"{source}, line {line}, field 'tag': " + (
                "missing; the summary groups images by task (GenEval's results rows carry the prompt's tag)"
                if "tag" not in row else f"{json.dumps(row['tag'])} is not a task name"))
        if not isinstance(row.get("correct"), bool):
            errors.append(f"{source}, line {line}, field 'correct': " + (
                "missing" if "correct" not in row else f"{json.dumps(row['correct'])} is not true/false"))
        if not isinstance(row.get("metadata"), str):
            errors.append(f"{source}, line {line}, field 'metadata': " + (
                "missing" if "metadata" not in row else "must be the prompt record as a JSON string"))
    if errors:
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise UsageError(f"{len(errors)} problem(s) in GenEval results (evaluate_images.py's results.jsonl "
                         "rows):\n  " + "\n  ".join(errors[:20]) + more)


def read_results(path: str | Path) -> list[dict]:
    """The rows of a scorer's ``results.jsonl``, checked (:func:`check_result_rows`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval results {str(path)!r} do not exist or are not a file")
    rows = _json_lines(path)
    check_result_rows(rows, str(path))
    return [r for _, r in rows]


ColorFn = Callable[[Sequence[Any], str], list[str]]


def _own_colors(found: Sequence[Any], classname: str) -> list[str]:
    return [d.color for d in found]


def evaluate(objects: dict[str, Sequence[Any]], meta: dict, classify_colors: ColorFn | None = None,
             palette: Sequence[str] | None = COLORS,
             position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """GenEval's verdict for one image: ``(correct, reason)`` (evaluate_images.py:160-220).

    ``objects``: :func:`select_objects`'s dict (per class, most confident first).  ``include`` entries are
    ANDed: the ``count`` most confident objects of the class must exist; with ``color``, at least ``count`` of
    them must have it (``classify_colors(objects, classname)``, default each object's own ``color``); with
    ``position: [relation, k]``, each of them must stand in ``relation`` to each object matched by entry ``k``,
    which must itself have matched (colour and position are checked on matched counts only).  ``exclude``
    entries are ORed: ``count`` or more objects of the class fail the image.

    The reason lists the failures as the reference words them; the colour tally follows ``palette`` (GenEval's
    colour order; ``None``: the order the colours first appear), and the found relations are sorted (the
    reference joins a set, whose order is arbitrary).  A record without ``include`` is an error
    (:func:`check_record`)."""
    check_record(meta)
    classify_colors = classify_colors or _own_colors
    correct, reasons = True, []
    matched: list[Sequence[Any] | None] = []
    for req in meta["include"]:
        cls, count = req["class"], int(req["count"])
        found = list(objects.get(cls, []))[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = classify_colors(found, cls)
                want = req["color"]
                if colors.count(want) < count:
                    ok = False
                    order = list(palette) + [c for c in dict.fromkeys(colors) if c not in palette] \
                        if palette is not None else list(dict.fromkeys(colors))
                    tally = ", ".join(f"{colors.count(c)} {c}" for c in order if c in colors)
                    reasons.append(f"expected {want} {cls}>={count}, found {colors.count(want)} {want}; and {tally}")
            if "position" in req and ok:
                rel, target = req["position"][0], int(req["position"][1])
                if matched[target] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj, tgt in ((o, t) for o in found for t in matched[target]):
                        rels = relative_position(obj.bbox, tgt.bbox, position_threshold)
                        if rel not in rels:
                            ok = False
                            reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(rels))} target")
                            break
        correct &= ok
        matched.append(found if ok else None)
    for req in meta.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= int(req["count"]):
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, "\n".join(reasons)


def result_record(filename: str | Path, meta: dict, correct: bool, reason: str, details: Any, **extra) -> dict:
    """One line of GenEval's ``results.jsonl`` (evaluate_images.py:247-257): ``metadata`` and ``details`` are
    JSON strings; ``extra`` keys (a detector's own fields) follow the official ones."""
    return {"filename": str(filename), "tag": meta["tag"], "prompt": meta["prompt"], "correct": bool(correct),
            "reason": reason, "metadata": json.dumps(meta), "details": json.dumps(details), **extra}


def official_details(objects: dict[str, Sequence[Detection]]) -> dict[str, list[list[float]]]:
    """``details`` as the reference writes it: per class the kept boxes ``[x1, y1, x2, y2, score]``."""
    return {cls: [d.box_and_score() for d in group] for cls, group in objects.items()}


def summarize(results: Sequence[dict]) -> dict:
    """GenEval's summary of ``results.jsonl`` rows (summary_scores.py:22-45).

    ``total_images``; ``total_prompts`` (distinct ``metadata``); ``correct_images`` (share of correct images);
    ``correct_prompts`` (share of prompts with at least one correct image); ``tasks`` (per-task accuracy, tasks
    in order of first appearance, as ``groupby(sort=False)``); ``task_images``; ``overall``, the mean of the
    task accuracies (summary_scores.py:36-45)."""
    tasks: dict[str, list[bool]] = {}
    prompts: dict[str, bool] = {}
    for r in results:
        tasks.setdefault(r["tag"], []).append(bool(r["correct"]))
        prompts[r["metadata"]] = prompts.get(r["metadata"], False) or bool(r["correct"])
    acc = {tag: float(np.mean(v)) for tag, v in tasks.items()}
    return {
        "total_images": len(results),
        "total_prompts": len(prompts),
        "correct_images": float(np.mean([r["correct"] for r in results])) if results else 0.0,
        "correct_prompts": float(np.mean(list(prompts.values()))) if prompts else 0.0,
        "tasks": acc,
        "task_images": {tag: len(v) for tag, v in tasks.items()},
        "overall": float(np.mean(list(acc.values()))) if acc else 0.0,
    }


def write_results(results: Sequence[dict], outfile: str | Path,
                  summarize_fn: Callable[[Sequence[dict]], dict] = summarize) -> dict:
    """Write ``results.jsonl`` (one JSON object a line) and ``summary.json`` beside it; return the summary."""
    out = Path(outfile)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in results))
    summary = summarize_fn(results)
    (out.parent / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def image_files(image_dir: str | Path) -> list[tuple[Path, dict]]:
    """``(image path, prompt record)`` for every ``<index>/samples/<k>.png`` of GenEval's layout, in folder and
    file-name order (evaluate_images.py:261-275 walks the same files, in ``os.listdir`` order)."""
    root = Path(image_dir)
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        path = folder / "metadata.jsonl"
        try:  # one JSON object (evaluate_images.py:267-268 json.load), usually on one line
            meta = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); "
                             "a prompt folder's metadata.jsonl holds its one GenEval record") from None
        samples = folder / "samples"
        for name in sorted(p.name for p in samples.iterdir() if re.fullmatch(r"\d+\.png", p.name)):
            out.append((samples / name, meta))
    return out
