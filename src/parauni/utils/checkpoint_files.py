"""Reading a checkpoint's files back before trusting them: each file is checked against its format (the
safetensors header and tensor ranges, the ``torch.save`` zip directory, JSON / YAML text, our state files' counts),
so a truncated or damaged file is named instead of crashing a resume."""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import yaml

from ..errors import UsageError


class CorruptCheckpointError(UsageError):
    """A checkpoint whose files cannot be read back (truncated or damaged); the message names the file."""


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file: its 8-byte header length, JSON header and the byte ranges
    of its tensors must fit the file's size exactly (the format of huggingface/safetensors)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than a safetensors header"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            return f"its header claims {n} bytes but the file has {size - 8} after the length"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if need != size:
        return f"its tensors need {need} bytes but the file has {size} ({'truncated' if size < need else 'damaged'}?)"
    return None


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` file (a zip archive): a truncated archive loses its central
    directory (at the end), and every member must lie inside the file."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + 30 + len(info.filename) + info.compress_size > size:
                    return f"member {info.filename!r} runs past the end of the file (truncated?)"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        return f"not a readable torch.save archive ({err}; truncated?)"
    return None


def _text_problem(path: Path) -> str | None:
    try:
        text = path.read_text()
        if path.suffix == ".json":
            json.loads(text)
        else:
            yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - UnicodeDecodeError, ValueError, yaml.YAMLError
        return f"not readable ({' '.join(str(err).split())[:120]})"
    return None


# a checkpoint's state file (its completion marker) and its counts: each a non-negative integer; the first is
# required (the step or epoch the checkpoint was taken at)
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "trainer_state.json": ("step", "samples_seen", "skipped_images"),
    "grpo_state.json": ("epoch", "optimizer_steps"),
}


def _state_problem(path: Path) -> str | None:
    """Why a state file is not one our trainers wrote: not a JSON object, its counter missing, or a count that is
    not a non-negative integer (the key named)."""
    problem = _text_problem(path)
    if problem:
        return problem
    state = json.loads(path.read_text())
    keys = STATE_KEYS[path.name]
    if not isinstance(state, dict):
        return f"not a JSON object with the key {keys[0]!r}"
    if keys[0] not in state:
        return f"the key {keys[0]!r} is missing"
    for key in keys:
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"the key {key!r} is {json.dumps(value)}, not a non-negative integer"
    return None


def read_state(path: Path) -> dict:
    """A checkpoint's state file, checked (:func:`_state_problem`); a damaged one is refused naming the file, the
    key and the fix."""
    problem = _state_problem(Path(path))
    if problem:
        raise CorruptCheckpointError(f"{path}: {problem}; resume from an older checkpoint (--resume "
                                     "<run>/checkpoint-<n>) or start afresh without --resume")
    return json.loads(Path(path).read_text())


CHECKERS: dict[str, Callable[[Path], str | None]] = {
    ".safetensors": _safetensors_problem, ".bin": _zip_problem, ".pkl": _zip_problem, ".pt": _zip_problem,
    ".pth": _zip_problem, ".json": _text_problem, ".yaml": _text_problem,
}


def checkpoint_problems(folder: Path, required: tuple[str, ...] = ()) -> list[str]:
    """``"<file>: <what is wrong>"`` for every file of a checkpoint folder that cannot be read back: the
    safetensors weights, Accelerate's ``optimizer.bin`` / ``scheduler.bin`` / ``*.pkl`` states and our ``.pt``
    files (``torch.save`` zip archives), the JSON state and ``config.yaml``; and for each ``required`` file
    that is missing. Reads headers and archive directories, not every tensor, so it is cheap on large
    checkpoints."""
    problems = [f"{Path(folder) / name}: missing" for name in required if not (Path(folder) / name).is_file()]
    for path in sorted(Path(folder).rglob("*")):
        check = _state_problem if path.name in STATE_KEYS else CHECKERS.get(path.suffix)
        if check is None or not path.is_file():
            continue
        try:
            problem = check(path)
        except OSError as err:
            problem = f"cannot be read ({err})"
        if problem:
            problems.append(f"{path}: {problem}")
    return problems
