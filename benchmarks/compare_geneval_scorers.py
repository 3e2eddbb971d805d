"""Compare two GenEval scorers on the same images: per-task accuracy deltas and the images they disagree on.

Give it the ``results.jsonl`` each scorer wrote for the same GenEval folder (e.g. parauni's native scorer and the
official mmdetection ``evaluate_images.py``; README "Evaluation and reports" has the recipe).  Rows are matched by
image, ``<index>/samples/<k>.png`` (the last three parts of ``filename``, so absolute and relative paths match);
each file is summarised as GenEval's ``summary_scores.py`` does (:func:`parauni.eval.geneval_rules.summarize`:
per-task accuracy, overall = mean of the tasks) over the images both scored.

    python benchmarks/compare_geneval_scorers.py native_results.jsonl official_results.jsonl \\
        --names native official [--show 20] [--json deltas.json]

Prints one row per task: accuracy under A, under B, B - A, and how many images each way the verdicts differ
(A correct / B wrong and A wrong / B correct); then the disagreeing images with both reasons.  Exit status 0;
2 with a message when a file is missing or malformed or the two share no image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from parauni.errors import UsageError
from parauni.eval.geneval_rules import summarize
from parauni.eval.geneval_schema import read_results


def image_key(filename: str) -> str:
    """``<index>/samples/<k>.png``: the part of a results row's ``filename`` both scorers agree on."""
    return "/".join(Path(filename).parts[-3:])


def by_image(rows: list[dict], source: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in rows:
        key = image_key(str(r.get("filename", "")))
        if key in out:
            raise UsageError(f"{source}: image {key} is scored twice; pass one scorer's results for one folder")
        out[key] = r
    return out


def compare(rows_a: list[dict], rows_b: list[dict], source_a: str = "A", source_b: str = "B") -> dict:
    """The comparison of two scorers' rows (pure): per-task accuracies on the shared images, their deltas
    (B - A), the disagreeing images, and the images only one of them scored."""
    a, b = by_image(rows_a, source_a), by_image(rows_b, source_b)
    shared = [k for k in a if k in b]
    if not shared:
        raise UsageError(f"{source_a} and {source_b} share no image (<index>/samples/<k>.png): score the same "
                         "GenEval folder with both scorers")
    for k in shared:
        if a[k].get("tag") != b[k].get("tag"):
            raise UsageError(f"image {k} has task {a[k].get('tag')!r} in {source_a} but {b[k].get('tag')!r} in "
                             f"{source_b}: the two files are not of the same GenEval folder")
    sum_a, sum_b = summarize([a[k] for k in shared]), summarize([b[k] for k in shared])
    tasks = {}
    for tag in sum_a["tasks"]:
        keys = [k for k in shared if a[k]["tag"] == tag]
        tasks[tag] = {"images": len(keys), "a": sum_a["tasks"][tag], "b": sum_b["tasks"][tag],
                      "delta": sum_b["tasks"][tag] - sum_a["tasks"][tag],
                      "a_only_correct": sum(bool(a[k]["correct"]) and not b[k]["correct"] for k in keys),
                      "b_only_correct": sum(bool(b[k]["correct"]) and not a[k]["correct"] for k in keys)}
    disagreements = [{"image": k, "tag": a[k]["tag"], "prompt": a[k].get("prompt"), "a_correct": bool(a[k]["correct"]),
                      "b_correct": bool(b[k]["correct"]), "a_reason": a[k].get("reason", ""),
                      "b_reason": b[k].get("reason", "")}
                     for k in shared if bool(a[k]["correct"]) != bool(b[k]["correct"])]
    return {"images": len(shared), "tasks": tasks,
            "overall": {"a": sum_a["overall"], "b": sum_b["overall"], "delta": sum_b["overall"] - sum_a["overall"]},
            "agreement": 1 - len(disagreements) / len(shared), "disagreements": disagreements,
            "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}


def format_report(result: dict, name_a: str, name_b: str, show: int = 20) -> str:
    lines = [f"{result['images']} images scored by both; verdicts agree on {result['agreement']:.1%}", "",
             f"| task | images | {name_a} | {name_b} | {name_b} - {name_a} | only {name_a} correct | "
             f"only {name_b} correct |", "|---|---|---|---|---|---|---|"]
    for tag, t in result["tasks"].items():
        lines.append(f"| {tag} | {t['images']} | {t['a']:.3f} | {t['b']:.3f} | {t['delta']:+.3f} | "
                     f"{t['a_only_correct']} | {t['b_only_correct']} |")
    o = result["overall"]
    lines.append(f"| overall (mean of tasks) | {result['images']} | {o['a']:.3f} | {o['b']:.3f} | {o['delta']:+.3f} "
                 "| | |")
    for side, name in (("only_a", name_a), ("only_b", name_b)):
        if result[side]:
            lines += ["", f"{len(result[side])} image(s) scored by {name} only (left out above): "
                          + ", ".join(result[side][:10]) + (" ..." if len(result[side]) > 10 else "")]
    if result["disagreements"] and show:
        lines += ["", f"images the scorers disagree on (first {min(show, len(result['disagreements']))} of "
                      f"{len(result['disagreements'])}):"]
        for d in result["disagreements"][:show]:
            lines.append(f"- {d['image']} [{d['tag']}] {d['prompt']!r}: {name_a} "
                         f"{'correct' if d['a_correct'] else 'wrong'}"
                         + (f" ({' / '.join(d['a_reason'].splitlines())})" if d["a_reason"] else "")
                         + f", {name_b} {'correct' if d['b_correct'] else 'wrong'}"
                         + (f" ({' / '.join(d['b_reason'].splitlines())})" if d["b_reason"] else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results_a", help="results.jsonl of scorer A (e.g. parauni's native scorer)")
    p.add_argument("results_b", help="results.jsonl of scorer B (e.g. the official evaluate_images.py)")
    p.add_argument("--names", nargs=2, default=("A", "B"), metavar=("A", "B"), help="the two scorers' names")
    p.add_argument("--show", type=int, default=20, help="disagreeing images to list (0: none)")
    p.add_argument("--json", metavar="FILE", help="also write the whole comparison as JSON")
    args = p.parse_args(argv)
    try:
        result = compare(read_results(args.results_a), read_results(args.results_b), args.results_a,
                         args.results_b)
    except (UsageError, FileNotFoundError) as err:
        print(f"compare_geneval_scorers: error: {err}", file=sys.stderr)
        return 2
    print(format_report(result, *args.names, show=args.show))
    if args.json:
        Path(args.json).write_text(json.dumps({"names": list(args.names), **result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
