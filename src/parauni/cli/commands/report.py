"""``parauni report``: a self-contained HTML report (and its Markdown twin) of run folders."""

from __future__ import annotations


def add_parser(sub) -> None:
    rep = sub.add_parser("report", help="a self-contained HTML report (+ Markdown twin) of run folders")
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", required=True, help="FILE.html; FILE.md and FILE_files/ are written beside it")
    rep.add_argument("--samples-per-task", type=int, default=4, help="GenEval prompts shown per task")
    rep.set_defaults(func=run)


def run(args) -> None:
    from ...report import build_report  # lazy: building the parser loads no command's library

    html_path, md_path = build_report(args.runs, args.out, samples_per_task=args.samples_per_task)
    print(f"wrote {html_path} and {md_path}")
