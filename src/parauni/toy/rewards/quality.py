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
"""

from __future__ import annotations

import numpy as np
import torch

from ...rewards.base import as_uint8_batch
from ..detect import REFERENCE_COLORS, connected_components, detect, quantize

WEIGHTS = {"purity": 0.4, "clean": 0.3, "fragments": 0.3}
PURITY_TOLERANCE = 40.0  # RGB distance (0-441) at which a pixel counts as fully impure


def quality_terms(image: np.ndarray) -> dict[str, float]:
    """The four terms for one RGB uint8 image ``(H, W, 3)``."""
    h, w, _ = image.shape
    labels = quantize(image)  # (H, W): 0 background, 1.. palette colours
    dist = np.linalg.norm(image.astype(np.float32) - REFERENCE_COLORS[labels], axis=-1)
    purity = float(1 - np.clip(dist / PURITY_TOLERANCE, 0, 1).mean())
    dets = detect(image)
    inside = np.zeros((h, w), dtype=bool)
    for d in dets:
        x1, y1, x2, y2 = (int(round(v)) for v in d.bbox)
        inside[max(y1 - 1, 0): y2 + 1, max(x1 - 1, 0): x2 + 1] = True
    outside = ~inside
    clean = float((labels[outside] == 0).mean()) if outside.any() else 0.0
    blobs = 0
    for k in range(1, len(REFERENCE_COLORS)):
        comp = connected_components(labels == k)
        blobs += len(np.unique(comp[comp >= 0]))
    fragments = 1.0 / (1.0 + max(blobs - len(dets), 0))
    sides = [max(d.bbox[2] - d.bbox[0], d.bbox[3] - d.bbox[1]) / max(h, w) for d in dets]
    size = float(np.mean([0.15 <= s <= 0.65 for s in sides])) if sides else 0.0
    return {"purity": purity, "clean": clean, "fragments": fragments, "size": size}


def quality_score(image: np.ndarray) -> float:
    terms = quality_terms(image)
    return 1.0 + 9.0 * terms["size"] * sum(WEIGHTS[k] * terms[k] for k in WEIGHTS)


class ToyQualityReward:
    """``quality_score`` per image (1-10, higher is better); needs neither prompt nor metadata."""

    def __call__(self, images, prompts=None, metadata=None) -> torch.Tensor:
        return torch.tensor([quality_score(im) for im in as_uint8_batch(images)], dtype=torch.float32)
