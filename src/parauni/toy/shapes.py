"""The toy world's shapes: the point-in-shape test, and the fill and centroid the detector fits with.

Every shape is drawn inside a square box of side ``size`` centred on ``(cx, cy)`` (``h = size / 2``):

* ``circle``   -- disc of diameter ``size``; fills pi/4 (0.79) of its box;
* ``square``   -- the box itself; fills 1;
* ``triangle`` -- upright isosceles triangle, apex at the top centre, base along the bottom edge; fills 1/2,
  its centroid lies ``size / 6`` below the box centre;
* ``diamond``  -- the box's inscribed square turned by 45 degrees, ``|dx| + |dy| <= h``; fills 1/2;
* ``cross``    -- a plus sign of two bars of width ``size / 3``; fills 5/9, concave;
* ``bar``      -- a horizontal bar, the box's full width and half its height; fills 1/2.

They differ in how much of their box they fill, in their top/bottom symmetry and in where their corners point,
which the detector's template fit tells apart down to the smallest objects the world draws (measured by
``parauni toy detector-accuracy``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UsageError

# share of its box each shape fills (the detector sizes a template from a component's area with it)
FILL: dict[str, float] = {
    "circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9, "bar": 0.5,
}
KNOWN_SHAPES: tuple[str, ...] = tuple(FILL)


def inside(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray:
    """Mask of the points ``(x, y)`` (pixel coordinates, broadcastable) inside ``shape`` in its box."""
    h = size / 2
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx ** 2 + dy ** 2 <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        top = cy - h
        return (y <= cy + h) & (np.abs(dx) <= (y - top) / 2)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= h
    if shape == "cross":
        ax, ay = np.abs(dx), np.abs(dy)
        arm = h / 3
        return ((ax <= h) & (ay <= arm)) | ((ax <= arm) & (ay <= h))
    if shape == "bar":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h / 2)
    raise UsageError(f"unknown shape {shape!r}; known: {', '.join(KNOWN_SHAPES)}")


def side_from_area(shape: str, area: float) -> float:
    """The box side of ``shape`` drawn with area ``area`` (pixels)."""
    if shape == "square":
        return area ** 0.5
    if shape == "circle":
        return (4 * area / np.pi) ** 0.5
    if shape == "triangle":
        return (2 * area) ** 0.5
    if shape not in FILL:
        raise UsageError(f"unknown shape {shape!r}; known: {', '.join(KNOWN_SHAPES)}")
    return (area / FILL[shape]) ** 0.5


def box_centre_y(shape: str, centroid_y: float, side: float) -> float:
    """The box centre's ``y`` of ``shape`` from its centroid's: the triangle's centroid lies ``side / 6`` below
    its box centre, the other shapes' at it."""
    return centroid_y - side / 6 if shape == "triangle" else centroid_y
