"""A programmatic object detector for toy-world images.

1. Each pixel takes the nearest of the background and the six palette colours (RGB distance).
2. Non-background pixels form 4-connected components; components smaller than ``min_area_frac``
   of the canvas are dropped.
3. A component's colour is the majority colour of its pixels. Its soft coverage map (each pixel's
   projection on the segment background -> colour, over the component and the background pixels
   touching it) gives an area and a centroid to sub-pixel precision.
4. For each shape, the ideal anti-aliased shape with that area and centroid is drawn, sharp and at a
   few edge blurs (``BLUR_LEVELS``), and the soft IoU with the coverage map measures the fit; the
   best-fitting shape is the class, its IoU (times the colour purity) the confidence, its box the
   detection's box. Blobs that fit no shape well enough are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from parauni.toy.world import BACKGROUND, COLORS, PALETTE, SHAPES, SUPERSAMPLE, ToyObject, shape_mask

# Edge softness (Gaussian sigma in pixels at 32 px, scaled with the canvas) tried for each shape.
BLUR_LEVELS: tuple[float, ...] = (0.0, 0.5, 0.9, 1.3)
_REFERENCE = np.asarray([BACKGROUND, *(PALETTE[c] for c in COLORS)], dtype=np.float32)


@dataclass(frozen=True)
class Detection:
    """A detected object: shape class, colour name, box ``(x1, y1, x2, y2)`` (x2, y2 exclusive)."""

    cls: str
    color: str
    bbox: tuple[float, float, float, float]
    confidence: float
    area: int

    def to_json(self) -> dict:
        """Plain-dict form (``class``, ``color``, ``bbox``, ``confidence``, ``area``) for results files."""
        return {"class": self.cls, "color": self.color, "bbox": list(self.bbox),
                "confidence": round(self.confidence, 4), "area": self.area}


def as_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from a PIL image or an array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    return arr


def quantize(image: np.ndarray) -> np.ndarray:
    """Index map: 0 for background, ``1 + COLORS.index(c)`` for colour ``c``."""
    px = image.astype(np.float32)
    d = ((px[..., None, :] - _REFERENCE) ** 2).sum(-1)
    return d.argmin(-1)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a boolean mask (-1 off the mask, else an arbitrary id)."""
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        new = lab.copy()
        np.minimum(new[1:], lab[:-1], out=new[1:])
        np.minimum(new[:-1], lab[1:], out=new[:-1])
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        new[~mask] = big
        flat = np.append(new.ravel(), big)
        new = np.where(mask, flat[new], big)  # pointer jumping: adopt the label's own label
        if np.array_equal(new, lab):
            break
        lab = new
    return np.where(mask, lab, -1)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def coverage(crop: np.ndarray, color: str) -> np.ndarray:
    """Per-pixel share of ``color`` against the background, in [0, 1], of an RGB float crop."""
    bg = _REFERENCE[0]
    v = np.asarray(PALETTE[color], np.float32) - bg
    return np.clip(((crop - bg) @ v) / float(v @ v), 0.0, 1.0)


def fit_shape(shape: str, alpha: np.ndarray) -> ToyObject:
    """The ``shape`` whose area and centroid equal those of the coverage map ``alpha``."""
    area = float(alpha.sum())
    ys, xs = np.indices(alpha.shape)
    cx = float((alpha * (xs + 0.5)).sum() / area)
    cy = float((alpha * (ys + 0.5)).sum() / area)
    if shape == "square":
        return ToyObject(shape, "", cx, cy, area ** 0.5)
    if shape == "circle":
        return ToyObject(shape, "", cx, cy, (4 * area / np.pi) ** 0.5)
    side = (2 * area) ** 0.5  # triangle: the centroid lies a sixth of the side below the box centre
    return ToyObject(shape, "", cx, cy - side / 6, side)


def shape_coverage(obj: ToyObject, h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage of ``obj`` on an ``h`` x ``w`` pixel grid."""
    ss = SUPERSAMPLE
    ys = (np.arange(h * ss) + 0.5) / ss
    xs = (np.arange(w * ss) + 0.5) / ss
    mask = shape_mask(obj.shape, xs[None, :], ys[:, None], obj)
    return mask.reshape(h, ss, w, ss).mean(axis=(1, 3))


@lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """``(n, n)`` matrix applying a zero-padded 1-D Gaussian blur of ``sigma`` pixels."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :]
    k = np.exp(-0.5 * (d / sigma) ** 2)
    r = int(np.ceil(3 * sigma))
    norm = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).sum()
    return k / norm


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array with zero padding (``sigma`` in pixels)."""
    if sigma <= 0:
        return a
    h, w = a.shape
    return _blur_matrix(h, float(sigma)) @ a @ _blur_matrix(w, float(sigma)).T


def classify_shape(alpha: np.ndarray, blur_levels: tuple[float, ...] = BLUR_LEVELS
                   ) -> tuple[str, float, ToyObject]:
    """Best-fitting shape of a coverage map: ``(shape, soft IoU, fitted object)``.

    Each shape is tried sharp and blurred by each of ``blur_levels`` (pixels), so that soft edges
    (a blurry generator, resampling) are matched by a soft template rather than by a rounder shape.
    """
    best: tuple[str, float, ToyObject] = ("", -1.0, ToyObject("", "", 0, 0, 0))
    total = float(alpha.sum())
    for shape in SHAPES:
        obj = fit_shape(shape, alpha)
        sharp = shape_coverage(obj, *alpha.shape)
        for sigma in blur_levels:
            t = gaussian_blur(sharp, sigma)
            inter = float(np.minimum(alpha, t).sum())
            iou = inter / max(total + float(t.sum()) - inter, 1e-6)
            if iou > best[1]:
                best = (shape, iou, obj)
    return best


def detect(image: np.ndarray | Image.Image, min_area_frac: float = 0.006, min_confidence: float = 0.5,
           min_side: int = 3) -> list[Detection]:
    """Detect toy objects in an RGB image; detections sorted by confidence, highest first.

    A component is kept when its area is at least ``min_area_frac`` of the canvas (and 4 px), both
    sides of its pixel box are at least ``min_side`` px, and its confidence (shape IoU times colour
    purity, the share of its pixels of the majority colour) is at least ``min_confidence``.
    """
    img = as_uint8(image)
    h, w = img.shape[:2]
    q = quantize(img)
    lab = connected_components(q > 0)
    ids, inverse, counts = np.unique(lab.ravel(), return_inverse=True, return_counts=True)
    min_area = max(4, int(np.ceil(min_area_frac * q.size)))
    pixels = img.astype(np.float32)
    dets = []
    for k, (cid, area) in enumerate(zip(ids, counts, strict=True)):
        if cid < 0 or area < min_area:
            continue
        ys, xs = np.divmod(np.flatnonzero(inverse == k), w)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        if min(y1 - y0, x1 - x0) < min_side:
            continue
        votes = np.bincount(q[ys, xs], minlength=len(_REFERENCE))[1:]
        color = COLORS[int(votes.argmax())]
        purity = float(votes.max() / area)
        y0, y1, x0, x1 = max(y0 - 2, 0), min(y1 + 2, h), max(x0 - 2, 0), min(x1 + 2, w)
        own = lab[y0:y1, x0:x1] == cid
        keep = own | (_dilate(_dilate(own)) & (q[y0:y1, x0:x1] == 0))
        alpha = np.where(keep, coverage(pixels[y0:y1, x0:x1], color), 0.0)
        shape, iou, fit = classify_shape(alpha, tuple(b * max(h, w) / 32 for b in BLUR_LEVELS))
        score = iou * purity
        if score < min_confidence:
            continue
        bx1, by1, bx2, by2 = fit.bbox
        box = (round(bx1 + x0, 3), round(by1 + y0, 3), round(bx2 + x0, 3), round(by2 + y0, 3))
        dets.append(Detection(shape, color, box, score, int(area)))
    return sorted(dets, key=lambda d: -d.confidence)
