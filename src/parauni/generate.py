"""``parauni generate`` and the demo: prompts in, images and a labelled grid out."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .pipelines.loading import load_pipeline
from .utils.images import labelled_grid, load_image


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "image"


def generate_images(pipe, prompts: list[str], out: str | Path, image: str | None = None, seed: int = 0,
                    steps: int = 20, guidance: float = 4.5, height: int | None = None,
                    width: int | None = None, grid_scale: int = 1) -> list[Path]:
    """One image per prompt (seeded by ``seed + index``), saved as PNGs plus ``grid.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    init = load_image(image) if image else None
    pipe.set_progress_bar_config(disable=True)
    paths, images = [], []
    for i, prompt in enumerate(tqdm(prompts, desc="generating", unit="prompt")):
        g = torch.Generator().manual_seed(seed + i)
        im = pipe(prompt, image=init, num_inference_steps=steps, guidance_scale=guidance, height=height,
                  width=width, generator=g).images[0]
        path = out / f"{i:03d}_{slug(prompt)}.png"
        im.save(path)
        paths.append(path)
        images.append(im)
    labelled_grid(images, prompts, scale=grid_scale).save(out / "grid.png")
    return paths


def run_generate(args) -> None:
    pipe = load_pipeline(args.model, device=args.device)
    paths = generate_images(pipe, args.prompt, args.out, args.image, args.seed, args.steps, args.guidance,
                            args.height, args.width)
    print(f"wrote {len(paths)} image(s) and grid.png to {args.out}")


def demo_grid(geneval_dir: Path, per_task: int = 6, scale: int = 3):
    """A labelled grid of the first image of the first prompts of every task in a GenEval folder."""
    import json

    from PIL import Image

    from .eval.geneval import TASK_ORDER

    by_task: dict[str, list[tuple[Path, str]]] = {}
    for folder in sorted(p for p in geneval_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        meta = json.loads((folder / "metadata.jsonl").read_text())
        group = by_task.setdefault(meta["tag"], [])
        if len(group) < per_task and meta["prompt"] not in {p for _, p in group}:
            group.append((folder / "samples" / "0000.png", meta["prompt"]))
    items = [it for t in TASK_ORDER for it in by_task.get(t, [])]
    images = [Image.open(path).convert("RGB") for path, _ in items]
    labels = [prompt.removeprefix("a photo of ") for _, prompt in items]
    return labelled_grid(images, labels, cols=per_task, scale=scale)


def run_demo(args) -> None:
    """The shipped toy prior end to end: toy GenEval generated, scored and tabulated on a CPU."""
    from .eval.geneval import format_table
    from .toy.evaluation import toy_geneval

    out = Path(args.out)
    geneval_dir = out / "toy_geneval_prior"
    summary = toy_geneval("prior", geneval_dir, images_per_prompt=args.images_per_prompt, steps=args.steps)
    demo_grid(geneval_dir).save(out / "prior_samples.png")
    print("\nToy GenEval, shipped toy prior with its own text encoder "
          f"({summary['total_images']} images, {args.steps} steps):\n")
    print(format_table({"toy prior": summary}))
    print(f"\nimages in GenEval's layout, results.jsonl and summary.json: {geneval_dir}")
    print(f"sample grid (first image of the first prompts of each task): {out / 'prior_samples.png'}")
