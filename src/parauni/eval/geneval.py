"""Generation into GenEval's official layout, resumable, for any model.

``<out>/<index:05d>/metadata.jsonl`` holds the prompt's JSON record and
``<out>/<index:05d>/samples/<k:04d>.png`` its images.  Image k of prompt i is drawn with seed
``seed + i * images_per_prompt + k``, so a resumed or re-batched run writes the same images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

# generate(prompts, seeds) -> one RGB uint8 (H, W, 3) image per prompt
GenerateFn = Callable[[list[str], list[int]], Sequence[np.ndarray]]
TASK_ORDER = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def _save_atomic(image: np.ndarray, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    Image.fromarray(image).save(tmp)
    os.replace(tmp, path)


def generate_geneval(generate: GenerateFn, metas: Sequence[dict], out_dir: str | Path, images_per_prompt: int = 4,
                     seed: int = 0, batch_size: int = 32) -> Path:
    """Write every prompt's images into GenEval's layout; images already there are kept."""
    out = Path(out_dir)
    todo = []
    for i, meta in enumerate(metas):
        folder = out / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        todo += [(i, k) for k in range(images_per_prompt) if not (folder / "samples" / f"{k:04d}.png").exists()]
    with tqdm(total=len(todo), desc="geneval images", unit="img") as bar:
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            images = generate([metas[i]["prompt"] for i, _ in chunk],
                              [seed + i * images_per_prompt + k for i, k in chunk])
            for (i, k), im in zip(chunk, images, strict=True):
                _save_atomic(np.asarray(im, dtype=np.uint8), out / f"{i:05d}" / "samples" / f"{k:04d}.png")
            bar.update(len(chunk))
    return out


def pipeline_generate_fn(pipe, num_inference_steps: int = 20, guidance_scale: float = 4.5) -> GenerateFn:
    """A ``GenerateFn`` for a ``ParaUniPipeline`` (one generator per image)."""
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=gens, output_type="np").images
        return [np.rint(x * 255).clip(0, 255).astype(np.uint8) for x in out]

    return generate


def format_table(rows: dict[str, dict]) -> str:
    """A Markdown table of GenEval summaries: one row per model, the six tasks and overall."""
    head = "| model | " + " | ".join(TASK_ORDER) + " | overall |"
    lines = [head, "|" + "---|" * (len(TASK_ORDER) + 2)]
    for name, summary in rows.items():
        tasks = summary["tasks"]
        cells = [f"{tasks[t]:.3f}" if t in tasks else "–" for t in TASK_ORDER]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {summary['overall']:.3f} |")
    return "\n".join(lines)
