"""``parauni train``: stages I and II with one recipe, on one process or many (Hugging Face Accelerate). It reads
top to bottom: setup (data, model, optimizer), checkpoints, the step, the loop, the end; the parts it shares with
stage III are in :mod:`parauni.train.recipe`, the back-ends' shims in :mod:`parauni.train.distributed`.

AdamW (weight decay on >= 2-D parameters only), linear warm-up then cosine decay, gradient clipping,
``data.uncond_prob`` of captions replaced by the unconditional prompt, rectified-flow loss. A checkpoint holds the
trainable weights (``trainable.safetensors``), the optimizer, scheduler and RNG states; the data position is the
step. ``--resume`` reaches the same weights as an uninterrupted run, or refuses a changed config (see
:data:`parauni.utils.resume_config.RESUME_SAFE_KEYS`) unless ``--allow-config-change``.

Speed: micro-batches come from DataLoader processes (:mod:`parauni.train.batches`) as uint8; the loss and gradient
norm stay on the device, read (a non-finite loss stops the run) every ``train.log_every`` steps and before each
checkpoint; on CUDA under bf16 the frozen weights are bf16 and AdamW is fused; ``train.compile`` compiles.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, DivergedError
from ..pipelines.loading import build_model
from ..pipelines.weights import TRAINABLE_FILE
from ..utils.atomic import current_umask, ordinary_permissions
from ..utils.checkpoint_files import read_state
from ..utils.checkpoints import complete_checkpoints, write_checkpoint
from .batches import DeviceBatches
from .config import Config, save_config, trainable_parts
from .data import LatentSource, build_source
from .distributed import (
    DEEPSPEED,
    FSDP,
    TrainableCheckpointHooks,
    configure_deepspeed,
    deepspeed_setup,
    fsdp_on_cpu,
    refuse_sharded_evaluation,
    release_deepspeed,
    scalar,
)
from .loader import SampleLoader
from .model import FlowTrainModule, save_trainable
from .optim import decay_groups, retune, schedule_change, warmup_cosine
from .recipe import Recipe, flat

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
__all__ = ["Trainer", "checkpoints"]


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return complete_checkpoints(out, STATE_FILE)


class Trainer(DeviceBatches, TrainableCheckpointHooks, Recipe):
    """One training run of a :class:`Config`. ``run()`` trains to ``train.steps`` (or ``stop_after``)."""

    STATE_FILE, REQUIRED_FILES, COUNTER = STATE_FILE, (TRAINABLE_FILE,), "step"
    RUN_KIND, CONFIG = "training run", Config

    def __init__(self, cfg: Config, resume: bool | str = False, progress: bool = True,
                 allow_config_change: bool = False, evaluate=None, overwrite: bool = False):
        """``resume``: ``True`` / ``"latest"`` (the newest intact checkpoint), ``"auto"`` (that, or a fresh start)
        or a checkpoint folder. ``allow_config_change``: resume a config that changes the training (logged to
        config_changes.jsonl). ``evaluate``: the evaluation ``(pipe, out, images_per_prompt, steps, ...) -> summary``
        of ``train.eval_geneval`` (default: :data:`parauni.registry.EVALUATORS`' default). ``overwrite``: a fresh
        start into a folder holding another run moves that run aside (else it is refused)."""
        self.cfg, self.progress, self._evaluate, self.overwrite = cfg, progress, evaluate, overwrite
        # train.grad_accum is the one source of truth (the data order depends on it)
        self._setup_accelerator(grad_accum=cfg.train.grad_accum)
        fsdp_on_cpu(self.acc)
        deepspeed_setup(self.acc)
        refuse_sharded_evaluation(self.acc, cfg.train.eval_geneval)
        self._hold_output_folder(lambda: self._setup(resume, allow_config_change))

    # -- setup ---------------------------------------------------------------------------------------------
    def _setup(self, resume: bool | str, allow_config_change: bool) -> None:
        """The rest of ``__init__``, run while the output folder's lock is held: the checkpoint to resume from,
        checked (intact files, a compatible config) before anything is built, then the data, model, optimizer."""
        cfg, t = self.cfg, self.cfg.train
        self.step, self.samples_seen, self.config_changes = 0, 0, []
        self._claim_output_folder(resume, allow_config_change)
        self._ckpt = self._checked_checkpoint(resume, allow_config_change) if resume else None
        if t.eval_geneval and self._evaluate is None:
            self._chosen_evaluator()  # an unknown train.evaluator fails now, before any training
        # the data fails here, before any model is built, when it is empty or its caption key is wrong
        self.source = build_source(cfg.data, t.seed)
        self.pipe = build_model(cfg.model, t.seed)
        if isinstance(self.source, LatentSource):  # cached latents must fit this model's transformer
            tc = self.pipe.transformer.config
            self.source.check_model(tc.in_channels, cfg.data.resolution // self.pipe.vae_scale_factor)
        module = self._setup_model()
        opt = self._setup_optimizer(module)
        self.loader = SampleLoader(self.source, cfg.data, t.seed, t.batch_size, self.acc.num_processes,
                                   self.acc.process_index, t.grad_accum)
        if self.acc.distributed_type == DEEPSPEED:
            configure_deepspeed(self.acc, micro_batch=self.loader.micro, grad_accum=t.grad_accum,
                                global_batch=t.batch_size, max_grad_norm=cfg.optim.max_grad_norm)
        self.module, self.opt = self.acc.prepare(module, opt)
        self.acc.register_for_checkpointing(self.sched)
        self.acc.register_save_state_pre_hook(self._save_hook)
        self.acc.register_load_state_pre_hook(self._load_hook)
        self._setup_vae()
        self._pending: list[tuple[int, torch.Tensor, object]] = []  # (step, loss, grad norm) not yet read
        if self._ckpt is not None:
            self._resume(self._ckpt)

    def _setup_model(self) -> FlowTrainModule:
        """The trained parts in training mode. On CUDA under bf16 the frozen weights (VLM, VAE, stage I's transformer)
        are bf16 (autocast would run their matmuls in bf16 anyway), TF32 for the rest; on CPU nothing changes."""
        cuda = torch.cuda.is_available()
        self.parts = trainable_parts(self.cfg)
        module = FlowTrainModule(self.pipe, self.parts)
        self.bf16_frozen = cuda and self.acc.mixed_precision == "bf16"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.bf16_frozen:
            module.frozen_to(torch.bfloat16)
        module.set_gradient_checkpointing(self.cfg.model.gradient_checkpointing)
        module.conditioner.train()
        if "transformer" in self.parts:
            module.transformer.train()
        if self.cfg.train.compile:
            module.compile_parts()
        return module

    def _setup_optimizer(self, module: FlowTrainModule) -> torch.optim.Optimizer:
        """AdamW over the trainable weights (decay on >= 2-D ones) and the warm-up + cosine schedule."""
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("nothing to train: check train.stage / train.trainable")
        self.n_trainable = sum(p.numel() for _, p in named)
        o = self.cfg.optim
        # fused AdamW (one kernel for all parameters) needs them on CUDA before the optimizer is built; under
        # FSDP / DeepSpeed Accelerate places (and shards) the module itself
        fused = torch.cuda.is_available() and self.acc.distributed_type not in (FSDP, DEEPSPEED)
        if fused:
            module.to(self.acc.device)
        opt = torch.optim.AdamW(decay_groups((p for _, p in named), o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                eps=o.eps, **({"fused": True} if fused else {}))
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(o.warmup_steps, self.cfg.train.steps,
                                                                          o.min_lr_ratio))
        return opt

    # -- checkpoints ---------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>``: trainable weights + optimizer, scheduler, RNG states, step, config."""

        def write(folder: Path) -> None:
            save_config(self.cfg, folder / "config.yaml")
            state = {"step": self.step, "samples_seen": self.samples_seen,
                     "skipped_images": self.loader.skipped, "trainable": self.parts}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

        return write_checkpoint(self.acc, self.out, f"checkpoint-{self.step:07d}", write,
                                self.cfg.train.keep_last, STATE_FILE)

    def _resume_conditions(self, done: int) -> dict:  # the steps taken keep their learning rates
        return {"train.steps": schedule_change(self.cfg.optim.warmup_steps, self.cfg.optim.min_lr_ratio, done)}

    def _resume(self, ckpt: Path) -> None:
        self.acc.load_state(str(ckpt))
        state = read_state(ckpt / STATE_FILE)
        self.step = int(state["step"])
        self.samples_seen = int(state.get("samples_seen", self.step * self.cfg.train.batch_size))
        self.loader.skipped = int(state.get("skipped_images", 0))
        if self.config_changes:
            # --allow-config-change: the optimizer takes this config's settings (load_state restored the checkpoint's)
            o = self.cfg.optim
            factor = warmup_cosine(o.warmup_steps, self.cfg.train.steps, o.min_lr_ratio)
            self.sched.base_lrs = [o.lr for _ in self.sched.base_lrs]
            retune(self.opt, o, o.lr * factor(self.step), initial_lr=o.lr, eps=o.eps)
        logger.info("resumed from %s at step %d", ckpt, self.step)
        if self.step >= self.cfg.train.steps:
            logger.warning("%s is at step %d, and train.steps is %d: nothing is left to train (the weights stay "
                           "those of step %d); pass a larger train.steps to continue", ckpt.name, self.step,
                           self.cfg.train.steps, self.step)

    # -- the step ------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns the logged values as they are on the
        device (tensors: reading them would wait for the step; :meth:`check_steps` reads them every
        ``train.log_every`` steps and before each checkpoint)."""
        total = self.accumulate_gradients()
        # DeepSpeed clipped and stepped inside the last backward (its engine.step); Accelerate then returns
        # the engine's global norm here and makes opt.step / zero_grad no-ops (DeepSpeedOptimizerWrapper).
        grad_norm = self.acc.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad],
                                             self.cfg.optim.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self._batches_step = self.step if self._batches is not None else None
        self.samples_seen += self.cfg.train.batch_size
        self._pending.append((self.step, total, grad_norm))
        return {"loss": total, "lr": self.sched.get_last_lr()[0], "grad_norm": grad_norm}

    def accumulate_gradients(self) -> torch.Tensor:
        """Forward and backward the ``grad_accum`` micro-batches of ``self.step``; returns their mean loss.

        The gradient (DDP, FSDP, one process, DeepSpeed) is that of the mean loss over the global batch. The loss is
        *not* divided here: ``Accelerator.backward`` divides it by ``gradient_accumulation_steps``, and under
        DeepSpeed ``engine.backward`` does (``scale_wrt_gas``); dividing here too would scale it twice.
        ``Accelerator.accumulate`` syncs on the last micro-batch only: DDP / FSDP skip the reduction before it
        (``no_sync``), and DeepSpeed's wrapper calls ``engine.step`` there (not after every micro-batch).
        """
        t = self.cfg.train
        module, total = self.module, torch.zeros((), device=self.acc.device)
        self.acc.step = 0  # accumulate() counts micro-batches: sync on the grad_accum-th
        for micro in range(t.grad_accum):
            batch = self._next_batch()
            if (batch["step"], batch["micro"]) != (self.step, micro):
                raise RuntimeError(f"the data loader is at step {batch['step']} micro-batch {batch['micro']}, "
                                   f"the trainer at step {self.step} micro-batch {micro}")
            x0 = self._latents(batch["images"], batch["latents"])
            noise = batch["noise"].to(x0.device, non_blocking=True)
            sigma = batch["sigma"].to(x0.device, non_blocking=True)
            with self.acc.accumulate(module), self.acc.autocast():
                if self.acc.sync_gradients != (micro == t.grad_accum - 1):
                    raise RuntimeError(f"Accelerate's gradient sync ({self.acc.sync_gradients}) is off for "
                                       f"micro-batch {micro + 1} of train.grad_accum={t.grad_accum}")
                loss = module(batch["captions"], x0, noise, sigma)
                self.acc.backward(loss)
            total = total + loss.detach().float() / t.grad_accum
        return total

    def check_steps(self) -> dict:
        """Read the losses and gradient norms of the steps since the last check (one host sync and one
        all-reduce for all of them) and raise :class:`FloatingPointError` naming the first step whose loss is
        not finite. Returns the newest step's ``{"loss", "grad_norm"}`` as floats ({} when nothing is pending)."""
        if not self._pending:
            return {}
        steps = [s for s, _, _ in self._pending]
        losses = self.acc.reduce(torch.stack([loss.reshape(()) for _, loss, _ in self._pending]), reduction="mean")
        losses = losses.float().cpu().tolist()
        norm = scalar(self._pending[-1][2])
        self._pending.clear()
        for step, loss in zip(steps, losses, strict=True):
            if not math.isfinite(loss):
                raise DivergedError(
                    f"non-finite loss ({loss}) at step {step}; lower optim.lr, check the data, or resume from the "
                    f"last checkpoint in {self.out}")
        return {"loss": losses[-1], "grad_norm": norm}

    # -- the loop ------------------------------------------------------------------------------------------
    def _run(self, stop_after: int | None) -> dict:
        t = self.cfg.train
        self._start_output()
        if self.acc.log_with:
            self.acc.init_trackers("parauni", config=flat(self.cfg.to_dict()))
        end = t.steps if stop_after is None else min(stop_after, t.steps)
        # rows of steps after the checkpoint (an interrupted run) are redone: dropped first
        metrics = self._log("metrics.jsonl", lambda r: int(r.get("step", 0)) <= self.step)
        bar = tqdm(total=t.steps, initial=self.step, desc=f"stage {t.stage}", dynamic_ncols=True,
                   disable=not (self.acc.is_main_process and self.progress))
        t0, s0, smooth = time.perf_counter(), self.step, None
        try:
            while self.step < end:
                lr = self.train_step()["lr"]
                bar.update(1)
                # the step's numbers stay on the device (no host sync per step); they are read, checked for a
                # non-finite loss and logged every train.log_every steps and before every checkpoint
                logging_step = self.step % t.log_every == 0 or self.step == end
                saving_step = self.step % t.save_every == 0 or self.step == t.steps
                if not (logging_step or saving_step):
                    continue
                values = self.check_steps()
                if logging_step:
                    rate = (self.step - s0) / (time.perf_counter() - t0)
                    smooth = values["loss"] if smooth is None else 0.9 * smooth + 0.1 * values["loss"]
                    bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{lr:.2e}", its=f"{rate:.2f}")
                    row = {"step": self.step, "loss": values["loss"], "lr": lr, "grad_norm": values["grad_norm"],
                           "it_per_s": rate, "skipped_images": self.loader.skipped}
                    metrics.write(row)
                    self.acc.log({k: v for k, v in row.items() if k != "step"}, step=self.step)
                if saving_step:
                    self.save_checkpoint()
            self.check_steps()
        finally:
            self.close_loader()
            bar.close()
            metrics.close()
        return self._finish({"step": self.step, "loss": smooth, "seconds": time.perf_counter() - t0,
                             "skipped_images": self.loader.skipped, "trainable_parameters": self.n_trainable})

    # -- the end -------------------------------------------------------------------------------------------
    def _finish(self, result: dict) -> dict:  # after the last step: the final weights, the evaluation
        if self.step >= self.cfg.train.steps:
            save_trainable(self._raw(), self.out / TRAINABLE_FILE, write=self.acc.is_main_process)  # collective (FSDP)
            if self.acc.is_main_process:  # safetensors writes 0600: readable as ordinary new files are
                os.chmod(self.out / TRAINABLE_FILE, 0o666 & ~current_umask())
            self.acc.wait_for_everyone()
            if self.acc.is_main_process and self.cfg.train.eval_geneval:
                result.update(self.evaluate())  # "geneval" (and "geneval_cfg<scale>" for further scales)
        release_deepspeed(self.acc)
        self.acc.end_training()
        return result

    def evaluate(self) -> dict[str, dict]:
        """Export the trained pipeline to ``<out>/final`` and evaluate it into ``<out>/eval/geneval`` (and
        ``eval/geneval_cfg<scale>`` for each further ``train.eval_guidance_scales``); returns ``{folder: summary}``."""
        pipe = self.pipe
        pipe.conditioner.eval()
        pipe.transformer.eval()
        if self.bf16_frozen:  # the exported pipeline holds float32 weights, as built
            for part in [p for p in (pipe.vlm, pipe.transformer, pipe.vae) if p is not None]:
                part.float()
        pipe.save_pretrained(self.out / "final")
        ordinary_permissions(self.out / "final")
        return self._evaluations(pipe, "geneval", list(self.cfg.train.eval_guidance_scales or [None]),
                                 f"{self.out / 'final'} (step {self.step})")
