"""Atomic, pruned checkpoint folders shared by ``parauni train`` and ``parauni grpo``.

A checkpoint is written to ``<name>.tmp`` (Accelerate's state plus the caller's files, the state file
last) and renamed to ``<name>`` only when complete, so an interrupted write never replaces a good one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path


def complete_checkpoints(out: Path, state_file: str) -> list[Path]:
    """Complete ``checkpoint-*`` folders of a run (those holding ``state_file``), oldest first."""
    found = [p for p in Path(out).glob("checkpoint-*") if p.is_dir() and not p.name.endswith(".tmp")
             and (p / state_file).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def write_checkpoint(acc, out: Path, name: str, write_files: Callable[[Path], None], keep_last: int,
                     state_file: str) -> Path:
    """Save Accelerate's state and ``write_files(folder)`` into ``out/name`` atomically; keep the last
    ``keep_last`` complete checkpoints. Collective: every process calls it."""
    final = Path(out) / name
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))
    if acc.is_main_process:
        write_files(tmp)
        if not (tmp / state_file).is_file():
            raise RuntimeError(f"checkpoint writer did not write {state_file}")
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
        for old in complete_checkpoints(out, state_file)[:-keep_last]:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def resume_path(out: Path, resume: bool | str, state_file: str) -> Path | None:
    """The checkpoint to resume from: the given folder, or the newest complete one of ``out``.
    ``resume="auto"``: the newest complete one, or ``None`` (start afresh) when there is none."""
    if resume == "auto":
        found = complete_checkpoints(out, state_file)
        return found[-1] if found else None
    if isinstance(resume, str) and resume not in ("latest", "true"):
        ckpt = Path(resume)
    else:
        found = complete_checkpoints(out, state_file)
        if not found:
            raise FileNotFoundError(f"--resume: no complete checkpoint in {out}; start without --resume")
        ckpt = found[-1]
    if not (ckpt / state_file).is_file():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {state_file})")
    return ckpt
