"""``parauni toy eval``: toy GenEval for the toy prior or a ParaUni pipeline, in GenEval's layout; and the
random-latents floor (:func:`random_latents_floor`)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ..eval.geneval import format_table, generate_geneval, pipeline_generate_fn
from .data import to_image
from .detect import detect
from .geneval import evaluate, load_toy_geneval, partial_credit, score_dir, summarize, write_geneval_layout


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


def _decoder(model):
    """``(vae or None, latent shape (C, h, w))`` of ``model`` (see :func:`random_latents_floor`)."""
    if isinstance(model, (str, Path)):
        from ..eval.dpg import is_toy_prior

        if is_toy_prior(str(model)):
            from .prior import load_prior

            model = load_prior(None if str(model) == "prior" else model)
        else:
            from ..pipelines.loading import load_pipeline

            model = load_pipeline(str(model))
    if hasattr(model, "latent_shape"):  # a ToyPrior
        return model.vae, tuple(model.latent_shape)
    if hasattr(model, "transformer"):  # a ParaUniPipeline
        cfg = model.transformer.config
        return model.vae, (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    factor = 2 ** (len(model.config.encoder_block_out_channels) - 1)  # a bare AutoencoderDC
    return model, (model.config.latent_channels, 32 // factor, 32 // factor)


@torch.no_grad()
def random_latents_floor(model, metadata: str | Path | None = None, images_per_prompt: int = 1, seed: int = 0,
                         out: str | Path | None = None, batch_size: int = 64) -> dict:
    """Toy GenEval of decoded random latents: the score an image without any object gets (a table's floor row).

    Image ``k`` of prompt ``i`` decodes standard normal latents drawn with seed ``seed + i * images_per_prompt
    + k``, without denoising (what ``--steps 0`` generates), so it holds coloured fragments and no object.
    ``model``: ``prior``, a toy prior folder, a pipeline name or folder (``toy-all-layers``), a loaded
    ``ToyPrior`` or ``ParaUniPipeline``, or a bare ``AutoencoderDC`` (32-px images); a pixel-space model
    (no VAE) gives the clipped noise itself. With ``out`` the images and ``results.jsonl`` are written in
    GenEval's layout. Returns :func:`parauni.toy.geneval.summarize`'s dict.
    """
    vae, shape = _decoder(model)
    metas = load_toy_geneval(metadata)
    jobs = [(i, k) for i in range(len(metas)) for k in range(images_per_prompt)]
    images: list[list] = [[] for _ in metas]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i * images_per_prompt + k))
                         for i, k in chunk])
        if vae is not None:
            z = vae.decode(z.to(vae.device, vae.dtype) / vae.config.scaling_factor).sample
        for (i, _), x in zip(chunk, z, strict=True):
            images[i].append(to_image(x))
    if out is not None:
        write_geneval_layout(out, metas, images)
        return score_dir(out)
    results = []
    for meta, imgs in zip(metas, images, strict=True):
        for img in imgs:
            dets = detect(img)
            results.append({"tag": meta["tag"], "correct": evaluate(dets, meta)[0], "metadata": json.dumps(meta),
                            "partial": partial_credit(dets, meta)})
    return summarize(results)


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
