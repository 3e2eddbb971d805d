"""``parauni analyze layers``: how rewards respond to each VLM layer group."""

from __future__ import annotations

from ..options import add_dtype_option


def add_parser(sub) -> None:
    an = sub.add_parser("analyze", help="analyses of a model: how rewards respond to each VLM layer group")
    ans = an.add_subparsers(dest="analyze_command", required=True)
    p = ans.add_parser("layers", help="perturb or drop one layer group at a time; each reward's change vs baseline",
                       description="Writes layer_response.json, layer_response.md and layer_response.png in --out.")
    p.add_argument("--model", required=True, help="'tiny', a preset, or a saved pipeline folder")
    p.add_argument("--prompts", required=True, help="a text file (one prompt a line) or a GenEval-format JSONL "
                                                    "(its records are passed to the rewards as metadata)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rewards", nargs="+", metavar="NAME=WEIGHT",
                   help="rewards by name or package.module:Factory (default: toy_alignment toy_quality toy_geneval); "
                        "with two or more, a 'total' column reports the weighted sum")
    p.add_argument("--reward-options", metavar="JSON",
                   help='per reward, factory options as JSON, e.g. \'{"aesthetic": {"head": "PATH"}}\'')
    p.add_argument("--groups", default="thirds", choices=["thirds", "per-layer"])
    p.add_argument("--mode", default="both", choices=["perturb", "drop", "both"])
    p.add_argument("--scale", type=float, default=1.0, help="perturb: noise std in units of the group's state std")
    p.add_argument("--images-per-prompt", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="the first N prompts of each task (GenEval-format JSONL with 'tag'); "
                                             "of a plain text file, the first N prompts")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch")
    p.add_argument("--device", help="e.g. cuda, cpu (default: cpu)")
    add_dtype_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (generations, denoising steps)")
    p.set_defaults(func=run)


def run(args) -> None:
    from ...analysis import run as analyze_layers  # lazy: building the parser loads no command's library

    analyze_layers(args)
