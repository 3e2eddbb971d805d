"""``parauni eval geneval``: write GenEval's layout (resumable, with provenance), then score it with the
chosen scorer: a model family's own (the toy world's detector), the native Mask2Former + CLIP scorer, or the
official toolchain through a command the user names."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

from ..errors import UsageError
from ..registry import FAMILIES, family_of_metadata
from ..utils.jsonl import parse_jsonl
from . import GENEVAL_SCORER_ENV
from . import provenance as prov
from .bundled import default_geneval_metadata
from .dpg import model_generate_fn
from .geneval import format_table, generate_geneval, geneval_record, limit_per_task
from .geneval_rules import summarize


def official_geneval(out, scorer: str) -> dict:
    """Run the user's GenEval scorer command on ``out``; summarise its results.jsonl."""

    outfile = Path(out) / "results.jsonl"
    if "{images}" in scorer or "{outfile}" in scorer:
        cmd = shlex.split(scorer.replace("{images}", shlex.quote(str(out))).replace(
            "{outfile}", shlex.quote(str(outfile))))
    else:
        cmd = [*shlex.split(scorer), str(out), "--outfile", str(outfile)]
    print("running:", shlex.join(cmd))
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as err:
        raise ValueError(f"the GenEval scorer ({GENEVAL_SCORER_ENV}) exited with status {err.returncode}") from err
    results = [json.loads(x) for x in outfile.read_text().splitlines() if x.strip()]
    summary = summarize(results)  # GenEval's summary_scores.py: per-task accuracy, overall = mean of the tasks
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(args) -> None:
    """``parauni eval geneval``: write GenEval's layout (resumable), then score it.

    ``--scorer auto``: toy models (``prior``, a toy prior folder, a pipeline on the toy VLM) and toy metadata
    (every class a toy shape) are scored with the toy detector, other models as ``official``.  ``toy``: the toy
    detector.  ``native``: :class:`parauni.eval.geneval_native.NativeScorer` (``--detector``, ``--clip``).
    ``official``: when ``$PARAUNI_GENEVAL_SCORER`` holds a command (the official ``evaluate_images.py``;
    ``{images}`` / ``{outfile}`` placeholders), it is run and its ``results.jsonl`` summarised into
    ``summary.json``; without it the official commands are printed.
    """
    from pathlib import Path

    for flag in ("detector", "clip"):
        if getattr(args, flag) is not None and args.scorer != "native":
            raise UsageError(f"--{flag} is read by --scorer native only (got --scorer {args.scorer}); add "
                             f"--scorer native or drop --{flag}")

    generate, family, identity = model_generate_fn(args.model, args.steps, args.guidance, args.resolution,
                                                   args.device, dtype=args.dtype)
    if args.metadata is None:
        args.metadata = str(default_geneval_metadata(family))
        print(f"prompts: {args.metadata}")
    lines = Path(args.metadata).read_text().splitlines()
    metas_all = parse_jsonl("\n".join(lines), str(args.metadata))
    metas = limit_per_task(metas_all, args.limit)
    if not metas:
        raise ValueError(f"no prompts in {args.metadata!r}")
    record = geneval_record(args.model, identity, metas_all, metas, metadata=str(args.metadata), steps=args.steps,
                            guidance=args.guidance, seed=args.seed, resolution=args.resolution,
                            images_per_prompt=args.images_per_prompt, limit=args.limit, batch_size=args.batch_size,
                            device=args.device)
    generate_geneval(generate, metas, args.out, args.images_per_prompt, args.seed, args.batch_size,
                     provenance=record, mode="overwrite" if args.overwrite else "resume")
    scorer = os.environ.get(GENEVAL_SCORER_ENV)
    if args.scorer == "native":
        # Mask2Former needs scipy (the metrics extra): imported only when this scorer is asked for
        from .geneval_native import DEFAULT_CLIP, DEFAULT_DETECTOR, NativeScorer

        native = NativeScorer(args.detector or DEFAULT_DETECTOR, args.clip or DEFAULT_CLIP, args.device or "cpu")
        summary = native.score_dir(args.out)
    elif args.scorer == "auto" and family is not None and family.geneval_scorer is not None:
        summary = family.geneval_scorer(args.out)
    elif args.scorer == "toy" or (args.scorer == "auto" and family_of_metadata(metas) is not None):
        named = FAMILIES.get("toy") if args.scorer == "toy" else family_of_metadata(metas)
        summary = named.geneval_scorer(args.out)
    elif scorer:
        summary = official_geneval(args.out, scorer)
    else:
        print(f"{len(metas)} prompts x {args.images_per_prompt} images in GenEval's layout in {args.out}.\n"
              "Score them with the official scorer (https://github.com/djghosh13/geneval; mmdetection 2.x, GPU):\n"
              f"  python evaluation/evaluate_images.py {args.out} --outfile {args.out}/results.jsonl "
              "--model-path <detector folder>\n"
              f"  python evaluation/summary_scores.py {args.out}/results.jsonl\n"
              f"or set {GENEVAL_SCORER_ENV} to the first command and rerun (finished images are kept).")
        return
    print(format_table({prov.label(record): summary}))
    print(f"results.jsonl and summary.json in {args.out}; what made the images: {args.out}/{prov.PROVENANCE_FILE}")
