"""Image helpers: loading with clear errors, the one float -> uint8 conversion, VLM preprocessing, grids."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from ..errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as 8-bit RGB with its real range: 16-bit greyscale (PIL's ``I;16*`` and ``I`` modes, e.g. a 16-bit PNG)
    maps 0..65535 to 0..255, where PIL's own ``convert("RGB")`` clips every value above 255 to white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8), "L").convert("RGB")
    return im.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB (:func:`to_rgb`), with an error naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except (UnidentifiedImageError, OSError) as err:
        raise UsageError(f"image {str(path)!r} is corrupt or not an image: {err}") from err


PARTIAL_SUFFIX = ".png.partial"  # an image being written; renamed into place when complete


def save_png_atomic(image: np.ndarray | Image.Image, path: str | Path, tmp_dir: str | Path | None = None) -> None:
    """Write a PNG under a temporary name (``.<stem>.png.partial`` in ``tmp_dir``, default the target's folder: the
    same file system), then rename it into place: a killed run or a full disk never leaves a half-written image under
    the final name (the partial file is removed on failure)."""
    path = Path(path)
    tmp = Path(tmp_dir or path.parent) / f".{path.stem}{PARTIAL_SUFFIX}"
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unit_to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] (any shape) -> uint8, rounded to the nearest level and clipped."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


def signed_to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``(B, 3, H, W)`` tensors in [-1, 1] (a decoder's output) -> RGB uint8 ``(H, W, 3)`` arrays."""
    arr = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return list(arr)


def as_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array from a PIL image or an array (uint8, or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return np.asarray(to_rgb(image))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    return arr if arr.dtype == np.uint8 else unit_to_uint8(arr)


def vlm_pixel_values(images: list[Image.Image], size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """One tile per image, as InternVL sees a single 448-px tile: resize, scale, normalise -> ``(B, 3, S, S)``."""
    arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
              for im in images]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def labelled_grid(images: list[Image.Image], labels: list[str], cols: int | None = None,
                  label_height: int = 14, scale: int = 1) -> Image.Image:
    """Images in a grid, each with its label printed beneath it."""
    cols = cols or min(len(images), 4)
    rows = -(-len(images) // cols)
    w, h = images[0].width * scale, images[0].height * scale
    cell_w = max(w, 96)
    grid = Image.new("RGB", (cols * cell_w, rows * (h + label_height)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (im, label) in enumerate(zip(images, labels, strict=True)):
        x, y = (i % cols) * cell_w, (i // cols) * (h + label_height)
        grid.paste(im.resize((w, h), Image.NEAREST), (x + (cell_w - w) // 2, y))
        max_chars = max(cell_w // 6, 4)
        text = label if len(label) <= max_chars else label[: max_chars - 1] + "…"
        draw.text((x + 2, y + h + 1), text, fill="black")
    return grid
