"""``parauni toy detector-accuracy``: the detector measured on rendered scenes, per shape and per colour.

Scenes are drawn as training draws them (free scenes of 1-4 objects, uniform in the number of objects, random
shapes and colours), at the world's sizes, from seeds of their own (domain 3). Each rendered object is matched
to the detection whose box centre is nearest its own, within half its side; it counts as found with the right
shape, the right colour, or both. A detection matched to no object is a false positive. The table gives, per
shape and per colour, the objects drawn and the share found with the right shape and colour, the shape
confusion matrix, and the share of scenes whose detections are exactly their objects. ``noise`` (Gaussian pixel
noise of that many grey levels) and ``blur`` (a Gaussian blur of that many pixels at 32 px, of the difference
from the background) measure it on perturbed renderings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .detect import Detection, detect, gaussian_blur
from .world import Scene, random_scene, render
from .worlds import World, get_world

DOMAIN = 3  # the seeds of these scenes: apart from training (0), the held-out split (1) and the tokenizer (7)


def match(scene: Scene, dets: list[Detection]) -> list[Detection | None]:
    """For each object of ``scene``, the unmatched detection whose box centre is nearest its centre within half
    its side (greedy, nearest pairs first), else ``None``."""
    pairs = []
    for i, o in enumerate(scene.objects):
        for j, d in enumerate(dets):
            dx, dy = (d.bbox[0] + d.bbox[2]) / 2 - o.cx, (d.bbox[1] + d.bbox[3]) / 2 - o.cy
            dist = float(np.hypot(dx, dy))
            if dist <= o.size / 2:
                pairs.append((dist, i, j))
    out: list[Detection | None] = [None] * len(scene.objects)
    used: set[int] = set()
    for _, i, j in sorted(pairs):
        if out[i] is None and j not in used:
            out[i], used = dets[j], used | {j}
    return out


def perturb(image: np.ndarray, rng: np.random.Generator, noise: float = 0.0, blur: float = 0.0,
            background: tuple[int, int, int] = (128, 128, 128)) -> np.ndarray:
    """``image`` blurred by ``blur`` px (scaled from 32 px; the canvas stays ``background``), then with Gaussian
    noise of standard deviation ``noise`` grey levels; RGB uint8."""
    out = image.astype(np.float32)
    if blur > 0:
        bg = np.asarray(background, np.float32)
        sigma = blur * image.shape[0] / 32
        out = bg + np.stack([gaussian_blur(out[..., c] - bg[c], sigma) for c in range(3)], -1)
    if noise > 0:
        out = out + rng.normal(0.0, noise, out.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def detector_accuracy(world: World | str = "v2", n: int = 1000, seed: int = 0, size: int = 32,
                      noise: float = 0.0, blur: float = 0.0) -> dict:
    """Detect ``n`` rendered free scenes of ``world``; returns the table's numbers (see the module docstring).

    ``{"world", "scenes", "objects", "size", "shapes": {shape: {"n", "shape", "color", "both"}}, "colors": {colour:
    {...}}, "overall": {...}, "confusion": {true shape: {found shape or "missed": count}}, "false_positives",
    "exact_scenes"}``; each share is of the objects drawn."""
    w = get_world(world)
    rows: dict[str, dict[str, list[bool]]] = {}
    confusion = {s: dict.fromkeys([*w.shapes, "missed"], 0) for s in w.shapes}
    false_pos = exact = objects = 0
    for k in range(n):
        rng = np.random.default_rng([DOMAIN, seed, k])
        scene = random_scene(rng, size, world=w)
        dets = detect(perturb(render(scene), rng, noise, blur, w.background), world=w)
        found = match(scene, dets)
        false_pos += len(dets) - sum(d is not None for d in found)
        ok_all = len(dets) == len(scene.objects)
        for o, d in zip(scene.objects, found, strict=True):
            objects += 1
            confusion[o.shape][d.cls if d is not None else "missed"] += 1
            right = (d is not None and d.cls == o.shape, d is not None and d.color == o.color)
            ok_all &= all(right)
            for key in (f"shape:{o.shape}", f"color:{o.color}", "overall"):
                r = rows.setdefault(key, {"shape": [], "color": [], "both": []})
                r["shape"].append(right[0])
                r["color"].append(right[1])
                r["both"].append(all(right))
        exact += ok_all

    def stats(key: str) -> dict:
        r = rows.get(key, {"shape": [], "color": [], "both": []})
        return {"n": len(r["both"]), **{m: float(np.mean(v)) if v else float("nan") for m, v in r.items()}}

    return {"world": w.name, "scenes": n, "objects": objects, "size": size, "seed": seed, "noise": noise, "blur": blur,
            "shapes": {s: stats(f"shape:{s}") for s in w.shapes},
            "colors": {c: stats(f"color:{c}") for c in w.colors},
            "overall": stats("overall"), "confusion": confusion, "false_positives": false_pos,
            "exact_scenes": exact / n if n else float("nan")}


def format_accuracy_table(result: dict) -> str:
    """A Markdown table of :func:`detector_accuracy`'s result (per shape, per colour, overall)."""
    lines = [f"world {result['world']}, {result['scenes']} scenes, {result['objects']} objects, "
             f"{result['size']} px, seed {result['seed']}, noise {result['noise']:g}, blur {result['blur']:g} px", "",
             "| class | objects | shape right | colour right | both right |", "|---|---:|---:|---:|---:|"]
    groups = [*(("shape", s, v) for s, v in result["shapes"].items()),
              *(("colour", c, v) for c, v in result["colors"].items()), ("", "overall", result["overall"])]
    for kind, name, v in groups:
        label = f"{kind} {name}".strip()
        lines.append(f"| {label} | {v['n']} | {v['shape']:.4f} | {v['color']:.4f} | {v['both']:.4f} |")
    lines += ["", f"false positives: {result['false_positives']}; scenes detected exactly: "
                  f"{result['exact_scenes']:.4f}", "", "shape confusion (rows: drawn, columns: detected):", ""]
    cols = list(next(iter(result["confusion"].values())))
    lines += ["| drawn | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {s} | " + " | ".join(str(row[c]) for c in cols) + " |" for s, row in result["confusion"].items()]
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("detector-accuracy", help="the toy detector's accuracy on rendered scenes, per shape and "
                                                 "per colour")
    p.add_argument("--world", default="v2", help="v1 or v2 (default v2)")
    p.add_argument("--n", type=int, default=1000, help="rendered scenes (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32, help="canvas side in pixels (default 32)")
    p.add_argument("--noise", type=float, default=0.0, help="Gaussian pixel noise, in grey levels (default 0)")
    p.add_argument("--blur", type=float, default=0.0, help="Gaussian blur in pixels at 32 px (default 0)")
    p.add_argument("--out", help="also write the result as JSON to this file (and the table next to it as .md)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    if args.n < 1 or args.size < 16:
        raise UsageError(f"--n must be at least 1 and --size at least 16 (got --n {args.n}, --size {args.size})")
    if args.noise < 0 or args.blur < 0:
        raise UsageError(f"--noise and --blur must be >= 0 (got --noise {args.noise:g}, --blur {args.blur:g})")
    if args.out and Path(args.out).suffix.lower() == ".md":
        raise UsageError(f"--out {args.out}: the JSON result's file, whose table is written beside it as .md; "
                         f"name it {Path(args.out).with_suffix('.json')}")
    result = detector_accuracy(args.world, args.n, args.seed, args.size, args.noise, args.blur)
    table = format_accuracy_table(result)
    print(table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(table + "\n")
