"""Samples in their global order: :class:`SampleLoader` (sample ``k`` of a run, its crop, caption drop and noise
from ``(seed, k)`` alone), :class:`MicroBatches` and :func:`micro_batch_loader` (whole micro-batches for a
``torch.utils.data.DataLoader``, resumable at any step), and :func:`cache_latents`, which encodes a source once in
that order (see :mod:`parauni.train.data` for the sources and the order's rules)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError, UsageError
from ..flow import sample_sigmas
from .data import (
    Sample,
    UnreadableSample,
    WebDatasetSource,
    crop_resize_uint8,
    open_image,
    sample_generator,
    to_unit_range,
)

logger = logging.getLogger(__name__)


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
            pil = open_image(image, key)
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
