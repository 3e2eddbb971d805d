"""``parauni eval dpg``: DPG-Bench's 2x2 grids, resumable, and their VQA score."""

from __future__ import annotations

from .common import MODEL_HELP, add_generation_options, run_locked


def add_parser(evs) -> None:
    d = evs.add_parser("dpg", help="DPG-Bench: a 2x2 grid <item_id>.png per prompt, resumable; --score: VQA score")
    d.add_argument("--model", help=MODEL_HELP + " (required unless --score scores the grids already in --out)")
    d.add_argument("--prompts", help="JSONL of {item_id, prompt} records (default: DPG-Bench's 1065 prompts, "
                                     "bundled)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--batch-size", type=int, default=16, help="images per batch (4 per prompt)")
    d.add_argument("--limit", type=int, help="the first N prompts of the file (DPG-Bench has no tasks)")
    d.add_argument("--score", action="store_true",
                   help="score the grids with DPG-Bench's method (questions with a dependency graph, 4 images per "
                        "grid): after generating with --model, or the grids already in --out without it")
    d.add_argument("--questions", metavar="CSV", help="--score: DPG-Bench's dpg_bench.csv (TencentQQGYLab/ELLA)")
    d.add_argument("--vqa", metavar="MODEL", help="--score: a transformers VQA model or VLM id / folder that answers "
                                                 "yes/no (BlipForQuestionAnswering, or an image-text-to-text model "
                                                 "with a chat template); the official mPLUG-large is not in "
                                                 "transformers")
    add_generation_options(d)
    d.set_defaults(func=run)


def run(args) -> None:
    from ....eval.dpg import run as run_dpg  # lazy: building the parser loads no command's library

    run_locked(args, run_dpg)
