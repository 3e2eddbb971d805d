"""The trainable policy of stage III, one object the trainer holds (:class:`Policy`): the weights being trained
by name, their EMA, AdamW and the optimizer-step clock, the KL term's reference, snapshots, distances and swaps of
the weights, and the weights as a checkpoint stores them."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..train.distributed import DEEPSPEED, FSDP, configure_deepspeed, fsdp_wrap_present, scalar
from ..train.optim import decay_groups, warmup_cosine
from ..train.sharded import gathered, shard_like, whole
from .config import steps_per_epoch
from .lora import adapters_off, lora_delta_norm, make_trainable
from .objective import ema_decay, ema_due


def planned_steps(cfg, processes: int) -> int:
    """Optimizer steps of the whole run as planned: ``train.epochs`` x the steps of an epoch on ``processes``
    processes (:func:`parauni.rl.config.steps_per_epoch`; an algorithm that drops samples can make an epoch's steps
    fewer)."""
    return cfg.train.epochs * steps_per_epoch(cfg, processes)


class Policy:
    """The LoRA (or, with ``model.finetune: full``, every transformer weight) and optionally the LIM, trained.

    ``params``: name -> trainable tensor (``transformer.*``, ``conditioner.*``); ``ema``: their EMA; ``opt``:
    AdamW; ``transformer``: the Accelerate-prepared transformer; ``reference_model``: the frozen starting
    transformer of a full fine-tune (``None`` for a LoRA: its reference is the adapter off); ``step``: the optimizer
    steps taken (the learning-rate schedule's and the EMA's clock).

    Sharded weights: under FSDP2 each trainable tensor is a ``DTensor`` shard, and so are its EMA, snapshots and
    an old policy's copy (elementwise updates on the shards are the whole tensor's, shard by shard); under
    DeepSpeed ZeRO-3 they are gathered (:meth:`gathered`) wherever they are read or written, and the EMA and
    copies are whole. Whole values leave (:meth:`weights`) and enter (:meth:`load_weights`) only whole. Every
    method here is then a collective: every process calls it.

    DeepSpeed's bf16 (``--mixed_precision bf16`` under ZeRO-2 or ZeRO-3, :attr:`master`): the engine casts the
    module's weights to bf16 and keeps float32 master weights in its optimizer, partitioned across processes (both
    stages). Rollouts and updates run the module, so both see the same bf16 weights (an on-policy update starts at
    ratio 1). Everything kept *of* the weights is taken from the float32 master weights instead
    (:meth:`current`, gathered by ``deepspeed.utils.safe_get_full_fp32_param``): the EMA, snapshots and
    distances, an old policy's copy and the checkpoint's ``trainable`` tensors, all float32. The master weights
    are what the optimizer trains; an update below bf16's rounding (2^-9 relative) moves them but leaves the
    module's bf16 copy unchanged, so an EMA or distance read from that copy would miss it, and a checkpoint would
    not hold what the engine resumes from. The bf16 copy is the master rounded to nearest, so a rollout with the
    EMA or old weights swapped in (:meth:`swapped_weights`, rounded as they are written) runs what the engine
    would run with those master weights."""

    def __init__(self, cfg, acc, pipe):
        """LoRA on ``pipe``'s transformer (and the LIM with ``model.train_lim``) as the trainable policy, its EMA
        and AdamW, prepared by the Accelerator ``acc``."""
        m, o, t = cfg.model, cfg.optim, cfg.train
        self.cfg, self.acc, self.step = cfg, acc, 0
        tr = pipe.transformer.to(acc.device)
        torch.manual_seed(t.seed)
        make_trainable(tr, m)
        # a full fine-tune keeps the starting transformer: the KL term's reference and the distance travelled
        self.reference_model = copy.deepcopy(tr).requires_grad_(False).eval() if m.finetune == "full" else None
        tr.train()
        if m.train_lim:
            pipe.conditioner.lim.requires_grad_(True)
        self.conditioner = pipe.conditioner
        opt = torch.optim.AdamW(decay_groups(self._trainable(tr).values(), o.weight_decay), lr=o.lr,
                                betas=tuple(o.betas), eps=o.eps)
        self.deepspeed, self.fsdp = acc.distributed_type == DEEPSPEED, acc.distributed_type == FSDP
        # every forward and backward pass communicates (FSDP2's all-gathers, ZeRO's reductions): every process
        # runs as many as the busiest one
        self.lockstep = self.deepspeed or self.fsdp
        if self.deepspeed:  # the engine steps (and clips) inside the last backward pass of each optimizer step
            configure_deepspeed(acc, micro_batch=o.train_batch, grad_accum=1,
                                global_batch=o.train_batch * acc.num_processes, max_grad_norm=o.max_grad_norm)
        if self.fsdp:
            fsdp_wrap_present(acc, tr)
        self.transformer, self.opt = acc.prepare(tr, opt)
        # FSDP2 replaces each parameter by a DTensor shard (and the optimizer's references with it): the
        # trainable tensors are read from the prepared module
        self.params = self._trainable(self.raw_transformer)
        # DeepSpeed's bf16: bf16 module weights, float32 master weights in the optimizer (the class docstring)
        self.master = self.deepspeed and acc.state.deepspeed_plugin.deepspeed_config.get("bf16", {}).get(
            "enabled") in (True, "true")
        with self.current() as cur:
            self.ema = {n: v.detach().clone() for n, v in cur.items()}
        self.set_lr()
        acc.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        acc.register_load_state_pre_hook(lambda models, inp: models.clear())

    def _trainable(self, transformer) -> dict[str, torch.Tensor]:
        """name -> trainable tensor of ``transformer`` (and of the LIM with ``model.train_lim``)."""
        params = {f"transformer.{n}": p for n, p in transformer.named_parameters() if p.requires_grad}
        if self.cfg.model.train_lim:
            params.update({f"conditioner.{n}": p for n, p in self.conditioner.named_parameters() if p.requires_grad})
        return params

    @property
    def raw_transformer(self):
        return self.acc.unwrap_model(self.transformer)

    def gathered(self, modify: bool = False):
        """Context manager: under DeepSpeed ZeRO-3 the trainable tensors whole inside the block (with ``modify``,
        written back to their partitions after it); elsewhere nothing (:func:`parauni.train.sharded.gathered`)."""
        return gathered(self.params.values(), modify)

    @contextmanager
    def current(self) -> Iterator[dict[str, torch.Tensor]]:
        """name -> the current value of each trainable tensor, inside the block: under DeepSpeed's bf16 the whole
        float32 master weights (:attr:`master`; gathered by ``safe_get_full_fp32_param``, a collective), else the
        trainable tensors themselves (ZeRO-3 partitions gathered for the block, FSDP2 shards as they are)."""
        if self.master:
            from deepspeed.utils import safe_get_full_fp32_param

            yield {n: safe_get_full_fp32_param(p).detach() for n, p in self.params.items()}
            return
        with self.gathered():
            yield {n: p.detach() for n, p in self.params.items()}

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
        with torch.no_grad(), gathered(raw.parameters()):
            total = sum(float((whole(p.detach()).float() - start[n].float()).pow(2).sum())
                        for n, p in raw.named_parameters())
        return "diag/weight_delta_norm", math.sqrt(total)

    def planned_steps(self) -> int:
        """Optimizer steps of the whole run as planned (:func:`planned_steps`)."""
        return planned_steps(self.cfg, self.acc.num_processes)

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): ``optim.lr`` after the warm-up + cosine factor
        (:func:`parauni.train.optim.warmup_cosine` over :meth:`planned_steps`; constant by default)."""
        o = self.cfg.optim
        return o.lr * warmup_cosine(o.warmup_steps, self.planned_steps(), o.min_lr_ratio)(step)

    def set_lr(self) -> None:
        """The optimizer's learning rate for the next step, :meth:`lr_at` of :attr:`step` (set ahead: under
        DeepSpeed the engine steps inside the last backward pass)."""
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)

    @contextmanager
    def micro_step(self, sync: bool) -> Iterator[None]:
        """A micro-batch's forward and backward passes inside the block; gradients are synced across processes
        (and under DeepSpeed the engine clips and steps) only with ``sync``, the last pass of an optimizer step.
        DDP: ``no_sync`` around the others; DeepSpeed: Accelerate's ``sync_gradients``, which its engine wrapper
        turns into ``set_gradient_accumulation_boundary`` (``gradient_accumulation_steps: 1`` in its config, so a
        step accumulates as many passes as the update runs)."""
        if self.deepspeed:
            self.acc.gradient_state._set_sync_gradients(sync)
            try:
                yield
            finally:
                self.acc.gradient_state._set_sync_gradients(True)
        elif sync:
            yield
        else:
            with self.acc.no_sync(self.transformer):
                yield

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
        if self.deepspeed:  # the engine has clipped and stepped at the step's last backward pass
            norm = scalar(self.acc.deepspeed_engine_wrapped.engine.get_global_grad_norm())
        else:
            norm = scalar(self.acc.clip_grad_norm_(list(self.params.values()), o.max_grad_norm))
            self.set_lr()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.set_lr()
        # both references count this step in: their global_step is incremented before ema.step(global_step)
        # (flow_grpo scripts/train_sd3.py:952-955; DiffusionNFT scripts/train_nft_sd3.py:1021, 1029), so the first
        # update's decay is min(2 / 11, ema_decay)
        if ema_due(self.step, o.ema_every):
            keep = ema_decay(self.step, o.ema_decay, o.ema_warmup)
            with torch.no_grad(), self.current() as cur:
                for n, v in cur.items():
                    self.ema[n].mul_(keep).add_(v, alpha=1 - keep)
        return torch.as_tensor(norm, dtype=torch.float32).reshape(1).cpu()

    def snapshot(self) -> list[torch.Tensor]:
        """A copy of the trainable weights (for :meth:`distance_from`)."""
        with self.current() as cur:
            return [v.clone() for v in cur.values()]

    def distance_from(self, before: list[torch.Tensor]) -> float:
        """``||theta - before||`` over every trainable weight: how far one update moved them."""
        with self.current() as cur:
            return sum(scalar((v - b).float().pow(2).sum())
                       for v, b in zip(cur.values(), before, strict=True)) ** 0.5

    @contextmanager
    def swapped_weights(self, values: dict[str, torch.Tensor]) -> Iterator[None]:
        """The trainable weights replaced by ``values`` (same names, laid out as :attr:`ema`) inside the block,
        restored after it."""
        with self.gathered():
            backup = {n: p.detach().clone() for n, p in self.params.items()}
        try:
            with torch.no_grad(), self.gathered(modify=True):
                for n, p in self.params.items():
                    p.copy_(values[n])
            yield
        finally:
            with torch.no_grad(), self.gathered(modify=True):
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """The trainable weights (:meth:`current`: the master weights under DeepSpeed's bf16) or their EMA as whole
        float32 CPU tensors, as a checkpoint stores them."""
        if ema:
            return self.as_whole(self.ema)
        with self.current() as cur:
            return _whole_float32(cur)

    def as_whole(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors laid out as :attr:`ema` (names of :attr:`params`) as whole float32 CPU tensors: FSDP2 shards
        all-gathered; under ZeRO-3 they are whole already (the trainable partitions need no gathering)."""
        return _whole_float32(tensors)

    def whole_shapes(self) -> dict[str, torch.Tensor]:
        """name -> an empty (meta) tensor of each trainable tensor's whole shape, for checking a checkpoint's
        tensors (a ZeRO-3 partitioned parameter's own shape is empty; its whole one is ``ds_shape``)."""
        return {n: torch.empty(getattr(p, "ds_shape", p.shape), device="meta") for n, p in self.params.items()}

    def laid_out(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Whole tensors (names of :attr:`params`) laid out as :attr:`ema` is: shards of the trainable tensors'
        under FSDP2, whole elsewhere, on their device and dtype (float32 under DeepSpeed's bf16, as the master
        weights)."""
        if self.master:
            return {n: v.to(self.params[n].device, torch.float32) for n, v in tensors.items()}
        return {n: shard_like(self.params[n], v) for n, v in tensors.items()}

    def load_weights(self, weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor]) -> None:
        """The trainable weights and their EMA from a checkpoint's whole tensors (same names)."""
        with torch.no_grad(), self.gathered(modify=True):
            for n, v in self.laid_out(weights).items():
                self.params[n].copy_(v)
        self.ema = self.laid_out(ema)


def _whole_float32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole float32 CPU copies of ``tensors`` (FSDP2 shards all-gathered: a collective)."""
    return {n: whole(v.detach()).float().cpu().clone().contiguous() for n, v in tensors.items()}
