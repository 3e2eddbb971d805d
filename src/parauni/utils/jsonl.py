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
        except ValueError as err:  # not JSON, or a number too long for Python to read (over 4300 digits)
            if not skip_malformed:
                where = f", column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
                why = err.msg if isinstance(err, json.JSONDecodeError) else str(err).split(";")[0]
                raise UsageError(f"{source}, line {n}{where}: not valid JSON ({why})") from None
            bad += 1
    if bad:
        logger.warning("%s: skipped %d malformed line(s)", source, bad)
    return out


def read_jsonl(path: str | Path, skip_malformed: bool = False) -> list:
    """:func:`parse_jsonl` of a file; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if not skip_malformed:
            line = data[: err.start].count(b"\n") + 1
            raise UsageError(f"{str(path)!r}, line {line}: not UTF-8 text (a damaged or binary file)") from None
        # the lines that hold bytes that are not UTF-8 are malformed: skipped with the others, with a warning
        text = data.decode("utf-8", errors="replace")
    return parse_jsonl(text, str(path), skip_malformed)
