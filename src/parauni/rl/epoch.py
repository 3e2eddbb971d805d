"""The parts of a stage-III epoch that every algorithm shares, one object the trainer holds (:class:`EpochData`):
the epoch's random streams, the rollout's inputs (prompts, conditions with LDAM's noise), the rewards'
group-normalised advantages over every process, and the samples an update trains on with their conditions.

Every random draw that belongs to a sample (its initial latents and SDE noise, LDAM's noise, its training points
and the update's fresh noise) comes from that sample's own generator (:class:`SampleStreams`), keyed by the
sample's GLOBAL index (prompt ``i`` of the epoch, image ``j``: ``i G + j``), never by the process; the update's
order and its optimizer steps' sample sets are one global plan every process computes (:meth:`EpochData.update_plan`).
So a run on ``N`` processes draws the same numbers for the same samples as one process at the same global batch,
and its updates average the same gradients (up to float round-off of the summation order)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..eval.geneval import TASK_ORDER
from .objective import group_advantages, split_evenly

_STREAMS = ("rollout", "sde_window", "train_order", "transitions", "nft_noise")
_SHARED, _PER_SAMPLE = 0, 1  # the seed's domain: a stream of the epoch, or one sample's stream


def stream_id(stream: str) -> int:
    """The number of a named random stream: its index in :data:`_STREAMS` (the seeds of earlier runs), else
    ``2**32 + crc32(name)`` (stable across processes and Python runs, unlike ``hash``)."""
    if stream in _STREAMS:
        return _STREAMS.index(stream)
    return 2**32 + zlib.crc32(stream.encode())


class SampleStreams:
    """One torch generator per sample of this process, each seeded by the sample's global index: a sample draws
    the same numbers whichever process holds it and however the batch is cut into chunks."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def __len__(self) -> int:
        return len(self.generators)

    def _rows(self, rows) -> list[torch.Generator]:
        return self.generators if rows is None else [self.generators[int(r)] for r in rows]

    def randn(self, shape: tuple[int, ...], rows=None) -> torch.Tensor:
        """``(R, *shape)`` standard normal draws, row ``r`` from sample ``rows[r]``'s stream (all samples by
        default)."""
        return torch.stack([torch.randn(shape, generator=g) for g in self._rows(rows)])

    def rand(self, shape: tuple[int, ...], rows=None) -> torch.Tensor:
        """``(R, *shape)`` uniform draws in [0, 1), as :meth:`randn`."""
        return torch.stack([torch.rand(shape, generator=g) for g in self._rows(rows)])

    def randperm(self, n: int, rows=None) -> torch.Tensor:
        """``(R, n)``: a permutation of ``range(n)`` per sample, as :meth:`randn`."""
        return torch.stack([torch.randperm(n, generator=g) for g in self._rows(rows)])


@dataclass
class UpdateStep:
    """One optimizer step of an update on this process."""

    micro: list[torch.Tensor]  # this process's micro-batches of the step (local sample indices)
    padding: list[bool]  # per micro-batch: a pass at weight 0 (its statistics are not recorded) that only keeps
    # the processes' collectives in step: a process with none of the step's samples still joins the gradient
    # sync, and under DeepSpeed ZeRO every process runs as many backward passes as the busiest one
    total: int  # the step's samples over every process
    weight: float  # each sample's loss weight: processes / total (the gradient sync averages over processes)

    def weight_of(self, i: int) -> float:
        """The per-sample loss weight of micro-batch ``i``: 0 for padding."""
        return 0.0 if self.padding[i] else self.weight


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
    streams: SampleStreams  # each sample's rollout stream (initial noise, then SDE noise step by step)


class EpochData:
    """Random streams, rollout inputs, advantages and update samples of an epoch on this process."""

    def __init__(self, cfg, acc, pipe, prompt_source, reward, ldam, drops_failed_samples: bool):
        """``prompt_source``: ``epoch(epoch, n) -> records``; ``reward``: ``(images, prompts, metadata) -> (total,
        parts)``; ``ldam``: LDAM or ``None``; ``drops_failed_samples``: the algorithm's choice for NaN rewards."""
        self.cfg, self.acc, self.pipe = cfg, acc, pipe
        self.prompt_source, self.reward, self.ldam = prompt_source, reward, ldam
        self.drops_failed_samples = drops_failed_samples
        self.lockstep = False  # every process runs as many backward passes a step (DeepSpeed ZeRO)
        self.num_layers = len(pipe.conditioner.layer_indices)
        with torch.no_grad():
            self.uncond_states = pipe.layer_states([None])  # (L, 1, N, D)
            # the unconditional condition, fixed unless the LIM trains
            self._uncond = None if cfg.model.train_lim else pipe.conditioner(self.uncond_states)  # (1, N, C)

    def _seed(self, stream: str, epoch: int, domain: int, index: int) -> int:
        entropy = [self.cfg.train.seed, stream_id(stream), epoch, domain, index]
        return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)

    def generator(self, stream: str, epoch: int) -> torch.Generator:
        """A torch generator for one named random stream of one epoch, the same on every process (what every
        process must agree on: the update's global order, a rollout's SDE window), seeded from
        ``numpy.random.SeedSequence([train.seed, stream, epoch, 0, 0])``: streams and epochs never share a seed.
        Any name is a stream: the built-in ones (:data:`_STREAMS`) by their index, others (an algorithm's own) by
        a stable hash of the name, above every index."""
        return torch.Generator().manual_seed(self._seed(stream, epoch, _SHARED, 0))

    def global_index(self) -> torch.Tensor:
        """``(B,)`` the global index of each of this process's samples: prompt ``i`` of the epoch (the process
        holds ``i = rank, rank + N, ...``), image ``j`` -> ``i G + j``; one process's order is ``0 .. P G - 1``."""
        world, rank, g = self.acc.num_processes, self.acc.process_index, self.cfg.sampling.group_size
        return torch.tensor([i * g + j for i in range(rank, self.cfg.prompts.per_epoch, world) for j in range(g)])

    def sample_streams(self, stream: str, epoch: int) -> SampleStreams:
        """One generator per sample of this process for the named stream of ``epoch``, seeded from
        ``SeedSequence([train.seed, stream, epoch, 1, global index])`` (:meth:`global_index`)."""
        return SampleStreams([torch.Generator().manual_seed(self._seed(stream, epoch, _PER_SAMPLE, int(i)))
                              for i in self.global_index()])

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
        noise = None
        if self.ldam is not None and self.ldam.active:  # each sample's own LDAM stream
            per_sample = [self.ldam.noise(self.num_layers, (1, *states.shape[2:]), generator=g)
                          for g in self.sample_streams("ldam", epoch).generators]
            noise = torch.cat(per_sample, dim=1).to(dev)  # (L, B, N, D)
        if noise is None:  # the G samples of a prompt share its condition: run the LIM once per prompt
            cond = pipe.conditioner(per_prompt).repeat_interleave(s.group_size, dim=0)  # (B, N, C)
        else:  # LDAM's noise differs per sample
            cond = pipe.conditioner(states, noise)  # (B, N, C)
        uncond = pipe.conditioner(self.uncond_states)  # (1, N, C)
        return RolloutInputs(prompts, metas, group, states, noise, cond, uncond,
                             self.sample_streams("rollout", epoch))

    def update_conditions(self, roll, mb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cond, uncond)`` of the micro-batch ``mb`` in an update: the stored conditions, or with
        ``model.train_lim`` the LIM run again (with gradients) on the stored states and LDAM noise."""
        if self._uncond is not None:
            return roll.cond[mb], self._uncond
        cond = self.pipe.conditioner(roll.states[:, mb], None if roll.layer_noise is None else roll.layer_noise[:, mb])
        return cond, self.pipe.conditioner(self.uncond_states)

    def update_plan(self, adv: torch.Tensor, valid: torch.Tensor, epoch: int, drop_zero: bool) -> list[UpdateStep]:
        """The optimizer steps of an update and this process's share of each. The trained samples: the valid ones,
        without zero-advantage samples when ``drop_zero`` (Flow-GRPO's ``optim.drop_zero_adv``,
        ``train_sd3.py:796-817``); an algorithm that declares ``drops_failed_samples = False`` keeps every sample
        (NaN rewards weigh 0 in its loss). They are put in one global order (a permutation of the global indices
        from the epoch's ``train_order`` stream, the same on every process) and cut into ``optim.steps_per_epoch``
        consecutive sets of sizes differing by at most one (``None``: one step per ``processes x
        optim.train_batch`` samples). Each process trains its own samples of a set, in micro-batches of
        ``optim.train_batch``, each sample's loss weighted ``processes / set size``: with the gradient sync's
        average over processes, every step's gradient is the mean over its set, whatever the process count.
        A process with none of a set's samples runs one sample at weight 0 (the sync needs every process); with
        ``lockstep`` (DeepSpeed ZeRO, whose every backward pass communicates) every process runs as many
        micro-batches a step as the busiest one."""
        keep = valid & (adv != 0) if drop_zero else (valid.clone() if self.drops_failed_samples
                                                      else torch.ones_like(valid))
        gidx = self.global_index()
        world, dev = self.acc.num_processes, self.acc.device
        keep_all, gidx_all = keep, gidx
        if world > 1:
            keep_all = self.acc.gather(keep.to(dev, torch.int64)).cpu().bool()
            gidx_all = self.acc.gather(gidx.to(dev)).cpu()
        n_all = self.cfg.prompts.per_epoch * self.cfg.sampling.group_size
        kept = torch.zeros(n_all, dtype=torch.bool)
        kept[gidx_all[keep_all]] = True
        order = torch.randperm(n_all, generator=self.generator("train_order", epoch))
        order = order[kept[order]]
        local = torch.full((n_all,), -1, dtype=torch.long)
        local[gidx] = torch.arange(len(gidx))
        o = self.cfg.optim
        n_steps = o.steps_per_epoch or -(-len(order) // (world * o.train_batch))
        plan, pos = [], 0
        for size in split_evenly(len(order), n_steps) if len(order) else []:
            mine = local[order[pos:pos + size]]
            pos += size
            micro = list(mine[mine >= 0].split(o.train_batch))
            plan.append(UpdateStep(micro, [False] * len(micro), size, world / size))
        counts = torch.tensor([len(step.micro) for step in plan], dtype=torch.long)
        if world > 1 and len(plan):  # padding: at least one pass a step, as many as the busiest process under ZeRO
            most = self.acc.gather(counts.reshape(1, -1).to(dev)).cpu().amax(0) if self.lockstep else counts.clamp(1)
            for step, n in zip(plan, most.tolist(), strict=True):
                extra = max(1, n) - len(step.micro)
                step.micro += [torch.zeros(1, dtype=torch.long)] * extra
                step.padding += [True] * extra
        return plan

    def train_indices(self, adv: torch.Tensor, valid: torch.Tensor, epoch: int, drop_zero: bool) -> torch.Tensor:
        """This process's samples of the update in its order (:meth:`update_plan`, padding left out)."""
        mine = [mb for s in self.update_plan(adv, valid, epoch, drop_zero) for mb, pad in zip(s.micro, s.padding,
                                                                                                  strict=True)
                if not pad]
        return torch.cat(mine) if mine else torch.zeros(0, dtype=torch.long)

    def mean_over_processes(self, values: dict[str, list[torch.Tensor]]) -> dict[str, float]:
        """The mean of each statistic's per-sample values over every process (NaN where none has a value)."""
        keys = list(values)
        local = torch.tensor([[float(torch.cat(values[k]).double().sum()) if values[k] else 0.0,
                               float(sum(v.numel() for v in values[k]))] for k in keys], dtype=torch.float64)
        if self.acc.num_processes > 1 and keys:
            local = self.acc.reduce(local.to(self.acc.device), reduction="sum").cpu()
        return {k: float(s / n) if n else float("nan") for k, (s, n) in zip(keys, local.tolist(), strict=True)}

    def extreme_over_processes(self, value: float, largest: bool) -> float:
        """The largest (or smallest) of every process's ``value``."""
        if self.acc.num_processes == 1:
            return value
        got = self.acc.gather(torch.tensor([value], dtype=torch.float64, device=self.acc.device)).cpu()
        return float(got.max() if largest else got.min())

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
