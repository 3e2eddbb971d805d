"""Training data: image-caption pairs from four layouts, addressed by a global sample index.

Every sample of a run has a global index ``k``: step ``s`` uses samples ``s * G .. (s + 1) * G - 1``
(``G`` the global batch) and process ``r`` of ``W`` takes its contiguous share of each micro-batch. The
random crop, the caption drop and the diffusion noise of sample ``k`` depend only on ``(seed, k)``, so a
run with ``W`` processes sees the same global batches as one with one process, and a resumed run
continues exactly where it stopped (its position is ``step * G``). :class:`MicroBatches` turns this order
into a dataset of whole micro-batches for a ``torch.utils.data.DataLoader`` (``data.num_workers``
processes); since every micro-batch is made from its global indices alone, the number of processes does not
change what the run sees. A webdataset stream is read by every loader process up to its own samples
(only those are decoded).

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
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import ConfigError, UsageError
from ..flow import sample_sigmas
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


def _open_image(data: bytes | str | Path, name: str) -> Image.Image:
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
        return _open_image(self.root / rec["image"], str(rec["image"])), self.caption(k)


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
        return _open_image(f, str(f)), f.with_suffix(".txt").read_text().strip()


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
    """Latents written by :func:`cache_latents`: shards ``latents-XXXXX.safetensors`` + ``index.json``."""

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


class SampleLoader:
    """This process's samples of each global batch, in order; unreadable images are skipped and counted.

    ``take(step, micro)`` returns the micro-batch ``micro`` (of ``grad_accum``) of ``step`` for this rank:
    global samples ``step * G + (micro * W + rank) * b + i`` for ``i < b``, with ``b`` the micro-batch
    size. A sample that cannot be read is replaced by a readable sample of the same micro-batch, so the
    batch size stays fixed.
    """

    def __init__(self, source, data_cfg, seed: int, global_batch: int, world: int, rank: int, grad_accum: int = 1,
                 shuffle: bool = True):
        if global_batch % (world * grad_accum):
            raise ConfigError(f"train.batch_size={global_batch} is not divisible by processes ({world}) x "
                              f"train.grad_accum ({grad_accum})")
        self.source, self.cfg, self.seed = source, data_cfg, seed
        self.global_batch, self.world, self.rank, self.grad_accum = global_batch, world, rank, grad_accum
        self.micro = global_batch // (world * grad_accum)
        self.shuffle = shuffle
        self.skipped = 0
        self._stream, self._stream_pos = None, 0
        self._perm_epoch, self._perm = None, None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The dataset order of ``epoch``: ``randperm(n)`` seeded by ``(seed, epoch)``, computed once per epoch
        (the last one is kept, so each sample costs O(1) rather than the O(n) of a fresh permutation)."""
        if self._perm_epoch != epoch:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.source.length, generator=gen), epoch
        return self._perm

    def index_of(self, k: int) -> int:
        """Dataset index of global sample ``k``: a fresh seeded permutation every epoch (with ``shuffle``)."""
        n = self.source.length
        if n is None or not self.shuffle:
            return k
        epoch, pos = divmod(k, n)
        return int(self.permutation(epoch)[pos])

    def _stream_get(self, k: int) -> tuple[bytes | None, str | None, str]:
        if self._stream is None or self._stream_pos > k:
            self._stream, self._stream_pos = self.source.stream(), 0
        while self._stream_pos < k:
            next(self._stream)
            self._stream_pos += 1
        key, image, caption = next(self._stream)
        self._stream_pos += 1
        return image, caption, key

    def load(self, k: int, uint8: bool = False) -> Sample:
        """Global sample ``k`` (raises :class:`UnreadableSample` for a bad image); ``uint8``: the image as
        ``(3, R, R)`` uint8 instead of float in [-1, 1] (:func:`to_unit_range` converts it)."""
        gen = sample_generator(self.seed, k, 0)
        if isinstance(self.source, WebDatasetSource):
            image, caption, key = self._stream_get(k)
            if image is None or caption is None:
                raise UnreadableSample(f"{key}: no image or caption")
            pil = _open_image(image, key)
        else:
            item, caption = self.source.get(self.index_of(k))
            if isinstance(item, torch.Tensor):
                return Sample(None, caption, item)
            pil = item
        pixels = crop_resize_uint8(pil, self.cfg.resolution, gen)
        return Sample(pixels if uint8 else to_unit_range(pixels), caption)

    def first_index(self, step: int, micro: int) -> int:
        """Global index of the first sample of this rank's micro-batch ``micro`` of ``step``."""
        return step * self.global_batch + (micro * self.world + self.rank) * self.micro

    def micro_batch(self, step: int, micro: int, uint8: bool = False) -> tuple[list[Sample], int]:
        """This rank's micro-batch ``micro`` of ``step`` and how many of its samples were unreadable (each is
        logged and replaced by a readable sample of the same micro-batch). Counts nothing itself, so it can run
        in a loader process; :meth:`take` counts."""
        start = self.first_index(step, micro)
        samples: list[Sample | None] = []
        for k in range(start, start + self.micro):
            try:
                samples.append(self.load(k, uint8))
            except UnreadableSample as err:
                logger.warning("skipping unreadable sample %d (%s)", k, err)
                samples.append(None)
        good = [s for s in samples if s is not None]
        if not good:
            raise RuntimeError(f"every sample of step {step} ({start}..{start + self.micro - 1}) is unreadable; "
                               "check the dataset")
        skipped = len(samples) - len(good)
        return [s if s is not None else good[i % len(good)] for i, s in enumerate(samples)], skipped

    def take(self, step: int, micro: int) -> list[Sample]:
        """This rank's micro-batch ``micro`` of ``step`` (see :meth:`micro_batch`), counting skipped samples."""
        samples, skipped = self.micro_batch(step, micro)
        self.skipped += skipped
        return samples


def collate(samples: list[Sample]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """``(images (B, 3, R, R) or None, latents (B, C, h, w) or None, captions)``."""
    images = torch.stack([s.image for s in samples]) if samples[0].image is not None else None
    latents = torch.stack([s.latents for s in samples]) if samples[0].latents is not None else None
    return images, latents, [s.caption for s in samples]


def per_sample_inputs(ids: list[int], seed: int, uncond_prob: float, shape: tuple[int, ...], timesteps: str):
    """Caption-drop flags ``(B,)``, noise ``(B, *shape)`` and flow times ``(B,)`` of global samples ``ids``."""
    drops, noises, sigmas = [], [], []
    for k in ids:
        drops.append(bool(torch.rand(1, generator=sample_generator(seed, k, 1)) < uncond_prob))
        noises.append(torch.randn(shape, generator=sample_generator(seed, k, 2)))
        sigmas.append(sample_sigmas(1, sample_generator(seed, k, 3), mode=timesteps))
    return drops, torch.stack(noises), torch.cat(sigmas)


class MicroBatches(torch.utils.data.Dataset):
    """The training micro-batches as a map-style dataset for :class:`torch.utils.data.DataLoader`: item
    ``(step, micro)`` is everything the step needs from the host, made from global sample indices only, so it
    is the same in the main process and in any loader process (and after a resume):

    ``images`` (B, 3, R, R) uint8 or None, ``latents`` (B, C, h, w) or None, ``captions`` (``None`` where the
    caption is dropped for classifier-free guidance), ``noise`` (B, *latent_shape), ``sigma`` (B,) and
    ``skipped`` (unreadable samples replaced in this micro-batch). Decoding, cropping, resizing and the noise
    thus run in ``data.num_workers`` processes while the device trains.
    """

    def __init__(self, loader: SampleLoader, latent_shape: tuple[int, ...], uncond_prob: float, timesteps: str):
        self.loader, self.latent_shape = loader, tuple(latent_shape)
        self.uncond_prob, self.timesteps = uncond_prob, timesteps

    def __len__(self) -> int:  # addressed by (step, micro) through a sampler; the length is not used
        return 0

    def __getitem__(self, key: tuple[int, int]) -> dict:
        step, micro = key
        samples, skipped = self.loader.micro_batch(step, micro, uint8=True)
        start = self.loader.first_index(step, micro)
        images, latents, captions = collate(samples)
        drops, noise, sigma = per_sample_inputs(range(start, start + len(samples)), self.loader.seed,
                                                self.uncond_prob, self.latent_shape, self.timesteps)
        captions = [None if drop else c for c, drop in zip(captions, drops, strict=True)]
        return {"step": step, "micro": micro, "images": images, "latents": latents, "captions": captions,
                "noise": noise, "sigma": sigma, "skipped": skipped}


class StepOrder(torch.utils.data.Sampler):
    """``(step, micro)`` for ``step = start, start + 1, ...`` (endless) and ``micro < grad_accum``."""

    def __init__(self, start: int, grad_accum: int):
        self.start, self.grad_accum = start, grad_accum

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start
        while True:
            for micro in range(self.grad_accum):
                yield step, micro
            step += 1


def _whole(batch):
    """The DataLoader's collate for items that are already micro-batches."""
    return batch


def micro_batch_loader(dataset: MicroBatches, start_step: int, num_workers: int, pin_memory: bool,
                       prefetch_factor: int = 2) -> torch.utils.data.DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over ``dataset``'s micro-batches from ``start_step`` on, with
    ``num_workers`` processes (0: in this process, as before), pinned memory for asynchronous uploads to a
    GPU, and ``prefetch_factor`` micro-batches in flight per process."""
    extra = dict(prefetch_factor=prefetch_factor, persistent_workers=False) if num_workers else {}
    order = StepOrder(start_step, dataset.loader.grad_accum)
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=order, num_workers=num_workers,
                                       collate_fn=_whole, pin_memory=pin_memory, **extra)


@torch.no_grad()
def cache_latents(source, data_cfg, vae, out_dir: str | Path, seed: int = 0, batch_size: int = 64,
                  shard_size: int = 4096, limit: int | None = None, progress: bool = True) -> dict:
    """Encode a finite source once with ``vae`` into ``latents-XXXXX.safetensors`` shards + ``index.json``.

    Each image gets one random crop (from its own index) before encoding; latents are stored scaled by
    the VAE's ``scaling_factor``, as training uses them. Unreadable images are skipped and counted.
    """
    n = source.length if source.length is not None else limit
    if n is None:
        raise UsageError("a stream without a length needs --limit to be cached")
    n = min(n, limit) if limit else n
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loader = SampleLoader(source, data_cfg, seed, 1, 1, 0, shuffle=False)  # cache in dataset order
    device, dtype = vae.device, vae.dtype
    shards, captions, buf, buf_caps, skipped = [], [], [], [], 0

    def flush() -> None:
        if not buf:
            return
        name = f"latents-{len(shards):05d}.safetensors"
        save_file({"latents": torch.cat(buf).contiguous()}, str(out / (name + ".tmp")))
        (out / (name + ".tmp")).replace(out / name)
        shards.append(name)
        captions.extend(buf_caps)
        buf.clear()
        buf_caps.clear()

    bar = tqdm(total=n, desc="cache-latents", unit="img", disable=not progress)
    pending: list[Sample] = []
    for k in range(n):
        try:
            pending.append(loader.load(k))
        except UnreadableSample as err:
            skipped += 1
            logger.warning("skipping unreadable sample %d (%s)", k, err)
        if len(pending) == batch_size or (k == n - 1 and pending):
            images = torch.stack([s.image for s in pending]).to(device, dtype)
            lat = vae.encode(images).latent * vae.config.scaling_factor
            buf.append(lat.float().cpu())
            buf_caps.extend(s.caption for s in pending)
            pending = []
            if sum(len(b) for b in buf) >= shard_size:
                flush()
        bar.update(1)
    flush()
    bar.close()
    info = {"shards": shards, "captions": captions, "skipped": skipped, "resolution": data_cfg.resolution}
    (out / "index.json.tmp").write_text(json.dumps(info))
    (out / "index.json.tmp").replace(out / "index.json")
    return {"samples": len(captions), "skipped": skipped, "shards": len(shards), "out_dir": str(out)}
