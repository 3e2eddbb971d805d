"""``parauni demo``: the main job, an end-to-end run on a CPU."""

from __future__ import annotations


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the main job: an end-to-end run on a CPU")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--images-per-prompt", type=int, default=1)
    d.add_argument("--rl-epochs", type=int, default=64, help="epochs of the stage-III phase (DiffusionNFT)")
    d.add_argument("--limit", type=int, help="first N toy GenEval prompts of each task only (quick checks)")
    d.set_defaults(func=run)


def run(args):
    from ...generate import run_demo  # lazy: building the parser loads no command's library

    return run_demo(args)
