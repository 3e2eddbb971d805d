"""``parauni toy eval``: toy GenEval for the toy prior or a ParaUni pipeline, in GenEval's layout."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ..eval.geneval import format_table, generate_geneval, pipeline_generate_fn
from .geneval import load_toy_geneval, score_dir


def resolve_generate_fn(model, steps: int, guidance: float | None):
    """``prior`` (the shipped toy prior), a toy prior folder, a saved ParaUniPipeline folder, or a
    ``ParaUniPipeline`` object."""
    if not isinstance(model, (str, Path)):
        return pipeline_generate_fn(model, steps, 4.5 if guidance is None else guidance)
    model = str(model)
    path = Path(model)
    if model == "prior" or (path / "text_encoder").is_dir():
        from .prior import load_prior

        prior = load_prior(None if model == "prior" else path)
        extra = {} if guidance is None else {"guidance_scale": guidance}

        def generate(prompts: list[str], seeds: list[int]):
            noise = torch.stack([torch.randn(prior.latent_shape, generator=torch.Generator().manual_seed(s))
                                 for s in seeds])  # (B, C, h, w), one seed per image
            return prior.generate(prompts, num_inference_steps=steps, noise=noise, **extra)

        return generate
    from ..pipelines.loading import load_pipeline

    return pipeline_generate_fn(load_pipeline(model), steps, 4.5 if guidance is None else guidance)


def toy_geneval(model, out: str | Path | None = None, images_per_prompt: int = 4, steps: int = 20,
                guidance: float | None = None, seed: int = 0, limit: int | None = None,
                metadata: str | None = None) -> dict:
    """Generate and score toy GenEval; returns the summary (per-task accuracy, overall)."""
    metas = load_toy_geneval(metadata)
    if limit:
        by_task: dict[str, list[dict]] = {}
        for m in metas:
            by_task.setdefault(m["tag"], []).append(m)
        metas = [m for group in by_task.values() for m in group[:limit]]
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="toy-geneval-"))
    generate_geneval(resolve_generate_fn(model, steps, guidance), metas, out, images_per_prompt, seed)
    return score_dir(out)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="toy GenEval: generate in GenEval's layout and score")
    p.add_argument("--model", required=True, help="'prior', a toy prior folder, or a ParaUniPipeline folder")
    p.add_argument("--out", help="output folder (default: a temporary folder)")
    p.add_argument("--images-per-prompt", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, help="CFG scale (default: the model's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="first N prompts of each task only")
    p.add_argument("--metadata", help="a GenEval-format JSONL (default: the toy GenEval prompts)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    summary = toy_geneval(args.model, args.out, args.images_per_prompt, args.steps, args.guidance, args.seed,
                          args.limit, args.metadata)
    print(format_table({args.model: summary}))
    if args.out:
        print(f"images, results.jsonl and summary.json in {args.out}")
    else:
        print(json.dumps(summary["tasks"]))
