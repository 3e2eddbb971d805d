"""``parauni eval geneval``: GenEval's layout, resumable, then scored (the toy detector, GenEval's rules on
Mask2Former + CLIP, or the official scorer)."""

from __future__ import annotations

import argparse

from ....eval import GENEVAL_SCORER_ENV
from .common import MODEL_HELP, add_generation_options, run_locked

GENEVAL_SCORERS = ("auto", "native", "official", "toy")
GENEVAL_HELP = f"""Generate GenEval's layout (<out>/<index:05d>/metadata.jsonl + samples/<k:04d>.png), resumable:
<out>/provenance.json records the model (a hash of its weights), steps, guidance, seed, resolution, images per
prompt and prompts; a rerun keeps finished images only when all of that matches (else it stops and names what
differs; --overwrite regenerates). --limit N: the first N prompts of each task.
Then --scorer (results.jsonl + summary.json in --out):
  auto (default): toy models (the toy prior, a pipeline folder built on the toy VLM) or toy metadata with the toy
    detector; other models with the official scorer as below.
  toy: the toy detector. native: GenEval's rules on transformers' Mask2Former (--detector) + CLIP (--clip) --
    GenEval-compatible scores, not official ones (another detector checkpoint; see the README).
  official: the official scorer (mmdetection 2.x, Mask2Former, CLIP, a GPU): set {GENEVAL_SCORER_ENV} to its
    command, e.g.
  export {GENEVAL_SCORER_ENV}="python /path/geneval/evaluation/evaluate_images.py {{images}}
      --outfile {{outfile}} --model-path /path/to/detector"    (one line)
({{images}} and {{outfile}} are filled in; without them the images folder and --outfile OUT/results.jsonl are
appended); its results.jsonl is then summarised into summary.json. Otherwise the command prints how to run it."""


class ScoreOnly(argparse.Action):
    """``--score-only DIR``: DIR is also the output folder (results.jsonl and summary.json are written there)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.out = values


def add_parser(evs) -> None:
    g = evs.add_parser("geneval", help="GenEval layout (+ toy scoring or the official scorer)",
                       description=GENEVAL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--model", help=MODEL_HELP + " (required unless --score-only)")
    g.add_argument("--metadata", help="a GenEval-format JSONL; default: the toy GenEval prompts for toy models "
                                      "(the toy prior, toy-all-layers, toy-last-layer, any pipeline on the toy VLM), "
                                      "GenEval's own 553 prompts (bundled) for every other model")
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="output folder (the layout; results.jsonl and summary.json)")
    where.add_argument("--score-only", metavar="DIR", action=ScoreOnly,
                       help="generate nothing: score the images already in DIR in GenEval's layout "
                            "(<index:05d>/metadata.jsonl + samples/<k>.png), e.g. made by another model's own "
                            "script; results.jsonl and summary.json are written in DIR, and its provenance.json "
                            "records that the images came from elsewhere (parauni never adds images to them)")
    g.add_argument("--images-per-prompt", type=int, default=4)
    g.add_argument("--batch-size", type=int, default=32, help="images per batch")
    g.add_argument("--limit", type=int, help="the first N prompts of each task (GenEval's overall score is the "
                                             "mean of the tasks), e.g. --limit 2 scores 12 prompts of 6 tasks")
    g.add_argument("--scorer", choices=GENEVAL_SCORERS, default="auto",
                   help="auto: the toy detector for toy models / toy metadata, else official; toy; native "
                        "(transformers Mask2Former + CLIP with GenEval's rules; GenEval-compatible, not official); "
                        f"official (${GENEVAL_SCORER_ENV} or printed instructions)")
    g.add_argument("--detector", help="--scorer native: Mask2FormerForUniversalSegmentation hub id or folder "
                                      "(COCO instance segmentation; default facebook/mask2former-swin-small-coco-"
                                      "instance)")
    g.add_argument("--clip", dest="clip", help="--scorer native: CLIPModel hub id or folder for the colour "
                                               "classifier (default openai/clip-vit-large-patch14, GenEval's ViT-L/14)")
    add_generation_options(g)
    g.set_defaults(func=run)


def run(args) -> None:
    from ....eval.geneval_command import run as run_geneval  # lazy: building the parser loads no command's library

    run_locked(args, run_geneval)
