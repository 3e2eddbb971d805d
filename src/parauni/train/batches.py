"""Stage I/II micro-batches on the device: the DataLoader of :class:`parauni.train.loader.MicroBatches` started at
the trainer's step, and the latents ``x_0`` of each micro-batch (cached, or images through the VAE)."""

from __future__ import annotations

import torch

from .data import UnreadableSample, to_unit_range
from .loader import MicroBatches, micro_batch_loader


class DeviceBatches:
    """A part of :class:`parauni.train.trainer.Trainer`: reads its ``cfg``, ``acc``, ``loader``, ``pipe``,
    ``bf16_frozen`` and ``step``; holds the DataLoader's iterator and the step it is at."""

    _batches = None
    _batches_step: int | None = None
    _shape: tuple[int, ...] | None = None

    def _setup_vae(self) -> None:
        """The VAE on the device, frozen (bf16 with the other frozen weights)."""
        self.vae = self.pipe.vae
        if self.vae is not None:
            self.vae.to(self.acc.device, torch.bfloat16 if self.bf16_frozen else None).requires_grad_(False).eval()

    def _latents(self, images, latents) -> torch.Tensor:
        """Latents ``x_0`` of a micro-batch on the device: given (a latent cache), or the uint8 images uploaded,
        converted to [-1, 1] there and encoded by the VAE (bf16 under autocast on CUDA with bf16 weights)."""
        device = self.acc.device
        if latents is not None:
            return latents.to(device, non_blocking=True).float()
        images = to_unit_range(images.to(device, non_blocking=True))
        if self.vae is None:
            return images
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=self.bf16_frozen):
            return self.vae.encode(images.to(self.vae.dtype)).latent.float() * self.vae.config.scaling_factor

    def _latent_shape(self) -> tuple[int, ...]:
        """The shape of one sample's latents (the noise's shape): the first readable sample, through the VAE."""
        if self._shape is not None:
            return self._shape
        start = self.loader.first_index(0, 0)
        for k in range(start, start + self.loader.micro):
            try:
                first = self.loader.load(k, uint8=True)
            except UnreadableSample:
                continue
            if first.latents is not None:
                self._shape = tuple(first.latents.shape)
            else:
                self._shape = tuple(self._latents(first.image[None], None).shape[1:])
            return self._shape
        raise RuntimeError(f"every sample of step 0 ({start}..{start + self.loader.micro - 1}) is unreadable; "
                           "check the dataset")

    def _next_batch(self) -> dict:
        """The next micro-batch of this rank from the DataLoader (``data.num_workers`` processes, pinned memory
        on CUDA), started at ``self.step``; rebuilt if the step moved under it (a resume)."""
        if self._batches is None or self._batches_step != self.step:
            self.close_loader()
            d = self.cfg.data
            dataset = MicroBatches(self.loader, self._latent_shape(), d.uncond_prob, self.cfg.train.timesteps)
            self._batches = iter(micro_batch_loader(dataset, self.step, d.num_workers,
                                                    pin_memory=self.acc.device.type == "cuda"))
            self._batches_step = self.step
        batch = next(self._batches)
        self.loader.skipped += batch["skipped"]
        return batch

    def close_loader(self) -> None:
        """Stop the loader processes (a new iterator starts from ``self.step``)."""
        self._batches, self._batches_step = None, None
