"""``parauni <command>``: a thin argparse front over the library."""

from __future__ import annotations

import argparse
import logging
import sys


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate images from prompts")
    p.add_argument("--model", required=True, help="a preset name, 'tiny', or a saved pipeline folder / hub id")
    p.add_argument("--prompt", action="append", required=True, help="a caption; repeat for several")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--image", help="input image for image-to-image (the prompt is then the instruction)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    p.set_defaults(func=lambda a: _generate().run_generate(a))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parauni", description="ParaUni: all-layer VLM conditioning for SANA")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    d = sub.add_parser("demo", help="the main job: an end-to-end run on a CPU")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--images-per-prompt", type=int, default=2)
    d.set_defaults(func=lambda a: _generate().run_demo(a))
    toy = sub.add_parser("toy", help="the toy world: pretrain its models, evaluate").add_subparsers(
        dest="toy_command", required=True)
    from .toy import evaluation as toy_eval
    from .toy import train_prior as toy_prior
    from .toy import train_rewards as toy_rewards
    from .toy import train_vlm as toy_vlm

    for module in (toy_vlm, toy_prior, toy_rewards, toy_eval):
        before = set(toy.choices)
        module.add_parser(toy)
        for name in set(toy.choices) - before:  # each toy module adds one command, run by module.run
            toy.choices[name].set_defaults(func=module.run)
    return parser


def _generate():
    from . import generate

    return generate


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, ValueError, KeyError, OSError) as err:
        print(f"parauni {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
