"""Toy GenEval: prompts in GenEval's schema over the toy vocabulary, and a programmatic scorer.

The scorer applies GenEval's rules (``evaluation/evaluate_images.py``) to the detections of
:func:`parauni.toy.detect.detect`: per ``include`` entry the most confident ``count`` detections of
the class must exist, have the asked colour, and stand in the asked relation to every object of the
entry they refer to; per ``exclude`` entry fewer than ``count`` detections of the class may exist.
It reads and writes GenEval's layouts: ``<dir>/<index:05d>/metadata.jsonl`` and
``<dir>/<index:05d>/samples/<k:04d>.png`` in, ``results.jsonl`` (one line per image) and a summary out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from parauni.toy.detect import Detection, detect
from parauni.toy.prompts import TASKS, all_metas
from parauni.toy.world import relative_position
from parauni.utils.images import as_uint8
from parauni.utils.jsonl import parse_jsonl, read_jsonl

PROMPTS_PER_TASK = 50
METADATA_FILE = "toy_geneval_metadata.jsonl"


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


def load_toy_geneval(path: str | Path | None = None) -> list[dict]:
    """The prompts of a GenEval metadata file (default: the toy file shipped with the package)."""
    if path is None:
        return parse_jsonl(resources.files("parauni.toy").joinpath("data", METADATA_FILE).read_text(), METADATA_FILE)
    return read_jsonl(path)


def write_metadata(metas: Sequence[dict], path: str | Path) -> None:
    """Write prompt dicts as GenEval JSONL (one ``json.dumps`` object a line)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(json.dumps(m) + "\n" for m in metas))


def group_by_class(dets: Sequence[Detection]) -> dict[str, list[Detection]]:
    """Detections per class, most confident first."""
    out: dict[str, list[Detection]] = {}
    for d in sorted(dets, key=lambda d: -d.confidence):
        out.setdefault(d.cls, []).append(d)
    return out


def check_record(meta: dict) -> None:
    """Refuse a record that gives nothing to check: without ``include`` entries every image would pass.

    GenEval's six tasks all name their objects in ``include``; a record without them (an unknown ``tag``,
    a typo, another benchmark's file) is an error that names the record and its tag."""
    if not isinstance(meta, dict):
        raise ValueError(f"a GenEval record must be a JSON object, got {type(meta).__name__}: {meta!r}")
    include = meta.get("include")
    if include and isinstance(include, list):
        return
    tag = meta.get("tag")
    known = "one of GenEval's tasks" if tag in TASKS else f"not one of GenEval's tasks {', '.join(TASKS)}"
    raise ValueError(f"GenEval record {json.dumps(meta)[:200]} has tag {tag!r} ({known}) and no 'include' list "
                     "of objects, so no image could fail it; give each record 'include': [{\"class\": ..., "
                     "\"count\": ...}] (GenEval's evaluation_metadata.jsonl schema)")


def evaluate(dets: Sequence[Detection], meta: dict) -> tuple[bool, str]:
    """GenEval's verdict for one image's detections against one prompt: ``(correct, reason)``.

    A record without ``include`` entries is an error (:func:`check_record`)."""
    check_record(meta)
    objects = group_by_class(dets)
    correct, reasons = True, []
    matched: list[list[Detection] | None] = []
    for req in meta.get("include", []):
        cls, count = req["class"], int(req["count"])
        found = objects.get(cls, [])[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                if colors.count(req["color"]) < count:
                    ok = False
                    tally = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
                    reasons.append(f"expected {req['color']} {cls}>={count}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {tally}")
            if "position" in req and ok:
                rel, target = req["position"][0], int(req["position"][1])
                if matched[target] is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj, tgt in ((o, t) for o in found for t in matched[target]):
                        rels = relative_position(obj.bbox, tgt.bbox)
                        if rel not in rels:
                            ok = False
                            found_rels = " and ".join(sorted(rels))
                            reasons.append(f"expected {cls} {rel} target, found {found_rels} target")
                            break
        correct &= ok
        matched.append(found if ok else None)
    for req in meta.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= int(req["count"]):
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, "\n".join(reasons)


def partial_credit(dets: Sequence[Detection], meta: dict) -> float:
    """GenEval-style partial credit in [0, 1]; it is 1 exactly when :func:`evaluate` says correct.

    Mean over ``include`` entries of ``count_term * colour_term * position_term``:
    ``count_term = max(0, 1 - (shortfall + excess) / count)`` where the excess counts detections at or
    beyond an ``exclude`` limit on the same class; ``colour_term`` is the share of the ``count``
    slots filled by a detection of the right colour; ``position_term`` the share of (object, target)
    pairs in the right relation (0 without targets). A violated ``exclude`` on a class not included
    sets the credit to 0.
    """
    check_record(meta)
    objects = group_by_class(dets)
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
    """Per-task accuracy (share of correct images), overall = mean of the task accuracies.

    Where the results carry their detections (``details``), also the strict per-task accuracy and its mean
    (:func:`strictly_correct`: ``strict_tasks``, ``strict_overall``) and the mean number of detected objects
    per image (``objects_per_image``)."""
    tasks: dict[str, list[bool]] = {}
    strict: dict[str, list[bool]] = {}
    counts: list[int] = []
    prompts: dict[str, bool] = {}
    for r in results:
        tasks.setdefault(r["tag"], []).append(bool(r["correct"]))
        prompts[r["metadata"]] = prompts.get(r["metadata"], False) or bool(r["correct"])
        if "details" in r:
            dets = json.loads(r["details"])
            counts.append(len(dets))
            strict.setdefault(r["tag"], []).append(strictly_correct(r["correct"], dets, json.loads(r["metadata"])))
    acc = {tag: float(np.mean(v)) for tag, v in tasks.items()}
    extra = {}
    if strict and len(counts) == len(results):
        strict_acc = {tag: float(np.mean(v)) for tag, v in strict.items()}
        extra = {"strict_tasks": strict_acc, "strict_overall": float(np.mean(list(strict_acc.values()))),
                 "objects_per_image": float(np.mean(counts))}
    return {
        "total_images": len(results),
        "total_prompts": len(prompts),
        "correct_images": float(np.mean([r["correct"] for r in results])) if results else 0.0,
        "correct_prompts": float(np.mean(list(prompts.values()))) if prompts else 0.0,
        "tasks": acc,
        "task_images": {tag: len(v) for tag, v in tasks.items()},
        "mean_partial": float(np.mean([r["partial"] for r in results])) if results else 0.0,
        "overall": float(np.mean(list(acc.values()))) if acc else 0.0,
        **extra,
    }


def score_dir(image_dir: str | Path, outfile: str | Path | None = None) -> dict:
    """Score every ``<index>/samples/<k>.png`` under ``image_dir`` against its ``metadata.jsonl``.

    Writes GenEval-format ``results.jsonl`` (``filename, tag, prompt, correct, reason, metadata,
    details`` plus ``partial``; ``metadata`` and ``details`` hold JSON strings, ``details`` the
    detections) to ``outfile`` (default ``<image_dir>/results.jsonl``) and ``summary.json`` next to
    it; returns the summary (see :func:`summarize`).
    """
    root = Path(image_dir)
    results = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = json.loads((folder / "metadata.jsonl").read_text())
        samples = folder / "samples"
        names = sorted(p.name for p in samples.iterdir() if re.fullmatch(r"\d+\.png", p.name))
        for name in names:
            path = samples / name
            dets = detect(Image.open(path))
            correct, reason = evaluate(dets, meta)
            results.append({
                "filename": str(path), "tag": meta["tag"], "prompt": meta["prompt"], "correct": correct,
                "reason": reason, "metadata": json.dumps(meta),
                "details": json.dumps([d.to_json() for d in dets]), "partial": partial_credit(dets, meta),
            })
    out = Path(outfile) if outfile is not None else root / "results.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in results))
    summary = summarize(results)
    (out.parent / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    write_metadata(make_toy_geneval(), Path(__file__).parent / "data" / METADATA_FILE)
