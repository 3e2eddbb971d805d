"""JSON Lines files (GenEval metadata, prompt files, logs) read with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UsageError


def parse_jsonl(text: str, source: str = "<text>") -> list:
    """Every non-blank line of ``text`` as JSON; a bad line is an error naming ``source`` and its line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise UsageError(f"{source}, line {n}, column {err.colno}: not valid JSON ({err.msg})") from None
    return out


def read_jsonl(path: str | Path) -> list:
    """:func:`parse_jsonl` of a file; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist or is not a file")
    return parse_jsonl(path.read_text(), str(path))
