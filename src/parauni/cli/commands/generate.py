"""``parauni generate``: images from prompts (or image-to-image)."""

from __future__ import annotations

from ..options import add_dtype_option


def add_parser(sub) -> None:
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
    p.add_argument("--images-per-prompt", type=int, default=1,
                   help="images of each prompt (image k of prompt i is seeded seed + i * N + k)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per pipeline call; each image has its own seed, so the images do not depend on it")
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    add_dtype_option(p)
    p.add_argument("--force", action="store_true",
                   help="allow --height / --width over 4x the model's native side (refused otherwise)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (images, denoising steps)")
    p.set_defaults(func=run)


def run(args):
    from ...generate import run_generate  # lazy: building the parser loads no command's library

    return run_generate(args)
