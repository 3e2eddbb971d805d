"""The schema of GenEval's files, checked before anything runs: metadata records (``prompts/
evaluation_metadata.jsonl``, a prompt folder's ``metadata.jsonl``) and a scorer's ``results.jsonl`` rows, as
GenEval's ``evaluation/evaluate_images.py`` and ``summary_scores.py`` read them (cited as in
:mod:`parauni.eval.geneval_rules`).  Every error names the file, the line and the field; names outside a scorer's
:class:`Vocabulary` are refused or, for a scorer that may know more names, returned as warnings."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..utils.names import closest_name
from .bundled import geneval_object_names_path
from .geneval_rules import COLORS, RELATIONS, TASKS

logger = logging.getLogger(__name__)


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
    if not isinstance(meta, dict):
        return [("(record)", f"a GenEval record is a JSON object, got {type(meta).__name__} "
                             f"{json.dumps(meta)[:60]}; write one {{\"tag\": ..., \"prompt\": ..., \"include\": "
                             "[...]} object a line")], []
    errors, unknown = _prompt_and_tag_problems(meta, vocabulary)
    tag = meta.get("tag")
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
            bad, names = _entry_problems(part, k, e, vocabulary)
            errors += bad
            unknown += names
    return errors, unknown


def _prompt_and_tag_problems(meta: dict, vocabulary: Vocabulary | None
                             ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(errors, unknown names)`` of a record's ``prompt`` and ``tag``."""
    errors: list[tuple[str, str]] = []
    unknown: list[tuple[str, str]] = []
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
    return errors, unknown


def _entry_problems(part: str, k: int, e, vocabulary: Vocabulary | None
                    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(errors, unknown names)`` of entry ``k`` of ``part`` (``include`` or ``exclude``): its class and count,
    and for an ``include`` entry its colour and position."""
    where = f"{part}[{k}]"
    errors: list[tuple[str, str]] = []
    unknown: list[tuple[str, str]] = []
    if not isinstance(e, dict):
        return [(where, f"must be an object {{\"class\": ..., \"count\": ...}}, got {json.dumps(e)}")], []
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
        return errors, unknown
    if "color" in e:
        color = e["color"]
        if not isinstance(color, str):
            errors.append((f"{where}.color", f"{json.dumps(color)} is not a colour name"))
        elif vocabulary is not None and vocabulary.colors is not None and color not in vocabulary.colors:
            unknown.append((f"{where}.color", _unknown(color, vocabulary.colors)))
    if "position" in e:
        errors += _position_problems(where, e["position"], k)
    return errors, unknown


def _position_problems(where: str, pos, k: int) -> list[tuple[str, str]]:
    """The errors of include entry ``k``'s ``position``: ``[relation, index of an earlier entry]``."""
    ok = isinstance(pos, list) and len(pos) == 2 and isinstance(pos[1], int) and not isinstance(pos[1], bool)
    if not ok:
        return [(f"{where}.position", f"{json.dumps(pos)} is not [relation, k]; write e.g. "
                                      "[\"left of\", 0] (k: the index of an earlier include entry)")]
    errors = []
    if pos[0] not in RELATIONS:
        errors.append((f"{where}.position", f"relation {json.dumps(pos[0])} is not one of "
                                            f"{', '.join(RELATIONS)} (the relations GenEval can find)"))
    if not 0 <= pos[1] < k:
        errors.append((f"{where}.position", f"target {pos[1]} is not an earlier include entry "
                                            f"(0..{k - 1}); the target must come first"
                       if k else "the first include entry has no earlier entry to be placed "
                                 "against; put the target object first"))
    return errors


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
    data = path.read_bytes()
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise UsageError(f"{path}, line {line}: not UTF-8 text (a binary or damaged file, not GenEval metadata)"
                         ) from None
    for n, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            out.append((n, json.loads(text)))
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}, line {n}, column {err.colno}: not valid JSON ({err.msg})") from None
        except ValueError as err:  # a number too long for Python to read
            raise UsageError(f"{path}, line {n}: not valid JSON ({str(err).split(';')[0]})") from None
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
