"""``parauni eval wise``: WISE's layout, resumable; a judge command scores it."""

from __future__ import annotations

import argparse

from ....eval import WISE_JUDGE_ENV
from .common import MODEL_HELP, add_generation_options, run_locked

WISE_HELP = f"""Generate WISE's layout (<out>/<prompt_id>.png, one image per prompt, seed + prompt_id), resumable with
<out>/provenance.json; <out>/prompts/<name>.json holds the prompts of each prompt file for the judge.
WISE's prompt files are not bundled (no license in PKU-YuanGroup/WISE): pass --prompts.
The judge (--judge-command or ${WISE_JUDGE_ENV}) runs once per prompt file with {{images}} (<out>), {{prompts}}
(<out>/prompts/<name>.json), {{out}} (<out>/judge/<name>_scores_results.jsonl, which it must write) and {{name}}
filled in, e.g. WISE's own judge (one line):
  --judge-command "python /path/WISE/vllm_eval.py --json_path {{prompts}} --image_dir {{images}}
      --output_dir {{images}}/judge --model Qwen3.5-35B-A3B --result_scores {{out}} --result_full {{out}}.full.json"
or WISE_legacy/gpt_eval.py (GPT-4o, the paper's protocol). Its records ('score' 0/1, or 'consistency',
'realism', 'aesthetic_quality' 0-2) are summarised per category with WISE's WiScore and overall weights into
<out>/summary.json."""


def add_parser(evs) -> None:
    w = evs.add_parser("wise", help="WISE: <prompt_id>.png per prompt, resumable; a judge command scores them",
                       description=WISE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("--model", required=True, help=MODEL_HELP)
    w.add_argument("--prompts", required=True, help="a WISE prompt JSON file or a folder of them (WISE's "
                                                    "data_verified/, or one file of WISE_legacy/data/, whose "
                                                    "_rewrite files repeat the prompt ids; not bundled)")
    w.add_argument("--out", required=True, help="output folder (images, prompts/, judge/, summary.json)")
    w.add_argument("--batch-size", type=int, default=16, help="images per batch")
    w.add_argument("--limit", type=int, help="the first N prompts of each category")
    w.add_argument("--judge-command", metavar="CMD", help=f"run after generation, once per prompt file (default "
                                                          f"${WISE_JUDGE_ENV}); see the description")
    add_generation_options(w)
    w.set_defaults(func=run)


def run(args) -> None:
    from ....eval.wise import run as run_wise  # lazy: building the parser loads no command's library

    run_locked(args, run_wise)
