"""A run folder holds one run: a fresh start into a folder that holds another run is refused, or, with
``--overwrite``, the other run is first moved aside whole.

A folder "holds a run" when it has a complete checkpoint of ``parauni train`` or ``parauni grpo`` (a
``checkpoint-<n>`` folder with its state file) or a finished run's weights (``trainable.safetensors``,
``final/``). Without this rule a fresh start would write its config, logs and new checkpoints beside the old
run's, and pruning by number would keep the old run's newer checkpoints, which a later ``--resume`` or
``export`` would take.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from ..errors import UsageError
from .checkpoints import CHECKPOINT_NAME
from .locks import LOCK_FILE

logger = logging.getLogger(__name__)

STATE_FILES = ("trainer_state.json", "grpo_state.json")  # parauni train's and parauni grpo's
RUN_KINDS = {"trainer_state.json": "training run (parauni train)", "grpo_state.json": "stage-III run (parauni grpo)"}
FINISHED = ("trainable.safetensors", "final")


def earlier_run(out: Path) -> list[str]:
    """The names in ``out`` that show another run: its complete checkpoints and final weights (sorted)."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [p.name for p in out.iterdir() if p.is_dir() and CHECKPOINT_NAME.match(p.name)
             and any((p / s).is_file() for s in STATE_FILES)]
    found += [name for name in FINISHED if (out / name).exists()]
    return sorted(found)


# what runs write at the top of their folder (besides checkpoint-<n>, *.jsonl logs and temporary *.tmp files)
RUN_NAMES = {"config.yaml", "logs", "eval", "final", "curves", "trainable.safetensors", "geneval_before"}


def other_files(out: Path) -> list[str]:
    """The names in ``out`` that no run writes (a user's files, an exported pipeline), sorted; hidden names are
    not counted."""
    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if not (
        p.name.startswith(".") or p.name in RUN_NAMES or p.name.startswith("checkpoint-")
        or p.name.endswith((".jsonl", ".tmp"))))


def move_aside(out: Path) -> Path:
    """Move everything in ``out`` but its lock file into a new sibling folder ``<out>.previous-<time>`` and return
    it; ``out`` itself (held locked by the caller) stays."""
    out = Path(out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = out.with_name(f"{out.name}.previous-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.previous-{stamp}-{n}")
    aside.mkdir()
    for entry in sorted(out.iterdir()):
        if entry.name != LOCK_FILE:
            os.replace(entry, aside / entry.name)
    return aside


def claim_run_folder(out: Path, resume: bool | str, overwrite: bool, allow_config_change: bool = False,
                     what: str = "run", state_file: str | None = None) -> Path | None:
    """Check that a run may write into ``out`` (called with the folder's lock held).

    A fresh start (no ``resume``) into a folder that holds another run is refused with a line naming
    ``--resume``, ``--overwrite`` and another folder; with ``overwrite`` that run is moved aside first
    (:func:`move_aside`, said in a warning) and its new place returned. ``--overwrite`` with ``--resume`` and
    ``--allow-config-change`` without ``--resume`` are refused (each would be ignored). ``--resume auto`` is a
    fresh start when ``out`` has no checkpoint of this recipe (``state_file``), so it is checked as one."""
    if allow_config_change and not resume:
        raise UsageError("--allow-config-change applies to a resumed run only: add --resume to continue the run in "
                         f"{out}, or drop --allow-config-change")
    if overwrite and resume:
        raise UsageError("--overwrite starts afresh (the earlier run is moved aside) and --resume continues it: "
                         "give one of them")
    found = earlier_run(out)
    if resume == "auto" and state_file is not None and not any((Path(out) / n / state_file).is_file() for n in found):
        resume = False  # nothing of this recipe's to resume: --resume auto starts afresh
    if resume:  # a resumed run continues the run the folder holds
        return None
    if not found:
        if foreign := other_files(out):  # a fresh run would write its config, logs and weights among them
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise UsageError(f"{out} holds files that are not a run's ({shown}): a run writes its config.yaml, "
                             "logs and weights into a folder of its own; give a new or empty train.output_dir")
        return None
    kinds = {RUN_KINDS[s] for n in found for s in STATE_FILES if (Path(out) / n / s).is_file()}
    what = " / ".join(sorted(kinds)) if kinds else what  # the run the folder holds, not the one starting
    if not overwrite:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UsageError(f"{out} holds another {what} ({shown}): pass --resume to continue it, --overwrite to move "
                         "it aside (into a new <folder>.previous-<time> folder) and start afresh, or give another "
                         "train.output_dir")
    aside = move_aside(out)
    logger.warning("--overwrite: moved the earlier %s in %s to %s (delete that folder when it is no longer needed)",
                   what, out, aside)
    return aside
