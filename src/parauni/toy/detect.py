"""A programmatic object detector for toy-world images.

Every function takes the ``world`` whose shapes and colours it looks for (default v1; see
:mod:`parauni.toy.worlds`).

1. Each pixel takes the nearest of the background and the world's palette colours (RGB distance).
2. Non-background pixels form 4-connected components; components smaller than ``min_area_frac``
   of the canvas are dropped.
3. A component's colour is the majority colour of its pixels. Its soft coverage map (each pixel's
   projection on the segment background -> colour, over the component and the background pixels
   touching it) gives an area and a centroid to sub-pixel precision.
4. For each shape, the ideal anti-aliased shape with that area and centroid is drawn, sharp and at a
   few edge blurs (``BLUR_LEVELS``), and the soft IoU with the coverage map measures the fit; the
   best-fitting shape is the class and its box the detection's box.
5. The confidence is calibrated so that, like GenEval's Mask2Former detector, the detector finds
   nothing in images that hold no nameable object (decoded random latents, heavily blurred
   scenes, specks, empty canvases, noise). It is the soft IoU of the best shape times seven terms
   in [0, 1], each a linear ramp between the two ends of its range, and a component is kept when
   it reaches ``min_confidence``:

   * purity: the share of the component's pixels quantized to its colour;
   * fit: 0 at an IoU of ``FIT_RANGE[0]``, 1 from ``FIT_RANGE[1]``;
   * sharpness: the best shape drawn with an edge blur of ``MUSH_BLUR`` px fits the coverage map
     better than the best template of ``BLUR_LEVELS`` by an IoU gain in ``MUSH_RANGE`` (1 at the
     low end, 0 at the high end): such a component is a smear, not a shape;
   * strength: the highest coverage of the colour over the component's pixels, 0 at
     ``PEAK_RANGE[0]``, 1 from ``PEAK_RANGE[1]``; every object has a core of its full colour;
   * colour: the mean RGB distance of the pixels from the segment background -> palette colour
     (where every rendered pixel lies, anti-aliased or blurred), 1 up to ``COLOR_RESIDUAL[0]``,
     0 from ``COLOR_RESIDUAL[1]``; off-palette hues and mixtures of two colours lie away from it;
   * size: the fitted side as a share of the canvas side, 0 below ``SIDE_RANGE[0]``, 1 from
     ``SIDE_RANGE[1]`` (the world draws 0.22-0.55) up to ``MAX_SIDE_RANGE[0]``, 0 from
     ``MAX_SIDE_RANGE[1]`` (a canvas filled with one colour is no object);
   * clean surroundings: the share of "specks" among the other pixels of the component's box grown
     by ``CLUTTER_MARGIN`` of the canvas, 1 at ``CLUTTER_RANGE[0]``, 0 from ``CLUTTER_RANGE[1]``.
     Specks are coloured blobs that are no candidate (below ``min_area_frac`` or ``min_side``) or
     that miss ``min_confidence`` and are smaller than the smallest object the world draws
     (``SPECK_AREA_FRAC`` of the canvas). A rendered object sits on a clean background; a
     fragment of decoded noise sits among other fragments.

   The ranges come from the measured distributions of the components that the uncalibrated
   detector keeps (IoU times purity >= 0.5). Rendered objects, also with pixel noise of 8/255 or
   a 1.2-px blur: IoU >= 0.86, smear gain <= -0.11, peak >= 0.87, colour distance <= 13, side
   >= 0.22, speck share <= 0.003, calibrated confidence >= 0.8. Decoded random latents: IoU
   median 0.71, colour distance median 32, side median 0.13, speck share median 0.09; one
   fragment in 1500 images reaches 0.5. Scenes blurred by 4-5 px: smear gain >= +0.05 or peak
   <= 0.6, none kept. Shapes of the trained toy models: IoU median 0.84, colour distance median 8,
   side median 0.35, no specks; the ~8% they lose are two-coloured or off-palette shapes, shapes
   below 0.15 of the canvas and concave or merged blobs. ``calibrated=False`` gives the
   uncalibrated confidence (IoU times purity) for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from parauni.toy.shapes import box_centre_y, side_from_area
from parauni.toy.world import SIZE_RANGES, SUPERSAMPLE, ToyObject, shape_mask
from parauni.toy.worlds import V1, World, get_world
from parauni.utils.images import as_uint8

# Edge softness (Gaussian sigma in pixels at 32 px, scaled with the canvas) tried for each shape.
BLUR_LEVELS: tuple[float, ...] = (0.0, 0.5, 0.9, 1.3)
# Confidence calibration: the two ends (lo, hi) of each term's linear ramp; see the module docstring.
FIT_RANGE: tuple[float, float] = (0.5, 0.7)  # soft IoU of the best shape: ramp up
MUSH_BLUR = 2.4  # px at 32 px: the edge blur of the template that tells a smear
MUSH_RANGE: tuple[float, float] = (0.0, 0.04)  # IoU gain of that template over the best fit: ramp down
PEAK_RANGE: tuple[float, float] = (0.65, 0.8)  # strongest coverage of the colour in the component: ramp up
COLOR_RESIDUAL: tuple[float, float] = (20.0, 50.0)  # mean RGB distance from the background -> colour line
SIDE_RANGE: tuple[float, float] = (0.10, 0.20)  # fitted side / canvas side: ramp up
MAX_SIDE_RANGE: tuple[float, float] = (0.75, 0.95)  # fitted side / canvas side: ramp down
CLUTTER_RANGE: tuple[float, float] = (0.0, 0.05)  # share of speck pixels around the component
CLUTTER_MARGIN = 0.25  # the surroundings: the component's box grown by this share of the canvas side
# Specks: non-object blobs smaller than the smallest object the world draws (a triangle of the
# smallest side, half its box).
SPECK_AREA_FRAC = 0.5 * min(lo for lo, _ in SIZE_RANGES.values()) ** 2


@lru_cache(maxsize=8)
def reference_colors(world: World | str = V1) -> np.ndarray:
    """``(1 + colours, 3)`` float RGB: the background, then the world's palette in order."""
    w = get_world(world)
    return np.asarray([w.background, *(w.palette[c] for c in w.colors)], dtype=np.float32)


REFERENCE_COLORS = reference_colors(V1)  # the v1 world's


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


def quantize(image: np.ndarray, world: World | str = V1) -> np.ndarray:
    """Index map: 0 for background, ``1 + world.colors.index(c)`` for colour ``c``."""
    px = image.astype(np.float32)
    d = ((px[..., None, :] - reference_colors(world)) ** 2).sum(-1)
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


def coverage(crop: np.ndarray, color: str, world: World | str = V1) -> np.ndarray:
    """Per-pixel share of ``color`` against the background, in [0, 1], of an RGB float crop."""
    w = get_world(world)
    bg = reference_colors(w)[0]
    v = np.asarray(w.palette[color], np.float32) - bg
    return np.clip(((crop - bg) @ v) / float(v @ v), 0.0, 1.0)


def fit_shape(shape: str, alpha: np.ndarray) -> ToyObject:
    """The ``shape`` whose area and centroid equal those of the coverage map ``alpha``."""
    area = float(alpha.sum())
    ys, xs = np.indices(alpha.shape)
    cx = float((alpha * (xs + 0.5)).sum() / area)
    cy = float((alpha * (ys + 0.5)).sum() / area)
    side = side_from_area(shape, area)
    return ToyObject(shape, "", cx, box_centre_y(shape, cy, side), side)


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


def classify_shape(alpha: np.ndarray, blur_levels: tuple[float, ...] = BLUR_LEVELS,
                   shapes: tuple[str, ...] = V1.shapes) -> tuple[str, float, ToyObject]:
    """Best-fitting shape of a coverage map: ``(shape, soft IoU, fitted object)``.

    Each shape is tried sharp and blurred by each of ``blur_levels`` (pixels), so that soft edges
    (a blurry generator, resampling) are matched by a soft template rather than by a rounder shape.
    ``shapes``: the candidates (a world's ``shapes``).
    """
    best: tuple[str, float, ToyObject] = ("", -1.0, ToyObject("", "", 0, 0, 0))
    for shape in shapes:
        obj = fit_shape(shape, alpha)
        sharp = shape_coverage(obj, *alpha.shape)
        for sigma in blur_levels:
            iou = soft_iou(alpha, gaussian_blur(sharp, sigma))
            if iou > best[1]:
                best = (shape, iou, obj)
    return best


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Soft IoU of two coverage maps: sum of the minimum over sum of the maximum."""
    inter = float(np.minimum(a, b).sum())
    return inter / max(float(a.sum()) + float(b.sum()) - inter, 1e-6)


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at or below ``lo``, 1 at or above ``hi``, linear between."""
    return min(max((x - lo) / (hi - lo), 0.0), 1.0)


def color_residual(pixels: np.ndarray, color: str, world: World | str = V1) -> float:
    """Mean RGB distance of ``pixels`` ``(N, 3)`` from the segment background -> ``color``.

    Rendered pixels (the colour mixed with the background by anti-aliasing or blur) lie on it;
    off-palette hues and mixtures of two colours lie away from it.
    """
    w = get_world(world)
    bg = reference_colors(w)[0]
    v = np.asarray(w.palette[color], np.float32) - bg
    d = np.asarray(pixels, np.float32) - bg
    t = np.clip(d @ v / float(v @ v), 0.0, 1.0)
    return float(np.linalg.norm(d - t[:, None] * v, axis=1).mean())


def fit_term(iou: float) -> float:
    """The fit term of the confidence (it multiplies the IoU itself) for a soft IoU ``iou``."""
    return _ramp(iou, *FIT_RANGE)


def mush_term(gain: float) -> float:
    """The sharpness term of the confidence when a template blurred by ``MUSH_BLUR`` px fits the
    coverage map ``gain`` better (in IoU) than the best template of ``BLUR_LEVELS``."""
    return 1.0 - _ramp(gain, *MUSH_RANGE)


def peak_term(peak: float) -> float:
    """The strength term of the confidence when the colour covers at most ``peak`` of any pixel."""
    return _ramp(peak, *PEAK_RANGE)


def color_term(residual: float) -> float:
    """The colour term of the confidence for a mean distance ``residual`` (see the module docstring)."""
    return 1.0 - _ramp(residual, *COLOR_RESIDUAL)


def size_term(side_frac: float) -> float:
    """The size term of the confidence for a fitted side of ``side_frac`` of the canvas side."""
    return _ramp(side_frac, *SIDE_RANGE) * (1.0 - _ramp(side_frac, *MAX_SIDE_RANGE))


def clutter_term(speck_share: float) -> float:
    """The clean-surroundings term of the confidence for a share ``speck_share`` of speck pixels."""
    return 1.0 - _ramp(speck_share, *CLUTTER_RANGE)


def _sides(area: float, shapes: tuple[str, ...]) -> tuple[float, ...]:
    """Fitted side of each of ``shapes`` of soft area ``area`` (see :func:`fit_shape`)."""
    return tuple(side_from_area(s, area) for s in shapes)


def detect(image: np.ndarray | Image.Image, min_area_frac: float = 0.006, min_confidence: float = 0.5,
           min_side: int = 3, calibrated: bool = True, world: World | str = V1) -> list[Detection]:
    """Detect the toy objects of ``world`` in an RGB image; detections sorted by confidence, highest first.

    A component is a candidate when its area is at least ``min_area_frac`` of the canvas (and 4 px)
    and both sides of its pixel box are at least ``min_side`` px; it is kept when its confidence
    reaches ``min_confidence``. The confidence is the shape IoU times the colour purity (the share
    of its pixels of the majority colour) times, with ``calibrated`` (the default), the fit,
    sharpness, strength, colour, size and clean-surroundings terms described in the module
    docstring; ``calibrated=False``
    leaves them out (the uncalibrated detector, which also finds fragments in garbage images).
    """
    world = get_world(world)
    img = as_uint8(image)
    h, w = img.shape[:2]
    q = quantize(img, world)
    lab = connected_components(q > 0)
    ids, inverse, counts = np.unique(lab.ravel(), return_inverse=True, return_counts=True)
    min_area = max(4, int(np.ceil(min_area_frac * q.size)))
    speck_area = SPECK_AREA_FRAC * q.size
    pixels = img.astype(np.float32)
    specks = np.zeros((h, w), dtype=bool)  # pixels of coloured blobs too small to be objects
    found = []  # (confidence before the surroundings term, component id, pixel box, Detection fields)
    for k, (cid, area) in enumerate(zip(ids, counts, strict=True)):
        if cid < 0:
            continue
        ys, xs = np.divmod(np.flatnonzero(inverse == k), w)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        if area < min_area or min(y1 - y0, x1 - x0) < min_side:
            specks[ys, xs] = True
            continue
        hit = _fit_component(q, lab, pixels, cid, ys, xs, (y0, y1, x0, x1), area, min_confidence, calibrated,
                             world)
        if hit is None:
            if calibrated and area < speck_area:
                specks[ys, xs] = True
            continue
        found.append(hit)
    return _surroundings_checked(found, lab, specks, min_confidence, calibrated)


def _fit_component(q: np.ndarray, lab: np.ndarray, pixels: np.ndarray, cid: int, ys: np.ndarray, xs: np.ndarray,
                   pixel_box: tuple[int, int, int, int], area: int, min_confidence: float,
                   calibrated: bool, world: World = V1) -> tuple | None:
    """One component's colour, shape fit and confidence before the surroundings term, as
    ``(confidence, component id, pixel box, shape, colour, fitted box, area)``; ``None`` when the confidence
    cannot reach ``min_confidence``.  ``q``: the quantized colours, ``lab``: the components, ``ys, xs``: the
    component's pixels."""
    h, w = lab.shape
    side = max(h, w)
    y0, y1, x0, x1 = pixel_box
    votes = np.bincount(q[ys, xs], minlength=len(world.palette) + 1)[1:]
    color = world.colors[int(votes.argmax())]
    purity = float(votes.max() / area)
    score = purity
    cy0, cy1, cx0, cx1 = max(y0 - 2, 0), min(y1 + 2, h), max(x0 - 2, 0), min(x1 + 2, w)
    own = lab[cy0:cy1, cx0:cx1] == cid
    keep = own | (_dilate(_dilate(own)) & (q[cy0:cy1, cx0:cx1] == 0))
    alpha = np.where(keep, coverage(pixels[cy0:cy1, cx0:cx1], color, world), 0.0)
    if calibrated:  # the terms known before the shape fit; skip the fit when it cannot help (IoU <= 1)
        score *= color_term(color_residual(pixels[ys, xs], color, world)) * peak_term(float(alpha[own].max()))
        bound = score * max(size_term(s / side) for s in _sides(float(alpha.sum()), world.shapes))
        if bound < min_confidence:
            return None
    shape, iou, fit = classify_shape(alpha, tuple(b * side / 32 for b in BLUR_LEVELS), world.shapes)
    score *= iou
    if calibrated:
        score *= fit_term(iou) * size_term(fit.size / side)
        if score >= min_confidence:
            smear = gaussian_blur(shape_coverage(fit, *alpha.shape), MUSH_BLUR * side / 32)
            score *= mush_term(soft_iou(alpha, smear) - iou)
    if score < min_confidence:
        return None
    bx1, by1, bx2, by2 = fit.bbox
    box = (round(bx1 + cx0, 3), round(by1 + cy0, 3), round(bx2 + cx0, 3), round(by2 + cy0, 3))
    return score, cid, pixel_box, shape, color, box, int(area)


def _surroundings_checked(found: list[tuple], lab: np.ndarray, specks: np.ndarray, min_confidence: float,
                          calibrated: bool) -> list[Detection]:
    """The detections of :func:`_fit_component`'s candidates, with ``calibrated`` the clean-surroundings term
    (the share of speck pixels around each) applied, sorted by confidence, highest first."""
    h, w = lab.shape
    margin = int(round(CLUTTER_MARGIN * max(h, w)))
    dets = []
    for score, cid, (y0, y1, x0, x1), shape, color, box, area in found:
        if calibrated:
            win = (slice(max(y0 - margin, 0), min(y1 + margin, h)), slice(max(x0 - margin, 0), min(x1 + margin, w)))
            others = lab[win] != cid
            score *= clutter_term(float(specks[win][others].mean()) if others.any() else 0.0)
            if score < min_confidence:
                continue
        dets.append(Detection(shape, color, box, score, area))
    return sorted(dets, key=lambda d: -d.confidence)
