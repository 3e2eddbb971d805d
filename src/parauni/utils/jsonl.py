"""JSON Lines files (GenEval metadata, prompt files, logs) read with errors that name the file and line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import UsageError

logger = logging.getLogger(__name__)


def parse_jsonl(text: str, source: str = "<text>", skip_malformed: bool = False) -> list:
    """Every non-blank line of ``text`` as JSON; a bad line is an error naming ``source`` and its line.

    ``skip_malformed``: a log being written (``metrics.jsonl``) may end in a partly written line; such lines are
    left out instead, with one warning that counts them."""
    out, bad = [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as err:
            if not skip_malformed:
                raise UsageError(f"{source}, line {n}, column {err.colno}: not valid JSON ({err.msg})") from None
            bad += 1
    if bad:
        logger.warning("%s: skipped %d malformed line(s)", source, bad)
    return out


def read_jsonl(path: str | Path, skip_malformed: bool = False) -> list:
    """:func:`parse_jsonl` of a file; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist or is not a file")
    return parse_jsonl(path.read_text(), str(path), skip_malformed)
