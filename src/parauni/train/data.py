"""Training data: image-caption pairs from four layouts, addressed by a global sample index.

Every sample of a run has a global index ``k``: step ``s`` uses samples ``s * G .. (s + 1) * G - 1``
(``G`` the global batch) and process ``r`` of ``W`` takes its contiguous share of each micro-batch. The
random crop, the caption drop and the diffusion noise of sample ``k`` depend only on ``(seed, k)``, so a
run with ``W`` processes sees the same global batches as one with one process, and a resumed run
continues exactly where it stopped (its position is ``step * G``). :mod:`parauni.train.loader` reads this order:
its ``MicroBatches`` turn it into a dataset of whole micro-batches for a ``torch.utils.data.DataLoader``
(``data.num_workers`` processes); since every micro-batch is made from its global indices alone, the number of
processes does not change what the run sees. A webdataset stream is read by every loader process up to its own
samples (only those are decoded).

Sources: a JSON list of ``{image, annotation}`` records with the
caption inside the annotation file (``json``, the reference layout), a folder of images with ``.txt``
captions beside them (``folder``), webdataset tar shards read as streams without extraction
(``webdataset``), and latents cached by ``parauni cache-latents`` (``latents``). Plugins add kinds through
:data:`parauni.registry.DATASETS` (a plugin's endless stream, say): a factory
``(data_cfg, seed)`` returning a source with ``length`` (``None``: endless) and ``get(k) -> (image, caption)``.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from safetensors.torch import load_file

from ..errors import ConfigError
from ..registry import DATASETS

logger = logging.getLogger(__name__)


class MissingFieldError(ConfigError, KeyError):
    """A dataset record without the field the config names (``data.caption_key``, ``image``, ``annotation``). Also
    a ``KeyError`` (what it raised before)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UnreadableSample(Exception):
    """A sample whose image cannot be decoded; the loader counts it and moves on."""


def sample_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """The random stream of global sample ``index`` (``stream`` separates uses: crop, drop, noise)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + index) * 8 + stream)


def crop_resize(image: Image.Image, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """A random square crop, resized to ``resolution``, as ``(3, R, R)`` in [-1, 1]."""
    return to_unit_range(crop_resize_uint8(image, resolution, generator))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (any shape, on any device) as float32 in [-1, 1]: ``x / 127.5 - 1``. The trainer uploads
    uint8 (a quarter of float32's bytes) and converts on the device with this same arithmetic."""
    return images.float().div(127.5).sub(1.0)


def crop_resize_uint8(image: Image.Image, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """A random square crop, resized to ``resolution``, as ``(3, R, R)`` uint8."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left = int(torch.randint(0, w - side + 1, (1,), generator=generator))
    top = int(torch.randint(0, h - side + 1, (1,), generator=generator))
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.BICUBIC)
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (R, R, 3)
    return arr.permute(2, 0, 1).contiguous()


def open_image(data: bytes | str | Path, name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UnreadableSample(f"{name}: {err}") from err


@dataclass
class Sample:
    image: torch.Tensor | None  # (3, R, R) in [-1, 1]; None when latents are given
    caption: str
    latents: torch.Tensor | None = None  # (C, h, w) from a latent cache


class JsonSource:
    """A JSON list of ``{"image": path, "annotation": path}``; the caption is ``annotation[caption_key]``.

    Paths are relative to ``image_root`` (default: the JSON file's folder). The caption key is checked on
    the first record before training starts.
    """

    def __init__(self, path: str, caption_key: str = "caption", image_root: str | None = None):
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"data.path {path!r}: no such JSON file")
        self.records = json.loads(p.read_text())
        if not isinstance(self.records, list):
            raise ConfigError(f"{path}: expected a JSON list of {{image, annotation}} records")
        if not self.records:
            raise ConfigError(f"{path}: the dataset is empty")
        self.root = Path(image_root) if image_root else p.parent
        self.caption_key = caption_key
        self.length = len(self.records)
        self.caption(0)  # a wrong caption key fails here, before the first step

    def caption(self, i: int) -> str:
        rec = self.records[i]
        if "image" not in rec or "annotation" not in rec:
            raise MissingFieldError(f"record {i} lacks 'image' or 'annotation' (keys: {sorted(rec)})")
        ann = rec["annotation"]
        ann = ann if isinstance(ann, dict) else json.loads((self.root / ann).read_text())
        if self.caption_key not in ann:
            raise MissingFieldError(f"caption key {self.caption_key!r} not in annotation of record {i} "
                                    f"(keys: {sorted(ann)}); set data.caption_key")
        return str(ann[self.caption_key])

    def get(self, k: int) -> tuple[Image.Image, str]:
        rec = self.records[k]
        return open_image(self.root / rec["image"], str(rec["image"])), self.caption(k)


class FolderSource:
    """Images in a folder (recursively) with a caption in ``<same name>.txt`` beside each."""

    def __init__(self, path: str):
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"data.path {path!r}: no such folder")
        self.files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                            and f.with_suffix(".txt").is_file())
        if not self.files:
            raise ConfigError(f"{path}: no images with a .txt caption beside them")
        self.length = len(self.files)

    def get(self, k: int) -> tuple[Image.Image, str]:
        f = self.files[k]
        return open_image(f, str(f)), f.with_suffix(".txt").read_text().strip()


def tar_shards(path: str | list[str]) -> list[str]:
    """Shard paths from a glob, a list or a single file, in sorted order."""
    paths = path if isinstance(path, list) else sorted(glob.glob(path)) or [path]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"webdataset shards not found: {missing[:3]}")
    return list(paths)


def iter_webdataset(shards: list[str], caption_key: str = "txt") -> Iterator[tuple[str, bytes | None, str | None]]:
    """``(key, image bytes, caption)`` per sample of tar shards, read as streams (nothing is extracted).

    Members are grouped by basename up to the first dot, as webdataset does; the caption is the member
    with extension ``caption_key`` (``txt`` by default; a ``json`` member's ``caption`` key otherwise).
    """
    for shard in shards:
        with tarfile.open(shard, mode="r|*") as tar:
            current, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = Path(member.name).name.partition(".")
                key = str(Path(member.name).parent / key)
                if key != current and current is not None:
                    yield _wds_sample(current, parts, caption_key)
                    parts = {}
                current = key
                parts[ext.lower()] = tar.extractfile(member).read()
            if current is not None:
                yield _wds_sample(current, parts, caption_key)


def _wds_sample(key: str, parts: dict[str, bytes], caption_key: str) -> tuple[str, bytes | None, str | None]:
    image = next((parts[e] for e in ("png", "jpg", "jpeg", "webp") if e in parts), None)
    caption = None
    if caption_key in parts:
        caption = parts[caption_key].decode("utf-8").strip()
    elif "json" in parts:
        caption = json.loads(parts["json"]).get(caption_key if caption_key != "txt" else "caption")
    return key, image, caption


class LatentSource:
    """Latents written by :func:`parauni.train.loader.cache_latents`: shards ``latents-XXXXX.safetensors`` +
    ``index.json``."""

    def __init__(self, path: str, resolution: int | None = None):
        root = Path(path)
        index = root / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"{path}: no latent cache (index.json); make one with `parauni cache-latents`")
        info = json.loads(index.read_text())
        self.path = path
        self.captions = info["captions"]
        if not self.captions:
            raise ConfigError(f"{path}: the latent cache is empty")
        made_at = info.get("resolution")
        if resolution is not None and made_at is not None and made_at != resolution:
            raise ConfigError(f"data.resolution: the latent cache {path} was made at {made_at} px but this run asks "
                              f"{resolution}; set data.resolution={made_at}, or make the cache again at {resolution} "
                              f"(`parauni cache-latents CONFIG --out DIR data.resolution={resolution}`)")
        self.latents = torch.cat([load_file(root / s)["latents"] for s in info["shards"]])  # (n, C, h, w)
        self.length = len(self.captions)

    def check_model(self, channels: int, side: int | None = None) -> None:
        """A ``ConfigError`` when the cached latents cannot feed a transformer of ``channels`` input channels and
        ``side`` latent pixels (a cache made with another VAE, or at another resolution)."""
        c, h = int(self.latents.shape[1]), int(self.latents.shape[-1])
        if c != channels or (side is not None and h != side):
            raise ConfigError(f"data.path: the latent cache {self.path} holds {c}-channel {h}x{h} latents, but this "
                              f"model's transformer takes {channels}-channel {side or '?'}x{side or '?'} ones: the "
                              "cache was made with another VAE or resolution; make it again with this model's VAE "
                              "(`parauni cache-latents` with this config)")

    def get(self, k: int) -> tuple[torch.Tensor, str]:
        return self.latents[k], self.captions[k]


def build_source(data_cfg, seed: int):
    """The configured source; empty data and a wrong caption key fail here, before training."""
    kind = data_cfg.kind
    if kind in DATASETS:  # a plugin's data kind
        return DATASETS.get(kind)(data_cfg, seed)
    if kind == "json":
        return JsonSource(data_cfg.path, data_cfg.caption_key, data_cfg.image_root)
    if kind == "folder":
        return FolderSource(data_cfg.path)
    if kind == "latents":
        return LatentSource(data_cfg.path, data_cfg.resolution)
    if kind == "webdataset":
        key = "txt" if data_cfg.caption_key == "caption" else data_cfg.caption_key
        return WebDatasetSource(tar_shards(data_cfg.path), key)
    raise DATASETS.unknown(kind, ", json, folder, webdataset, latents")


class WebDatasetSource:
    """A stream over tar shards, replayed in order epoch after epoch (no length, no shuffling)."""

    length = None

    def __init__(self, shards: list[str], caption_key: str = "txt"):
        self.shards, self.caption_key = shards, caption_key
        first = next(iter_webdataset(shards[:1], caption_key), None)
        if first is None:
            raise ConfigError(f"{shards[0]}: the webdataset shard is empty")
        if first[2] is None:
            raise MissingFieldError(f"sample {first[0]!r} has no caption under {caption_key!r}; set "
                                    "data.caption_key")

    def stream(self) -> Iterator[tuple[str, bytes | None, str | None]]:
        while True:
            yield from iter_webdataset(self.shards, self.caption_key)
