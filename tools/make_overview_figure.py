"""The README's figure (docs/assets/parauni_overview.png): a diagram of the model's layers above a grid of toy
samples from the shipped ``toy-all-layers`` model and from a stage-III run started from it, same prompts and seeds.

    python tools/make_overview_figure.py --after runs/fig_nft/final --label "..." --out docs/assets/parauni_overview.png

The samples are made by ``parauni generate`` (20 steps, guidance 1, seed 0) into ``--work``; the stage-III model is
any pipeline folder (a run's ``final/``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402
from PIL import Image  # noqa: E402

PROMPTS = [  # one a toy GenEval task
    "a photo of a triangle",
    "a photo of a red square and a blue circle",
    "a photo of three circles",
    "a photo of a green triangle",
    "a photo of a yellow circle left of a square",
    "a photo of a purple square and a green circle",
]


def generate(model: str, out: Path) -> list[Image.Image]:
    cmd = [sys.executable, "-m", "parauni", "generate", "--model", model, "--out", str(out), "--steps", "20",
           "--guidance", "1", "--seed", "0", "--no-progress"]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    subprocess.run(cmd, check=True)
    return [Image.open(p).convert("RGB") for p in sorted(out.glob("[0-9][0-9][0-9]_*.png"))]


def box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.01,rounding_size=0.015", fc=color, ec="#333",
                                lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, x0, y0, x1, y1):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=10, lw=1, color="#333", zorder=3))


def draw_diagram(ax) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    box(ax, 0.01, 0.40, 0.09, 0.20, "prompt\n(+ image)", "#eeeeee")
    n = 5
    for i in range(n):  # the VLM's decoder layers, each read at the query positions
        y = 0.08 + i * 0.17
        box(ax, 0.16, y, 0.16, 0.13, f"VLM layer {i + 1 if i < n - 1 else 'L'}" if i != n - 2 else "...", "#cfe2f3", 8)
        box(ax, 0.38, y + 0.02, 0.09, 0.09, "queries", "#fff2cc", 7)
        arrow(ax, 0.32, y + 0.065, 0.38, y + 0.065)
        arrow(ax, 0.47, y + 0.065, 0.53, 0.5)
    arrow(ax, 0.10, 0.5, 0.16, 0.5)
    ax.text(0.24, 0.965, "frozen VLM (InternVL3):\none forward pass", ha="center", va="center", fontsize=8)
    ax.text(0.425, 0.965, "N learnable queries\nread at every layer", ha="center", va="center", fontsize=8)
    box(ax, 0.53, 0.36, 0.13, 0.28, "Layer\nIntegration\nModule\n(fuse L stacks)", "#d9ead3")
    arrow(ax, 0.66, 0.5, 0.71, 0.5)
    box(ax, 0.71, 0.36, 0.15, 0.28, "SANA diffusion\ntransformer\n(+ DC-AE)", "#f4cccc")
    arrow(ax, 0.86, 0.5, 0.91, 0.5)
    box(ax, 0.91, 0.40, 0.08, 0.20, "image", "#eeeeee")
    ax.text(0.5, -0.04, "stage I trains queries + LIM; stage II also the transformer; stage III: online RL with LDAM "
                      "(noise on a layer group's query features)", ha="center", va="bottom", fontsize=8,
            style="italic")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="toy-all-layers")
    ap.add_argument("--after", required=True, help="the stage-III model folder")
    ap.add_argument("--label", required=True, help="what the after row is (run, epochs, toy GenEval)")
    ap.add_argument("--before-label", default="shipped toy-all-layers (stage II)")
    ap.add_argument("--work", default="runs/overview_figure")
    ap.add_argument("--out", default="docs/assets/parauni_overview.png")
    args = ap.parse_args()
    rows = [(args.before_label, generate(args.before, Path(args.work) / "before")),
            (args.label, generate(args.after, Path(args.work) / "after"))]
    fig = plt.figure(figsize=(11, 6.4), dpi=100)
    draw_diagram(fig.add_axes((0.02, 0.54, 0.96, 0.45)))
    for r, (label, images) in enumerate(rows):
        for c, im in enumerate(images):
            ax = fig.add_axes((0.17 + c * 0.138, 0.255 - r * 0.235, 0.13, 0.2))
            ax.imshow(im.resize((128, 128), Image.NEAREST))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(PROMPTS[c].replace("a photo of ", "").replace(" and ", "\nand ").replace(" left of ",
                             "\nleft of "), fontsize=8)
        fig.text(0.16, 0.355 - r * 0.235, label.replace("\\n", "\n"), ha="right", va="center", fontsize=8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
