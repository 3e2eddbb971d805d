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


def merged_state(transformer) -> dict[str, torch.Tensor]:
    """The state dict of a LoRA-adapted SANA transformer with ``W + scale * B A`` folded into each weight and
    the adapter's own tensors left out: the keys of the plain (adapter-free) model. Whole tensors whatever shards
    the weights (FSDP2's ``DTensor`` shards are all-gathered, DeepSpeed ZeRO-3's partitions gathered): a
    collective on a sharded transformer, which every process must call."""
    zero3 = bool(partitioned(transformer.parameters()))
    with gathered(transformer.parameters()):  # ZeRO-3: whole inside the block only, so the values are copied
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
            state[key] = whole(value).clone() if zero3 else whole(value)
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
