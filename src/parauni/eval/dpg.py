"""DPG-Bench generation in its scorer's layout, resumable, batched; plus model helpers shared by ``parauni eval``.

DPG-Bench's scorer reads one PNG per prompt, ``<out>/<item_id>.png``, holding the prompt's 4 samples as
a 2x2 grid (row-major: samples 0, 1 on top, 2, 3 below).  Sample k of the prompt on line i of the
prompt file is drawn with seed ``seed + 4 * i + k``, so a resumed, limited or re-batched run writes the
same images.  Grids already in ``out`` are kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .geneval import GenerateFn

DPG_IMAGES = 4  # a 2x2 grid per prompt


def is_toy_pipeline(pipe) -> bool:
    """True when the pipeline's VLM is the toy VLM (32-px images cut into 4-px patches)."""
    from ..toy.vlm import IMAGE_SIZE, PATCH_SIZE

    vision = getattr(getattr(pipe, "vlm", None), "config", None)
    vision = getattr(vision, "vision_config", None)
    if vision is None:
        return False
    size, patch = vision.image_size, vision.patch_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return size == IMAGE_SIZE and patch == PATCH_SIZE


def is_toy_prior(model: str) -> bool:
    """``prior`` (the shipped toy prior) or a toy prior folder (one with ``text_encoder/``)."""
    return model == "prior" or (Path(model) / "text_encoder").is_dir()


def pipeline_generate(pipe, steps: int = 20, guidance: float = 4.5, resolution: int | None = None) -> GenerateFn:
    """A ``GenerateFn`` for a ``ParaUniPipeline``: one generator per image, optional square ``resolution``."""
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                   height=resolution, width=resolution, output_type="np").images
        return [np.rint(x * 255).clip(0, 255).astype(np.uint8) for x in out]

    return generate


def model_generate_fn(model: str, steps: int = 20, guidance: float | None = None, resolution: int | None = None,
                      device: str | None = None) -> tuple[GenerateFn, bool]:
    """``(generate, is_toy)`` for a ``--model`` argument: ``prior`` or a toy prior folder (toy), ``tiny``,
    a preset or a saved pipeline folder (toy when its VLM is the toy VLM)."""
    if is_toy_prior(model):
        if resolution is not None:
            raise ValueError("the toy prior generates at its own 32-px size; drop --resolution")
        from ..toy.evaluation import resolve_generate_fn

        return resolve_generate_fn(model, steps, guidance), True
    from ..pipelines.loading import load_pipeline

    pipe = load_pipeline(model, device=device)
    return pipeline_generate(pipe, steps, 4.5 if guidance is None else guidance, resolution), is_toy_pipeline(pipe)


def load_dpg_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """The ``{item_id, prompt}`` records of a DPG-Bench JSONL file (first ``limit`` only if given)."""
    items: list[dict] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON: {err}") from err
        if not isinstance(rec, dict) or "item_id" not in rec or "prompt" not in rec:
            raise ValueError(f"{path}:{n}: expected an object with 'item_id' and 'prompt'")
        item_id = str(rec["item_id"])
        if not item_id or "/" in item_id or "\\" in item_id or item_id in (".", ".."):
            raise ValueError(f"{path}:{n}: item_id {item_id!r} cannot be a file name")
        items.append({"item_id": item_id, "prompt": str(rec["prompt"])})
        if limit is not None and len(items) >= limit:
            break
    ids = [r["item_id"] for r in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{path}: item_id {dup!r} appears more than once")
    return items


def make_grid(images: Sequence[np.ndarray]) -> np.ndarray:
    """Four equally sized ``(H, W, 3)`` uint8 images -> one ``(2H, 2W, 3)`` grid, row-major."""
    if len(images) != DPG_IMAGES:
        raise ValueError(f"a DPG grid takes {DPG_IMAGES} images, got {len(images)}")
    a = [np.asarray(im, dtype=np.uint8) for im in images]
    return np.concatenate([np.concatenate(a[:2], axis=1), np.concatenate(a[2:], axis=1)], axis=0)


def generate_dpg(generate: GenerateFn, items: Sequence[dict], out_dir: str | Path, seed: int = 0,
                 batch_size: int = 16) -> Path:
    """Write ``<out_dir>/<item_id>.png`` (a 2x2 grid of 4 samples) for every item not already there.

    ``batch_size`` counts images; a batch holds ``max(1, batch_size // 4)`` prompts.
    """
    out = Path(out_dir)
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
                path = out / f"{it['item_id']}.png"
                tmp = path.with_name(path.name + ".tmp.png")
                Image.fromarray(grid).save(tmp)
                os.replace(tmp, path)
            bar.update(len(chunk))
    return out


def run(args) -> None:
    """``parauni eval dpg``."""
    items = load_dpg_prompts(args.prompts, args.limit)
    generate, _ = model_generate_fn(args.model, args.steps, args.guidance, args.resolution, args.device)
    generate_dpg(generate, items, args.out, args.seed, args.batch_size)
    print(f"{len(items)} DPG-Bench grids (<item_id>.png, 2x2) in {args.out}\nscore them with ELLA's DPG-Bench "
          f"scorer (mPLUG VQA, GPU): accelerate launch dpg_bench/compute_dpg_bench.py --image-root-path {args.out} "
          "--resolution <side of one sample> --pic-num 4 --vqa-model mplug")
