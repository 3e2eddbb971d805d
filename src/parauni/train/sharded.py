"""Whole tensors from the weights a sharding engine holds in pieces, and pieces from whole tensors.

Under FSDP2 (``fully_shard``) each parameter of a prepared module is a ``torch.distributed.tensor.DTensor`` holding
this process's shard; under DeepSpeed ZeRO-3 each is an empty tensor whose partition lives in ``param.ds_tensor``
(``param.ds_id`` marks one). Reading a whole weight, or writing one, is then a collective: every process must take
part. Unsharded tensors pass through every function here unchanged, so callers need no branch of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is an FSDP2 shard (a ``DTensor``)."""
    return hasattr(t, "full_tensor") and hasattr(t, "placements")


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (all-gathered: a collective), else ``t`` itself."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor, the same on every process) laid out as ``param``: this process's shard of it on
    ``param``'s mesh and placements when ``param`` is an FSDP2 ``DTensor`` (no communication: each process cuts
    its own shard), else ``value`` on ``param``'s device and dtype."""
    value = value.to(param.device, param.dtype)
    if not is_sharded(param):
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)


def partitioned(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """The DeepSpeed ZeRO-3 partitioned ones among ``params``."""
    return [p for p in params if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modify: bool = False) -> Iterator[None]:
    """Inside the block, DeepSpeed ZeRO-3 partitioned ``params`` hold their whole values
    (``deepspeed.zero.GatheredParameters``: a collective, every process must enter it); with ``modify``, what the
    block writes into them is partitioned again on the way out (process 0's values: every process must write the
    same). Nothing happens for parameters that are not partitioned."""
    parts = partitioned(params)
    if not parts:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(parts, modifier_rank=0 if modify else None):
        yield
