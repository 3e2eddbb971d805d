"""Generation into GenEval's official layout, resumable, for any model.

``<out>/<index:05d>/metadata.jsonl`` holds the prompt's JSON record and
``<out>/<index:05d>/samples/<k:04d>.png`` its images.  Image k of prompt i is drawn with seed
``seed + i * images_per_prompt + k``, so a resumed or re-batched run writes the same images.
``<out>/provenance.json`` records what made them (:mod:`parauni.eval.provenance`): a rerun into the same folder
keeps finished images only when the model's weights and every setting match.  ``--limit N`` keeps the first
``N`` prompts of each task (GenEval's overall score is the mean of its tasks).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UsageError
from ..utils.images import PARTIAL_SUFFIX as _TMP_SUFFIX
from ..utils.images import save_png_atomic, unit_to_uint8
from . import provenance as prov
from .geneval_rules import TASKS

logger = logging.getLogger(__name__)

# generate(prompts, seeds) -> one RGB uint8 (H, W, 3) image per prompt
GenerateFn = Callable[[list[str], list[int]], Sequence[np.ndarray]]
TASK_ORDER = TASKS  # GenEval's six tasks (parauni.eval.geneval_rules)
SEED_RULE = "seed + index * images_per_prompt + k (index: the prompt's folder number)"
LIMIT_RULE = "first N prompts of each task (GenEval's 'tag'), in file order"
_FOLDER = re.compile(r"\d+")


def limit_per_task(metas: Sequence[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` records of each task (``tag``), in file order; all of them when ``limit`` is None.

    Records without a tag form one group, so for them ``limit`` is "the first N"."""
    if limit is None:
        return list(metas)
    if limit < 1:
        raise UsageError(f"--limit must be >= 1 (prompts per task), got {limit}")
    seen: dict[str | None, int] = {}
    out = []
    for m in metas:
        tag = m.get("tag")
        if seen.get(tag, 0) < limit:
            out.append(m)
            seen[tag] = seen.get(tag, 0) + 1
    return out


def geneval_record(model: str, identity: dict, metas_all: Sequence[dict], metas: Sequence[dict], *, metadata: str,
                   steps: int, guidance: float | None, seed: int, resolution: int | None, images_per_prompt: int,
                   limit: int | None, **info) -> dict:
    """The provenance record of a GenEval-layout run (see :func:`parauni.eval.provenance.make_record`)."""
    return prov.make_record(layout="geneval", model=model, identity=identity, steps=steps, guidance=guidance,
                            seed=seed, seed_rule=SEED_RULE, resolution=resolution,
                            images_per_prompt=images_per_prompt, metadata=metadata,
                            metadata_sha256=prov.records_sha256(metas_all), limit=limit, limit_rule=LIMIT_RULE,
                            prompts=len(metas), **info)


def _prompt_folders(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.is_dir() and _FOLDER.fullmatch(p.name)]


def has_geneval_outputs(out: Path) -> bool:
    """True when ``out`` holds a generated image or a score of GenEval's layout."""
    return (out / "results.jsonl").exists() or any(
        any((p / "samples").glob("*.png")) for p in _prompt_folders(out) if (p / "samples").is_dir())


def clear_geneval(out: Path) -> None:
    """Remove what a GenEval-layout run writes: the numbered prompt folders, results.jsonl, summary.json."""
    for p in _prompt_folders(out):
        shutil.rmtree(p)
    for name in ("results.jsonl", "summary.json"):
        (out / name).unlink(missing_ok=True)


def generate_geneval(generate: GenerateFn, metas: Sequence[dict], out_dir: str | Path, images_per_prompt: int = 4,
                     seed: int = 0, batch_size: int = 32, *, provenance: dict | None = None,
                     mode: str = "resume") -> Path:
    """Write every prompt's images into GenEval's layout.

    With ``provenance`` (a record of :func:`geneval_record`) the folder is first checked against the stored
    record (:func:`parauni.eval.provenance.prepare`, ``mode`` ``resume`` / ``overwrite`` / ``refresh``) and
    images already there are kept only when it matches; without it, images already there are kept as is.
    Images are written to ``<index>/.<k>.png.partial`` and renamed into ``samples/``."""
    out = Path(out_dir)
    if provenance is not None:
        prov.prepare(out, provenance, mode, has_geneval_outputs, clear_geneval)
    todo = []
    for i, meta in enumerate(metas):
        folder = out / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f".*{_TMP_SUFFIX}"):  # left by a killed run
            stale.unlink()
        (folder / "metadata.jsonl").write_text(json.dumps(meta) + "\n")
        todo += [(i, k) for k in range(images_per_prompt) if not _intact_png(folder / "samples" / f"{k:04d}.png")]
    with tqdm(total=len(todo), desc="geneval images", unit="img") as bar:
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            images = generate([metas[i]["prompt"] for i, _ in chunk],
                              [seed + i * images_per_prompt + k for i, k in chunk])
            for (i, k), im in zip(chunk, images, strict=True):
                folder = out / f"{i:05d}"
                save_png_atomic(np.asarray(im, dtype=np.uint8), folder / "samples" / f"{k:04d}.png", folder)
            bar.update(len(chunk))
    return out


def _intact_png(path: Path) -> bool:
    """Whether ``path`` is a whole, decodable image; a damaged one (truncated by a full disk or another program) is
    removed with a warning naming it, so that it is made again instead of being kept as finished."""
    if not path.exists():
        return False
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except (OSError, SyntaxError, ValueError) as err:
        logger.warning("%s is damaged (%s): it is made again", path, err)
        path.unlink()
        return False


def pipeline_generate_fn(pipe, num_inference_steps: int = 20, guidance_scale: float = 4.5) -> GenerateFn:
    """A ``GenerateFn`` for a ``ParaUniPipeline`` (one generator per image)."""
    pipe.set_progress_bar_config(disable=True)

    def generate(prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = pipe(prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   generator=gens, output_type="np").images
        return list(unit_to_uint8(out))

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
