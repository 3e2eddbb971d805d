"""The parts of a stage-III epoch that every algorithm shares, one object the trainer holds (:class:`EpochData`):
the epoch's random streams, the rollout's inputs (prompts, conditions with LDAM's noise), the rewards'
group-normalised advantages over every process, and the samples an update trains on with their conditions."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..eval.geneval import TASK_ORDER
from .objective import group_advantages

_STREAMS = ("rollout", "sde_window", "train_order", "transitions", "nft_noise")


def stream_id(stream: str) -> int:
    """The number of a named random stream: its index in :data:`_STREAMS` (the seeds of earlier runs), else
    ``2**32 + crc32(name)`` (stable across processes and Python runs, unlike ``hash``)."""
    if stream in _STREAMS:
        return _STREAMS.index(stream)
    return 2**32 + zlib.crc32(stream.encode())


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


class EpochData:
    """Random streams, rollout inputs, advantages and update samples of an epoch on this process."""

    def __init__(self, cfg, acc, pipe, prompt_source, reward, ldam, drops_failed_samples: bool):
        """``prompt_source``: ``epoch(epoch, n) -> records``; ``reward``: ``(images, prompts, metadata) -> (total,
        parts)``; ``ldam``: LDAM or ``None``; ``drops_failed_samples``: the algorithm's choice for NaN rewards."""
        self.cfg, self.acc, self.pipe = cfg, acc, pipe
        self.prompt_source, self.reward, self.ldam = prompt_source, reward, ldam
        self.drops_failed_samples = drops_failed_samples
        self.rank = acc.process_index  # whose random streams :meth:`generator` draws
        self.num_layers = len(pipe.conditioner.layer_indices)
        with torch.no_grad():
            self.uncond_states = pipe.layer_states([None])  # (L, 1, N, D)
            # the unconditional condition, fixed unless the LIM trains
            self._uncond = None if cfg.model.train_lim else pipe.conditioner(self.uncond_states)  # (1, N, C)

    def generator(self, stream: str, epoch: int) -> torch.Generator:
        """A torch generator for one named random stream of one epoch on this process, seeded from
        ``numpy.random.SeedSequence([train.seed, stream, epoch, rank])``: streams and epochs never share a seed. Any
        name is a stream: the built-in ones (:data:`_STREAMS`) by their index, others (an algorithm's own) by a stable
        hash of the name, above every index."""
        entropy = [self.cfg.train.seed, stream_id(stream), epoch, self.rank]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

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
        (their advantage is 0: they add only the KL term), as the reference tops up its mask. An algorithm that
        declares ``drops_failed_samples = False`` keeps every sample (NaN rewards weigh 0 in its loss)."""
        keep = valid & (adv != 0) if drop_zero else (valid.clone() if self.drops_failed_samples
                                                      else torch.ones_like(valid))
        gen = self.generator("train_order", epoch)
        if self.acc.num_processes > 1:
            most = int(self.acc.gather(keep.sum().reshape(1).to(self.acc.device)).max())
            spare = torch.nonzero(~keep).flatten()
            spare = spare[torch.randperm(len(spare), generator=gen)][:max(0, most - int(keep.sum()))]
            keep[spare] = True
        idx = torch.nonzero(keep).flatten()
        return idx[torch.randperm(len(idx), generator=gen)]

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
