"""``parauni rl``: stage III, online RL with several rewards and LDAM (the paper's stage III), by the algorithm the
config chooses (``algorithm:``; :data:`parauni.registry.ALGORITHMS`, the interface in :mod:`parauni.rl.algorithm`).

One epoch: ``prompts.per_epoch`` prompts, ``G`` images each, rolled out by the algorithm, rewarded, turned into
group-normalised advantages and used for the algorithm's update. LDAM watches every reward and, when one stalls,
adds noise to the query features of that reward's layer group for the next rollouts (stored with the conditions and
replayed in the update). Checkpoints hold the LoRA (and LIM) weights, their EMA, the algorithm's state, the
optimizer, LDAM's state, the epoch and the config; ``--resume`` continues exactly or refuses a changed config. At
the end ``<output_dir>/final`` holds the EMA model (LoRA merged); :func:`export_checkpoint` makes one from any
checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..pipelines.loading import build_model
from ..rewards.base import WeightedReward
from ..train.config import save_config
from ..train.distributed import (
    DEEPSPEED,
    FSDP,
    deepspeed_setup,
    fsdp_on_cpu,
    refuse_sharded_evaluation,
    release_deepspeed,
)
from ..train.optim import retune, schedule_change
from ..train.recipe import Recipe
from ..utils.checkpoints import write_checkpoint
from .algorithm import algorithm_class
from .config import GRPOConfig, steps_per_epoch
from .epoch import EpochData
from .export import CHECKPOINT_FILES, STATE_FILE, export_checkpoint, merged_pipeline, read_like, write_final
from .ldam import build_ldam
from .monitor import idle_epochs, plot_run, progress_numbers
from .policy import Policy, planned_steps
from .prompts import prompt_source
from .sde import sigma_grid

logger = logging.getLogger(__name__)

__all__ = ["GRPOTrainer", "RLTrainer", "export_checkpoint"]  # export_checkpoint lives in .export


def _delegate(part: str, name: str, doc: str) -> property:
    """``trainer.<name>``: the attribute ``name`` of the trainer's ``part`` (``policy`` or ``data``)."""
    return property(lambda self: getattr(getattr(self, part), name), doc=doc)


class RLTrainer(Recipe):
    """Stage III: setup, checkpoints, evaluation, the loop, the end; the chosen algorithm (``self.algo``, see
    :mod:`parauni.rl.algorithm`) rolls out and updates. It holds the trainable policy (``self.policy``,
    :class:`~parauni.rl.policy.Policy`) and the epoch's shared parts (``self.data``,
    :class:`~parauni.rl.epoch.EpochData`); the methods an algorithm calls delegate to them. Stages I/II's shared
    parts: :class:`~parauni.train.recipe.Recipe`."""

    STATE_FILE, REQUIRED_FILES, COUNTER = STATE_FILE, CHECKPOINT_FILES, "epoch"
    RUN_KIND, CONFIG = "stage-III run", GRPOConfig

    def __init__(self, cfg: GRPOConfig, resume: bool | str = False, progress: bool = True, rewards=None,
                 pipeline=None, allow_config_change: bool = False, prompts=None, evaluate=None,
                 overwrite: bool = False):
        """Stage III with ``cfg.algorithm`` (:data:`parauni.registry.ALGORITHMS`, or a ``package.module:Class``).

        ``rewards``: a ready reward callable instead of ``cfg.rewards``; ``pipeline``: a ready
        ``ParaUniPipeline`` instead of ``cfg.model.source`` (e.g. a preset built at real size with random
        weights for a benchmark); ``prompts``: a prompt source (``epoch(epoch, n) -> records``) instead of
        ``cfg.prompts``; ``evaluate``: the evaluation ``(pipe, out, ...) -> summary`` of ``train.eval_geneval``.
        ``resume``, ``allow_config_change`` and ``overwrite``: as for :class:`parauni.train.trainer.Trainer`."""

        self.cfg, self.progress, self.overwrite = cfg, progress, overwrite
        self.CONFIG = type(cfg)  # the chosen algorithm's root: its defaults fill keys an older checkpoint lacks
        # stage III accumulates its gradients itself: the Accelerator's accumulation stays 1, whatever a launcher
        # sets (ACCELERATE_GRADIENT_ACCUMULATION_STEPS would divide every loss)
        self._setup_accelerator(grad_accum=1, timeout_minutes=cfg.train.dist_timeout_minutes)
        fsdp_on_cpu(self.acc)  # an FSDP launch runs FSDP2 on CPU processes too
        deepspeed_setup(self.acc)  # a DeepSpeed launch runs DeepSpeed on CPU processes too
        refuse_sharded_evaluation(self.acc, cfg.train.eval_geneval)
        if self.acc.distributed_type == DEEPSPEED:
            self._check_deepspeed()
        if self.acc.distributed_type == FSDP and cfg.model.train_lim:
            raise ConfigError("model.train_lim=true is not supported under FSDP (the LIM is outside the sharded "
                              "transformer): launch with configs/accelerate/ddp.yaml or set model.train_lim=false")
        if cfg.prompts.per_epoch % self.acc.num_processes:
            raise ConfigError(f"prompts.per_epoch ({cfg.prompts.per_epoch}) must be a multiple of the number of "
                              f"processes ({self.acc.num_processes}): each process rolls out the same number of "
                              "prompts")
        steps_per_epoch(cfg, self.acc.num_processes)  # refuses more optimizer steps than a process has micro-batches
        self._hold_output_folder(lambda: self._setup(resume, rewards, pipeline, allow_config_change, prompts,
                                                     evaluate))

    # -- setup ------------------------------------------------------------------------------------------------
    def _check_deepspeed(self) -> None:
        """What stage III runs under DeepSpeed: ZeRO-2 (the authors' engine) or ZeRO-3 (the policy gathers the
        partitioned weights wherever it reads them whole), in float32 with the LoRA or a full fine-tune trained, or
        in DeepSpeed's bf16 (bf16 module weights, float32 master weights: :class:`~parauni.rl.policy.Policy`) with
        the LoRA trained; the rest is refused in one line naming the alternative."""
        if self.cfg.model.train_lim:
            raise ConfigError("model.train_lim=true is not supported under DeepSpeed (the LIM is outside the engine):"
                              " launch with configs/accelerate/ddp.yaml or set model.train_lim=false")
        conf = self.acc.state.deepspeed_plugin.deepspeed_config
        if conf.get("fp16", {}).get("enabled") in (True, "true"):
            raise ConfigError("stage III under DeepSpeed runs in float32 or bf16, not fp16 (DeepSpeed's fp16 scales "
                              "the loss and skips steps): pass --mixed_precision bf16 or --mixed_precision no")
        if conf.get("bf16", {}).get("enabled") in (True, "true") and self.cfg.model.finetune == "full":
            raise ConfigError("model.finetune=full under DeepSpeed's bf16 is not supported (its frozen starting copy "
                              "and distance would be float32 beside bf16 weights): pass --mixed_precision no, or "
                              "set model.finetune=lora")

    def _setup(self, resume, rewards, pipeline, allow_config_change: bool, prompts, evaluate) -> None:
        """The rest of ``__init__``, run while the output folder's lock is held."""
        cfg, t, m = self.cfg, self.cfg.train, self.cfg.model
        self.config_changes: list = []
        self._claim_output_folder(resume, allow_config_change)
        self._ckpt = self._checked_checkpoint(resume, allow_config_change) if resume else None
        self.prompt_source = prompts or prompt_source(cfg.prompts, t.seed)
        self._evaluate = evaluate
        if t.eval_geneval and evaluate is None:
            self._chosen_evaluator()  # an unknown train.evaluator fails now, before any training
        self.reward = rewards or WeightedReward(dict(cfg.rewards.weights), options=dict(cfg.rewards.options))
        self.reward_names = list(cfg.rewards.weights)
        self.pipe = pipeline or build_model(m, t.seed)
        self._setup_frozen_parts()
        algo = algorithm_class(cfg.algorithm)
        self.policy = Policy(cfg, self.acc, self.pipe)
        self.num_layers = len(self.pipe.conditioner.layer_indices)
        self.ldam = build_ldam(cfg.ldam, self.reward_names, self.num_layers, t.seed)  # None when off
        self.data = EpochData(cfg, self.acc, self.pipe, self.prompt_source, self.reward, self.ldam,
                              getattr(algo, "drops_failed_samples", True))
        self.data.lockstep = self.policy.lockstep  # FSDP2 and ZeRO communicate at every pass
        self.epoch = 0
        self._setup_sampling()
        self.algo = algo(self)
        if self._ckpt is not None:
            self._resume(self._ckpt)

    def _setup_frozen_parts(self) -> None:
        """The VLM, VAE and conditioner on the device, frozen; bf16 VLM and VAE under bf16 on CUDA."""
        pipe, dev = self.pipe, self.acc.device
        pipe.vlm.to(dev).requires_grad_(False).eval()
        if pipe.vae is not None:
            pipe.vae.to(dev).requires_grad_(False).eval()
        pipe.conditioner.to(dev).requires_grad_(False).eval()
        if self.acc.mixed_precision == "bf16" and dev.type == "cuda":
            # the frozen VLM and VAE run in bf16 (rollouts, evaluation; exports then hold them in bf16, as
            # InternVL3 is released); the LIM keeps its trained float32 weights (it runs once per prompt)
            for part in (pipe.vlm, pipe.vae):
                if part is not None:
                    part.to(torch.bfloat16)

    def _setup_sampling(self) -> None:
        """The rollouts' sigma grid."""
        shift = self.cfg.sampling.flow_shift
        if shift is None:
            shift = float(getattr(self.pipe.scheduler.config, "flow_shift", 1.0) or 1.0)
        self.sigmas = sigma_grid(self.cfg.sampling.steps, shift=shift, kind=self.cfg.sampling.grid)

    # -- what an algorithm uses (delegated to the policy and the epoch's parts; docs/rl.md lists them) ------------
    params = _delegate("policy", "params", "name -> trainable tensor")
    ema = _delegate("policy", "ema", "name -> the EMA of each trainable tensor")
    opt = _delegate("policy", "opt", "AdamW (prepared)")
    transformer = _delegate("policy", "transformer", "the prepared trainable transformer")
    raw_transformer = _delegate("policy", "raw_transformer", "the trainable transformer unwrapped")
    reference_model = _delegate("policy", "reference_model", "a full fine-tune's frozen starting transformer, or None")
    optimizer_step = _delegate("policy", "optimizer_step", "clip, AdamW at the scheduled lr, the EMA when due")
    reference = _delegate("policy", "reference", "context manager yielding the KL term's reference model")
    snapshot = _delegate("policy", "snapshot", "a copy of the trainable weights")
    distance_from = _delegate("policy", "distance_from", "||theta - before|| over the trainable weights")
    swapped_weights = _delegate("policy", "swapped_weights", "context manager: the trainable weights replaced")
    micro_step = _delegate("policy", "micro_step", "context manager: a micro-batch's passes, synced only at the last")
    lr_at = _delegate("policy", "lr_at", "the learning rate of an optimizer step")
    generator = _delegate("data", "generator", "the torch generator of a named random stream of an epoch (shared)")
    sample_streams = _delegate("data", "sample_streams", "one generator per sample of a named stream of an epoch")
    update_plan = _delegate("data", "update_plan", "an update's optimizer steps and this process's share of each")
    mean_over_processes = _delegate("data", "mean_over_processes", "per-sample statistics averaged over processes")
    rollout_inputs = _delegate("data", "rollout_inputs", "this process's prompts and conditions of an epoch")
    update_conditions = _delegate("data", "update_conditions", "(cond, uncond) of a micro-batch in an update")
    train_indices = _delegate("data", "train_indices", "this process's samples of an update, in its order")
    advantages = _delegate("data", "advantages", "advantages, valid samples and reward statistics of a rollout")

    @property
    def opt_step(self) -> int:
        """Optimizer steps taken: the learning-rate schedule's, the EMA's and an old policy's clock."""
        return self.policy.step

    @opt_step.setter
    def opt_step(self, value: int) -> None:
        self.policy.step = int(value)
        self.policy.set_lr()

    def planned_steps(self) -> int:
        """Optimizer steps of the whole run as planned (known before the policy is built)."""
        return planned_steps(self.cfg, self.acc.num_processes)

    def rollout(self, epoch: int):
        """This process's rollout of ``epoch`` by the algorithm."""
        return self.algo.rollout(epoch)

    def update(self, roll, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """The algorithm's update on one rollout; returns the epoch's statistics."""
        return self.algo.update(roll, adv, valid, epoch)

    def _algo_call(self, method: str, default, *args):
        """The algorithm's optional ``method(*args)``, or ``default`` when it does not define one."""
        fn = getattr(self.algo, method, None)
        return default if fn is None else fn(*args)

    # -- export -------------------------------------------------------------------------------------------------
    def merged_pipeline(self, ema: bool = True):
        """A ``ParaUniPipeline`` with the (EMA) LoRA merged into a plain copy of the transformer."""
        return merged_pipeline(self.policy, self.pipe, ema)

    def export(self, out: str | Path, ema: bool = True) -> Path:
        """Write a ``ParaUniPipeline`` folder with the (EMA) LoRA merged into the transformer."""
        self.merged_pipeline(ema).save_pretrained(out)
        return Path(out)

    def export_final(self, pipeline=None) -> Path:
        """``<output_dir>/final``: the EMA model (``pipeline``: already merged) as a ``ParaUniPipeline`` folder
        (written, then renamed)."""
        return write_final(pipeline or self.merged_pipeline(), self.out)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """``checkpoint-<epoch>``: LoRA (+ LIM) weights, their EMA, the algorithm's state (DiffusionNFT's old
        weights), optimizer, LDAM state, epoch, config."""

        # whole tensors, gathered from FSDP2 shards or ZeRO-3 partitions by every process; the main one writes
        tensors = {"trainable": self.policy.weights(), "ema": self.policy.weights(ema=True),
                   **self._algo_call("state_tensors", {})}  # e.g. an old policy's weights

        def write(folder: Path) -> None:
            for name, values in tensors.items():
                save_file(values, str(folder / f"{name}.safetensors"))
            if self.ldam is not None:
                torch.save(self.ldam.state_dict(), folder / "ldam.pt")
            save_config(self.cfg, folder / "config.yaml")
            (folder / STATE_FILE).write_text(json.dumps({"epoch": self.epoch, "optimizer_steps": self.opt_step}) + "\n")

        return write_checkpoint(self.acc, self.out, f"checkpoint-{self.epoch:06d}", write,
                                self.cfg.train.keep_last, STATE_FILE)

    def _resume_conditions(self, done: int) -> dict:  # the optimizer steps taken keep their learning rates
        o = self.cfg.optim
        return {"train.epochs": schedule_change(o.warmup_steps, o.min_lr_ratio, done, "train.epochs",
                                                self.planned_steps() // self.cfg.train.epochs)}

    def _resume(self, resume) -> None:
        """Load a checkpoint (a folder, or a ``--resume`` value: see :meth:`_checked_checkpoint`): the LoRA (and
        LIM) weights and their EMA strictly by name and shape, the optimizer and RNG states, LDAM, the epoch."""
        ckpt = resume if isinstance(resume, Path) else self._checked_checkpoint(resume)
        if ckpt is None:
            return
        self.acc.load_state(str(ckpt))
        like = self.policy.whole_shapes()
        self.policy.load_weights(read_like(ckpt / "trainable.safetensors", like),
                                 read_like(ckpt / "ema.safetensors", like))
        if extra := {name: read_like(ckpt / f"{name}.safetensors", like)
                     for name in self._algo_call("state_tensors", {})}:
            self.algo.load_state_tensors(extra)
        if self.ldam is not None and (ckpt / "ldam.pt").is_file():
            self.ldam.load_state_dict(torch.load(ckpt / "ldam.pt", weights_only=True))
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.epoch = int(state["epoch"])
        self.opt_step = int(state.get("optimizer_steps", 0))
        if self.config_changes:  # --allow-config-change: the optimizer takes this config's settings
            retune(self.opt, self.cfg.optim, self.cfg.optim.lr, eps=self.cfg.optim.eps)
            self.policy.set_lr()
        logger.info("resumed from %s at epoch %d", ckpt, self.epoch)
        if self.epoch >= self.cfg.train.epochs:
            logger.warning("%s is at epoch %d, and train.epochs is %d: nothing is left to train (the weights stay "
                           "those of epoch %d); pass a larger train.epochs to continue", ckpt.name, self.epoch,
                           self.cfg.train.epochs, self.epoch)

    # -- evaluation -----------------------------------------------------------------------------------------
    def eval_scales(self) -> list[float]:
        """The guidance scales of the evaluations: ``train.eval_guidance_scales``, else the rollouts' own."""
        return [float(g) for g in (self.cfg.train.eval_guidance_scales or [self.cfg.sampling.guidance_scale])]

    def geneval(self, name: str) -> dict[str, dict]:
        """The evaluation of the current EMA model at each of :meth:`eval_scales`: the first into
        ``<out>/eval/<name>`` (``geneval_before`` for the initial model, ``geneval`` for the final one, where
        ``parauni report`` looks), the others into ``<out>/eval/<name>_cfg<scale>``. Returns ``{folder: summary}``."""
        return self._evaluations(self.merged_pipeline(), name, self.eval_scales(),
                                 f"{self.out} EMA (epoch {self.epoch})")

    # -- the loop -------------------------------------------------------------------------------------------
    def train_epoch(self) -> tuple[dict, list[dict]]:
        """One epoch: the rollout, its rewards and advantages, the algorithm's update, LDAM's watch; returns the
        epoch's metrics row and LDAM's decisions (``self.epoch`` then counts it)."""
        e0 = time.perf_counter()
        active = [d["reward"] for d in self.ldam.active] if self.ldam is not None else []
        roll = self.rollout(self.epoch)
        e1 = time.perf_counter()
        adv, valid, rstats = self.advantages(roll)
        e2 = time.perf_counter()
        ustats = self.update(roll, adv, valid, self.epoch)
        self._algo_call("after_epoch", None)
        e3 = time.perf_counter()
        self._idle = idle_epochs(self._idle, rstats, ustats, self.cfg.prompts.per_epoch * self.cfg.sampling.group_size,
                                 self.cfg.train.max_idle_epochs, self.epoch)
        row = {"step": self.epoch + 1, **rstats, **ustats,
               **dict([self.policy.delta_norm()]),
               "lr": self.lr_at(max(self.opt_step - 1, 0)), "ldam_active": active,
               "time/rollout": e1 - e0, "time/reward": e2 - e1, "time/update": e3 - e2, "seconds": e3 - e0}
        decisions = []
        if self.ldam is not None:
            decisions = self.ldam.update(self.epoch, {r: rstats[f"reward/{r}"] for r in self.reward_names},
                                         ustats["grad_norm"])
        self.epoch += 1
        return row, decisions

    def _run(self, stop_after: int | None) -> dict:
        t, main = self.cfg.train, self.acc.is_main_process
        self._start_output()
        result = {}
        before = self.out / "eval" / "geneval_before" / "summary.json"
        if main and t.eval_geneval and t.eval_before and self.epoch == 0 and not before.is_file():
            result.update(self.geneval("geneval_before"))
        end = t.epochs if stop_after is None else min(stop_after, t.epochs)
        # rows of epochs after the checkpoint (an interrupted run) are redone: dropped first
        metrics = self._log("metrics.jsonl", lambda r: int(r.get("step", 0)) <= self.epoch)
        ldam_log = self._log("ldam.jsonl", lambda r: int(r.get("epoch", 0)) < self.epoch, self.ldam is not None)
        if t.logger != "none":
            self.acc.init_trackers("grpo")
        bar = tqdm(total=t.epochs, initial=self.epoch, desc=self.cfg.algorithm, disable=not (main and self.progress),
                   dynamic_ncols=True)
        t0, self._idle = time.perf_counter(), 0
        try:
            while self.epoch < end:
                row, decisions = self.train_epoch()
                ldam_log.write(*decisions)
                metrics.write(row)
                if t.logger != "none":
                    self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.epoch)
                bar.update(1)
                bar.set_postfix(**progress_numbers(row, self._algo_call("progress_numbers", {}, row)))
                if self.epoch % t.save_every == 0 or self.epoch == t.epochs:
                    self.save_checkpoint()
        finally:
            bar.close()
            metrics.close()
            ldam_log.close()
        # final/'s model: merged by every process (gathering sharded weights is a collective), before the engine goes
        final = self.merged_pipeline() if self.epoch >= t.epochs and (main or self.policy.lockstep) else None
        self.acc.wait_for_everyone()  # the last collective is done on every process
        release_deepspeed(self.acc)  # before the process group can go
        # trackers finished and the process group destroyed now, as stage II does: left to the interpreter's exit,
        # the gloo work FSDP2 and ZeRO hold aborted finished 2-process CPU runs now and then
        self.acc.end_training()
        result.update(epochs=self.epoch, seconds=time.perf_counter() - t0)
        if final is not None and main:
            self._finish(result, final)
        return result

    # -- the end --------------------------------------------------------------------------------------------
    def _finish(self, result: dict, final) -> None:
        """After the last epoch: the curves, ``final/`` (``final``: the EMA model) and, with ``train.eval_geneval``,
        its evaluations beside those before training."""
        plot_run(self.out)
        result["final"] = str(self.export_final(final))
        if self.cfg.train.eval_geneval:
            after = self.geneval("geneval")
            result.update({"geneval_after" + k[len("geneval"):]: v for k, v in after.items()})
            for k in after:
                key = k.replace("geneval", "geneval_before", 1)
                before = self.out / "eval" / key / "summary.json"
                if key not in result and before.is_file():
                    result[key] = json.loads(before.read_text())


GRPOTrainer = RLTrainer  # the name before the algorithms became plugins
