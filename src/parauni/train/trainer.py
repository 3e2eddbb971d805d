"""``parauni train``: stages I and II with one recipe, on one process or many (Hugging Face Accelerate).

AdamW (weight decay on >= 2-D parameters only), linear warm-up then cosine decay, gradient clipping,
``data.uncond_prob`` of captions replaced by the unconditional prompt, rectified-flow loss. Only the
trainable weights are checkpointed (``trainable.safetensors``), together with the optimizer, the
scheduler and the RNG states through ``Accelerator.save_state``; the data position is the step. Every
checkpoint is written to ``checkpoint-XXXXXXX.tmp`` and renamed when complete; the last
``train.keep_last`` stay. ``--resume`` continues from the newest complete checkpoint and reaches the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..utils.checkpoints import complete_checkpoints, resume_path, write_checkpoint
from .config import Config, resolve_precision, save_config, trainable_parts
from .data import SampleLoader, build_source, collate, sample_generator
from .model import TRAINABLE_FILE, FlowTrainModule, build_pipeline, load_trainable, save_trainable

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.0):
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def param_groups(params: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on >= 2-D parameters only (SPEC §3); biases, norms and 1-D vectors are not decayed."""
    decay = [p for _, p in params if p.ndim >= 2]
    no_decay = [p for _, p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    return complete_checkpoints(out, STATE_FILE)


def per_sample_inputs(ids: list[int], seed: int, uncond_prob: float, shape: tuple[int, ...], timesteps: str):
    """Caption-drop flags ``(B,)``, noise ``(B, *shape)`` and flow times ``(B,)`` of global samples ``ids``."""
    drops, noises, sigmas = [], [], []
    for k in ids:
        drops.append(bool(torch.rand(1, generator=sample_generator(seed, k, 1)) < uncond_prob))
        noises.append(torch.randn(shape, generator=sample_generator(seed, k, 2)))
        g = sample_generator(seed, k, 3)
        sigmas.append(torch.sigmoid(torch.randn(1, generator=g)) if timesteps == "logit-normal"
                      else torch.rand(1, generator=g))
    return drops, torch.stack(noises), torch.cat(sigmas)


class Trainer:
    """One training run of a :class:`Config`. ``run()`` trains to ``train.steps`` (or ``stop_after``)."""

    def __init__(self, cfg: Config, resume: bool | str = False, progress: bool = True):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg, self.progress = cfg, progress
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
                    import tensorboard  # noqa: F401
                except ImportError as err:
                    raise ImportError("train.logger=tensorboard needs `pip install tensorboard` "
                                      "(or set train.logger=none)") from err
        self.acc = Accelerator(mixed_precision=resolve_precision(t.mixed_precision), log_with=log_with, cpu=not cuda,
                               project_config=ProjectConfiguration(project_dir=str(self.out),
                                                                   logging_dir=str(self.out / "logs")))
        # the data fails here, before any model is built, when it is empty or its caption key is wrong
        self.source = build_source(cfg.data, t.seed)
        self.pipe = build_pipeline(cfg.model, t.seed)
        self.parts = trainable_parts(cfg)
        module = FlowTrainModule(self.pipe, self.parts)
        module.set_gradient_checkpointing(cfg.model.gradient_checkpointing)
        module.conditioner.train()
        if "transformer" in self.parts:
            module.transformer.train()
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("nothing to train: check train.stage / train.trainable")
        self.n_trainable = sum(p.numel() for _, p in named)
        o = cfg.optim
        opt = torch.optim.AdamW(param_groups(named, o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o.warmup_steps, t.steps, o.min_lr_ratio))
        self.module, self.opt = self.acc.prepare(module, opt)
        self.acc.register_for_checkpointing(self.sched)
        self.acc.register_save_state_pre_hook(self._save_hook)
        self.acc.register_load_state_pre_hook(self._load_hook)
        self.vae = self.pipe.vae
        if self.vae is not None:
            self.vae.to(self.acc.device).requires_grad_(False).eval()
        self.loader = SampleLoader(self.source, cfg.data, t.seed, t.batch_size, self.acc.num_processes,
                                   self.acc.process_index, t.grad_accum)
        self.step = 0
        if resume:
            self._resume(resume)

    # -- checkpoints -------------------------------------------------------------------------------------
    def _raw(self) -> FlowTrainModule:
        return self.acc.unwrap_model(self.module)

    def _save_hook(self, models, weights, output_dir) -> None:
        if self.acc.is_main_process:
            save_trainable(self._raw(), Path(output_dir) / TRAINABLE_FILE)
        weights.clear()  # the frozen VLM (and in stage I the transformer) are never written

    def _load_hook(self, models, input_dir) -> None:
        models.clear()
        load_trainable(self._raw(), input_dir, strict=True)

    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>``: trainable weights + optimizer, scheduler, RNG states, step, config."""

        def write(folder: Path) -> None:
            save_config(self.cfg, folder / "config.yaml")
            state = {"step": self.step, "samples_seen": self.step * self.cfg.train.batch_size,
                     "skipped_images": self.loader.skipped, "trainable": self.parts}
            (folder / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

        return write_checkpoint(self.acc, self.out, f"checkpoint-{self.step:07d}", write,
                                self.cfg.train.keep_last, STATE_FILE)

    def _resume(self, resume: bool | str) -> None:
        ckpt = resume_path(self.out, resume, STATE_FILE)
        if ckpt is None:  # --resume auto without a checkpoint: a fresh start
            return
        self.acc.load_state(str(ckpt))
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.step = int(state["step"])
        self.loader.skipped = int(state.get("skipped_images", 0))
        logger.info("resumed from %s at step %d", ckpt, self.step)

    # -- training ----------------------------------------------------------------------------------------
    def _latents(self, images, latents) -> torch.Tensor:
        if latents is not None:
            return latents.to(self.acc.device)
        images = images.to(self.acc.device)
        if self.vae is None:
            return images
        with torch.no_grad():
            return self.vae.encode(images.to(self.vae.dtype)).latent.float() * self.vae.config.scaling_factor

    def train_step(self) -> dict:
        """One optimizer step over ``grad_accum`` micro-batches; returns the logged values."""
        t, d = self.cfg.train, self.cfg.data
        module, total = self.module, 0.0
        for micro in range(t.grad_accum):
            samples = self.loader.take(self.step, micro)
            start = self.loader.first_index(self.step, micro)
            ids = list(range(start, start + len(samples)))
            images, latents, captions = collate(samples)
            x0 = self._latents(images, latents)
            drops, noise, sigma = per_sample_inputs(ids, t.seed, d.uncond_prob, tuple(x0.shape[1:]), t.timesteps)
            captions = [None if drop else c for c, drop in zip(captions, drops, strict=True)]
            last = micro == t.grad_accum - 1
            ctx = self.acc.no_sync(module) if not last else nullcontext()
            with ctx, self.acc.autocast():
                loss = module(captions, x0, noise.to(x0.device), sigma.to(x0.device)) / t.grad_accum
                self.acc.backward(loss)
            total += loss.detach()
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite loss at step {self.step}; lower optim.lr, check the data, or resume from the last "
                f"checkpoint in {self.out}")
        grad_norm = self.acc.clip_grad_norm_([p for p in module.parameters() if p.requires_grad],
                                             self.cfg.optim.max_grad_norm)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        loss = self.acc.reduce(total.reshape(1), reduction="mean")
        return {"loss": float(loss), "lr": self.sched.get_last_lr()[0], "grad_norm": float(grad_norm)}

    def run(self, stop_after: int | None = None) -> dict:
        """Train to ``train.steps``. ``stop_after`` ends the loop after that step without saving anything
        more, as an interrupted run would (tests of resuming)."""
        t = self.cfg.train
        main = self.acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
        if self.acc.log_with:
            self.acc.init_trackers("parauni", config=_flat(self.cfg.to_dict()))
        end = t.steps if stop_after is None else min(stop_after, t.steps)
        metrics = open(self.out / "metrics.jsonl", "a") if main else None
        bar = tqdm(total=t.steps, initial=self.step, desc=f"stage {t.stage}", disable=not (main and self.progress),
                   dynamic_ncols=True)
        t0, s0, smooth, row = time.perf_counter(), self.step, None, {}
        while self.step < end:
            row = self.train_step()
            smooth = row["loss"] if smooth is None else 0.9 * smooth + 0.1 * row["loss"]
            rate = (self.step - s0) / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{row['lr']:.2e}", its=f"{rate:.2f}")
            if self.step % t.log_every == 0 or self.step == end:
                row = {"step": self.step, **row, "it_per_s": rate, "skipped_images": self.loader.skipped}
                if main:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                self.acc.log({k: v for k, v in row.items() if k != "step"}, step=self.step)
            if self.step % t.save_every == 0 or self.step == t.steps:
                self.save_checkpoint()
        bar.close()
        if metrics:
            metrics.close()
        result = {"step": self.step, "loss": smooth, "seconds": time.perf_counter() - t0,
                  "skipped_images": self.loader.skipped, "trainable_parameters": self.n_trainable}
        if self.step >= t.steps:
            if main:
                save_trainable(self._raw(), self.out / TRAINABLE_FILE)
            self.acc.wait_for_everyone()
            if main and t.eval_geneval:
                result["geneval"] = self.evaluate()
        self.acc.end_training()
        return result

    def evaluate(self) -> dict:
        """Export the trained pipeline to ``<out>/final`` and score toy GenEval into ``<out>/eval/geneval``."""
        from ..toy.evaluation import toy_geneval

        pipe = self.pipe
        pipe.conditioner.eval()
        pipe.transformer.eval()
        pipe.save_pretrained(self.out / "final")
        t = self.cfg.train
        return toy_geneval(pipe, self.out / "eval" / "geneval", t.eval_images_per_prompt, t.eval_steps,
                           limit=t.eval_limit)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """A full ``ParaUniPipeline`` folder from a checkpoint (or a finished run folder) of ``parauni train``."""
    from .config import load_config

    ckpt = Path(checkpoint)
    cfg_file = ckpt / "config.yaml"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{ckpt} has no config.yaml; pass a checkpoint-* folder or a run folder")
    cfg = load_config(cfg_file)
    cfg.model.init = None
    pipe = build_pipeline(cfg.model, cfg.train.seed)
    load_trainable(pipe, ckpt)
    pipe.save_pretrained(out)
    return Path(out)
