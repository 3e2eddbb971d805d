"""What ``parauni app`` shows for a toy-world image (the toy family's ``app_view``, registered by
:mod:`parauni.toy.plugin`): the toy detector's detections drawn on it and, where the prompt is
one of the toy GenEval prompts, the toy GenEval verdict.

The verdict needs the prompt's GenEval record (which objects, counts, colours and relation it asks for).
:func:`geneval_record` finds it by reading the prompt against every record the toy world's prompt tools write
(:func:`parauni.toy.prompts.all_metas` over GenEval's six tasks: 3 + 6 + 9 + 18 + 24 + 90 prompts), so a prompt in
GenEval's wording ("a photo of two circles", "a red square", "a triangle left of a circle") gets a verdict and any
other caption gets the detections only, with a line saying why there is no verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .detect import Detection, detect
from .geneval import evaluate
from .prompts import TASKS, all_metas
from .world import PALETTE

ENLARGE = 8  # 32-px toy images are shown 8x larger (nearest neighbour), so boxes and labels are readable
NO_VERDICT = ("no toy GenEval verdict: the prompt is not one of the toy GenEval prompts (e.g. 'a photo of two "
              "circles', 'a photo of a red square', 'a photo of a triangle left of a circle'); detections only")


def normalize(prompt: str) -> str:
    """Lower case, single spaces, no final full stop, and GenEval's ``a photo of`` in front."""
    text = re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(". ")
    return text if text.startswith("a photo of ") else f"a photo of {text}"


@lru_cache(maxsize=1)
def _records() -> dict[str, dict]:
    return {normalize(m["prompt"]): m for tag in TASKS for m in all_metas(tag)}


def geneval_record(prompt: str) -> dict | None:
    """The toy GenEval record whose prompt reads as ``prompt`` (see :func:`normalize`), or ``None``."""
    return _records().get(normalize(prompt))


@dataclass
class ToyVerdict:
    """One image judged: its detections, and the verdict where the prompt has a GenEval record."""

    detections: list[Detection]
    tag: str | None = None  # the GenEval task; None: no record, no verdict
    correct: bool | None = None
    reason: str = ""

    def caption(self) -> str:
        """One line for the gallery: the verdict, then what the detector found."""
        found = ", ".join(f"{d.color} {d.cls} {d.confidence:.2f}" for d in self.detections) or "nothing"
        if self.tag is None:
            return f"detected: {found} (no verdict: not a toy GenEval prompt)"
        head = "correct" if self.correct else f"wrong ({self.reason})" if self.reason else "wrong"
        return f"toy GenEval {self.tag}: {head}; detected: {found}"


def judge(image: Image.Image | np.ndarray, prompt: str) -> ToyVerdict:
    """Detect the toy objects in ``image`` and, where ``prompt`` has a toy GenEval record, judge them."""
    dets = detect(image)
    meta = geneval_record(prompt)
    if meta is None:
        return ToyVerdict(dets)
    correct, reason = evaluate(dets, meta)
    return ToyVerdict(dets, meta["tag"], bool(correct), reason)


def draw_detections(image: Image.Image, detections: list[Detection], scale: int = ENLARGE) -> Image.Image:
    """``image`` enlarged ``scale`` x (nearest neighbour) with each detection's box, in a contrasting outline of
    its colour, and a label ``<colour> <shape> <confidence>`` above (or inside) it."""
    big = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(big)
    for d in detections:
        x0, y0, x1, y1 = (v * scale for v in d.bbox)
        colour = tuple(int(c) for c in PALETTE.get(d.color, (0, 0, 0)))
        draw.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=2)
        label = f"{d.color} {d.cls} {d.confidence:.2f}"
        ty = y0 - 12 if y0 >= 12 else y0 + 2
        tw = draw.textlength(label)
        draw.rectangle((x0, ty, x0 + tw + 4, ty + 11), fill=(0, 0, 0))
        draw.text((x0 + 2, ty), label, fill=(255, 255, 255))
    return big


class ToyAppView:
    """The toy family's view for ``parauni app``: ``judge(image, prompt)`` gives the verdict, ``draw(image,
    verdict)`` the image the gallery shows."""

    judge = staticmethod(judge)

    @staticmethod
    def draw(image: Image.Image, verdict: ToyVerdict) -> Image.Image:
        return draw_detections(image, verdict.detections)
