"""LoRA on the SANA transformer (peft): adding it, folding it into the weights, measuring how far it moved."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

from ..errors import ConfigError
from ..train.sharded import gathered, partitioned, whole


@contextmanager
def adapters_off(transformer) -> Iterator[None]:
    """The transformer with its LoRA adapters disabled inside the block (the reference policy), enabled again on
    the way out even when the block raises (as peft's own ``disable_adapter()`` context)."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def lora_target_names(transformer) -> list[str]:
    """The names ``model.lora_targets`` may give: each layer LoRA can wrap (Linear, Conv), by its name within its
    block (``to_q``, ``to_out.0``, ``ff.conv_inverted``) without the block's path, sorted."""
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)
    names = set()
    for name, module in transformer.named_modules():
        if isinstance(module, kinds):
            parts = name.split(".")
            blocks = [i for i, p in enumerate(parts) if p.isdigit()]  # transformer_blocks.<i>.attn1.to_q
            names.add(".".join(parts[blocks[0] + 1:]) if blocks else name)
    return sorted(names)


def check_lora_targets(transformer, targets: list[str]) -> None:
    """Refuse a ``model.lora_targets`` entry that names no layer (peft matches a module whose name is the entry or
    ends in ``.<entry>``), listing the names that exist."""
    modules = [name for name, _ in transformer.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        raise ConfigError(f"model.lora_targets: {missing} name no layer of the transformer; layers LoRA can wrap: "
                          f"{', '.join(lora_target_names(transformer))}")


def add_lora(transformer, rank: int, alpha: int, targets: list[str]) -> None:
    check_lora_targets(transformer, targets)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                                       init_lora_weights="gaussian"))


def make_trainable(transformer, model_cfg) -> None:
    """The transformer's trainable weights under ``model.finetune``: a new LoRA adapter (``lora``: only its tensors
    train) or every weight (``full``)."""
    if model_cfg.finetune == "full":
        transformer.requires_grad_(True)
    else:
        transformer.requires_grad_(False)
        add_lora(transformer, model_cfg.lora_rank, model_cfg.lora_alpha, model_cfg.lora_targets)


def merged_state(transformer, values: dict[str, torch.Tensor] | None = None,
                 dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA-adapted SANA transformer with ``W + scale * B A`` folded into each weight and
    the adapter's own tensors left out: the keys of the plain (adapter-free) model. Whole tensors whatever shards
    the weights (FSDP2's ``DTensor`` shards are all-gathered, DeepSpeed ZeRO-3's partitions gathered): a
    collective on a sharded transformer, which every process must call.

    ``values``: whole tensors merged in place of the named parameters' own (names of ``named_parameters()``; not
    with FSDP2 shards), e.g. float32 LoRA weights beside a module DeepSpeed's bf16 holds in bf16; ``dtype``: the
    state's dtype, each weight cast to it before its delta is added (default: each tensor's own)."""
    zero3 = bool(partitioned(transformer.parameters()))
    params = dict(transformer.named_parameters())
    with gathered(transformer.parameters()):  # ZeRO-3: whole inside the block only, so the values are copied
        own = {n: params[n].data for n in values or {}}
        try:
            for n, v in (values or {}).items():  # read in place of the parameter's data, restored below
                params[n].data = v.to(own[n].device)
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
                value = value if dtype is None else value.to(dtype)
                if key.endswith(".weight") and owner in deltas:
                    value = value + deltas[owner].to(value.dtype)
                state[key] = whole(value).clone() if zero3 or values else whole(value)
        finally:
            for n, data in own.items():
                params[n].data = data
    return state


def lora_delta_norm(transformer) -> float:
    """``sqrt(sum ||scale * B A||_F^2)`` over every LoRA layer: how far the adapter has moved the weights (a
    collective on a sharded transformer, as :func:`merged_state`)."""
    total = 0.0
    with torch.no_grad(), gathered(transformer.parameters()):
        for module in transformer.modules():
            if isinstance(module, LoraLayer) and "default" in module.lora_A:
                total += float(whole(module.get_delta_weight("default").float().pow(2).sum()))
    return total ** 0.5


def merged_transformer(transformer, into=None, values: dict[str, torch.Tensor] | None = None,
                       dtype: torch.dtype | None = None):
    """A plain copy of a LoRA-adapted SANA transformer with ``W + scale * B A`` folded into each weight
    (on the adapter's device, in ``dtype`` or the adapter's). ``into``: an earlier result to refresh in place
    instead; ``values``: as for :func:`merged_state`."""
    state = merged_state(transformer, values, dtype)
    dtype = dtype or transformer.dtype
    if into is None:
        into = type(transformer).from_config(transformer.config)
        if dtype != into.dtype:
            into = into.to(dtype=dtype)
        into = into.to(next(transformer.parameters()).device)
    into.load_state_dict(state, strict=True)
    return into.eval().requires_grad_(False)
