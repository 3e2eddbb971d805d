"""``parauni grpo``: stage III, Flow-GRPO with several rewards and LDAM (SPEC §4, §5).

One epoch: ``prompts.per_epoch`` prompts, ``G`` images each, sampled with the SDE step of
:mod:`parauni.rl.sde` (CFG as one batched forward), rewarded, turned into group-normalised advantages,
and used for one pass of clipped-ratio updates with a KL penalty to the reference model (the same
transformer with its LoRA adapter off). LDAM watches every reward and, when one stalls, adds noise to
the query features of that reward's layer group for the next rollouts; the noise is stored with each
rollout and replayed in the update. Checkpoints hold the LoRA (and LIM) weights, their EMA, the
optimizer, LDAM's state and the epoch, written atomically; ``--resume`` continues exactly.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..eval.geneval import TASK_ORDER
from ..rewards.base import WeightedReward
from ..train.config import ModelConfig, resolve_precision, save_config
from ..train.model import build_pipeline
from ..utils.checkpoints import resume_path, write_checkpoint
from .config import GRPOConfig
from .ldam import DEFAULT_REWARD_TO_GROUP, LDAM, default_layer_groups
from .objective import (
    clipped_policy_loss,
    ema_decay,
    ema_due,
    group_advantages,
    kl_to_reference,
    ratio_stats,
    split_evenly,
)
from .sde import sde_step, sigma_grid

logger = logging.getLogger(__name__)
STATE_FILE = "grpo_state.json"


# -- prompts ------------------------------------------------------------------------------------------------
class PromptSource:
    """Prompts (and GenEval metadata, passed to the rewards) for each epoch, deterministic from the seed."""

    def __init__(self, cfg, seed: int):
        self.kind, self.seed = cfg.kind, seed
        self.records: list[dict] = []
        if cfg.kind == "file":
            path = Path(cfg.path)
            if not path.is_file():
                raise FileNotFoundError(f"prompts.path {cfg.path!r} not found")
            lines = [x for x in path.read_text().splitlines() if x.strip()]
            if path.suffix == ".jsonl":
                self.records = [json.loads(x) for x in lines]
            else:
                self.records = [{"prompt": x.strip()} for x in lines]
            if not self.records:
                raise ValueError(f"{path}: no prompts")
        elif cfg.pool:
            from ..toy.prompts import random_meta

            rng = np.random.default_rng([seed, 4242])
            self.records = [dict(random_meta(rng)) for _ in range(cfg.pool)]

    def epoch(self, epoch: int, n: int) -> list[dict]:
        """Epoch ``epoch``'s ``n`` records. A fixed set (a file or a toy pool) is walked in shuffled passes,
        like a data loader: every record comes once per pass, so with ``n`` equal to the set's size every
        epoch sees the same records (in another order) and the reward curve follows the same prompts."""
        if self.kind == "toy" and not self.records:
            from ..toy.prompts import random_meta

            rng = np.random.default_rng([self.seed, epoch, 17])
            return [dict(random_meta(rng)) for _ in range(n)]
        size = len(self.records)
        orders: dict[int, np.ndarray] = {}  # pass -> its shuffled order
        out = []
        for pos in range(epoch * n, (epoch + 1) * n):
            k = pos // size
            if k not in orders:
                orders[k] = np.random.default_rng([self.seed, k, 17]).permutation(size)
            out.append(self.records[int(orders[k][pos % size])])
        return out


# -- LoRA -----------------------------------------------------------------------------------------------------
def add_lora(transformer, rank: int, alpha: int, targets: list[str]) -> None:
    from peft import LoraConfig

    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                       init_lora_weights="gaussian"))


def merged_state(transformer) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA-adapted SANA transformer with ``W + scale * B A`` folded into each weight and
    the adapter's own tensors left out: the keys of the plain (adapter-free) model."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and "default" in module.lora_A:
            deltas[name] = module.get_delta_weight("default")
    state = {}
    for key, value in transformer.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        owner = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and owner in deltas:
            value = value + deltas[owner].to(value.dtype)
        state[key] = value
    return state


def lora_delta_norm(transformer) -> float:
    """``sqrt(sum ||scale * B A||_F^2)`` over every LoRA layer: how far the adapter has moved the weights."""
    from peft.tuners.lora import LoraLayer

    total = 0.0
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                total += float(module.get_delta_weight("default").float().pow(2).sum())
    return total ** 0.5


def merged_transformer(transformer, into=None):
    """A plain copy of a LoRA-adapted SANA transformer with ``W + scale * B A`` folded into each weight
    (on the adapter's device and dtype). ``into``: an earlier result to refresh in place instead."""
    state = merged_state(transformer)
    if into is None:
        into = type(transformer).from_config(transformer.config)
        if transformer.dtype != into.dtype:
            into = into.to(dtype=transformer.dtype)
        into = into.to(next(transformer.parameters()).device)
    into.load_state_dict(state, strict=True)
    return into.eval().requires_grad_(False)


# -- rollouts -------------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """One epoch's samples on this process; ``T`` SDE steps, ``B`` images."""

    prompts: list[str]
    metadata: list[dict | None]
    group: torch.Tensor  # (B,) global prompt index
    states: torch.Tensor | None  # (L, B, N, D) query states (kept when the LIM trains)
    layer_noise: torch.Tensor | None  # (L, B, N, D) LDAM noise used for these samples, or None
    cond: torch.Tensor  # (B, N, C) condition used (after LDAM noise)
    latents: torch.Tensor  # (B, T + 1, c, h, w) the path from noise (index 0) to the sample (index T)
    log_probs: torch.Tensor  # (B, T); NaN for ODE transitions (outside an SDE window)
    sigmas: torch.Tensor  # (T + 1,)
    images: list[np.ndarray]
    trainable: list[int]  # the transitions the update may train (the SDE ones, never the last)


def cfg_velocity(transformer, x: torch.Tensor, sigma: float, cond: torch.Tensor, uncond: torch.Tensor,
                 scale: float) -> torch.Tensor:
    """CFG velocity with the unconditional and conditional rows in one forward. ``x`` ``(B, c, h, w)``."""
    b = x.shape[0]
    dtype = getattr(transformer, "module", transformer).dtype  # DDP wraps the transformer in several processes
    x_in = torch.cat([x, x]).to(dtype)
    emb = torch.cat([uncond.expand(b, -1, -1), cond]).to(dtype)  # (2B, N, C): unconditional first
    mask = torch.ones(emb.shape[:2], dtype=torch.long, device=x.device)
    t = torch.full((2 * b,), sigma * 1000.0, device=x.device, dtype=dtype)
    v = transformer(x_in, encoder_hidden_states=emb, encoder_attention_mask=mask, timestep=t, return_dict=False)[0]
    v_u, v_c = v.float().chunk(2)
    return v_u + scale * (v_c - v_u)


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """``(B, 3, H, W)`` in [-1, 1] -> RGB uint8 arrays."""
    arr = images.float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return list(arr)


def trained_transitions(trainable: int, fraction: float) -> int:
    """Transitions trained per sample: ``fraction`` of the ``trainable`` ones (every SDE transition but the last,
    or the SDE window's), at least one."""
    return max(1, int(round(trainable * fraction)))


# -- the trainer ----------------------------------------------------------------------------------------------
class GRPOTrainer:
    def __init__(self, cfg: GRPOConfig, resume: bool | str = False, progress: bool = True, rewards=None,
                 pipeline=None):
        """``rewards``: a ready reward callable instead of ``cfg.rewards``; ``pipeline``: a ready
        ``ParaUniPipeline`` instead of ``cfg.model.source`` (e.g. a preset built at real size with random
        weights for a benchmark). Everything else comes from ``cfg``."""
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        self.cfg, self.progress = cfg, progress
        t, m = cfg.train, cfg.model
        if t.threads:
            torch.set_num_threads(t.threads)
        self.out = Path(t.output_dir)
        self.acc = Accelerator(mixed_precision=resolve_precision(t.mixed_precision), cpu=not torch.cuda.is_available(),
                               log_with=None if t.logger == "none" else t.logger,
                               project_config=ProjectConfiguration(project_dir=str(self.out),
                                                                   logging_dir=str(self.out / "logs")))
        self.prompt_source = PromptSource(cfg.prompts, t.seed)
        self.reward = rewards or WeightedReward(dict(cfg.rewards.weights), options=dict(cfg.rewards.options))
        self.reward_names = list(cfg.rewards.weights)
        pipe = pipeline or build_pipeline(ModelConfig(source=m.source, init=m.init,
                                                      conditioner=dict(m.conditioner)), t.seed)
        self.pipe = pipe
        dev = self.acc.device
        pipe.vlm.to(dev).requires_grad_(False).eval()
        if pipe.vae is not None:
            pipe.vae.to(dev).requires_grad_(False).eval()
        pipe.conditioner.to(dev).requires_grad_(False).eval()
        tr = pipe.transformer.to(dev)
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
        o = cfg.optim
        decay = [p for p in self.params.values() if p.ndim >= 2]
        rest = [p for p in self.params.values() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}] + ([{"params": rest, "weight_decay": 0.0}]
                                                                        if rest else [])
        opt = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))
        self.transformer, self.opt = self.acc.prepare(tr, opt)
        self.acc.register_save_state_pre_hook(lambda models, weights, out: weights.clear())
        self.acc.register_load_state_pre_hook(lambda models, inp: models.clear())
        n_layers = len(pipe.conditioner.layer_indices)
        lc = cfg.ldam
        groups_cfg = lc.groups or (default_layer_groups(n_layers) if n_layers >= 3 else
                                   {g: list(range(n_layers)) for g in ("shallow", "middle", "deep")})
        mapping = {**DEFAULT_REWARD_TO_GROUP, **(lc.reward_to_group or {})}
        mapping = {r: mapping[r] for r in self.reward_names if r in mapping}
        self.ldam = LDAM(self.reward_names, groups_cfg, mapping, n_layers, lc.window, lc.gamma0, lc.patience,
                         seed=t.seed) if lc.enabled else None
        self.num_layers = n_layers
        self.epoch = 0
        self.opt_step = 0  # optimizer steps taken (the EMA schedule's clock)
        self._rollout_model = None  # the merged copy, refreshed every epoch (sampling.merge_lora)
        shift = cfg.sampling.flow_shift
        if shift is None:
            shift = float(getattr(pipe.scheduler.config, "flow_shift", 1.0) or 1.0)
        self.sigmas = sigma_grid(cfg.sampling.steps, shift=shift, kind=cfg.sampling.grid)
        with torch.no_grad():
            self.uncond_states = pipe.layer_states([None])  # (L, 1, N, D)
        if resume:
            self._resume(resume)

    @property
    def raw_transformer(self):
        return self.acc.unwrap_model(self.transformer)

    # -- sampling --------------------------------------------------------------------------------------------
    def sde_transitions(self, epoch: int) -> list[int]:
        """The transitions sampled with the SDE (and trained) in ``epoch``: all but the last, or with
        ``sampling.sde_window = N`` a window of N consecutive ones placed at random each epoch (seeded) inside
        ``sampling.sde_window_range`` (default: every transition but the last); the others run as the
        deterministic ODE (Euler) step, as in Flow-GRPO-Fast / MixGRPO."""
        s = self.cfg.sampling
        if s.sde_window is None:
            return list(range(s.steps - 1))
        lo, hi = s.sde_window_range or (0, s.steps - 1)  # the window ends before the last step
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + epoch * 31 + 5)
        start = int(torch.randint(lo, hi - s.sde_window + 1, (1,), generator=g))
        return list(range(start, start + s.sde_window))

    def rollout_model(self):
        """The transformer the rollout samples with: a plain copy with the LoRA merged (refreshed here), or the
        adapted transformer itself (``sampling.merge_lora=false``)."""
        if not self.cfg.sampling.merge_lora:
            return self.transformer
        self._rollout_model = merged_transformer(self.raw_transformer, into=self._rollout_model)
        return self._rollout_model

    @torch.no_grad()
    def rollout(self, epoch: int) -> Rollout:
        """This process's prompts of ``epoch`` and their ``G`` samples each, with everything the update needs."""
        cfg, s = self.cfg, self.cfg.sampling
        world, rank = self.acc.num_processes, self.acc.process_index
        records = self.prompt_source.epoch(epoch, cfg.prompts.per_epoch)
        mine = list(range(rank, len(records), world))
        prompts = [records[i]["prompt"] for i in mine for _ in range(s.group_size)]
        metas = [records[i] if "tag" in records[i] else None for i in mine for _ in range(s.group_size)]
        group = torch.tensor([i for i in mine for _ in range(s.group_size)])
        pipe, dev = self.pipe, self.acc.device
        per_prompt = pipe.layer_states([records[i]["prompt"] for i in mine])  # (L, P, N, D)
        states = per_prompt.repeat_interleave(s.group_size, dim=1)  # (L, B, N, D)
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 1_000_003 + epoch * 1009 + rank)
        noise = None
        if self.ldam is not None:
            noise = self.ldam.noise(self.num_layers, tuple(states.shape[1:]), generator=gen)
            noise = noise.to(dev) if noise is not None else None
        if noise is None:  # the G samples of a prompt share its condition: run the LIM once per prompt
            cond = pipe.conditioner(per_prompt).repeat_interleave(s.group_size, dim=0)  # (B, N, C)
        else:  # LDAM's noise differs per sample
            cond = pipe.conditioner(states, noise)  # (B, N, C)
        uncond = pipe.conditioner(self.uncond_states)  # (1, N, C)
        shape = pipe.transformer.config.in_channels, pipe.transformer.config.sample_size
        b, steps = len(prompts), s.steps
        trainable = self.sde_transitions(epoch)
        sde = set(trainable) | ({steps - 1} if s.sde_window is None else set())  # the full SDE: the last step too
        model = self.rollout_model()
        x = torch.randn((b, shape[0], shape[1], shape[1]), generator=gen).to(dev)
        path, logps = [x], []
        sig = self.sigmas.tolist()
        for j in range(steps):
            xs, lps = [], []
            for a in range(0, b, s.rollout_batch):
                sl = slice(a, a + s.rollout_batch)
                v = cfg_velocity(model, path[-1][sl], sig[j], cond[sl], uncond, s.guidance_scale)
                eps = torch.randn(path[-1][sl].shape, generator=gen).to(dev)
                level = s.noise_level if j in sde else 0.0
                out = sde_step(path[-1][sl].float(), v, sig[j], sig[j + 1], level, noise=eps)
                xs.append(out.prev_sample)
                lps.append(out.log_prob)
            path.append(torch.cat(xs))
            logps.append(torch.cat(lps))
        images = to_uint8(pipe.decode(path[-1].to(pipe.transformer.dtype)))
        keep_states = states if cfg.model.train_lim else None
        return Rollout(prompts, metas, group, keep_states, noise if cfg.model.train_lim else None, cond,
                       torch.stack(path, dim=1), torch.stack(logps, dim=1), self.sigmas, images,
                       trainable)

    # -- rewards and advantages -----------------------------------------------------------------------------
    def advantages(self, roll: Rollout) -> tuple[torch.Tensor, torch.Tensor, dict]:
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
        valid_local = valid[rank * n:(rank + 1) * n]
        return adv, valid_local, stats

    # -- update ---------------------------------------------------------------------------------------------
    def _train_indices(self, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> torch.Tensor:
        """This process's samples for the update, shuffled: the valid ones, without zero-advantage samples when
        ``optim.drop_zero_adv`` (Flow-GRPO, ``train_sd3.py:796-817``). With several processes every rank needs
        the same number of backward passes, so ranks with fewer samples are topped up with dropped ones (their
        advantage is 0: they add only the KL term), as the reference tops up its mask."""
        keep = valid & (adv != 0) if self.cfg.optim.drop_zero_adv else valid.clone()
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 7 + epoch)
        if self.acc.num_processes > 1:
            most = int(self.acc.gather(keep.sum().reshape(1).to(self.acc.device)).max())
            spare = torch.nonzero(~keep).flatten()
            spare = spare[torch.randperm(len(spare), generator=gen)][:max(0, most - int(keep.sum()))]
            keep[spare] = True
        idx = torch.nonzero(keep).flatten()
        return idx[torch.randperm(len(idx), generator=gen)]

    def update(self, roll: Rollout, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """Clipped-ratio + KL updates over the stored SDE transitions (never the last), Flow-GRPO style.

        The samples are cut into micro-batches of ``optim.train_batch``; gradients accumulate over
        ``1 / optim.steps_per_epoch`` of them times every trained transition, so an epoch makes
        ``steps_per_epoch`` optimizer steps (the reference's default: 2, ``config/grpo.py:83-88``); the loss is
        the mean over those samples and transitions. ``steps_per_epoch=None`` steps after every micro-batch.
        After each optimizer step the EMA follows :func:`objective.ema_decay` every ``optim.ema_every`` steps.
        """
        o, s = self.cfg.optim, self.cfg.sampling
        dev = self.acc.device
        idx = self._train_indices(adv, valid, epoch)
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 7 + epoch + 1)
        trainable = roll.trainable
        n_train = trained_transitions(len(trainable), o.timestep_fraction)
        sig = roll.sigmas.tolist()
        train_lim = self.cfg.model.train_lim
        if not train_lim:  # a frozen LIM: the unconditional condition is the same for every transition
            with torch.no_grad():
                uncond = self.pipe.conditioner(self.uncond_states)
        micro = [idx[a:a + o.train_batch] for a in range(0, len(idx), o.train_batch)]
        chunks = split_evenly(len(micro), o.steps_per_epoch or len(micro)) if micro else []
        acc_stats = {"policy_loss": [], "kl": [], "loss": [], "ratio": [], "clipped": [], "approx_kl": [],
                     "grad_norm": []}
        raw = self.raw_transformer
        before = [p.detach().clone() for p in self.params.values()]
        pos = 0
        for size in chunks:
            group = micro[pos:pos + size]
            pos += size
            n_samples = sum(len(mb) for mb in group)
            for i, mb in enumerate(group):
                chosen = torch.randperm(len(trainable), generator=gen)[:n_train].sort().values.tolist()
                steps_j = [trainable[c] for c in chosen]
                A = adv[mb].to(dev)
                for k, j in enumerate(steps_j):
                    if train_lim:
                        cond = self.pipe.conditioner(roll.states[:, mb], None if roll.layer_noise is None
                                                     else roll.layer_noise[:, mb])
                        uncond = self.pipe.conditioner(self.uncond_states)
                    else:
                        cond = roll.cond[mb]
                    x_j, x_next = roll.latents[mb, j].to(dev), roll.latents[mb, j + 1].to(dev)
                    last = i == len(group) - 1 and k == len(steps_j) - 1
                    ctx = self.acc.no_sync(self.transformer) if not last else nullcontext()
                    with ctx, self.acc.autocast():
                        v = cfg_velocity(self.transformer, x_j, sig[j], cond, uncond, s.guidance_scale)
                        new = sde_step(x_j.float(), v, sig[j], sig[j + 1], s.noise_level, prev_sample=x_next)
                        old_lp = roll.log_probs[mb, j].to(dev)
                        ratio = torch.exp(new.log_prob - old_lp)
                        policy = clipped_policy_loss(A, ratio, o.clip_range)  # (b,)
                        if o.kl_beta > 0:  # the reference: the same transformer with its LoRA adapter off
                            with torch.no_grad():
                                raw.disable_adapters()
                                v_ref = cfg_velocity(raw, x_j, sig[j], cond.detach(), uncond.detach(),
                                                     s.guidance_scale)
                                raw.enable_adapters()
                                ref = sde_step(x_j.float(), v_ref, sig[j], sig[j + 1], s.noise_level,
                                               prev_sample=x_next)
                            kl = kl_to_reference(new.mean, ref.mean, new.std_dev_t, new.std_dev_t_dt, o.kl_form)
                        else:  # no KL term: skip the reference forward
                            kl = torch.zeros_like(policy)
                        loss = (policy + o.kl_beta * kl).sum() / (n_samples * len(steps_j))
                        self.acc.backward(loss)
                    r = ratio_stats(new.log_prob, old_lp, o.clip_range)
                    for key in ("ratio", "clipped", "approx_kl"):
                        acc_stats[key].append(r[key].cpu())
                    acc_stats["policy_loss"].append(policy.detach().cpu())
                    acc_stats["kl"].append(kl.detach().cpu())
                    acc_stats["loss"].append((policy + o.kl_beta * kl).detach().cpu())
            norm = self.acc.clip_grad_norm_(list(self.params.values()), o.max_grad_norm)
            acc_stats["grad_norm"].append(torch.as_tensor(norm, dtype=torch.float32).reshape(1).cpu())
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            if ema_due(self.opt_step, o.ema_every):
                keep = ema_decay(self.opt_step, o.ema_decay, o.ema_warmup)
                with torch.no_grad():
                    for n, p in self.params.items():
                        self.ema[n].mul_(keep).add_(p.detach(), alpha=1 - keep)
            self.opt_step += 1
        cat = {k: torch.cat(v).float() if v else torch.full((1,), float("nan")) for k, v in acc_stats.items()}
        update_norm = sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(self.params.values(), before,
                                                                                       strict=True)) ** 0.5
        return {"loss": float(cat["loss"].mean()), "policy_loss": float(cat["policy_loss"].mean()),
                "kl": float(cat["kl"].mean()), "grad_norm": float(cat["grad_norm"].mean()),
                "clip_frac": float(cat["clipped"].mean()), "ratio_dev": float((cat["ratio"] - 1).abs().mean()),
                "diag/approx_kl": float(cat["approx_kl"].mean()), "diag/ratio_mean": float(cat["ratio"].mean()),
                "diag/ratio_min": float(cat["ratio"].min()), "diag/ratio_max": float(cat["ratio"].max()),
                "diag/update_norm": update_norm, "diag/trained_samples": len(idx),
                "diag/optimizer_steps": len(chunks)}

    # -- checkpoints ----------------------------------------------------------------------------------------
    def _weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        src = self.ema if ema else {n: p.detach() for n, p in self.params.items()}
        return {n: v.float().cpu().contiguous() for n, v in src.items()}

    def save_checkpoint(self) -> Path:
        """``checkpoint-<epoch>``: LoRA (+ LIM) weights, their EMA, optimizer, LDAM state, epoch, config."""

        def write(folder: Path) -> None:
            save_file(self._weights(), str(folder / "trainable.safetensors"))
            save_file(self._weights(ema=True), str(folder / "ema.safetensors"))
            if self.ldam is not None:
                torch.save(self.ldam.state_dict(), folder / "ldam.pt")
            save_config(self.cfg, folder / "config.yaml")
            (folder / STATE_FILE).write_text(json.dumps({"epoch": self.epoch, "optimizer_steps": self.opt_step}) + "\n")

        return write_checkpoint(self.acc, self.out, f"checkpoint-{self.epoch:06d}", write,
                                self.cfg.train.keep_last, STATE_FILE)

    def _resume(self, resume) -> None:
        ckpt = resume_path(self.out, resume, STATE_FILE)
        if ckpt is None:  # --resume auto without a checkpoint: a fresh start
            return
        self.acc.load_state(str(ckpt))
        weights, ema = load_file(str(ckpt / "trainable.safetensors")), load_file(str(ckpt / "ema.safetensors"))
        if set(weights) != set(self.params):
            raise KeyError(f"{ckpt}: its trainable weights do not match this config (LoRA targets / train_lim)")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n].to(p.dtype))
                self.ema[n] = ema[n].to(p.device, p.dtype)
        if self.ldam is not None and (ckpt / "ldam.pt").is_file():
            self.ldam.load_state_dict(torch.load(ckpt / "ldam.pt", weights_only=True))
        state = json.loads((ckpt / STATE_FILE).read_text())
        self.epoch = int(state["epoch"])
        self.opt_step = int(state.get("optimizer_steps", 0))

    # -- evaluation -----------------------------------------------------------------------------------------
    def merged_pipeline(self, ema: bool = True):
        """A ``ParaUniPipeline`` with the (EMA) LoRA merged into a plain copy of the transformer."""
        from ..pipelines.pipeline_parauni import ParaUniPipeline

        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            if ema:
                for n, p in self.params.items():
                    p.copy_(self.ema[n])
            merged = merged_transformer(self.raw_transformer)
            cond = copy.deepcopy(self.pipe.conditioner).eval()
            for n, p in self.params.items():
                p.copy_(backup[n])
        return ParaUniPipeline(vlm=self.pipe.vlm, tokenizer=self.pipe.tokenizer, conditioner=cond, transformer=merged,
                               scheduler=self.pipe.scheduler, vae=self.pipe.vae)

    def export(self, out: str | Path, ema: bool = True) -> Path:
        """Write a ``ParaUniPipeline`` folder with the (EMA) LoRA merged into the transformer."""
        self.merged_pipeline(ema).save_pretrained(out)
        return Path(out)

    def geneval(self, name: str) -> dict:
        """Toy GenEval of the current EMA model into ``<out>/eval/<name>`` (``geneval_before`` for the
        initial model, ``geneval`` for the final one, where ``parauni report`` looks)."""
        from ..toy.evaluation import toy_geneval

        s = self.cfg.sampling
        return toy_geneval(self.merged_pipeline(), self.out / "eval" / name, s.eval_images_per_prompt, s.eval_steps,
                           s.guidance_scale, limit=self.cfg.train.eval_limit)

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, stop_after: int | None = None) -> dict:
        t = self.cfg.train
        main = self.acc.is_main_process
        result = {}
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")
            before = self.out / "eval" / "geneval_before" / "summary.json"
            if t.eval_geneval and t.eval_before and self.epoch == 0 and not before.is_file():
                result["geneval_before"] = self.geneval("geneval_before")
        end = t.epochs if stop_after is None else min(stop_after, t.epochs)
        metrics = open(self.out / "metrics.jsonl", "a") if main else None
        ldam_log = open(self.out / "ldam.jsonl", "a") if main and self.ldam is not None else None
        if t.logger != "none":
            self.acc.init_trackers("grpo")
        bar = tqdm(total=t.epochs, initial=self.epoch, desc="grpo", disable=not (main and self.progress),
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        while self.epoch < end:
            e0 = time.perf_counter()
            active = [d["reward"] for d in self.ldam.active] if self.ldam is not None else []
            roll = self.rollout(self.epoch)
            e1 = time.perf_counter()
            adv, valid, rstats = self.advantages(roll)
            e2 = time.perf_counter()
            ustats = self.update(roll, adv, valid, self.epoch)
            e3 = time.perf_counter()
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
            bar.set_postfix(reward=f"{rstats['reward/total']:.3f}", kl=f"{ustats['kl']:.2e}",
                            clip=f"{ustats['clip_frac']:.2f}", ldam=",".join(active) or "-")
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
            if t.eval_geneval:
                result["geneval_after"] = self.geneval("geneval")
                before = self.out / "eval" / "geneval_before" / "summary.json"
                if "geneval_before" not in result and before.is_file():
                    result["geneval_before"] = json.loads(before.read_text())
        return result

    def plot(self) -> None:
        from .curves import plot_curves

        rows = [json.loads(x) for x in (self.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        keys = list(dict.fromkeys(k for r in rows for k in r))
        nan = float("nan")
        series = {k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys if k.startswith("reward/")
                  and k != "reward/dropped"}
        plot_curves(series, self.out / "curves" / "rewards.png", title=f"rewards ({self.out.name})")
        diag = {k: [r.get(k, nan) for r in rows] for k in ("clip_frac", "kl", "grad_norm") if k in keys}
        diag.update({k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys
                     if k.startswith(("diag/", "time/"))})
        plot_curves(diag, self.out / "curves" / "diagnostics.png", title=f"diagnostics ({self.out.name})")
        tasks = {k.split("/", 1)[1]: [r.get(k, nan) for r in rows] for k in keys if k.startswith("task/")}
        if tasks:
            plot_curves(tasks, self.out / "curves" / "tasks.png",
                        title=f"total reward per GenEval task ({self.out.name})")


def add_parser(sub) -> None:
    from ..train.commands import add_run_arguments

    p = sub.add_parser("grpo", help="stage III: Flow-GRPO with several rewards and LDAM")
    add_run_arguments(p, "configs/toy_grpo.yaml", "ldam.enabled=false")
    p.set_defaults(func=run)


def run(args) -> dict:
    from ..eval.geneval import format_table
    from .config import load_grpo_config

    cfg = load_grpo_config(args.config, args.overrides)
    trainer = GRPOTrainer(cfg, resume=args.resume or False, progress=not args.no_progress)
    result = trainer.run()
    if trainer.acc.is_main_process:
        rows = {k.replace("geneval_", ""): v for k, v in result.items() if k.startswith("geneval_")}
        if rows:
            print(format_table(rows))
        print(f"{result['epochs']} epochs in {result['seconds']:.0f}s; curves in {trainer.out / 'curves'}")
    return result
