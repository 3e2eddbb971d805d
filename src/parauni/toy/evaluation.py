"""``parauni toy eval``: toy GenEval for the toy prior or a ParaUni pipeline, in GenEval's layout; and the
random-latents floor (:func:`random_latents_floor`)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from ..eval import provenance as prov
from ..eval.geneval import format_table, generate_geneval, geneval_record, limit_per_task, pipeline_generate_fn
from ..utils.locks import hold_folder_lock
from .data import to_image
from .detect import detect
from .geneval import (
    check_record,
    evaluate,
    load_toy_geneval,
    partial_credit,
    score_dir,
    summarize,
    write_geneval_layout,
)
from .worlds import world_of


def resolve_model(model, steps: int, guidance: float | None):
    """``(generate, identity)`` for ``prior`` (the shipped toy prior), a toy prior folder, a pipeline name or
    saved folder, or a ``ParaUniPipeline`` object; ``identity`` as :func:`parauni.eval.provenance.model_identity`
    plus ``default_guidance`` (the CFG scale used when ``guidance`` is ``None``)."""
    if not isinstance(model, (str, Path)):
        return (pipeline_generate_fn(model, steps, 4.5 if guidance is None else guidance),
                {**prov.model_identity(model), "default_guidance": 4.5})
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

        return generate, {**prov.model_identity(prior), "default_guidance": prior.guidance_scale}
    from ..pipelines.loading import load_pipeline

    pipe = load_pipeline(model)
    return (pipeline_generate_fn(pipe, steps, 4.5 if guidance is None else guidance),
            {**prov.model_identity(pipe), "default_guidance": 4.5})


def resolve_generate_fn(model, steps: int, guidance: float | None):
    """The ``generate`` function of :func:`resolve_model`."""
    return resolve_model(model, steps, guidance)[0]


def toy_geneval(model, out: str | Path | None = None, images_per_prompt: int = 4, steps: int = 20,
                guidance: float | None = None, seed: int = 0, limit: int | None = None,
                metadata: str | None = None, mode: str = "resume", name: str | None = None,
                world: str | None = None) -> dict:
    """Generate and score toy GenEval; returns the summary (per-task accuracy, overall).

    ``limit``: the first N prompts of each task (of each split, where the records have splits).  ``out`` gets
    ``provenance.json`` (:mod:`parauni.eval.provenance`); ``mode``: ``resume`` (keep the images already in
    ``out`` only when the weights and settings match, else refuse), ``overwrite`` or ``refresh`` (regenerate when
    they differ).
    ``name`` labels the model in the record (default: ``model`` when it is a name or path). ``world``: the shipped
    prompts of that world when no ``metadata`` is given (v2: seen and held-out, summarised apart)."""
    metas_all = load_toy_geneval(metadata, world)
    splits = list(dict.fromkeys(m.get("split") for m in metas_all))  # v2: "seen", "heldout"; v1: None
    metas = [m for split in splits for m in limit_per_task([x for x in metas_all if x.get("split") == split], limit)]
    for m in metas:  # before generating: a record without objects cannot be scored
        check_record(m)
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="toy-geneval-"))
    generate, identity = resolve_model(model, steps, guidance)
    if name is None:
        name = str(model) if isinstance(model, (str, Path)) else type(model).__name__
    shipped = "toy (shipped)" if world in (None, "v1") else f"toy {world} (shipped)"
    record = geneval_record(name, identity, metas_all, metas, metadata=str(metadata or shipped),
                            steps=steps, guidance=guidance, seed=seed, resolution=None,
                            images_per_prompt=images_per_prompt, limit=limit)
    generate_geneval(generate, metas, out, images_per_prompt, seed, provenance=record, mode=mode)
    return score_dir(out)


def _decoder(model):
    """``(vae or None, latent shape (C, h, w))`` of ``model`` (see :func:`random_latents_floor`)."""
    if isinstance(model, (str, Path)):
        from .prior import is_prior_arg

        if is_prior_arg(str(model)):
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
                         out: str | Path | None = None, batch_size: int = 64, world: str | None = None) -> dict:
    """Toy GenEval of decoded random latents: the score an image without any object gets (a table's floor row).

    Image ``k`` of prompt ``i`` decodes standard normal latents drawn with seed ``seed + i * images_per_prompt
    + k``, without denoising (what ``--steps 0`` generates), so it holds coloured fragments and no object.
    ``model``: ``prior``, a toy prior folder, a pipeline name or folder (``toy-all-layers``), a loaded
    ``ToyPrior`` or ``ParaUniPipeline``, or a bare ``AutoencoderDC`` (32-px images); a pixel-space model
    (no VAE) gives the clipped noise itself. With ``out`` the images and ``results.jsonl`` are written in
    GenEval's layout. ``world``: the shipped prompts of that world when no ``metadata`` is given. Returns
    :func:`parauni.toy.geneval.summarize`'s dict.
    """
    vae, shape = _decoder(model)
    metas = load_toy_geneval(metadata, world)
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
            dets = detect(img, world=world_of(meta))
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
    p.add_argument("--limit", type=int, help="the first N prompts of each task (overall: the mean of the tasks)")
    p.add_argument("--metadata", help="a GenEval-format JSONL (default: the toy GenEval prompts of --world)")
    p.add_argument("--world", choices=("v1", "v2"), help="the shipped prompts of this toy world (default v1; v2: "
                                                         "seen and held-out prompts, summarised apart)")
    prov.add_overwrite_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """``parauni toy eval``: with ``--out`` the folder's lock is held throughout (one evaluation per folder, as
    ``parauni eval`` and the training runs hold theirs): another writer there is refused, naming its PID."""
    if args.out:
        with hold_folder_lock(args.out, "evaluation"):
            _run(args)
    else:
        _run(args)


def _run(args: argparse.Namespace) -> None:
    summary = toy_geneval(args.model, args.out, args.images_per_prompt, args.steps, args.guidance, args.seed,
                          args.limit, args.metadata, mode="overwrite" if args.overwrite else "resume",
                          world=args.world)
    label = prov.label(prov.read(args.out)) if args.out else args.model
    print(format_table(with_splits(label, summary)))
    if args.out:
        print(f"images, results.jsonl, summary.json and provenance.json in {args.out}")
    else:
        print(json.dumps(summary["tasks"]))


def with_splits(label: str, summary: dict) -> dict[str, dict]:
    """Table rows of a summary: ``label`` over all images, then one row per split when it has them (v2: seen, held
    out; the held-out row is the headline)."""
    rows = {label: summary}
    for split, part in summary.get("splits", {}).items():
        se = part["stderr"]
        rows[f"{label} [{split}; standard error {se['overall']:.3f}, at most {se['overall_max']:.3f}]"] = part
    return rows
