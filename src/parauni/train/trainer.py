"""``parauni train``: stages I and II with one recipe, on one process or many (Hugging Face Accelerate).

AdamW (weight decay on >= 2-D parameters only), linear warm-up then cosine decay, gradient clipping,
``data.uncond_prob`` of captions replaced by the unconditional prompt, rectified-flow loss. Only the
trainable weights are checkpointed (``trainable.safetensors``), together with the optimizer, the
scheduler and the RNG states through ``Accelerator.save_state``; the data position is the step. Every
checkpoint is written to ``checkpoint-XXXXXXX.tmp`` and renamed when complete; the last
``train.keep_last`` stay. ``--resume`` continues from the newest intact checkpoint and reaches the
same weights as an uninterrupted run: it refuses a config that differs from the checkpoint's in a key that
changes the training (:data:`parauni.utils.checkpoints.RESUME_SAFE_KEYS` lists the ones that may change) unless
``--allow-config-change``, and cuts ``metrics.jsonl`` back to the checkpoint's step before appending.

Speed: micro-batches come from a ``torch.utils.data.DataLoader`` with ``data.num_workers`` processes
(:class:`parauni.train.data.MicroBatches`: decoding, cropping and the noise happen there; the results do not
depend on the number of processes), images travel as uint8, and the step never waits for the host: the loss
and gradient norm stay on the device and are read (and a non-finite loss stops the run, naming its step) every
``train.log_every`` steps and before each checkpoint. On CUDA under bf16 the frozen weights are bf16, TF32 is on
and AdamW is fused; ``train.compile`` compiles the transformer and the connector.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, ProjectConfiguration
from safetensors import safe_open
from tqdm.auto import tqdm

from ..errors import ConfigError, DivergedError, UsageError
from ..pipelines.loading import build_model
from ..pipelines.weights import TRAINABLE_FILE, load_trainable
from ..registry import EVALUATORS
from ..utils.checkpoints import (
    check_resume_config,
    complete_checkpoints,
    newest_intact,
    resume_path,
    truncate_jsonl,
    write_checkpoint,
)
from ..utils.locks import owned_lock, with_lock
from .config import Config, load_config, resolve_precision, save_config, to_yaml_dict, trainable_parts
from .data import (
    LatentSource,
    MicroBatches,
    SampleLoader,
    UnreadableSample,
    build_source,
    micro_batch_loader,
    per_sample_inputs,
    to_unit_range,
)
from .model import FlowTrainModule, save_trainable
from .optim import decay_groups, group_weight_decay, warmup_cosine

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
# accelerate.utils.DistributedType values (a str enum; compared as strings so importing this module does
# not import Accelerate)
FSDP, DEEPSPEED, MULTI_CPU = "FSDP", "DEEPSPEED", "MULTI_CPU"


def _fsdp_on_cpu(acc) -> None:
    """Honour an FSDP launch (``ACCELERATE_USE_FSDP=true``) on CPU processes (gloo).

    ``AcceleratorState`` switches to FSDP only for accelerator device types (CUDA, XPU, ...); CPU
    processes stay ``MULTI_CPU`` and would silently train unsharded under ``accelerate launch --cpu
    --config_file configs/accelerate/fsdp.yaml``. FSDP2's ``fully_shard`` itself runs on a CPU device mesh
    over gloo, so here the shared state is switched to FSDP with the plugin Accelerate builds from the
    launcher's ``FSDP_*`` variables; ``prepare``, ``no_sync``, ``clip_grad_norm_`` and ``save_state`` /
    ``load_state`` then take Accelerate's own FSDP2 paths (used by tests/test_distributed.py). FSDP1
    (``fsdp_version: 1``) is refused: it needs a CUDA device.
    """
    if acc.distributed_type != MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP on CPU processes needs fsdp_version: 2 (FSDP2, fully_shard), got "
                          f"{plugin.fsdp_version}; set fsdp_config.fsdp_version: 2 in the accelerate config")
    if acc.state.mixed_precision != "no":  # as AcceleratorState does when it selects FSDP itself
        plugin.set_mixed_precision(acc.state.mixed_precision)
    # Both shared dicts: a later AcceleratorState() copies PartialState's distributed_type over its own.
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def _configure_deepspeed(acc, micro_batch: int, grad_accum: int, global_batch: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config from the training config before ``Accelerator.prepare``.

    ``Accelerator._prepare_deepspeed`` takes ``train_micro_batch_size_per_gpu`` from a prepared
    DataLoader's ``batch_size`` and raises without one; this trainer reads its own global sample order
    (``SampleLoader``), so the value is set here. ``gradient_accumulation_steps`` must equal
    ``train.grad_accum``: DeepSpeed divides each micro-batch loss by it and steps once per that many
    micro-batches (a mismatch in the launch config would make Accelerate use DeepSpeed's value).
    ``gradient_clipping`` is ``optim.max_grad_norm`` (DeepSpeed clips inside ``engine.step``).
    """
    plugin = acc.state.deepspeed_plugin
    if plugin.zero_stage == 3:
        raise ConfigError("DeepSpeed ZeRO-3 partitions the trainable weights, which trainable.safetensors and "
                          "resuming do not gather; use zero_stage: 2 (configs/accelerate/deepspeed_zero2.yaml) "
                          "or FSDP (configs/accelerate/fsdp.yaml)")
    conf = plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
              "train_batch_size": global_batch, "gradient_clipping": max_grad_norm}
    for key, value in wanted.items():
        old = conf.get(key, "auto")
        launcher_default = key == "gradient_accumulation_steps" and old == 1  # accelerate launch's default
        if old != "auto" and old != value and not launcher_default:
            logger.warning("DeepSpeed %s=%s in the launch config is replaced by %s from the training config",
                           key, old, value)
        conf[key] = value
    acc.gradient_accumulation_steps = grad_accum


def _scalar(x) -> float:
    """A float from a tensor, an FSDP2 DTensor (the norm of sharded gradients) or DeepSpeed's float/None."""
    if x is None:
        return float("nan")
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return complete_checkpoints(out, STATE_FILE)


__all__ = ["Trainer", "checkpoints", "export", "per_sample_inputs"]  # per_sample_inputs lives in .data


class Trainer:
    """One training run of a :class:`Config`. ``run()`` trains to ``train.steps`` (or ``stop_after``)."""

    def __init__(self, cfg: Config, resume: bool | str = False, progress: bool = True,
                 allow_config_change: bool = False, evaluate=None):
        """``resume``: ``True`` / ``"latest"`` (the newest intact checkpoint), ``"auto"`` (that, or a fresh start)
        or a checkpoint folder. ``allow_config_change``: resume even when the config differs from the
        checkpoint's in a key that changes the training (the differences are logged to config_changes.jsonl).
        ``evaluate``: the GenEval-style evaluation ``(pipe, out, images_per_prompt, steps, ...) -> summary`` run
        with ``train.eval_geneval`` (default: the default of :data:`parauni.registry.EVALUATORS`, a plugin's)."""
        self.cfg, self.progress, self._evaluate = cfg, progress, evaluate
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.out = Path(t.output_dir)
        cuda = torch.cuda.is_available()
        log_with = None
        if t.logger != "none":
            log_with = t.logger
            if t.logger == "tensorboard":
                try:
                    import tensorboard  # noqa: F401 - only this logger needs it: probed for a clear error
                except ImportError as err:
                    raise ImportError("train.logger=tensorboard needs `pip install tensorboard` "
                                      "(or set train.logger=none)") from err
        self.acc = Accelerator(mixed_precision=resolve_precision(t.mixed_precision), log_with=log_with, cpu=not cuda,
                               gradient_accumulation_steps=t.grad_accum,
                               project_config=ProjectConfiguration(project_dir=str(self.out),
                                                                   logging_dir=str(self.out / "logs")))
        # train.grad_accum is the one source of truth (the data order depends on it); a launcher's
        # --gradient_accumulation_steps (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) must not change it.
        self.acc.gradient_accumulation_steps = t.grad_accum
        _fsdp_on_cpu(self.acc)
        if self.acc.distributed_type == FSDP and t.eval_geneval:
            raise ConfigError("train.eval_geneval=true needs the whole model on one process, but FSDP shards it; "
                              "set train.eval_geneval=false and score the exported checkpoint "
                              "(`parauni export CHECKPOINT --out DIR`) afterwards")
        # one run per output folder: a second run (another process) is refused, naming this one's PID; the lock is
        # held until run() ends (or this trainer is collected), and released by the OS if the process dies
        self._lock = owned_lock(self, self.out, "training run") if self.acc.is_main_process else None
        with_lock(self._lock, lambda: self._build(resume, allow_config_change), keep=True)

    def _build(self, resume: bool | str, allow_config_change: bool) -> None:
        """The rest of ``__init__``, run while the output folder's lock is held."""
        cfg, t, cuda = self.cfg, self.cfg.train, torch.cuda.is_available()
        # the checkpoint to resume from, checked (intact files, a compatible config) before anything is built
        self.step, self.samples_seen, self.config_changes = 0, 0, []
        self._ckpt = self._checked_checkpoint(resume, allow_config_change) if resume else None
        if not resume and self.acc.is_main_process and checkpoints(self.out):
            logger.warning("%s holds checkpoints of an earlier run: this fresh start replaces its metrics.jsonl and "
                           "its checkpoints as it goes; pass --resume to continue it, or use another "
                           "train.output_dir", self.out)
        # the data fails here, before any model is built, when it is empty or its caption key is wrong
        self.source = build_source(cfg.data, t.seed)
        self.pipe = build_model(cfg.model, t.seed)
        if isinstance(self.source, LatentSource):  # cached latents must fit this model's transformer
            tc = self.pipe.transformer.config
            self.source.check_model(tc.in_channels, cfg.data.resolution // self.pipe.vae_scale_factor)
        self.parts = trainable_parts(cfg)
        module = FlowTrainModule(self.pipe, self.parts)
        # On CUDA under bf16 mixed precision the frozen weights (VLM, VAE, the stage-I transformer) are bf16:
        # half the memory and bandwidth, and autocast would run their matmuls in bf16 anyway. TF32 for the
        # float32 matmuls and convolutions that remain. None of this applies on CPU (float32 results unchanged).
        self.bf16_frozen = cuda and self.acc.mixed_precision == "bf16"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.bf16_frozen:
            module.frozen_to(torch.bfloat16)
        module.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        module.conditioner.train()
        if "transformer" in self.parts:
            module.transformer.train()
        if t.compile:
            module.compile_parts()
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("nothing to train: check train.stage / train.trainable")
        self.n_trainable = sum(p.numel() for _, p in named)
        o = cfg.optim
        # fused AdamW (one kernel for all parameters) needs them on CUDA before the optimizer is built; under
        # FSDP / DeepSpeed Accelerate places (and shards) the module itself
        fused = cuda and self.acc.distributed_type not in (FSDP, DEEPSPEED)
        if fused:
            module.to(self.acc.device)
        opt = torch.optim.AdamW(decay_groups((p for _, p in named), o.weight_decay), lr=o.lr, betas=tuple(o.betas),
                                eps=o.eps, **({"fused": True} if fused else {}))
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(o.warmup_steps, t.steps, o.min_lr_ratio))
        self.loader = SampleLoader(self.source, cfg.data, t.seed, t.batch_size, self.acc.num_processes,
                                   self.acc.process_index, t.grad_accum)
        if self.acc.distributed_type == DEEPSPEED:
            _configure_deepspeed(self.acc, micro_batch=self.loader.micro, grad_accum=t.grad_accum,
                                 global_batch=t.batch_size, max_grad_norm=o.max_grad_norm)
        self.module, self.opt = self.acc.prepare(module, opt)
        self.acc.register_for_checkpointing(self.sched)
        self.acc.register_save_state_pre_hook(self._save_hook)
        self.acc.register_load_state_pre_hook(self._load_hook)
        self.vae = self.pipe.vae
        if self.vae is not None:
            self.vae.to(self.acc.device, torch.bfloat16 if self.bf16_frozen else None).requires_grad_(False).eval()
        self._batches, self._batches_step = None, None  # the DataLoader's iterator and the step it is at
        self._pending: list[tuple[int, torch.Tensor, object]] = []  # (step, loss, grad norm) not yet read
        if self._ckpt is not None:
            self._resume(self._ckpt)

    # -- checkpoints -------------------------------------------------------------------------------------
    def _raw(self) -> FlowTrainModule:
        return self.acc.unwrap_model(self.module)

    def _save_hook(self, models, weights, output_dir) -> None:
        # Accelerate runs this hook on every process; under FSDP2 the trainable weights are DTensor shards,
        # so save_trainable all-gathers them (a collective) on every process and only the main one writes.
        save_trainable(self._raw(), Path(output_dir) / TRAINABLE_FILE, write=self.acc.is_main_process)
        # the frozen VLM (and in stage I the transformer) are not written by the plain path; under FSDP and
        # DeepSpeed, Accelerate's save_state writes its own (sharded / engine) model state regardless
        weights.clear()

    def _load_hook(self, models, input_dir) -> None:
        models.clear()
        if self.acc.distributed_type in (FSDP, DEEPSPEED):
            # Accelerate's load_state has already restored the module before running this hook: FSDP from
            # its own model state (load_fsdp_model), DeepSpeed from the engine's checkpoint
            # (engine.load_checkpoint, fp32 master weights included); copying full tensors into DTensor
            # shards (or into DeepSpeed's low-precision copy) would be wrong.
            return
        # strict: every weight of the trained parts present, nothing else, the same shapes (a checkpoint of
        # another fusion or layer set fails here, naming the weights)
        load_trainable(self._raw(), input_dir, parts=self.parts)

    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>``: trainable weights + optimizer, scheduler, RNG states, step, config."""

        def write(folder: Path) -> None:
            save_config(self.cfg, folder / "config.yaml")
            state = {"step": self.step, "samples_seen": self.samples_seen,
                     "skipped_images": self.loader.skipped, "trainable": self.parts}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

        return write_checkpoint(self.acc, self.out, f"checkpoint-{self.step:07d}", write,
                                self.cfg.train.keep_last, STATE_FILE)

    def _checked_checkpoint(self, resume: bool | str, allow_config_change: bool) -> Path | None:
        """The checkpoint ``resume`` names (see :func:`resume_path`: corrupt ones are skipped or refused), after
        its config has been compared with this one (:func:`check_resume_config`)."""
        ckpt = resume_path(self.out, resume, STATE_FILE, required=(TRAINABLE_FILE,))
        if ckpt is None:  # --resume auto without a checkpoint: a fresh start
            return None
        step = int(json.loads((ckpt / STATE_FILE).read_text())["step"])
        o = self.cfg.optim

        def steps_rule(old_steps, new_steps) -> str | None:
            # the cosine decay spans train.steps: the steps already taken must keep their learning rates
            if not isinstance(old_steps, int):
                return "the checkpoint's train.steps is unknown"
            before, after = warmup_cosine(o.warmup_steps, old_steps, o.min_lr_ratio), warmup_cosine(
                o.warmup_steps, new_steps, o.min_lr_ratio)
            changed = [k for k in range(step) if before(k) != after(k)]
            return (f"the cosine learning-rate decay spans train.steps, so steps {changed[0] + 1}..{step} already "
                    f"taken ran on another schedule") if changed else None

        self.config_changes = check_resume_config(
            ckpt, to_yaml_dict(self.cfg), to_yaml_dict(Config()), allow_config_change,
            self.out if self.acc.is_main_process else None, conditions={"train.steps": steps_rule},
            where={"step": step})
        return ckpt

    def _resume(self, ckpt: Path) -> None:
        self.acc.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.step = int(state["step"])
        self.samples_seen = int(state.get("samples_seen", self.step * self.cfg.train.batch_size))
        self.loader.skipped = int(state.get("skipped_images", 0))
        if self.config_changes:
            self._apply_optim_settings()
        logger.info("resumed from %s at step %d", ckpt, self.step)

    def _apply_optim_settings(self) -> None:
        """After ``--allow-config-change``: the optimizer takes this config's lr, betas, eps and weight decay
        (``load_state`` restored the checkpoint's with the optimizer state)."""
        o = self.cfg.optim
        factor = warmup_cosine(o.warmup_steps, self.cfg.train.steps, o.min_lr_ratio)
        self.sched.base_lrs = [o.lr for _ in self.sched.base_lrs]
        for group in self.opt.param_groups:
            group.update(initial_lr=o.lr, lr=o.lr * factor(self.step), betas=tuple(o.betas), eps=o.eps,
                         weight_decay=group_weight_decay(group, o.weight_decay))

    # -- training ----------------------------------------------------------------------------------------
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
        if getattr(self, "_shape", None) is not None:
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

    def check_steps(self) -> dict:
        """Read the losses and gradient norms of the steps since the last check (one host sync and one
        all-reduce for all of them) and raise :class:`FloatingPointError` naming the first step whose loss is
        not finite. Returns the newest step's ``{"loss", "grad_norm"}`` as floats ({} when nothing is pending)."""
        if not self._pending:
            return {}
        steps = [s for s, _, _ in self._pending]
        losses = self.acc.reduce(torch.stack([loss.reshape(()) for _, loss, _ in self._pending]), reduction="mean")
        losses = losses.float().cpu().tolist()
        norm = _scalar(self._pending[-1][2])
        self._pending.clear()
        for step, loss in zip(steps, losses, strict=True):
            if not math.isfinite(loss):
                raise DivergedError(
                    f"non-finite loss ({loss}) at step {step}; lower optim.lr, check the data, or resume from the "
                    f"last checkpoint in {self.out}")
        return {"loss": losses[-1], "grad_norm": norm}

    def accumulate_gradients(self) -> torch.Tensor:
        """Forward and backward the ``grad_accum`` micro-batches of ``self.step``; returns their mean loss.

        The gradient (DDP, FSDP, one process) or DeepSpeed's accumulated gradient is that of the mean loss
        over the global batch. The loss is *not* divided here: ``Accelerator.backward`` divides it by
        ``gradient_accumulation_steps`` except under DeepSpeed, whose ``engine.backward`` divides it itself
        (``scale_wrt_gas``); dividing here too would scale DeepSpeed's update by 1/grad_accum twice.
        ``Accelerator.accumulate`` sets ``sync_gradients`` on the last micro-batch only: DDP / FSDP skip
        the gradient reduction before it (``no_sync``), and Accelerate's DeepSpeed wrapper marks only it
        as the accumulation boundary and calls ``engine.step`` there (not after every micro-batch).
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

    def run(self, stop_after: int | None = None) -> dict:
        """Train to ``train.steps``. ``stop_after`` ends the loop after that step without saving anything
        more, as an interrupted run would (tests of resuming)."""
        return with_lock(self._lock, lambda: self._run(stop_after))  # held since __init__ (or taken again)

    def _run(self, stop_after: int | None) -> dict:
        t = self.cfg.train
        main = self.acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        if self.acc.log_with:
            self.acc.init_trackers("parauni", config=_flat(self.cfg.to_dict()))
        end = t.steps if stop_after is None else min(stop_after, t.steps)
        if main:  # rows of steps after the checkpoint (an interrupted run) are redone: drop them first
            truncate_jsonl(self.out / "metrics.jsonl", lambda r: int(r.get("step", 0)) <= self.step)
        metrics = open(self.out / "metrics.jsonl", "a") if main else None
        bar = tqdm(total=t.steps, initial=self.step, desc=f"stage {t.stage}", disable=not (main and self.progress),
                   dynamic_ncols=True)
        t0, s0, smooth, row = time.perf_counter(), self.step, None, {}
        try:
            while self.step < end:
                row = self.train_step()
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
                    bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{row['lr']:.2e}", its=f"{rate:.2f}")
                    row = {"step": self.step, "loss": values["loss"], "lr": row["lr"],
                           "grad_norm": values["grad_norm"], "it_per_s": rate, "skipped_images": self.loader.skipped}
                    if main:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    self.acc.log({k: v for k, v in row.items() if k != "step"}, step=self.step)
                if saving_step:
                    self.save_checkpoint()
            self.check_steps()
        finally:
            self.close_loader()
            bar.close()
            if metrics:
                metrics.close()
        result = {"step": self.step, "loss": smooth, "seconds": time.perf_counter() - t0,
                  "skipped_images": self.loader.skipped, "trainable_parameters": self.n_trainable}
        if self.step >= t.steps:
            save_trainable(self._raw(), self.out / TRAINABLE_FILE, write=main)  # collective under FSDP
            self.acc.wait_for_everyone()
            if main and t.eval_geneval:
                result["geneval"] = self.evaluate()
        self.acc.end_training()
        return result

    def evaluate(self) -> dict:
        """Export the trained pipeline to ``<out>/final`` and evaluate it into ``<out>/eval/geneval``."""
        evaluate = self._evaluate or EVALUATORS.get_default()
        pipe = self.pipe
        pipe.conditioner.eval()
        pipe.transformer.eval()
        if self.bf16_frozen:  # the exported pipeline holds float32 weights, as built
            for part in (pipe.vlm, pipe.transformer, pipe.vae):
                if part is not None:
                    part.float()
        pipe.save_pretrained(self.out / "final")
        t = self.cfg.train
        # "refresh": the images are kept only when provenance.json matches these weights (a resumed, longer
        # run regenerates them)
        return evaluate(pipe, self.out / "eval" / "geneval", t.eval_images_per_prompt, t.eval_steps,
                        limit=t.eval_limit, mode="refresh", name=f"{self.out / 'final'} (step {self.step})")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def _weight_names(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def _export_init(init: str | None, trained: set[str]) -> str | None:
    """``model.init`` for rebuilding a run's model: dropped when the checkpoint holds every weight it gave (the
    usual case: stage II from stage I), kept when it gave weights the run did not train (e.g. a frozen
    transformer), dropped with a warning when it is gone."""
    if not init:
        return None
    path = Path(init) / TRAINABLE_FILE if Path(init).is_dir() else Path(init)
    if not path.is_file():
        if Path(init).exists():
            return init
        logger.warning("model.init %s no longer exists: the export holds the checkpoint's weights on %s", init,
                       "the model's own for the rest")
        return None
    try:
        names = _weight_names(path)
    except Exception:  # noqa: BLE001 - unreadable: building with it reports the file
        return init
    return init if names - trained else None


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """A full ``ParaUniPipeline`` folder from a checkpoint (or a run folder) of ``parauni train``.

    The model is built from the config saved with the weights (``config.yaml``: its source, conditioner fusion
    and layers), and the weights load strictly (:func:`parauni.pipelines.weights.load_trainable`): every weight
    of the run's trainable parts, nothing else, the same shapes; a mismatch names the weights. A run folder
    without final weights exports its newest intact checkpoint.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint or run folder")
    if not (ckpt / TRAINABLE_FILE).is_file() and complete_checkpoints(ckpt, STATE_FILE):
        newest = newest_intact(ckpt, STATE_FILE, required=(TRAINABLE_FILE,))
        if newest is None:
            raise UsageError(f"{ckpt} has no final {TRAINABLE_FILE} and no intact checkpoint to export")
        logger.info("%s has no final weights yet: exporting its newest checkpoint %s", ckpt, newest)
        ckpt = newest
    cfg_file = ckpt / "config.yaml"
    if not cfg_file.is_file():
        raise UsageError(f"{ckpt} has no config.yaml; pass a checkpoint-* folder or a run folder of `parauni train`")
    cfg = load_config(cfg_file)
    weights_file = ckpt / TRAINABLE_FILE
    if weights_file.is_file():
        try:
            cfg.model.init = _export_init(cfg.model.init, _weight_names(weights_file))
        except Exception:  # noqa: BLE001 - an unreadable file: load_trainable below names it
            cfg.model.init = None
    pipe = build_model(cfg.model, cfg.train.seed)
    load_trainable(pipe, ckpt, parts=trainable_parts(cfg))
    pipe.save_pretrained(out)
    return Path(out)
