"""DPG-Bench generation in its scorer's layout, resumable, batched; plus model helpers shared by ``parauni eval``.

DPG-Bench's scorer reads one PNG per prompt, ``<out>/<item_id>.png``, holding the prompt's 4 samples as
a 2x2 grid (row-major: samples 0, 1 on top, 2, 3 below).  Sample k of the prompt on line i of the
prompt file is drawn with seed ``seed + 4 * i + k``, so a resumed, limited or re-batched run writes the
same images.  ``--limit N`` keeps the first ``N`` prompts (DPG-Bench has no tasks).  ``<out>/provenance.json``
records what made the grids (:mod:`parauni.eval.provenance`); grids already in ``out`` are kept only when the
model's weights and every setting match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..pipelines.loading import load_pipeline
from ..registry import FAMILIES, GENERATORS, Family, family_of
from ..utils.images import save_png_atomic, unit_to_uint8
from . import provenance as prov
from .bundled import dpg_prompts_path
from .dpg_score import run_score
from .geneval import GenerateFn

DPG_IMAGES = 4  # a 2x2 grid per prompt
SEED_RULE = "seed + 4 * line + k (line: the prompt's position in the prompt file, k: the grid cell, row-major)"
LIMIT_RULE = "first N prompts of the file (DPG-Bench has no tasks)"


def pipeline_generate(pipe, steps: int = 20, guidance: float = 4.5, resolution: int | None = None) -> GenerateFn:
    """A ``GenerateFn`` for a ``ParaUniPipeline``: one generator per image, optional square ``resolution``."""
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   height=resolution, width=resolution, output_type="np").images
        return list(unit_to_uint8(out))

    return generate


def model_generate_fn(model: str, steps: int = 20, guidance: float | None = None, resolution: int | None = None,
                      device: str | None = None, dtype: str = "auto") -> tuple[GenerateFn, Family | None, dict]:
    """``(generate, family, identity)`` for a ``--model`` argument: a registered generator that is not a pipeline
    (:data:`parauni.registry.GENERATORS`, a plugin's), or any :func:`load_pipeline` name.
    ``family``: the model's :class:`parauni.registry.Family` (its evaluation defaults) or ``None``;
    ``identity``: the weights hash and frozen parts (:func:`parauni.eval.provenance.model_identity`)."""
    for name in GENERATORS:
        gen = GENERATORS.get(name)
        if gen.match(model):
            if resolution is not None:
                raise UsageError(f"{model!r} generates at its own size; drop --resolution")
            generate, identity = gen.load(model, steps, guidance)
            return generate, FAMILIES.get(gen.family) if gen.family else None, identity
    pipe = load_pipeline(model, dtype=dtype, device=device)
    generate = pipeline_generate(pipe, steps, 4.5 if guidance is None else guidance, resolution)
    return generate, family_of(pipe), {**prov.model_identity(pipe), "default_guidance": 4.5}


def load_dpg_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """The ``{item_id, prompt}`` records of a DPG-Bench JSONL file (first ``limit`` only if given)."""
    items: list[dict] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}:{n}: not JSON: {err}") from err
        if not isinstance(rec, dict) or "item_id" not in rec or "prompt" not in rec:
            raise UsageError(f"{path}:{n}: expected an object with 'item_id' and 'prompt'")
        item_id = str(rec["item_id"])
        if not item_id or "/" in item_id or "\\" in item_id or item_id in (".", ".."):
            raise UsageError(f"{path}:{n}: item_id {item_id!r} cannot be a file name")
        items.append({"item_id": item_id, "prompt": str(rec["prompt"])})
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise UsageError(f"{path} holds no prompts: give a DPG-Bench JSONL file with one {{\"item_id\", \"prompt\"}} "
                         "object a line")
    ids = [r["item_id"] for r in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UsageError(f"{path}: item_id {dup!r} appears more than once")
    return items


def make_grid(images: Sequence[np.ndarray]) -> np.ndarray:
    """Four equally sized ``(H, W, 3)`` uint8 images -> one ``(2H, 2W, 3)`` grid, row-major."""
    if len(images) != DPG_IMAGES:
        raise ValueError(f"a DPG grid takes {DPG_IMAGES} images, got {len(images)}")
    a = [np.asarray(im, dtype=np.uint8) for im in images]
    return np.concatenate([np.concatenate(a[:2], axis=1), np.concatenate(a[2:], axis=1)], axis=0)


def dpg_record(model: str, identity: dict, items_all: Sequence[dict], items: Sequence[dict], *, prompts: str,
               steps: int, guidance: float | None, seed: int, resolution: int | None, limit: int | None,
               **info) -> dict:
    """The provenance record of a DPG-Bench run (see :func:`parauni.eval.provenance.make_record`)."""
    return prov.make_record(layout="dpg", model=model, identity=identity, steps=steps, guidance=guidance, seed=seed,
                            seed_rule=SEED_RULE, resolution=resolution, images_per_prompt=DPG_IMAGES,
                            metadata=prompts, metadata_sha256=prov.records_sha256(items_all), limit=limit,
                            limit_rule=LIMIT_RULE, prompts=len(items), outputs=[it["item_id"] for it in items],
                            **info)


def generate_dpg(generate: GenerateFn, items: Sequence[dict], out_dir: str | Path, seed: int = 0,
                 batch_size: int = 16, *, provenance: dict | None = None, mode: str = "resume") -> Path:
    """Write ``<out_dir>/<item_id>.png`` (a 2x2 grid of 4 samples) for every item not already there.

    ``batch_size`` counts images; a batch holds ``max(1, batch_size // 4)`` prompts.  With ``provenance`` (a
    record of :func:`dpg_record`) the folder is first checked against the stored record
    (:func:`parauni.eval.provenance.prepare`; ``mode`` ``resume`` / ``overwrite`` / ``refresh``); without it
    grids already there are kept as is.  Grids are written under a temporary name and renamed into place.
    """
    out = Path(out_dir)
    if provenance is not None:
        recorded = prov.read(out) or {}
        ids = {it["item_id"] for it in items} | set(recorded.get("outputs") or [])

        def has_outputs(folder: Path) -> bool:
            return any((folder / f"{i}.png").exists() for i in ids)

        def clear(folder: Path) -> None:
            for i in ids:
                (folder / f"{i}.png").unlink(missing_ok=True)

        prov.prepare(out, provenance, mode, has_outputs, clear)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(i, it) for i, it in enumerate(items) if not (out / f"{it['item_id']}.png").exists()]
    per_batch = max(1, batch_size // DPG_IMAGES)
    with tqdm(total=len(todo), desc="dpg prompts", unit="prompt") as bar:
        for s in range(0, len(todo), per_batch):
            chunk = todo[s:s + per_batch]
            prompts = [it["prompt"] for _, it in chunk for _ in range(DPG_IMAGES)]
            seeds = [seed + DPG_IMAGES * i + k for i, _ in chunk for k in range(DPG_IMAGES)]
            images = list(generate(prompts, seeds))
            for j, (_, it) in enumerate(chunk):
                grid = make_grid(images[j * DPG_IMAGES:(j + 1) * DPG_IMAGES])
                save_png_atomic(grid, out / f"{it['item_id']}.png")
            bar.update(len(chunk))
    return out


def run(args) -> None:
    """``parauni eval dpg``: generate the grids (with ``--model``), then score them when ``--score`` is given
    (:mod:`parauni.eval.dpg_score`; without ``--model`` the grids already in ``--out`` are scored)."""
    if getattr(args, "score", False):
        if not args.questions or not args.vqa:
            raise UsageError("--score needs --questions (DPG-Bench's dpg_bench.csv) and --vqa (a transformers VQA "
                             "model or VLM id / folder)")
        if args.model is None:
            run_score(args)
            return
    elif args.model is None:
        raise UsageError("--model is required (or --score with --questions and --vqa to score the grids in --out)")
    if args.prompts is None:
        args.prompts = str(dpg_prompts_path())
    items_all = load_dpg_prompts(args.prompts)
    items = items_all[: args.limit] if args.limit is not None else items_all
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1 (the first N prompts), got {args.limit}")
    generate, _, identity = model_generate_fn(args.model, args.steps, args.guidance, args.resolution, args.device,
                                              dtype=getattr(args, "dtype", "auto"))
    record = dpg_record(args.model, identity, items_all, items, prompts=str(args.prompts), steps=args.steps,
                        guidance=args.guidance, seed=args.seed, resolution=args.resolution, limit=args.limit,
                        batch_size=args.batch_size, device=args.device)
    mode = "overwrite" if getattr(args, "overwrite", False) else "resume"
    generate_dpg(generate, items, args.out, args.seed, args.batch_size, provenance=record, mode=mode)
    if getattr(args, "score", False):
        run_score(args, record)
        return
    print(f"{len(items)} DPG-Bench grids (<item_id>.png, 2x2) of {prov.label(record)} in {args.out} "
          f"(what made them: {args.out}/{prov.PROVENANCE_FILE})\nscore them with ELLA's DPG-Bench "
          f"scorer (mPLUG VQA, GPU): accelerate launch dpg_bench/compute_dpg_bench.py --image-root-path {args.out} "
          "--resolution <side of one sample> --pic-num 4 --vqa-model mplug")
