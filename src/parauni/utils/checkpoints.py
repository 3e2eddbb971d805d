"""Atomic, verified, pruned checkpoint folders shared by ``parauni train`` and ``parauni grpo``.

A checkpoint is written to ``<name>.tmp`` (Accelerate's state plus the caller's files, the state file
last) and renamed to ``<name>`` only when complete, so an interrupted write never replaces a good one. A
``checkpoint-<n>`` folder counts only while it holds its state file (``trainer_state.json`` /
``grpo_state.json``): pruning deletes that file first, so a prune cut short leaves a folder that no longer
counts (and the next prune removes it).

Resuming reads the files before trusting them (:func:`parauni.utils.checkpoint_files.checkpoint_problems`): a
truncated ``trainable.safetensors`` or ``optimizer.bin`` makes ``--resume`` fall back to the newest intact
checkpoint, with a warning naming the file. The config that made the checkpoint is compared with the new one by
:mod:`parauni.utils.resume_config`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from .atomic import ordinary_permissions, write_failure
from .checkpoint_files import CorruptCheckpointError, checkpoint_problems

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


# -- finding and writing checkpoints --------------------------------------------------------------------------
def checkpoint_number(path: Path) -> int | None:
    """``n`` of a ``checkpoint-<n>`` folder name, else ``None`` (``.tmp`` folders and other names)."""
    m = CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _checkpoint_dirs(out: Path) -> list[Path]:
    found = [p for p in Path(out).glob("checkpoint-*") if p.is_dir() and checkpoint_number(p) is not None]
    return sorted(found, key=checkpoint_number)


def complete_checkpoints(out: Path, state_file: str) -> list[Path]:
    """Complete ``checkpoint-<n>`` folders of a run (those holding ``state_file``), oldest first."""
    return [p for p in _checkpoint_dirs(out) if (p / state_file).is_file()]


def remove_checkpoint(folder: Path, state_file: str) -> None:
    """Delete a checkpoint folder, its state file first: a removal cut short leaves a folder that no longer
    counts as a checkpoint (instead of one that counts but lacks its weights)."""
    (Path(folder) / state_file).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def prune_checkpoints(out: Path, state_file: str, keep_last: int, current: Path | None = None) -> None:
    """Keep the newest ``keep_last`` complete checkpoints of ``out``; also remove ``checkpoint-<n>`` folders
    without their state file (left by an interrupted prune) and stale ``checkpoint-*.tmp`` folders (left by an
    interrupted write).

    ``current``: the checkpoint just written. It is never removed, and neither is any checkpoint numbered above it
    (a run resumed from an older checkpoint replaces those as it reaches them): only checkpoints older than
    ``current`` are pruned, so pruning never deletes the newest state of the run that is writing."""
    out = Path(out)
    found = complete_checkpoints(out, state_file)
    if current is not None:
        n = checkpoint_number(current)
        found = [p for p in found if checkpoint_number(p) <= n]
    for old in found[:-keep_last]:
        if current is None or Path(old).name != Path(current).name:
            remove_checkpoint(old, state_file)
    for folder in _checkpoint_dirs(out):
        if not (folder / state_file).is_file():
            logger.info("removing %s: an incomplete checkpoint (no %s)", folder, state_file)
            shutil.rmtree(folder, ignore_errors=True)
    for tmp in out.glob("checkpoint-*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint(acc, out: Path, name: str, write_files: Callable[[Path], None], keep_last: int,
                     state_file: str) -> Path:
    """Save Accelerate's state and ``write_files(folder)`` into ``out/name`` atomically; keep the last
    ``keep_last`` complete checkpoints. Collective: every process calls it."""
    final = Path(out) / name
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process has written its files (RNG states, shards) before the rename
        if acc.is_main_process:
            write_files(tmp)
            if not (tmp / state_file).is_file():
                raise RuntimeError(f"checkpoint writer did not write {state_file}")
            ordinary_permissions(tmp)  # safetensors writes 0600: a checkpoint is readable as ordinary files are
            if final.exists():
                remove_checkpoint(final, state_file)
            tmp.replace(final)
    except BaseException as err:  # a full disk, a read-only folder, Ctrl-C: no partial checkpoint-*.tmp stays
        shutil.rmtree(tmp, ignore_errors=True)
        cause = write_failure(out, err)  # torch's writer reports a full disk without its errno
        if cause is not None:
            raise cause from err
        raise
    if acc.is_main_process:
        prune_checkpoints(out, state_file, keep_last, current=final)
    acc.wait_for_everyone()
    return final


def newest_intact(out: Path, state_file: str, before: int | None = None,
                  required: tuple[str, ...] = ()) -> Path | None:
    """The newest complete checkpoint of ``out`` (below number ``before``) whose files read back; each newer
    corrupt one is skipped with a warning naming its bad files."""
    for ckpt in reversed(complete_checkpoints(out, state_file)):
        if before is not None and checkpoint_number(ckpt) >= before:
            continue
        problems = checkpoint_problems(ckpt, required)
        if not problems:
            return ckpt
        logger.warning("skipping corrupt checkpoint %s: %s", ckpt, "; ".join(problems))
    return None


def resume_path(out: Path, resume: bool | str, state_file: str, required: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint to resume from.

    ``resume`` ``True`` / ``"latest"`` / ``"true"``: the newest complete checkpoint of ``out`` whose files read
    back; a corrupt newer one is skipped with a warning naming the file. ``"auto"``: the same, or ``None`` (a
    fresh start) when ``out`` has no checkpoint. Any other string names a checkpoint folder, which must be
    complete and intact: otherwise the error names the bad file and the older checkpoint to pass instead.
    ``required``: files every checkpoint must hold (e.g. ``trainable.safetensors``).
    """
    if isinstance(resume, str) and resume not in ("latest", "true", "auto"):
        return _named_checkpoint(Path(resume), state_file, required)
    found = complete_checkpoints(out, state_file)
    if not found:
        if resume == "auto":
            return None
        raise FileNotFoundError(f"--resume: no complete checkpoint in {out}; start without --resume "
                                "(or with --resume auto)")
    for ckpt in reversed(found):
        problems = checkpoint_problems(ckpt, required)
        if not problems:
            return ckpt
        logger.warning("skipping corrupt checkpoint %s: %s; falling back to an older checkpoint", ckpt,
                       "; ".join(problems))
    raise CorruptCheckpointError(f"--resume: every checkpoint in {out} is corrupt ({', '.join(p.name for p in found)}"
                                 f"; e.g. {checkpoint_problems(found[-1], required)[0]}); delete them to start afresh")


def _named_checkpoint(ckpt: Path, state_file: str, required: tuple[str, ...]) -> Path:
    if not ckpt.is_dir():
        raise FileNotFoundError(f"--resume {ckpt}: no such checkpoint folder")
    if not (ckpt / state_file).is_file():
        raise UsageError(f"--resume {ckpt}: not a complete checkpoint (no {state_file}); pass a checkpoint-* "
                         f"folder that has one, or --resume alone for the newest complete checkpoint")
    problems = checkpoint_problems(ckpt, required)
    if problems:
        n = checkpoint_number(ckpt)
        older = newest_intact(ckpt.parent, state_file, before=n, required=required)
        hint = (f"resume from the newest intact older checkpoint instead: --resume {older}" if older is not None
                else f"{ckpt.parent} has no intact older checkpoint: start afresh without --resume")
        raise CorruptCheckpointError(f"--resume {ckpt}: corrupt checkpoint: {'; '.join(problems)}; {hint}")
    return ckpt


# -- per-step logs ------------------------------------------------------------------------------------------
def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> int:
    """Keep only the rows of a JSON-lines log for which ``keep(row)`` holds, atomically (a temporary file
    renamed over the log), so a resumed run does not append after rows of steps it will redo. A torn line (a kill
    mid-write) or a row ``keep`` cannot judge (``{"step": "x"}``) is dropped too, with a warning naming its line.
    Returns the number of rows removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped, bad = [], 0, []
    # bytes that are not UTF-8 (a damaged file) make their line unreadable, as a torn line is: dropped, named
    for n, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            if "\ufffd" in line:
                raise ValueError("not UTF-8")
            row = json.loads(line)
            if isinstance(row, dict) and not keep(row):
                dropped += 1
                continue
        except (ValueError, TypeError):  # a torn line, or a row whose step is not a number ({"step": "x"})
            dropped += 1
            bad.append(n)
            continue
        kept.append(line)
    if bad:
        logger.warning("%s: dropped %d unreadable row(s) (line %s): not JSON, or a step that is not a number",
                       path, len(bad), ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else ""))
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text("".join(x + "\n" for x in kept))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("%s: removed %d rows after the resumed checkpoint", path, dropped)
    return dropped
