"""WISE (Niu et al., "WISE: A World Knowledge-Informed Semantic Evaluation for Text-to-Image Generation",
arXiv 2503.07265, https://github.com/PKU-YuanGroup/WISE): generation in the layout its judge reads, and a hook
that runs the judge and summarises its scores per category with WISE's WiScore weighting.

Prompts: WISE's JSON files (a list of ``{"Prompt", "Explanation", "Category", "Subcategory", "prompt_id"}``
records, e.g. ``data_verified/cultural_common_sense_verified.json``), given as one file or a folder of them.
They are not bundled: the WISE repository carries no license.  A folder that also holds a merged copy of the
others (``data_verified/merge.json``) is read without that copy.  ``WISE_legacy/data/`` cannot be passed as it is:
it holds each prompt file twice, ``<name>.json`` and ``<name>_rewrite.json`` (the same prompt_ids with rewritten
prompts), and one folder of ``<prompt_id>.png`` images holds one image per id; pass one of its files, or a folder
with only the original (or only the ``_rewrite``) files.

Layout: one image per prompt, ``<out>/<prompt_id>.png``: the judges open ``os.path.join(image_dir,
f"{pid}.png")`` (``vllm_eval.py`` l.267, ``WISE_legacy/gpt_eval.py`` l.244).  The image of prompt ``p`` is drawn
with seed ``seed + p``, so a resumed, limited or re-batched run writes the same images.  ``--limit N`` keeps
the first N prompts of each category (file order).  ``<out>/provenance.json`` records what made the images
(:mod:`parauni.eval.provenance`).  ``<out>/prompts/<name>.json`` holds the prompts generated from each prompt
file (all of them, or the limited subset), in WISE's format, for the judge.

Judge: a command (``--judge-command`` or ``$PARAUNI_WISE_JUDGE``) run once per prompt file with ``{images}``
(``<out>``), ``{prompts}`` (``<out>/prompts/<name>.json``), ``{out}`` (``<out>/judge/<name>_scores_results.jsonl``,
the JSONL it must write) and ``{name}`` filled in, every path absolute (WISE's scripts write
``os.path.join(output_dir, result_scores)``, ``vllm_eval.py`` l.241, l.259, ``WISE_legacy/gpt_eval.py`` l.215,
l.236, which is ``result_scores`` itself only when that is absolute) -- e.g. WISE's own ``vllm_eval.py``
(Qwen3.5 judge, WISE_Verified) or ``WISE_legacy/gpt_eval.py`` (GPT-4o-2024-05-13, the paper's protocol).  Its
score records are read as WISE's calculators read them:

* WISE_Verified (``calculate_verified.py`` l.6-12, l.58): ``{"prompt_id", "score"}``, score 0 or 1, WiScore =
  score; overall = 0.40 culture + 0.12 (time + space + biology + physics + chemistry) (l.246-247);
* the paper's protocol (``WISE_legacy/Calculate.py`` l.6-8): ``{"prompt_id", "consistency", "realism",
  "aesthetic_quality"}``, each 0-2, WiScore = (0.7 consistency + 0.2 realism + 0.1 aesthetic) / 2; overall =
  0.4 culture + 0.167 time + 0.133 space + 0.1 (biology + physics + chemistry) (l.240-241).

A category's score is the mean WiScore of its images; the overall score exists only when every prompt of the
prompt set given (all files, before ``--limit``) has a score, as WISE's calculators refuse an overall when a
prompt_id of the set is missing (``calculate_verified.py`` l.174-181, l.236-238); otherwise ``overall`` is null and
``partial`` says ``"partial: N of M prompts scored"``.  The calculators assign categories by prompt_id
ranges, which differ between the two prompt sets (legacy l.59-70, verified l.65-76); here a prompt's category
comes from its own ``Category`` field, which names the same six groups in both sets.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import UsageError
from ..utils.images import save_png_atomic
from . import WISE_JUDGE_ENV
from . import provenance as prov
from .dpg import model_generate_fn
from .geneval import GenerateFn

logger = logging.getLogger(__name__)

SEED_RULE = "seed + prompt_id"
LIMIT_RULE = "first N prompts of each category (the records' 'Category'), in file order"
CATEGORIES = ("CULTURE", "TIME", "SPACE", "BIOLOGY", "PHYSICS", "CHEMISTRY")
# WISE's ``Category`` values -> the calculators' category names (both prompt sets; 'Ecology' is one rewritten
# prompt, 748, inside the biology range of WISE_legacy/Calculate.py l.65-66)
CATEGORY_OF = {"cultural knowledge": "CULTURE", "time": "TIME", "space": "SPACE", "biology": "BIOLOGY",
               "ecology": "BIOLOGY", "physical knowledge": "PHYSICS", "physics": "PHYSICS", "chemistry": "CHEMISTRY"}
# overall WiScore weights: WISE_legacy/Calculate.py l.240-241 and calculate_verified.py l.246-247
WEIGHTS = {
    "legacy": {"CULTURE": 0.4, "TIME": 0.167, "SPACE": 0.133, "BIOLOGY": 0.1, "PHYSICS": 0.1, "CHEMISTRY": 0.1},
    "verified": {"CULTURE": 0.4, "TIME": 0.12, "SPACE": 0.12, "BIOLOGY": 0.12, "PHYSICS": 0.12, "CHEMISTRY": 0.12},
}
FORMULA = {"legacy": "(0.7 consistency + 0.2 realism + 0.1 aesthetic_quality) / 2, each 0-2 (WISE_legacy/Calculate.py)",
           "verified": "score, 0 or 1 (calculate_verified.py)"}
LEGACY_KEYS = ("consistency", "realism", "aesthetic_quality")
SCORES_SUFFIX = "_scores_results.jsonl"


def category_of(record: dict) -> str:
    """The calculators' category name of a WISE prompt record (its ``Category`` field; unknown ones unchanged)."""
    raw = str(record.get("Category", "")).strip()
    return CATEGORY_OF.get(raw.lower(), raw or "UNCATEGORISED")


def _read_prompt_file(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a JSON list of WISE records (Prompt, Category, prompt_id), "
                         f"got {type(data).__name__}")
    out = []
    for k, rec in enumerate(data):
        if not isinstance(rec, dict) or "Prompt" not in rec or "prompt_id" not in rec:
            raise UsageError(f"{path}: record {k} needs 'Prompt' and 'prompt_id' (WISE's format)")
        pid = rec["prompt_id"]
        if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
            raise UsageError(f"{path}: record {k}: prompt_id must be an integer >= 0 (it names the image "
                             f"<prompt_id>.png), got {pid!r}")
        out.append(rec)
    return out


def load_wise_prompts(path: str | Path) -> dict[str, list[dict]]:
    """``{name: records}`` of a WISE prompt file (``name``: its stem) or of every ``*.json`` in a folder.

    A folder file whose prompt_ids are exactly the union of the others' (WISE's ``merge.json``) is skipped;
    any other prompt_id found twice is an error naming both files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"WISE prompts {str(path)!r} do not exist")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise UsageError(f"{path} holds no *.json prompt file (e.g. WISE's data_verified/)")
    groups = {f.stem: _read_prompt_file(f) for f in files}
    if len(groups) > 2:
        for name, recs in list(groups.items()):
            others = {r["prompt_id"] for n, rs in groups.items() if n != name for r in rs}
            if {r["prompt_id"] for r in recs} == others and len(recs) == len(others):
                logger.info("%s/%s.json holds the other files' prompts again (a merged copy): skipped", path, name)
                del groups[name]
                break
    seen: dict[int, str] = {}
    for name, recs in groups.items():
        for r in recs:
            pid = r["prompt_id"]
            if pid in seen:
                where = "twice in " + name if seen[pid] == name else f"in both {seen[pid]}.json and {name}.json"
                pair = {seen[pid].removesuffix("_rewrite"), name.removesuffix("_rewrite")}
                if seen[pid] != name and len(pair) == 1:
                    raise UsageError(
                        f"WISE prompt_id {pid} appears {where}: {path} holds the same prompts twice, as "
                        f"{pair.pop()}.json and its _rewrite (WISE_legacy/data/ does), and the images are named "
                        "<prompt_id>.png, one per id; passing WISE_legacy/data/ whole is not supported: pass one "
                        "file, or a folder holding only the original files (or only the _rewrite files)")
                raise UsageError(f"WISE prompt_id {pid} appears {where}: every prompt needs its own id (the image "
                                 "is <prompt_id>.png); pass one prompt set")
            seen[pid] = name
    return groups


def limit_per_category(records: Sequence[dict], limit: int | None, counts: dict[str, int] | None = None) -> list[dict]:
    """The first ``limit`` records of each category, in order (``counts``: per category, already taken)."""
    if limit is None:
        return list(records)
    if limit < 1:
        raise UsageError(f"--limit must be >= 1 (prompts per category), got {limit}")
    counts = {} if counts is None else counts
    out = []
    for r in records:
        c = category_of(r)
        if counts.get(c, 0) < limit:
            out.append(r)
            counts[c] = counts.get(c, 0) + 1
    return out


def wise_record(model: str, identity: dict, groups_all: dict[str, list[dict]], groups: dict[str, list[dict]], *,
                prompts: str, steps: int, guidance: float | None, seed: int, resolution: int | None,
                limit: int | None, **info) -> dict:
    """The provenance record of a WISE run (see :func:`parauni.eval.provenance.make_record`)."""
    every = [r for recs in groups_all.values() for r in recs]
    ids = [r["prompt_id"] for recs in groups.values() for r in recs]
    return prov.make_record(layout="wise", model=model, identity=identity, steps=steps, guidance=guidance, seed=seed,
                            seed_rule=SEED_RULE, resolution=resolution, images_per_prompt=1, metadata=prompts,
                            metadata_sha256=prov.records_sha256(every), limit=limit, limit_rule=LIMIT_RULE,
                            prompts=len(ids), outputs=[f"{i}.png" for i in ids], **info)


def generate_wise(generate: GenerateFn, records: Sequence[dict], out_dir: str | Path, seed: int = 0,
                  batch_size: int = 16, *, provenance: dict | None = None, mode: str = "resume") -> Path:
    """Write ``<out_dir>/<prompt_id>.png`` for every record whose image is not there yet.

    With ``provenance`` (a :func:`wise_record`) the folder is first checked against its stored record
    (:func:`parauni.eval.provenance.prepare`); images are written under a temporary name and renamed."""
    out = Path(out_dir)
    if provenance is not None:
        recorded = prov.read(out) or {}
        names = {f"{r['prompt_id']}.png" for r in records} | set(recorded.get("outputs") or [])

        def has_outputs(folder: Path) -> bool:
            return any((folder / n).exists() for n in names) or (folder / "judge").is_dir()

        def clear(folder: Path) -> None:
            for n in names:
                (folder / n).unlink(missing_ok=True)
            for f in (folder / "judge").glob(f"*{SCORES_SUFFIX}") if (folder / "judge").is_dir() else ():
                f.unlink()
            (folder / "summary.json").unlink(missing_ok=True)

        prov.prepare(out, provenance, mode, has_outputs, clear)
    out.mkdir(parents=True, exist_ok=True)
    todo = [r for r in records if not (out / f"{r['prompt_id']}.png").exists()]
    with tqdm(total=len(todo), desc="wise images", unit="img") as bar:
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            images = generate([str(r["Prompt"]) for r in chunk], [seed + int(r["prompt_id"]) for r in chunk])
            for r, im in zip(chunk, images, strict=True):
                save_png_atomic(np.asarray(im, dtype=np.uint8), out / f"{r['prompt_id']}.png")
            bar.update(len(chunk))
    return out


def write_judge_prompts(groups: dict[str, list[dict]], out_dir: str | Path) -> dict[str, Path]:
    """``<out>/prompts/<name>.json``: the generated prompts of each prompt file, in WISE's format."""
    folder = Path(out_dir) / "prompts"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, recs in groups.items():
        paths[name] = folder / f"{name}.json"
        tmp = folder / f".{name}.json.tmp"
        tmp.write_text(json.dumps(recs, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, paths[name])
    return paths


def judge_command(template: str, images: Path, prompts: Path, out: Path, name: str) -> list[str]:
    """The argv of the judge command: ``{images}``, ``{prompts}``, ``{out}``, ``{name}`` filled in (quoted)."""
    if "{out}" not in template:
        raise UsageError(f"the WISE judge command needs an {{out}} placeholder (the score JSONL it writes), got "
                         f"{template!r}; e.g. 'python vllm_eval.py --json_path {{prompts}} --image_dir {{images}} "
                         "--output_dir {images}/judge --result_scores {out} --result_full {out}.full.json ...'")
    text = template
    for key, value in (("images", images), ("prompts", prompts), ("out", out), ("name", name)):
        text = text.replace("{" + key + "}", shlex.quote(str(value)))
    return shlex.split(text)


def run_judge(template: str, out_dir: str | Path, prompt_paths: dict[str, Path]) -> dict[str, Path]:
    """Run the judge once per prompt file; ``{name: scores JSONL}``.  A failing command or a missing output is an
    error naming the command.

    The placeholders get absolute paths: WISE's scripts write ``os.path.join(output_dir, result_scores)``
    (``vllm_eval.py`` l.241, l.259, ``WISE_legacy/gpt_eval.py`` l.215, l.236), which lands elsewhere for a
    relative ``{out}``."""
    out = Path(out_dir).absolute()
    (out / "judge").mkdir(parents=True, exist_ok=True)
    results = {}
    for name, ppath in prompt_paths.items():
        target = out / "judge" / f"{name}{SCORES_SUFFIX}"
        cmd = judge_command(template, out, Path(ppath).absolute(), target, name)
        print("running:", shlex.join(cmd))
        try:
            subprocess.run(cmd, check=True)
        except subprocess.CalledProcessError as err:
            raise UsageError(f"the WISE judge ({WISE_JUDGE_ENV} / --judge-command) exited with status "
                             f"{err.returncode}: {shlex.join(cmd)}") from err
        except FileNotFoundError as err:
            raise UsageError(f"the WISE judge command cannot be run ({err.strerror}: {cmd[0]!r})") from err
        if not target.is_file():
            raise UsageError(f"the WISE judge wrote no {target} (its {{out}}): {shlex.join(cmd)}")
        results[name] = target
    return results


def wiscore(rec: dict) -> tuple[str, float]:
    """``(protocol, WiScore)`` of one judge score record (``legacy`` or ``verified``, see the module doc)."""
    if all(k in rec for k in LEGACY_KEYS):
        vals = [rec[k] for k in LEGACY_KEYS]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 2 for v in vals):
            raise UsageError(f"WISE score record {rec}: consistency, realism, aesthetic_quality must be numbers 0-2")
        c, r, a = (float(v) for v in vals)
        return "legacy", (0.7 * c + 0.2 * r + 0.1 * a) / 2
    score = rec.get("score")
    if isinstance(score, (int, float)) and not isinstance(score, bool) and score in (0, 1):
        return "verified", float(score)
    raise UsageError(f"WISE score record {rec}: expected 'score' 0 or 1 (WISE_Verified) or 'consistency', "
                     "'realism', 'aesthetic_quality' 0-2 (the paper's GPT-4o protocol)")


def summarize(score_records: Sequence[dict], prompts: Sequence[dict]) -> dict:
    """Per-category mean WiScore and the weighted overall of judge score records (pure).

    ``prompts``: the WISE records of the whole prompt set (their ``Category`` gives each prompt_id's category).
    Records of other prompt_ids are counted in ``ignored``; prompts without a record are listed in ``unscored``.
    ``overall`` is null unless every prompt of the set is scored and all six categories are present (WISE's
    calculators give no overall for a partial set); ``partial`` then says how many were scored."""
    cat_of = {r["prompt_id"]: category_of(r) for r in prompts}
    per_cat: dict[str, list[float]] = {}
    protocols, ignored, scored = set(), 0, set()
    for rec in score_records:
        pid = rec.get("prompt_id")
        if pid not in cat_of:
            ignored += 1
            continue
        protocol, value = wiscore(rec)
        protocols.add(protocol)
        scored.add(pid)
        per_cat.setdefault(cat_of[pid], []).append(value)
    if len(protocols) > 1:
        raise UsageError("the judge's records mix WISE_Verified ('score') and GPT-4o ('consistency', ...) formats")
    protocol = protocols.pop() if protocols else None
    order = [c for c in CATEGORIES if c in per_cat] + sorted(c for c in per_cat if c not in CATEGORIES)
    cats = {c: {"wiscore": float(np.mean(per_cat[c])), "images": len(per_cat[c])} for c in order}
    weights = WEIGHTS.get(protocol or "", {})
    unscored = sorted(set(cat_of) - scored)
    complete = not unscored and all(c in cats for c in CATEGORIES)
    overall = sum(w * cats[c]["wiscore"] for c, w in weights.items()) if weights and complete else None
    partial = None if complete else (f"partial: {len(scored)} of {len(cat_of)} prompts scored" + (
        "" if unscored else f"; categories missing: {', '.join(c for c in CATEGORIES if c not in cats)}"))
    return {"protocol": protocol, "wiscore": FORMULA.get(protocol or ""), "categories": cats, "overall": overall,
            "overall_weights": weights or None, "partial": partial, "images_per_prompt": 1, "scored": len(scored),
            "prompts": len(cat_of), "unscored": unscored, "ignored_records": ignored}


def read_scores(paths: Sequence[Path]) -> list[dict]:
    """The JSON objects of the judge's JSONL files (blank lines skipped; a bad line is an error naming it)."""
    out = []
    for path in paths:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}, line {n}: not valid JSON ({err.msg})") from None
            if isinstance(rec, dict):
                out.append(rec)
    return out


def format_table(label: str, summary: dict) -> str:
    """A Markdown table of a WISE summary: one row, the six categories and the overall WiScore."""
    cats = summary["categories"]
    names = [*CATEGORIES, *(c for c in cats if c not in CATEGORIES)]
    cells = [f"{cats[c]['wiscore']:.3f} ({cats[c]['images']})" if c in cats else "–" for c in names]
    overall = "–" if summary["overall"] is None else f"{summary['overall']:.3f}"
    return "\n".join([f"| model | {' | '.join(names)} | overall |", "|" + "---|" * (len(names) + 2),
                      f"| {label} | {' | '.join(cells)} | {overall} |",
                      "", f"mean WiScore per category (images scored), 1 image per prompt; WiScore = "
                          f"{summary['wiscore']}; overall weights {summary['overall_weights']}"])


def run(args) -> dict | None:
    """``parauni eval wise``: generate ``<out>/<prompt_id>.png`` (resumable), then run the judge if one is set."""
    groups_all = load_wise_prompts(args.prompts)
    counts: dict[str, int] = {}
    groups = {n: limit_per_category(rs, args.limit, counts) for n, rs in groups_all.items()}
    groups = {n: rs for n, rs in groups.items() if rs}
    records = [r for rs in groups.values() for r in rs]
    if not records:
        raise UsageError(f"no WISE prompts in {args.prompts!r}")
    template = args.judge_command or os.environ.get(WISE_JUDGE_ENV)
    if template:
        judge_command(template, Path("."), Path("."), Path("."), "")  # check the placeholders before generating
    generate, _, identity = model_generate_fn(args.model, args.steps, args.guidance, args.resolution, args.device,
                                              dtype=getattr(args, "dtype", "auto"))
    record = wise_record(args.model, identity, groups_all, groups, prompts=str(args.prompts), steps=args.steps,
                         guidance=args.guidance, seed=args.seed, resolution=args.resolution, limit=args.limit,
                         batch_size=args.batch_size, device=args.device)
    out = Path(args.out)
    generate_wise(generate, records, out, args.seed, args.batch_size, provenance=record,
                  mode="overwrite" if getattr(args, "overwrite", False) else "resume")
    prompt_paths = write_judge_prompts(groups, out)
    print(f"{len(records)} WISE images (<prompt_id>.png) of {prov.label(record)} in {out} "
          f"(what made them: {out}/{prov.PROVENANCE_FILE}; prompts for the judge: {out}/prompts/)")
    if not template:
        print("Score them with WISE's judge (https://github.com/PKU-YuanGroup/WISE), per prompt file, e.g.\n"
              f"  python vllm_eval.py --json_path {out}/prompts/<name>.json --image_dir {out} --output_dir "
              f"{out}/judge --model Qwen3.5-35B-A3B --result_full <name>_full.json --result_scores "
              f"<name>{SCORES_SUFFIX}\n"
              f"or set {WISE_JUDGE_ENV} (or --judge-command) to such a command with {{images}} {{prompts}} {{out}} "
              "{name} and rerun (finished images are kept); its scores are then summarised into summary.json.")
        return None
    score_files = run_judge(template, out, prompt_paths)
    # the overall needs the whole set scored (WISE's calculators): judge the generated subset, count against all
    summary = summarize(read_scores(list(score_files.values())), [r for rs in groups_all.values() for r in rs])
    summary["model"] = prov.label(record)
    summary["judge_command"] = template
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
    print(format_table(prov.label(record), summary))
    if summary["unscored"]:
        print(f"{len(summary['unscored'])} prompt(s) have no judge score: {summary['unscored'][:20]}")
    if summary["overall"] is None:
        print(f"no overall WiScore ({summary['partial']}): as WISE's calculators, it needs every prompt of the set "
              "scored, in all six categories " + ", ".join(CATEGORIES) + " (drop --limit, pass the whole set)")
    print(f"summary.json in {out}")
    return summary
