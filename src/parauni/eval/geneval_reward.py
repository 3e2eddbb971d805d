"""The GenEval *reward* of Flow-GRPO and DiffusionNFT over detections: a partial score and a strict verdict.

GenEval's own verdict (:func:`parauni.eval.geneval_rules.evaluate`) is what the benchmark reports; for training,
Flow-GRPO's reward server (yifan123/flow_grpo's GenEval server, whose ``evaluate_reward`` DiffusionNFT copies as
NVlabs/DiffusionNFT @ 24af555 ``flow_grpo/gen_eval.py:220-283``) scores an image differently:

- **partial** (the training reward of both references: ``compute_geneval``'s ``scores``, ``gen_eval.py:343-371``,
  summed into the reward by ``flow_grpo/rewards.py:276-303``): the mean of a list of terms, per ``include`` entry
  in order:

  - the count term ``1 - |N - n| / N`` over *every* detection of the class (``gen_eval.py:234``); it is not clipped,
    so three dogs for one scores ``-1``;
  - if the count is wrong: ``0`` more for a colour or a position clause (``:235-239``);
  - else, with ``color``: ``1 - |N - k| / N`` with ``k`` the detections of that colour (``:241-244``); the entry
    fails unless ``k == N``;
  - with ``position`` (only while the entry still matches): ``0`` when its target entry failed (``:253-256``);
    else every (object, target) pair is checked; a failed pair appends ``0`` and stops; **then ``1`` is appended
    whatever happened** (``:258-270``). This is the reference's quirk and it is kept, so a wrong relation scores
    ``mean(1, 1, 0, 1) = 0.75`` for a two-object position prompt; :func:`flow_grpo_reward` with
    ``position_quirk=False`` appends only the ``0``.

  ``exclude`` entries are not read (``:220-283``): extra objects of a class the prompt does not name cost nothing.
- **strict** (``strict_correct``, ``:316``): every entry matched *exactly*: ``N`` detections of the class, all of
  the asked colour, all in the asked relation. Stricter than GenEval's verdict (which needs at least ``N``, the
  most confident ``N`` checked, and fails extra objects only through ``exclude``).

DiffusionNFT's ``only_strict=True`` (``scripts/train_nft_sd3.py:664``) only skips GenEval's own verdict for speed;
its training reward is the same partial score (``rewards.py:296-301`` sums ``scores``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .geneval_rules import POSITION_THRESHOLD, ColorFn, check_record, relative_position


def _own_colors(found: Sequence[Any], classname: str) -> list[str]:
    return [d.color for d in found]


def flow_grpo_reward(objects: dict[str, Sequence[Any]], meta: dict, classify_colors: ColorFn | None = None,
                     position_quirk: bool = True,
                     position_threshold: float = POSITION_THRESHOLD) -> tuple[bool, float]:
    """``(strict, partial)`` for one image (``gen_eval.py:220-283``; see the module docstring).

    ``objects``: per class, most confident first (:func:`parauni.eval.geneval_rules.select_objects`);
    ``classify_colors(objects, classname)``: their colours (default: each detection's own ``color``)."""
    check_record(meta)
    classify_colors = classify_colors or _own_colors
    correct = True
    terms: list[float] = []
    matched: list[Sequence[Any] | None] = []
    for req in meta["include"]:
        cls, count = req["class"], int(req["count"])
        found = list(objects.get(cls, []))
        ok = True
        terms.append(1 - abs(count - len(found)) / count)
        if len(found) != count:
            correct = ok = False
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                hits = classify_colors(found, cls).count(req["color"])
                terms.append(1 - abs(count - hits) / count)
                if hits != count:
                    correct = ok = False
            if "position" in req and ok:
                rel, target = req["position"][0], int(req["position"][1])
                if matched[target] is None:
                    correct = ok = False
                    terms.append(0.0)
                else:
                    for obj in found:
                        for tgt in matched[target]:
                            if rel not in relative_position(obj.bbox, tgt.bbox, position_threshold):
                                correct = ok = False
                                terms.append(0.0)
                                break
                        if not ok:
                            break
                    if ok or position_quirk:
                        terms.append(1.0)
        matched.append(found if ok else None)
    return correct, sum(terms) / len(terms) if terms else 0.0
