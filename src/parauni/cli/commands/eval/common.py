"""What the ``parauni eval`` commands share: the ``--model`` help and the generation options."""

from __future__ import annotations

from pathlib import Path

from ....errors import UsageError
from ....eval.provenance import add_overwrite_options
from ....utils.locks import hold_folder_lock
from ...options import add_dtype_option

MODEL_HELP = "'tiny', a preset, a saved pipeline folder, or (geneval, dpg) 'prior' / a toy prior folder"


def add_generation_options(p, resumable: bool = True) -> None:
    """Seed, steps, guidance, resolution, device and dtype; ``resumable``: also ``--overwrite`` / ``--resume``
    (a benchmark layout kept between runs)."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, help="CFG scale (default 4.5; the toy prior: its own)")
    p.add_argument("--resolution", type=int, help="square output side (default: the model's native size)")
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    add_dtype_option(p)
    if resumable:
        add_overwrite_options(p)


def run_locked(args, run) -> None:
    """``run(args)`` while holding ``args.out``'s lock: one evaluation per output folder. An ``--out`` (or
    ``--score-only`` folder) that is a file is refused first, naming it."""
    if Path(args.out).exists() and not Path(args.out).is_dir():
        option = "--score-only" if getattr(args, "score_only", None) else "--out"
        raise UsageError(f"{option} {args.out!r} is a file, not a folder; give a folder")
    with hold_folder_lock(args.out, "evaluation"):
        run(args)
