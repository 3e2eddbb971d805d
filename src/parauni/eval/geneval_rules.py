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
  accuracy and the overall score, the mean over tasks.

The schema of metadata records and results rows, whose every error names the file, the line and the field, is
:mod:`parauni.eval.geneval_schema`.

A detection is any object with ``cls`` (GenEval class name), ``bbox`` (``x1, y1, x2, y2`` in pixels),
``confidence`` and, where the detector classifies colours itself, ``color``: a plugin's own detections and this
module's :class:`Detection` both qualify.  Detectors without a
colour of their own (Mask2Former) pass a ``classify_colors`` function to :func:`evaluate`, which is called, as in
the reference, only on the objects a colour clause checks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import UsageError

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
