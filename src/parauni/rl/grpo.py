"""``parauni grpo``: stage III, online RL with several rewards and LDAM (the paper's stage III), by one of two
algorithms that share this loop (``algorithm:`` in the config):

- ``flow_grpo`` (the paper's; Liu et al. 2025, yifan123/flow_grpo): SDE rollouts, clipped-ratio updates with a KL
  penalty (:mod:`parauni.rl.flow_grpo`);
- ``diffusion_nft`` (Zheng et al. 2025, NVlabs/DiffusionNFT): deterministic rollouts from a soft-updated old
  policy, forward-process updates that need no log-probability and no CFG (:mod:`parauni.rl.diffusion_nft`).

One epoch: ``prompts.per_epoch`` prompts, ``G`` images each, rolled out by the algorithm, rewarded, turned into
group-normalised advantages and used for the algorithm's update. LDAM watches every reward and, when one stalls,
adds noise to the query features of that reward's layer group for the next rollouts; the noise is stored with each
rollout's conditions and replayed in the update. Checkpoints hold the LoRA (and LIM) weights, their EMA, the
algorithm's state (DiffusionNFT's old policy), the optimizer, LDAM's state, the epoch and the config, written
atomically; ``--resume`` continues exactly or refuses (a changed config, see
:data:`parauni.utils.checkpoints.RESUME_SAFE_KEYS`) and cuts ``metrics.jsonl`` and ``ldam.jsonl`` back to the
checkpoint's epoch. At the end ``<output_dir>/final`` holds the EMA model (LoRA merged) as a ``ParaUniPipeline``
folder; :func:`export_checkpoint` (``parauni export``) makes one from any checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..errors import ConfigError, TrainingStalledError, UsageError
from ..eval.geneval import TASK_ORDER
from ..pipelines.loading import build_model
from ..pipelines.pipeline_parauni import ParaUniPipeline
from ..pipelines.weights import expected_names, load_trainable, mismatch_error, read_trainable
from ..registry import EVALUATORS
from ..rewards.base import WeightedReward
from ..train.config import ModelConfig, resolve_precision, save_config, to_yaml_dict
from ..train.optim import decay_groups, group_weight_decay
from ..utils.checkpoints import (
    check_resume_config,
    complete_checkpoints,
    newest_intact,
    resume_path,
    truncate_jsonl,
    write_checkpoint,
)
from ..utils.locks import owned_lock, with_lock
from ..utils.plots import plot_curves
from .config import GRPOConfig, load_grpo_config
from .diffusion_nft import DiffusionNFT
from .flow_grpo import FlowGRPO
from .ldam import LDAM, default_layer_groups, default_reward_to_group
from .lora import add_lora, lora_delta_norm, merged_transformer
from .objective import ema_decay, ema_due, group_advantages
from .prompts import prompt_source
from .sde import sigma_grid

logger = logging.getLogger(__name__)
STATE_FILE = "grpo_state.json"
CHECKPOINT_FILES = ("trainable.safetensors", "ema.safetensors")  # besides Accelerate's states and the state file
# (a DiffusionNFT checkpoint also holds old.safetensors)


def _read_like(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's safetensors file, which must hold exactly the names of ``like`` with the same
    shapes (a checkpoint of other LoRA targets, rank or ``train_lim`` fails here, naming the weights)."""

    path, weights = read_trainable(path)
    missing, unexpected = sorted(set(like) - set(weights)), sorted(set(weights) - set(like))
    shapes = [f"{n} {tuple(weights[n].shape)} vs {tuple(like[n].shape)}" for n in sorted(set(like) & set(weights))
              if weights[n].shape != like[n].shape]
    if missing or unexpected or shapes:
        raise mismatch_error(f"{path} does not fit this model:", missing, unexpected, shapes,
                             "was it saved with other model.lora_rank / lora_targets / train_lim or another model?")
    return weights


def export_checkpoint(checkpoint: str | Path, out: str | Path, ema: bool = True) -> Path:
    """A ``ParaUniPipeline`` folder from a ``parauni grpo`` checkpoint (or run folder: its newest intact
    checkpoint), with the EMA LoRA (``ema=False``: the raw LoRA) merged into a plain transformer.

    The base model is rebuilt from the checkpoint's ``config.yaml`` (``model.source``, ``model.init``,
    ``model.conditioner``), the LoRA added with its rank, alpha and targets, and the saved weights loaded strictly
    (:func:`parauni.pipelines.weights.load_trainable`: every LoRA / LIM weight, nothing else, the same shapes).
    """

    ckpt = Path(checkpoint)
    if not (ckpt / STATE_FILE).is_file():
        newest = newest_intact(ckpt, STATE_FILE, required=CHECKPOINT_FILES)
        if newest is None:
            raise UsageError(f"{ckpt} is not a complete `parauni grpo` checkpoint (no {STATE_FILE}) and holds no "
                             "intact checkpoint-* folder to export")
        logger.info("exporting the newest checkpoint of %s: %s", ckpt, newest)
        ckpt = newest
    if not (ckpt / "config.yaml").is_file():
        raise UsageError(f"{ckpt} has no config.yaml: the model it trained cannot be rebuilt")
    cfg = load_grpo_config(ckpt / "config.yaml")
    m = cfg.model
    pipe = build_model(ModelConfig(source=m.source, init=m.init, conditioner=dict(m.conditioner)), cfg.train.seed)
    tr = pipe.transformer
    tr.requires_grad_(False)
    add_lora(tr, m.lora_rank, m.lora_alpha, m.lora_targets)
    expected = {f"transformer.{n}" for n, p in tr.named_parameters() if p.requires_grad}
    if m.train_lim:
        expected |= expected_names({"conditioner": pipe.conditioner}, ["lim"])
    load_trainable(pipe, ckpt / ("ema.safetensors" if ema else "trainable.safetensors"), expected=expected)
    merged = merged_transformer(tr)
    ParaUniPipeline(vlm=pipe.vlm, tokenizer=pipe.tokenizer, conditioner=pipe.conditioner.eval(), transformer=merged,
                    scheduler=pipe.scheduler, vae=pipe.vae).save_pretrained(out)
    return Path(out)


# -- the trainer ----------------------------------------------------------------------------------------------
@dataclass
class RolloutInputs:
    """What every algorithm's rollout starts from: this process's prompts of an epoch, ``G`` rows each."""

    prompts: list[str]
    metadata: list[dict | None]
    group: torch.Tensor  # (B,) global prompt index
    states: torch.Tensor  # (L, B, N, D) query states
    noise: torch.Tensor | None  # (L, B, N, D) LDAM's noise for these samples, or None
    cond: torch.Tensor  # (B, N, C) the conditions (after LDAM's noise)
    uncond: torch.Tensor  # (1, N, C) the unconditional condition
    generator: torch.Generator  # the epoch's rollout stream (initial noise, SDE noise)


ALGORITHMS = {"flow_grpo": FlowGRPO, "diffusion_nft": DiffusionNFT}
_STREAMS = ("rollout", "sde_window", "train_order", "transitions", "nft_noise")


class RLTrainer:
    def __init__(self, cfg: GRPOConfig, resume: bool | str = False, progress: bool = True, rewards=None,
                 pipeline=None, allow_config_change: bool = False, prompts=None, evaluate=None):
        """Stage III with ``cfg.algorithm`` (:data:`ALGORITHMS`: Flow-GRPO or DiffusionNFT).

        ``rewards``: a ready reward callable instead of ``cfg.rewards``; ``pipeline``: a ready
        ``ParaUniPipeline`` instead of ``cfg.model.source`` (e.g. a preset built at real size with random
        weights for a benchmark); ``prompts``: a prompt source (``epoch(epoch, n) -> records``) instead of
        ``cfg.prompts``; ``evaluate``: the GenEval-style evaluation ``(pipe, out, ...) -> summary`` run with
        ``train.eval_geneval`` (default: the registered evaluator). Everything else comes from ``cfg``.
        ``resume`` and ``allow_config_change``: as for :class:`parauni.train.trainer.Trainer` (the checkpoint is
        checked before any model is built)."""

        self.cfg, self.progress = cfg, progress
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.out = Path(t.output_dir)
        self.acc = Accelerator(mixed_precision=resolve_precision(t.mixed_precision), cpu=not torch.cuda.is_available(),
                               log_with=None if t.logger == "none" else t.logger,
                               project_config=ProjectConfiguration(project_dir=str(self.out),
                                                                   logging_dir=str(self.out / "logs")))
        if cfg.prompts.per_epoch % self.acc.num_processes:
            raise ConfigError(f"prompts.per_epoch ({cfg.prompts.per_epoch}) must be a multiple of the number of "
                              f"processes ({self.acc.num_processes}): each process rolls out the same number of "
                              "prompts")
        # one run per output folder: a second run is refused, naming this one's PID; held until run() ends (or this
        # trainer is collected), released by the OS if the process dies
        self._lock = owned_lock(self, self.out, "stage-III run") if self.acc.is_main_process else None
        with_lock(self._lock, lambda: self._build(resume, rewards, pipeline, allow_config_change, prompts, evaluate),
                  keep=True)

    def _build(self, resume, rewards, pipeline, allow_config_change: bool, prompts, evaluate) -> None:
        """The rest of ``__init__``, run while the output folder's lock is held."""
        cfg = self.cfg
        t, m = cfg.train, cfg.model
        self.config_changes: list = []
        self._ckpt = self._checked_checkpoint(resume, allow_config_change) if resume else None

        if not resume and self.acc.is_main_process and complete_checkpoints(self.out, STATE_FILE):
            logger.warning("%s holds checkpoints of an earlier run: this fresh start replaces its logs and its "
                           "checkpoints as it goes; pass --resume to continue it, or use another train.output_dir",
                           self.out)
        self.prompt_source = prompts or prompt_source(cfg.prompts, t.seed)
        self._evaluate = evaluate
        self.reward = rewards or WeightedReward(dict(cfg.rewards.weights), options=dict(cfg.rewards.options))
        self.reward_names = list(cfg.rewards.weights)
        self.pipe = pipeline or build_model(ModelConfig(source=m.source, init=m.init,
                                                        conditioner=dict(m.conditioner)), t.seed)
        self._setup_frozen_parts()
        self._setup_policy()
        self.ldam = self._setup_ldam()
        self.epoch = 0
        self.opt_step = 0  # optimizer steps taken (the EMA and old-policy schedules' clock)
        shift = cfg.sampling.flow_shift
        if shift is None:
            shift = float(getattr(self.pipe.scheduler.config, "flow_shift", 1.0) or 1.0)
        self.sigmas = sigma_grid(cfg.sampling.steps, shift=shift, kind=cfg.sampling.grid)
        with torch.no_grad():
            self.uncond_states = self.pipe.layer_states([None])  # (L, 1, N, D)
            self._uncond = None if m.train_lim else self.pipe.conditioner(self.uncond_states)  # (1, N, C)
        self.algo = ALGORITHMS[cfg.algorithm](self)
        if self._ckpt is not None:
            self._resume(self._ckpt)

    # -- setup ------------------------------------------------------------------------------------------------
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

    def _setup_policy(self) -> None:
        """LoRA on the transformer (and optionally the LIM) as the trainable policy, its EMA and AdamW."""
        m, o, t = self.cfg.model, self.cfg.optim, self.cfg.train
        pipe = self.pipe
        tr = pipe.transformer.to(self.acc.device)
        tr.requires_grad_(False)
        torch.manual_seed(t.seed)
        add_lora(tr, m.lora_rank, m.lora_alpha, m.lora_targets)
        tr.train()
        if m.train_lim:
            pipe.conditioner.lim.requires_grad_(True)
        self.params = {f"transformer.{n}": p for n, p in tr.named_parameters() if p.requires_grad}
        if m.train_lim:
            self.params.update({f"conditioner.{n}": p for n, p in pipe.conditioner.named_parameters()
                                if p.requires_grad})
        self.ema = {n: p.detach().clone() for n, p in self.params.items()}
        opt = torch.optim.AdamW(decay_groups(self.params.values(), o.weight_decay), lr=o.lr, betas=tuple(o.betas))
        self.transformer, self.opt = self.acc.prepare(tr, opt)
        self.acc.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        self.acc.register_load_state_pre_hook(lambda models, inp: models.clear())

    def _setup_ldam(self) -> LDAM | None:
        """LDAM over the conditioner's layer groups (thirds by default), or ``None`` when off."""
        n_layers = len(self.pipe.conditioner.layer_indices)
        self.num_layers = n_layers
        lc = self.cfg.ldam
        if not lc.enabled:
            return None
        groups_cfg = lc.groups or (default_layer_groups(n_layers) if n_layers >= 3 else
                                   {g: list(range(n_layers)) for g in ("shallow", "middle", "deep")})
        mapping = {**default_reward_to_group(), **(lc.reward_to_group or {})}
        mapping = {r: mapping[r] for r in self.reward_names if r in mapping}
        return LDAM(self.reward_names, groups_cfg, mapping, n_layers, lc.window, lc.gamma0, lc.patience,
                    seed=self.cfg.train.seed)

    @property
    def raw_transformer(self):
        return self.acc.unwrap_model(self.transformer)

    def generator(self, stream: str, epoch: int) -> torch.Generator:
        """A torch generator for one named random stream of one epoch on this process, seeded from
        ``numpy.random.SeedSequence([train.seed, stream, epoch, rank])``: streams and epochs never share a seed."""
        entropy = [self.cfg.train.seed, _STREAMS.index(stream), epoch, self.acc.process_index]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    # -- the algorithm's parts ---------------------------------------------------------------------------------
    def sde_transitions(self, epoch: int) -> list[int]:
        """Flow-GRPO's SDE window of ``epoch`` (see :meth:`parauni.rl.flow_grpo.FlowGRPO.sde_transitions`)."""
        return self.algo.sde_transitions(epoch)

    def rollout(self, epoch: int):
        """This process's rollout of ``epoch`` (the algorithm's: an SDE path with log-probabilities, or clean
        samples)."""
        return self.algo.rollout(epoch)

    def update(self, roll, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """The algorithm's update on one rollout; returns the epoch's statistics."""
        return self.algo.update(roll, adv, valid, epoch)

    # -- shared parts of rollouts and updates ------------------------------------------------------------------
    @torch.no_grad()
    def rollout_inputs(self, epoch: int) -> RolloutInputs:
        """This process's prompts of ``epoch`` (``G`` rows each), their conditions with LDAM's noise, and the
        epoch's rollout generator."""
        s = self.cfg.sampling
        world, rank = self.acc.num_processes, self.acc.process_index
        records = self.prompt_source.epoch(epoch, self.cfg.prompts.per_epoch)
        mine = list(range(rank, len(records), world))
        prompts = [records[i]["prompt"] for i in mine for _ in range(s.group_size)]
        metas = [records[i] if "tag" in records[i] else None for i in mine for _ in range(s.group_size)]
        group = torch.tensor([i for i in mine for _ in range(s.group_size)])
        pipe, dev = self.pipe, self.acc.device
        per_prompt = pipe.layer_states([records[i]["prompt"] for i in mine])  # (L, P, N, D)
        states = per_prompt.repeat_interleave(s.group_size, dim=1)  # (L, B, N, D)
        gen = self.generator("rollout", epoch)
        noise = None
        if self.ldam is not None:
            noise = self.ldam.noise(self.num_layers, tuple(states.shape[1:]), generator=gen)
            noise = noise.to(dev) if noise is not None else None
        if noise is None:  # the G samples of a prompt share its condition: run the LIM once per prompt
            cond = pipe.conditioner(per_prompt).repeat_interleave(s.group_size, dim=0)  # (B, N, C)
        else:  # LDAM's noise differs per sample
            cond = pipe.conditioner(states, noise)  # (B, N, C)
        uncond = pipe.conditioner(self.uncond_states)  # (1, N, C)
        return RolloutInputs(prompts, metas, group, states, noise, cond, uncond, gen)

    def update_conditions(self, roll, mb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` of the micro-batch ``mb`` in an update: the stored conditions, or with
        ``model.train_lim`` the LIM run again (with gradients) on the stored states and LDAM noise."""
        if self._uncond is not None:
            return roll.cond[mb], self._uncond
        cond = self.pipe.conditioner(roll.states[:, mb], None if roll.layer_noise is None else roll.layer_noise[:, mb])
        return cond, self.pipe.conditioner(self.uncond_states)

    def train_indices(self, adv: torch.Tensor, valid: torch.Tensor, epoch: int, drop_zero: bool) -> torch.Tensor:
        """This process's samples for the update, shuffled: the valid ones, without zero-advantage samples when
        ``drop_zero`` (Flow-GRPO's ``optim.drop_zero_adv``, ``train_sd3.py:796-817``). With several processes every
        rank needs the same number of backward passes, so ranks with fewer samples are topped up with dropped ones
        (their advantage is 0: they add only the KL term), as the reference tops up its mask. DiffusionNFT keeps
        every sample (NaN rewards weigh 0 in its loss)."""
        keep = valid & (adv != 0) if drop_zero else (valid.clone() if self.cfg.algorithm == "flow_grpo"
                                                      else torch.ones_like(valid))
        gen = self.generator("train_order", epoch)
        if self.acc.num_processes > 1:
            most = int(self.acc.gather(keep.sum().reshape(1).to(self.acc.device)).max())
            spare = torch.nonzero(~keep).flatten()
            spare = spare[torch.randperm(len(spare), generator=gen)][:max(0, most - int(keep.sum()))]
            keep[spare] = True
        idx = torch.nonzero(keep).flatten()
        return idx[torch.randperm(len(idx), generator=gen)]

    def optimizer_step(self) -> torch.Tensor:
        """Clip the accumulated gradients (``optim.max_grad_norm``), step AdamW, then the EMA when due
        (:func:`objective.ema_decay` every ``optim.ema_every`` steps); returns the gradient norm ``(1,)``."""
        o = self.cfg.optim
        if self.cfg.model.train_lim and self.acc.num_processes > 1:
            # DDP averages the transformer's gradients; the LIM is outside it, so average its gradients here, or
            # each process would train its own LIM
            for n, p in self.params.items():
                if n.startswith("conditioner.") and p.grad is not None:
                    p.grad = self.acc.reduce(p.grad, reduction="mean")
        norm = self.acc.clip_grad_norm_(list(self.params.values()), o.max_grad_norm)
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

    # -- rewards and advantages -----------------------------------------------------------------------------
    def advantages(self, roll) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Group-normalised advantages ``(B,)`` of this process's samples (NaN rewards -> not valid), and the
        epoch's reward and advantage statistics over every process (see :func:`objective.group_advantages`)."""
        total, parts = self.reward(roll.images, roll.prompts, roll.metadata)
        dev = self.acc.device
        g_total = self.acc.gather(total.to(dev)).cpu()
        g_group = self.acc.gather(roll.group.to(dev)).cpu()
        valid = torch.isfinite(g_total)
        o = self.cfg.optim
        adv_all, astats = group_advantages(g_total, g_group, o.per_group_std, o.adv_clip)
        n = len(roll.prompts)
        rank = self.acc.process_index
        adv = adv_all[rank * n:(rank + 1) * n]  # gather concatenates ranks in order, equal sizes
        stats = {"reward/total": float(g_total[valid].mean()) if valid.any() else float("nan"),
                 "reward/dropped": int((~valid).sum())}
        for name, vals in parts.items():
            gv = self.acc.gather(vals.to(dev)).cpu()
            ok = torch.isfinite(gv)
            stats[f"reward/{name}"] = float(gv[ok].mean()) if ok.any() else float("nan")
        stats.update({f"diag/{k}": v for k, v in astats.items()})
        # the total reward per GenEval task, for prompts that carry a GenEval record
        tags = torch.tensor([TASK_ORDER.index(m["tag"]) if m and m.get("tag") in TASK_ORDER else -1
                             for m in roll.metadata])
        g_tags = self.acc.gather(tags.to(dev)).cpu()
        for k, tag in enumerate(TASK_ORDER):
            sel = (g_tags == k) & valid
            if sel.any():
                stats[f"task/{tag}"] = float(g_total[sel].mean())
                groups = g_group[sel].unique()
                zero = sum(bool((g_total[(g_group == gid) & valid] == g_total[(g_group == gid) & valid][0]).all())
                           for gid in groups)
                stats[f"zero_std/{tag}"] = zero / len(groups)
        valid_local = valid[rank * n:(rank + 1) * n]
        return adv, valid_local, stats

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        src = self.ema if ema else {n: p.detach() for n, p in self.params.items()}
        return {n: v.float().cpu().contiguous() for n, v in src.items()}

    def save_checkpoint(self) -> Path:
        """``checkpoint-<epoch>``: LoRA (+ LIM) weights, their EMA, the algorithm's state (DiffusionNFT's old
        weights), optimizer, LDAM state, epoch, config."""

        def write(folder: Path) -> None:
            save_file(self._weights(), str(folder / "trainable.safetensors"))
            save_file(self._weights(ema=True), str(folder / "ema.safetensors"))
            if self.ldam is not None:
                torch.save(self.ldam.state_dict(), folder / "ldam.pt")
            for name, tensors in self.algo.state_tensors().items():  # DiffusionNFT: the old policy's weights
                save_file(tensors, str(folder / f"{name}.safetensors"))
            save_config(self.cfg, folder / "config.yaml")
            (folder / STATE_FILE).write_text(json.dumps({"epoch": self.epoch, "optimizer_steps": self.opt_step}) + "\n")

        return write_checkpoint(self.acc, self.out, f"checkpoint-{self.epoch:06d}", write,
                                self.cfg.train.keep_last, STATE_FILE)

    def _checked_checkpoint(self, resume, allow_config_change: bool = False) -> Path | None:
        """The checkpoint ``resume`` names (corrupt ones skipped or refused, see
        :func:`parauni.utils.checkpoints.resume_path`), its config compared with this one: only the keys of
        :data:`parauni.utils.checkpoints.RESUME_SAFE_KEYS` may differ without ``allow_config_change``."""

        ckpt = resume_path(self.out, resume, STATE_FILE, required=CHECKPOINT_FILES)
        if ckpt is None:  # --resume auto without a checkpoint: a fresh start
            return None
        epoch = int(json.loads((ckpt / STATE_FILE).read_text())["epoch"])
        self.config_changes = check_resume_config(ckpt, to_yaml_dict(self.cfg), to_yaml_dict(GRPOConfig()),
                                                  allow_config_change, self.out if self.acc.is_main_process else None,
                                                  where={"epoch": epoch})
        return ckpt

    def _resume(self, resume) -> None:
        """Load a checkpoint (a folder, or a ``--resume`` value: see :meth:`_checked_checkpoint`): the LoRA (and
        LIM) weights and their EMA strictly by name and shape, the optimizer and RNG states, LDAM, the epoch."""
        ckpt = resume if isinstance(resume, Path) else self._checked_checkpoint(resume)
        if ckpt is None:
            return
        self.acc.load_state(str(ckpt))
        weights = _read_like(ckpt / "trainable.safetensors", self.params)
        ema = _read_like(ckpt / "ema.safetensors", self.params)
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n].to(p.dtype))
                self.ema[n] = ema[n].to(p.device, p.dtype)
        extra = {name: _read_like(ckpt / f"{name}.safetensors", self.params) for name in self.algo.state_tensors()}
        if extra:
            self.algo.load_state_tensors(extra)
        if self.ldam is not None and (ckpt / "ldam.pt").is_file():
            self.ldam.load_state_dict(torch.load(ckpt / "ldam.pt", weights_only=True))
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.epoch = int(state["epoch"])
        self.opt_step = int(state.get("optimizer_steps", 0))
        if self.config_changes:  # --allow-config-change: the optimizer takes this config's settings
            o = self.cfg.optim
            for group in self.opt.param_groups:
                group.update(lr=o.lr, betas=tuple(o.betas), weight_decay=group_weight_decay(group, o.weight_decay))
        logger.info("resumed from %s at epoch %d", ckpt, self.epoch)

    # -- evaluation -----------------------------------------------------------------------------------------
    def merged_pipeline(self, ema: bool = True):
        """A ``ParaUniPipeline`` with the (EMA) LoRA merged into a plain copy of the transformer."""

        with self.swapped_weights(self.ema if ema else {n: p.detach() for n, p in self.params.items()}):
            merged = merged_transformer(self.raw_transformer)
            cond = copy.deepcopy(self.pipe.conditioner).eval()
        return ParaUniPipeline(vlm=self.pipe.vlm, tokenizer=self.pipe.tokenizer, conditioner=cond, transformer=merged,
                               scheduler=self.pipe.scheduler, vae=self.pipe.vae)

    def export(self, out: str | Path, ema: bool = True) -> Path:
        """Write a ``ParaUniPipeline`` folder with the (EMA) LoRA merged into the transformer."""
        self.merged_pipeline(ema).save_pretrained(out)
        return Path(out)

    def export_final(self) -> Path:
        """``<output_dir>/final``: the EMA model as a ``ParaUniPipeline`` folder, written under a temporary name
        and renamed (``parauni generate --model``, ``parauni eval ... --model`` read it)."""

        final = self.out / "final"
        tmp = final.with_name("final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.export(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        return final

    def eval_scales(self) -> list[float]:
        """The guidance scales of the evaluations: ``sampling.eval_guidance_scales``, else the rollouts' own."""
        s = self.cfg.sampling
        return [float(g) for g in (s.eval_guidance_scales or [s.guidance_scale])]

    def geneval(self, name: str) -> dict[str, dict]:
        """The evaluation (default: :data:`parauni.registry.EVALUATORS`' default, a GenEval-style one) of the current
        EMA model at each of :meth:`eval_scales`: the first into ``<out>/eval/<name>``
        (``geneval_before`` for the initial model, ``geneval`` for the final one, where ``parauni report`` looks),
        the others into ``<out>/eval/<name>_cfg<scale>``. Returns ``{folder name: summary}``."""
        evaluate = self._evaluate or EVALUATORS.get_default()
        s = self.cfg.sampling
        pipe = self.merged_pipeline()
        out = {}
        for k, g in enumerate(self.eval_scales()):
            folder = name if k == 0 else f"{name}_cfg{g:g}"
            # "refresh": the images are kept only when provenance.json matches these weights (a resumed run
            # regenerates)
            out[folder] = evaluate(pipe, self.out / "eval" / folder, s.eval_images_per_prompt, s.eval_steps, g,
                                   limit=self.cfg.train.eval_limit, mode="refresh",
                                   name=f"{self.out} EMA (epoch {self.epoch})")
        return out

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict:
        """Train to ``train.epochs`` (``stop_after``: end after that epoch without saving more, as an interrupted
        run would), then write ``final/`` and the evaluations."""
        return with_lock(self._lock, lambda: self._run(stop_after))  # held since __init__ (or taken again)

    def _run(self, stop_after: int | None) -> dict:
        t = self.cfg.train
        main = self.acc.is_main_process
        result = {}
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
            before = self.out / "eval" / "geneval_before" / "summary.json"
            if t.eval_geneval and t.eval_before and self.epoch == 0 and not before.is_file():
                result.update(self.geneval("geneval_before"))
        end = t.epochs if stop_after is None else min(stop_after, t.epochs)
        if main:  # rows of epochs after the checkpoint (an interrupted run) are redone: drop them first

            truncate_jsonl(self.out / "metrics.jsonl", lambda r: int(r.get("step", 0)) <= self.epoch)
            truncate_jsonl(self.out / "ldam.jsonl", lambda r: int(r.get("epoch", 0)) < self.epoch)
        metrics = open(self.out / "metrics.jsonl", "a") if main else None
        ldam_log = open(self.out / "ldam.jsonl", "a") if main and self.ldam is not None else None
        if t.logger != "none":
            self.acc.init_trackers("grpo")
        bar = tqdm(total=t.epochs, initial=self.epoch, desc="grpo", disable=not (main and self.progress),
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        idle = 0
        while self.epoch < end:
            e0 = time.perf_counter()
            active = [d["reward"] for d in self.ldam.active] if self.ldam is not None else []
            roll = self.rollout(self.epoch)
            e1 = time.perf_counter()
            adv, valid, rstats = self.advantages(roll)
            e2 = time.perf_counter()
            ustats = self.update(roll, adv, valid, self.epoch)
            self.algo.after_epoch()
            e3 = time.perf_counter()
            idle = self._idle_epochs(idle, rstats, ustats)
            row = {"step": self.epoch + 1, **rstats, **ustats,
                   "diag/lora_delta_norm": lora_delta_norm(self.raw_transformer), "ldam_active": active,
                   "time/rollout": e1 - e0, "time/reward": e2 - e1, "time/update": e3 - e2, "seconds": e3 - e0}
            if self.ldam is not None:
                decisions = self.ldam.update(self.epoch, {r: rstats[f"reward/{r}"] for r in self.reward_names},
                                             ustats["grad_norm"])
                if ldam_log:
                    for d in decisions:
                        ldam_log.write(json.dumps(d) + "\n")
                    ldam_log.flush()
            self.epoch += 1
            if metrics:
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            if t.logger != "none":
                self.acc.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=self.epoch)
            bar.update(1)
            shown = {"clip": f"{ustats['clip_frac']:.2f}"} if "clip_frac" in ustats else \
                {"old_dev": f"{ustats['diag/old_deviate']:.1e}"}
            bar.set_postfix(reward=f"{rstats['reward/total']:.3f}", kl=f"{ustats['kl']:.2e}", **shown,
                            ldam=",".join(active) or "-")
            if self.epoch % t.save_every == 0 or self.epoch == t.epochs:
                self.save_checkpoint()
        bar.close()
        if t.logger != "none":
            self.acc.end_training()
        for f in (metrics, ldam_log):
            if f:
                f.close()
        result.update(epochs=self.epoch, seconds=time.perf_counter() - t0)
        if self.epoch >= t.epochs and main:
            self.plot()
            result["final"] = str(self.export_final())
            if t.eval_geneval:
                after = self.geneval("geneval")
                result.update({"geneval_after" + k[len("geneval"):]: v for k, v in after.items()})
                for k in after:
                    before = self.out / "eval" / k.replace("geneval", "geneval_before", 1) / "summary.json"
                    key = k.replace("geneval", "geneval_before", 1)
                    if key not in result and before.is_file():
                        result[key] = json.loads(before.read_text())
        return result

    def _idle_epochs(self, idle: int, rstats: dict, ustats: dict) -> int:
        """The count of consecutive epochs that could not learn (every reward NaN, every group's rewards equal,
        or no optimizer step); past ``train.max_idle_epochs`` the run stops with an error naming the cause."""
        n_valid = self.cfg.prompts.per_epoch * self.cfg.sampling.group_size - rstats["reward/dropped"]
        all_equal = rstats.get("diag/zero_std_share") == 1.0
        if n_valid > 0 and not all_equal and ustats.get("diag/optimizer_steps", 1) > 0:
            return 0
        idle += 1
        limit = self.cfg.train.max_idle_epochs
        if limit and idle >= limit:
            if n_valid <= 0:
                cause = ("every reward was NaN or raised (see the warnings above): check the rewards and their "
                         "rewards.options")
            elif all_equal:
                cause = ("every group's rewards were equal, so no sample has an advantage: check rewards.weights "
                         "(a zero weight?), the reward itself, and sampling.noise_level")
            else:
                cause = "no optimizer step ran"
            raise TrainingStalledError(f"stage III stopped after {idle} consecutive epochs that could not learn "
                                       f"(epoch {self.epoch}): {cause}. The last checkpoint is kept; "
                                       "train.max_idle_epochs sets the limit (0: never stop)")
        return idle

    def plot(self) -> None:

        rows = [json.loads(x) for x in (self.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        nan = float("nan")
        series = {k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys if k.startswith("reward/")
                  and k != "reward/dropped"}
        plot_curves(series, self.out / "curves" / "rewards.png", title=f"rewards ({self.out.name})")
        diag = {k: [r.get(k, nan) for r in rows] for k in ("clip_frac", "kl", "grad_norm") if k in keys}
        diag.update({k: [r.get(k, nan) for r in rows] for k in keys if k.startswith("zero_std/")})
        diag.update({k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys
                     if k.startswith(("diag/", "time/"))})
        plot_curves(diag, self.out / "curves" / "diagnostics.png", title=f"diagnostics ({self.out.name})")
        tasks = {k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys if k.startswith("task/")}
        if tasks:
            plot_curves(tasks, self.out / "curves" / "tasks.png",
                        title=f"total reward per GenEval task ({self.out.name})")


GRPOTrainer = RLTrainer  # the name before DiffusionNFT joined; both algorithms run in it
