"""``parauni eval geneval|dpg|wise|reconstruct``: benchmark layouts and their scoring, one module each."""

from __future__ import annotations

from . import dpg, geneval, reconstruct, wise


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="benchmarks: GenEval / DPG-Bench / WISE layouts and scoring, "
                                     "reconstruction metrics")
    evs = ev.add_subparsers(dest="eval_command", required=True)
    for command in (geneval, dpg, wise, reconstruct):
        command.add_parser(evs)
