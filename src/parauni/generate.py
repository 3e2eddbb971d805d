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


DEMO_PROMPTS = ["a photo of a red circle", "a photo of two blue squares",
                "a photo of a green triangle left of a yellow circle", "a photo of a purple square"]


def run_demo(args) -> None:
    """The tiny random model end to end: a labelled grid of a few prompts in ``outputs/``."""
    pipe = build_demo_pipeline()
    paths = generate_images(pipe, DEMO_PROMPTS, args.out, steps=args.steps, guidance=4.5, grid_scale=4)
    print(f"wrote {len(paths)} images and {Path(args.out) / 'grid.png'} (tiny random model: the images are noise "
          "shaped by an untrained condition; the toy world replaces it with trained models)")


def build_demo_pipeline():
    from .models.presets import build_tiny

    return build_tiny(sample_size=16)
