"""DPG-Bench scoring (ELLA, Hu et al. 2024, https://github.com/TencentQQGYLab/ELLA,
``dpg_bench/compute_dpg_bench.py``) with a VQA model given by the user.

The method, as the reference computes it (line numbers of ``compute_dpg_bench.py`` at commit 3c228f1):

* questions and their dependency graph come from ``dpg_bench.csv`` (columns ``item_id``, ``proposition_id``,
  ``dependency`` -- parent ids, ``0`` for none --, ``tuple``, ``question_natural_language``; l.70-97);
* ``<item_id>.png`` is a 2x2 grid cut into its four images, row-major (l.110-118, 130-131);
* each question of each image is asked; an answer counts when it is "yes" (l.132-135);
* a question whose parent was answered "no" counts 0: questions are visited in file order and a parent's score
  is read after its own parents were applied (l.140-151);
* an image scores the mean over its questions, an item the mean over its four images (l.155-157), and the
  DPG-Bench score is the mean over items, x 100 (l.218-219, 249);
* category scores (L2: the ``tuple`` before ``(``, e.g. ``entity - whole``; L1: before ``-``, e.g. ``entity``)
  average, over every (item, question), the answer of the item's *last* (bottom-right) image before the
  dependency rule: the reference returns ``qid2scores_orig`` of the last crop (l.138, 161, 207-211, 230-245).
  This is reproduced so the numbers compare with published ones.

One difference: the reference skips the CSV's first data row (``if i == 0: continue``, l.72-74, after pandas
already took the header), which drops one question and, when it is a parent, makes that item raise a KeyError
(l.146) and be left out (l.213-215).  Here every row is read.

The official VQA model is mPLUG-large (``damo/mplug_visual-question-answering_coco_large_en``, ModelScope,
l.53-63); it is not in transformers.  :func:`load_vqa` takes any transformers VQA model or VLM instead
(``BlipForQuestionAnswering``, or an image-text-to-text model with a chat template), so scores are comparable
between models scored with the same VQA model, not with published mPLUG numbers.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, BlipForQuestionAnswering

from ..errors import UsageError
from . import provenance as prov

logger = logging.getLogger(__name__)

AnswerFn = Callable[[Image.Image, str], bool]
CSV_COLUMNS = ("item_id", "proposition_id", "dependency", "tuple", "question_natural_language")
SCORES_FILE = "dpg_scores.jsonl"
SUMMARY_FILE = "dpg_summary.json"
YES_PROMPT = "{question} Answer yes or no."


@dataclass(frozen=True)
class Question:
    qid: int
    text: str
    tuple: str
    parents: tuple[int, ...]

    @property
    def category(self) -> str:
        """L2 category, e.g. ``entity - whole`` (reference l.209)."""
        return self.tuple.split("(")[0].strip()

    @property
    def l1(self) -> str:
        """L1 category, e.g. ``entity`` (reference l.232)."""
        return self.category.split("-")[0].strip()


def load_questions(path: str | Path) -> dict[str, list[Question]]:
    """``{item_id: questions in file order}`` of DPG-Bench's ``dpg_bench.csv`` (every row, see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DPG-Bench question file {str(path)!r} does not exist (dpg_bench/dpg_bench.csv "
                                "of https://github.com/TencentQQGYLab/ELLA)")
    out: dict[str, list[Question]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"{path}: missing column(s) {', '.join(missing)}; DPG-Bench's dpg_bench.csv has "
                             f"{', '.join(CSV_COLUMNS)} (and text, keywords, category_broad, category_detailed)")
        for n, row in enumerate(reader, 2):
            try:
                qid = int(row["proposition_id"])
                parents = tuple(int(d.strip()) for d in str(row["dependency"]).split(","))
            except ValueError:
                raise UsageError(f"{path}, line {n}: proposition_id and dependency must be integers "
                                 f"(dependency: comma-separated parent ids, 0 for none), got "
                                 f"{row['proposition_id']!r}, {row['dependency']!r}") from None
            item = out.setdefault(str(row["item_id"]), [])
            if any(q.qid == qid for q in item):
                raise UsageError(f"{path}, line {n}: item {row['item_id']!r} has proposition_id {qid} twice")
            item.append(Question(qid, str(row["question_natural_language"]), str(row["tuple"]), parents))
    for item_id, qs in out.items():
        ids = {q.qid for q in qs}
        for q in qs:
            unknown = [p for p in q.parents if p != 0 and p not in ids]
            if unknown:
                raise UsageError(f"{path}: item {item_id!r} question {q.qid} depends on {unknown}, which the item "
                                 "does not have")
    return out


def split_grid(grid: Image.Image) -> list[Image.Image]:
    """The four images of a 2x2 grid, row-major (reference l.111-116; the side is half the grid's)."""
    w, h = grid.size
    if w % 2 or h % 2:
        raise UsageError(f"a DPG-Bench grid has even sides (2x2 images), got {w}x{h}")
    sw, sh = w // 2, h // 2
    return [grid.crop((x, y, x + sw, y + sh)) for y in (0, sh) for x in (0, sw)]


def score_image(image, questions: Sequence[Question], answer: AnswerFn) -> tuple[float, dict[int, float]]:
    """``(score, raw)`` of one image: ``raw`` = 1/0 per question; ``score`` = the mean after the dependency rule
    (a question whose parent scores 0 scores 0; parents applied first, in file order)."""
    raw = {q.qid: float(bool(answer(image, q.text))) for q in questions}
    adjusted = dict(raw)
    for q in questions:
        if any(p != 0 and adjusted[p] == 0 for p in q.parents):
            adjusted[q.qid] = 0.0
    return sum(adjusted.values()) / len(adjusted), raw


def score_item(images: Sequence, questions: Sequence[Question], answer: AnswerFn) -> dict:
    """One item: per-image scores, their mean, and the last image's raw answers (the reference's categories)."""
    if not questions:
        raise UsageError("an item without questions cannot be scored")
    scores, raw = [], {}
    for im in images:
        s, raw = score_image(im, questions, answer)
        scores.append(s)
    return {"image_scores": scores, "score": sum(scores) / len(scores),
            "last_image_answers": {str(k): v for k, v in raw.items()}}


def aggregate(results: dict[str, dict], questions: dict[str, list[Question]]) -> dict:
    """The DPG-Bench score and L1 / L2 category scores (all x 100) of :func:`score_item` results (pure)."""
    if not results:
        raise UsageError("no scored items")
    l1: dict[str, list[float]] = {}
    l2: dict[str, list[float]] = {}
    for item_id, res in results.items():
        for q in questions[item_id]:
            v = res["last_image_answers"][str(q.qid)]
            l2.setdefault(q.category, []).append(v)
            l1.setdefault(q.l1, []).append(v)
    return {"score": 100 * float(np.mean([r["score"] for r in results.values()])),
            "l1": {k: 100 * float(np.mean(v)) for k, v in sorted(l1.items())},
            "l2": {k: 100 * float(np.mean(v)) for k, v in sorted(l2.items())},
            "items": len(results), "images_per_item": 4,
            "questions": sum(len(questions[i]) for i in results)}


def items_to_score(folder: str | Path, questions: dict[str, list[Question]],
                   item_ids: Sequence[str] | None = None) -> list[str]:
    """``item_ids`` (all must have questions and a grid), or every ``<item_id>.png`` of ``folder`` with questions."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"grid folder {str(folder)!r} does not exist")
    ids = list(item_ids) if item_ids is not None else sorted(p.stem for p in folder.glob("*.png")
                                                             if p.stem in questions)
    unknown = [i for i in ids if i not in questions]
    if unknown:
        raise UsageError(f"item(s) {unknown[:5]} have no questions in the question file")
    missing = [i for i in ids if not (folder / f"{i}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} grid(s) missing in {folder}, e.g. {missing[0]}.png")
    if not ids:
        raise UsageError(f"{folder} holds no <item_id>.png grid whose item_id is in the question file")
    return ids


def score_folder(folder: str | Path, questions: dict[str, list[Question]], answer: AnswerFn, *,
                 identity: dict | None = None, item_ids: Sequence[str] | None = None) -> dict:
    """Score every ``<item_id>.png`` of ``folder`` that has questions (or only ``item_ids``).

    Per-item results go to ``<folder>/dpg_scores.jsonl`` as they finish; a rerun with the same ``identity``
    (VQA model, question file hash) keeps them.  Returns the summary, also written to ``dpg_summary.json``."""
    folder = Path(folder)
    identity = dict(identity or {})
    ids = items_to_score(folder, questions, item_ids)
    path = folder / SCORES_FILE
    done: dict[str, dict] = {}
    if path.is_file():
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        if lines and lines[0].get("identity") == identity:
            done = {r["item_id"]: r for r in lines[1:] if "item_id" in r}
        else:
            logger.info("%s was scored with another VQA model or question file: scoring again", path)
            path.unlink()
    if not path.is_file():
        path.write_text(json.dumps({"identity": identity}) + "\n")
    with path.open("a") as f, tqdm(total=len(ids), desc="dpg items", unit="item") as bar:
        bar.update(sum(i in done for i in ids))
        for item_id in ids:
            if item_id in done:
                continue
            with Image.open(folder / f"{item_id}.png") as im:
                images = split_grid(im.convert("RGB"))
            res = score_item(images, questions[item_id], answer)
            done[item_id] = {"item_id": item_id, **res}
            f.write(json.dumps(done[item_id]) + "\n")
            f.flush()
            bar.update(1)
    summary = {**aggregate({i: done[i] for i in ids}, questions), **identity}
    tmp = folder / f".{SUMMARY_FILE}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, folder / SUMMARY_FILE)
    return summary


def parse_yes(text: str) -> bool:
    """A VQA answer is "yes" when its first word is yes (case and punctuation ignored)."""
    words = re.findall(r"[a-z]+", text.lower())
    return bool(words) and words[0] == "yes"


def load_vqa(model: str, device: str | None = None, max_new_tokens: int = 8) -> AnswerFn:
    """``answer(image, question) -> bool`` from a transformers model id or folder (safetensors weights).

    ``BlipForQuestionAnswering`` models (``model_type`` ``blip``) answer the question as it is; other models
    load as ``AutoModelForImageTextToText`` and get the question plus "Answer yes or no." through their
    processor's chat template.  Greedy decoding; the answer counts when its first word is "yes"."""
    dev = torch.device(device or "cpu")
    config = AutoConfig.from_pretrained(model)
    processor = AutoProcessor.from_pretrained(model)
    if config.model_type == "blip":
        net = BlipForQuestionAnswering.from_pretrained(model, use_safetensors=True).to(dev).eval()

        def inputs_of(image, question):
            return processor(images=image, text=question, return_tensors="pt"), False
    else:
        if getattr(processor, "chat_template", None) is None:
            raise UsageError(f"--vqa {model!r}: its processor has no chat template; give a VLM with one (e.g. an "
                             "-Instruct / -hf image-text-to-text model) or a BlipForQuestionAnswering model")
        net = AutoModelForImageTextToText.from_pretrained(model, use_safetensors=True).to(dev).eval()

        def inputs_of(image, question):
            messages = [{"role": "user", "content": [{"type": "image"},
                                                      {"type": "text", "text": YES_PROMPT.format(question=question)}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return processor(images=[image], text=[text], return_tensors="pt"), True

    tokenizer = getattr(processor, "tokenizer", processor)

    @torch.no_grad()
    def answer(image, question: str) -> bool:
        inputs, prompt_echoed = inputs_of(image, question)
        inputs = {k: v.to(dev) for k, v in inputs.items()}
        out = net.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        if prompt_echoed:
            out = out[:, inputs["input_ids"].shape[1]:]
        return parse_yes(tokenizer.decode(out[0], skip_special_tokens=True))

    return answer


def format_summary(summary: dict) -> str:
    """A Markdown table of a DPG-Bench summary: the score and the L1 categories (all x 100)."""
    l1 = summary["l1"]
    return "\n".join([f"| DPG-Bench | {' | '.join(l1)} |", "|" + "---|" * (len(l1) + 1),
                      f"| {summary['score']:.2f} | " + " | ".join(f"{v:.2f}" for v in l1.values()) + " |", "",
                      f"{summary['items']} items x {summary['images_per_item']} images (a 2x2 grid each), "
                      f"VQA model {summary.get('vqa')}; score: mean over items of the mean over images of the "
                      "dependency-adjusted yes rate; categories: last image's raw answers, as the reference"])


def run_score(args, record: dict | None = None) -> dict:
    """``parauni eval dpg --score``: score the grids in ``--out`` with ``--questions`` and ``--vqa``."""
    if not args.questions or not args.vqa:
        raise UsageError("--score needs --questions (DPG-Bench's dpg_bench.csv) and --vqa (a transformers VQA "
                         "model or VLM id / folder)")
    questions = load_questions(args.questions)
    item_ids = items_to_score(args.out, questions, record.get("outputs") if record else None)
    identity = {"vqa": args.vqa, "question_file": str(args.questions),
                "questions_sha256": prov.text_sha256(Path(args.questions).read_bytes())}
    answer = load_vqa(args.vqa, args.device)
    summary = score_folder(args.out, questions, answer, identity=identity, item_ids=item_ids)
    if record:
        summary = {**summary, "model": prov.label(record)}
        (Path(args.out) / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    print(format_summary(summary))
    print(f"per-item scores: {args.out}/{SCORES_FILE}; summary: {args.out}/{SUMMARY_FILE}")
    return summary
