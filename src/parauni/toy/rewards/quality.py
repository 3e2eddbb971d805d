"""An image-quality score for the toy world (the aesthetic-predictor role), on a 1-10 scale.

A clean toy image is a flat grey background with a few crisp, saturated palette shapes of
plausible size.  Four terms in [0, 1], each measuring one of those:

- purity: pixels close to the background or to a palette colour (muddy, off-palette and
  noisy pixels lower it; anti-aliased edges cost a little);
- clean background: the share of the area outside the detected objects that is background;
- no fragments: 1 / (1 + number of coloured blobs that are not a detected object);
- size: the share of detected objects whose side is 0.15-0.65 of the canvas (0 if none found).

score = 1 + 9 * size * (0.4 purity + 0.3 clean + 0.3 no-fragments): an image without a
plausible object scores 1.  Rendered ground truth scores about 9.5, blurred or noisy shapes
lower, noise and empty canvases about 1 (see the tests).

The palette and shapes are those of a toy world: the reward's ``world`` option, else each image's record's
(its ``world`` key), else v1.
"""

from __future__ import annotations

import numpy as np
import torch

from ...rewards.base import as_uint8_batch
from ..detect import connected_components, detect, quantize, reference_colors
from ..worlds import V1, World, get_world, world_of

WEIGHTS = {"purity": 0.4, "clean": 0.3, "fragments": 0.3}
PURITY_TOLERANCE = 40.0  # RGB distance (0-441) at which a pixel counts as fully impure


def quality_terms(image: np.ndarray, world: World | str = V1) -> dict[str, float]:
    """The four terms for one RGB uint8 image ``(H, W, 3)`` of ``world``."""
    h, w, _ = image.shape
    ref = reference_colors(world)
    labels = quantize(image, world)  # (H, W): 0 background, 1.. palette colours
    dist = np.linalg.norm(image.astype(np.float32) - ref[labels], axis=-1)
    purity = float(1 - np.clip(dist / PURITY_TOLERANCE, 0, 1).mean())
    dets = detect(image, world=world)
    inside = np.zeros((h, w), dtype=bool)
    for d in dets:
        x1, y1, x2, y2 = (int(round(v)) for v in d.bbox)
        inside[max(y1 - 1, 0): y2 + 1, max(x1 - 1, 0): x2 + 1] = True
    outside = ~inside
    clean = float((labels[outside] == 0).mean()) if outside.any() else 0.0
    blobs = 0
    for k in range(1, len(ref)):
        comp = connected_components(labels == k)
        blobs += len(np.unique(comp[comp >= 0]))
    fragments = 1.0 / (1.0 + max(blobs - len(dets), 0))
    sides = [max(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) / max(h, w) for d in dets]
    size = float(np.mean([0.15 <= s <= 0.65 for s in sides])) if sides else 0.0
    return {"purity": purity, "clean": clean, "fragments": fragments, "size": size}


def quality_score(image: np.ndarray, world: World | str = V1) -> float:
    terms = quality_terms(image, world)
    return 1.0 + 9.0 * terms["size"] * sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)


class ToyQualityReward:
    """``quality_score`` per image (1-10, higher is better); needs neither prompt nor metadata. ``world``
    (``rewards.options.toy_quality.world``): the toy world of the images (default: each image's record's, else
    v1)."""

    def __init__(self, world: str | None = None):
        self.world = get_world(world) if world is not None else None

    def __call__(self, images, prompts=None, metadata=None) -> torch.Tensor:
        images = as_uint8_batch(images)
        metadata = metadata or [None] * len(images)
        worlds = [self.world or world_of(m if isinstance(m, dict) else None) for m in metadata]
        return torch.tensor([quality_score(im, w) for im, w in zip(images, worlds, strict=True)],
                            dtype=torch.float32)
