"""``parauni export``: a full ParaUniPipeline folder from a training checkpoint. The command tells the kind of run
(stage I / II from ``parauni train``, or stage III from ``parauni grpo``) and calls its exporter."""

from __future__ import annotations

import argparse
import filecmp
import logging
from pathlib import Path

import yaml

from ...errors import UsageError
from ...utils.atomic import atomic_folder
from ...utils.checkpoints import checkpoint_number
from ...utils.locks import lock_holder, refuse_if_written
from ...utils.run_folder import STATE_FILES

logger = logging.getLogger(__name__)


def add_parser(sub) -> None:
    e = sub.add_parser("export", help="write a full ParaUniPipeline folder from a training checkpoint "
                                      "(stage I / II, or stage III with its LoRA merged)")
    e.add_argument("checkpoint", help="a checkpoint-* folder or a run folder of `parauni train` or `parauni grpo` "
                                      "(a run folder without final weights: its newest intact checkpoint)")
    e.add_argument("--out", required=True,
                   help="the pipeline folder; written beside it (<out>.tmp-<pid>) and swapped in when complete")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that holds another model or other files (without it, only an "
                        "identical export is replaced)")
    e.add_argument("--no-ema", action="store_true",
                   help="stage III: merge the raw LoRA weights instead of their EMA (the default, as evaluated)")
    e.set_defaults(func=run)


def is_grpo_run(folder) -> bool:
    """Whether a checkpoint or run folder comes from ``parauni grpo``: its state file, or a saved config with
    stage III's sections."""
    folder = Path(folder)
    if (folder / "grpo_state.json").is_file():
        return True
    cfg_file = folder / "config.yaml"
    if not cfg_file.is_file():
        return False
    try:
        data = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and ("sampling" in data or "lora_rank" in (data.get("model") or {}))


def _export_target_problem(out: Path) -> str | None:
    """Why ``out`` cannot receive an export without ``--overwrite`` before any work: ``None`` when it is free, is
    an empty folder or holds an earlier export (compared with the new one when that is written)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return None  # a file: refused whatever --overwrite says (see run)
    entries = list(out.iterdir())
    if entries and not (out / "model_index.json").is_file():
        names = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        return (f"--out {str(out)!r} is a folder that holds other files ({names}), not an exported pipeline; "
                "pass --overwrite to replace it, or give a new folder")
    return None


def _differing_files(old: Path, new: Path) -> list[str]:
    """Files (relative paths) that differ between two folders: only in one of them, or different bytes."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    a, b = files(old), files(new)
    differ = sorted(a ^ b)
    differ += sorted(f for f in a & b if not filecmp.cmp(old / f, new / f, shallow=False))
    return differ


def _export(checkpoint: str, out: Path, grpo: bool, ema: bool) -> None:
    """The exporter of the run's kind: stage III merges its LoRA (the EMA weights unless ``ema`` is false)."""
    # lazy: building the parser loads no command's library
    if grpo:
        from ...rl.export import export_checkpoint

        export_checkpoint(checkpoint, out, ema=ema)
    else:
        from ...train.export import export

        export(checkpoint, out)


def _check_not_written(checkpoint: Path) -> None:
    """A run folder that a training run is writing is refused (naming its PID): its newest checkpoint may be
    pruned and its final weights half-written while they are read. A finished ``checkpoint-<n>`` of such a run is
    exported, with a warning that the run goes on."""
    if checkpoint_number(checkpoint) is None:
        refuse_if_written(checkpoint, "export")
        return
    held = lock_holder(checkpoint.parent)
    if held is not None:
        logger.warning("%s is still being written by a %s (PID %s): exporting its finished checkpoint %s",
                       checkpoint.parent, held[1], held[0], checkpoint.name)


def run(args: argparse.Namespace) -> None:
    """``parauni export``: the pipeline is written to ``<out>.tmp-<pid>`` and swapped into place when complete
    (:func:`parauni.utils.atomic.atomic_folder`), so an interrupted export leaves ``--out`` as it was. An
    existing ``--out`` that holds another model (different weights) or other files is replaced only with
    ``--overwrite``; an identical export replaces it silently."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder path")
    if Path(args.checkpoint).resolve().is_relative_to(out.resolve()):
        raise UsageError(f"--out {args.out!r} holds the checkpoint {args.checkpoint!r} being exported; give another "
                         "folder (replacing it would delete the checkpoint)")
    inside = next((p for p in out.resolve().parents if checkpoint_number(p) is not None
                   and any((p / f).is_file() for f in STATE_FILES)), None)
    if inside is not None:
        raise UsageError(f"--out {args.out!r} lies inside the checkpoint folder {str(inside)!r}, which its run deletes "
                         "when it prunes old checkpoints (train.keep_last); give a folder outside it")
    overwrite = getattr(args, "overwrite", False)
    problem = None if overwrite else _export_target_problem(out)
    if problem:
        raise UsageError(problem)
    _check_not_written(Path(args.checkpoint))
    grpo = is_grpo_run(args.checkpoint)
    if args.no_ema and not grpo:
        raise UsageError("--no-ema: stage I / II checkpoints have no EMA (it applies to `parauni grpo` "
                         "checkpoints only)")
    with atomic_folder(out) as tmp:
        _export(args.checkpoint, tmp, grpo, ema=not args.no_ema)
        if not overwrite and out.is_dir() and any(out.iterdir()):
            differ = _differing_files(out, tmp)
            if differ:
                shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
                raise UsageError(f"--out {args.out!r} already holds another model (differs in {shown}); pass "
                                 "--overwrite to replace it, or give a new folder")
    print(f"pipeline written to {out}")
