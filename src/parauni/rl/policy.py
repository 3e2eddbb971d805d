"""The trainable policy of stage III as every algorithm uses it (a part of :class:`parauni.rl.grpo.RLTrainer`,
which sets ``params``, ``ema``, ``opt``, ``opt_step``, ``transformer``, ``reference_model``, ``acc`` and ``cfg``):
the optimizer step with its EMA, the KL term's reference, snapshots, distances and swaps of the weights, and the
weights as a checkpoint stores them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..train.optim import warmup_cosine
from .config import steps_per_epoch
from .lora import adapters_off, lora_delta_norm
from .objective import ema_decay, ema_due


class Policy:
    """The LoRA (and LIM) weights being trained, by name (``params``), and their EMA (``ema``)."""

    @property
    def raw_transformer(self):
        return self.acc.unwrap_model(self.transformer)

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The KL term's reference policy inside the block: the transformer with its LoRA adapter off
        (``model.finetune: lora``, as both references), or the frozen copy of the starting transformer (``full``)."""
        if self.reference_model is not None:
            yield self.reference_model
            return
        raw = self.raw_transformer
        with adapters_off(raw):
            yield raw

    def delta_norm(self) -> tuple[str, float]:
        """How far training has moved the transformer from its start, as ``(metric name, value)``: the LoRA's
        ``||scale * B A||`` (``diag/lora_delta_norm``), or ``||W - W_start||`` over every weight of a full
        fine-tune (``diag/weight_delta_norm``)."""
        raw = self.raw_transformer
        if self.reference_model is None:
            return "diag/lora_delta_norm", lora_delta_norm(raw)
        start = dict(self.reference_model.named_parameters())
        with torch.no_grad():
            total = sum(float((p.detach().float() - start[n].float()).pow(2).sum()) for n, p in raw.named_parameters())
        return "diag/weight_delta_norm", math.sqrt(total)

    def planned_steps(self) -> int:
        """Optimizer steps of the whole run as planned: ``train.epochs`` x the steps of an epoch on this many
        processes (:func:`parauni.rl.config.steps_per_epoch`; Flow-GRPO's dropped samples can make an epoch's
        steps fewer)."""
        return self.cfg.train.epochs * steps_per_epoch(self.cfg, self.acc.num_processes)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): ``optim.lr`` after the warm-up + cosine factor
        (:func:`parauni.train.optim.warmup_cosine` over :meth:`planned_steps`; constant by default)."""
        o = self.cfg.optim
        return o.lr * warmup_cosine(o.warmup_steps, self.planned_steps(), o.min_lr_ratio)(step)

    def optimizer_step(self) -> torch.Tensor:
        """Clip the accumulated gradients (``optim.max_grad_norm``), step AdamW at :meth:`lr_at` this step, then
        the EMA when due (:func:`objective.ema_decay` every ``optim.ema_every`` steps); returns the gradient norm
        ``(1,)``."""
        o = self.cfg.optim
        if self.cfg.model.train_lim and self.acc.num_processes > 1:
            # DDP averages the transformer's gradients; the LIM is outside it, so average its gradients here, or
            # each process would train its own LIM
            for n, p in self.params.items():
                if n.startswith("conditioner.") and p.grad is not None:
                    p.grad = self.acc.reduce(p.grad, reduction="mean")
        norm = self.acc.clip_grad_norm_(list(self.params.values()), o.max_grad_norm)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.opt_step)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if ema_due(self.opt_step, o.ema_every):
            keep = ema_decay(self.opt_step, o.ema_decay, o.ema_warmup)
            with torch.no_grad():
                for n, p in self.params.items():
                    self.ema[n].mul_(keep).add_(p.detach(), alpha=1 - keep)
        self.opt_step += 1
        return torch.as_tensor(norm, dtype=torch.float32).reshape(1).cpu()

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the trainable weights (for :meth:`distance_from`)."""
        return [p.detach().clone() for p in self.params.values()]

    def distance_from(self, before: list[torch.Tensor]) -> float:
        """``||theta - before||`` over every trainable weight: how far one update moved them."""
        return sum(float((p.detach() - b).float().pow(2).sum())
                   for p, b in zip(self.params.values(), before, strict=True)) ** 0.5

    @contextmanager
    def swapped_weights(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """The trainable weights replaced by ``values`` (same names) inside the block, restored after it."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(values[n])
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def _weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The trainable weights (or their EMA) as float32 CPU tensors, as a checkpoint stores them."""
        src = self.ema if ema else {n: p.detach() for n, p in self.params.items()}
        return {n: v.float().cpu().contiguous() for n, v in src.items()}

    def _load_weights(self, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> None:
        """The trainable weights and their EMA from a checkpoint's tensors (same names)."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n].to(p.dtype))
                self.ema[n] = ema[n].to(p.device, p.dtype)
