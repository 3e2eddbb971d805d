"""Build what a training config describes and split it into its frozen and trainable parts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError
from ..flow import flow_loss, interpolate, sigma_to_timestep
from ..models.backbone import VLMBackbone
from ..models.prompt import tokenize_prompts
from ..pipelines.pipeline_parauni import ParaUniPipeline
from .config import CHECKPOINTABLE
from .sharded import gathered, whole

logger = logging.getLogger(__name__)


class FlowTrainModule(nn.Module):
    """The frozen VLM, the conditioner and the diffusion transformer as one module: ``forward`` returns the
    rectified-flow loss of a batch. Only what the stage trains has ``requires_grad``; the VAE stays outside
    (latents come in), so a wrapped copy (DDP, FSDP) synchronises just this module."""

    def __init__(self, pipe: ParaUniPipeline, parts: list[str]):
        super().__init__()
        self.vlm, self.conditioner, self.transformer = pipe.vlm, pipe.conditioner, pipe.transformer
        self.tokenizer = pipe.tokenizer
        self.backbone = VLMBackbone(pipe.vlm)
        self.vlm.requires_grad_(False).eval()
        self.conditioner.requires_grad_(False)
        self.transformer.requires_grad_(False)
        if "queries" in parts:
            self.conditioner.queries.requires_grad_(True)
        if "lim" in parts:
            self.conditioner.lim.requires_grad_(True)
        if "transformer" in parts:
            self.transformer.requires_grad_(True)
        self.parts = list(parts)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Trainable parameters by their pipeline name (``conditioner.…``, ``transformer.…``)."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def set_gradient_checkpointing(self, on: bool | list[str]) -> None:
        """``model.gradient_checkpointing``: ``true`` checkpoints the VLM, the connector (the conditioner) and,
        when it trains, the transformer; a list (of ``vlm``, ``connector``, ``transformer``) just those
        modules (recomputing activations in the backward pass instead of storing them: less memory, ~1/3 more
        compute for each module named). The transformer may be named in stage I too: the queries' gradient
        flows back through it."""
        if on is True:
            on = ["vlm", "connector"] + (["transformer"] if "transformer" in self.parts else [])
        for name in on or []:
            if name == "connector":
                self.conditioner.enable_gradient_checkpointing()
            elif name == "transformer":
                self.transformer.enable_gradient_checkpointing()
            elif name == "vlm":
                # frozen, but the queries' gradients flow through it; its activations dominate
                self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                self.vlm.train()  # HF checkpoints layers in train mode only; the language model has no dropout
            else:
                raise ConfigError(f"model.gradient_checkpointing: unknown module {name!r} "
                                  f"(allowed: {', '.join(CHECKPOINTABLE)})")

    def compile_parts(self) -> None:
        """``train.compile``: ``torch.compile`` the transformer and the connector in place
        (:meth:`torch.nn.Module.compile`, so parameter names, checkpoints and exports are unchanged)."""
        self.transformer.compile()
        self.conditioner.compile()

    def frozen_to(self, dtype: torch.dtype) -> None:
        """Frozen weights in ``dtype`` (bf16 under bf16 mixed precision on CUDA): the VLM, and the transformer
        when it does not train. Trainable weights stay float32 (the optimizer's master weights)."""
        self.vlm.to(dtype)
        if "transformer" not in self.parts:
            self.transformer.to(dtype)

    def condition(self, captions: list[str | None]) -> torch.Tensor:
        """``(B, N, C)`` conditions; ``None`` captions get the unconditional prompt."""
        ids, mask = tokenize_prompts(self.tokenizer, self.conditioner.template, captions)
        device = self.conditioner.queries.device
        states = self.backbone(ids.to(device), mask.to(device), self.conditioner.queries,
                               layers=self.conditioner.layer_indices, final_norm=self.conditioner.config.final_norm)
        return self.conditioner(states)

    def forward(self, captions: list[str | None], latents: torch.Tensor, noise: torch.Tensor,
                sigma: torch.Tensor) -> torch.Tensor:
        cond = self.condition(captions)  # (B, N, C)
        # every condition token (the N query outputs) is valid: no mask, so SDPA may take its flash kernel
        # (an all-ones mask becomes an all-zeros additive bias, which keeps SDPA on the masked kernels)
        x_t = interpolate(latents, noise, sigma).to(self.transformer.dtype)
        v = self.transformer(x_t, encoder_hidden_states=cond.to(self.transformer.dtype), encoder_attention_mask=None,
                             timestep=sigma_to_timestep(sigma).to(x_t.dtype), return_dict=False)[0]
        return flow_loss(v, latents, noise)


def save_trainable(module: FlowTrainModule, path: str | Path, write: bool = True) -> None:
    """The trainable weights as safetensors (float32), written atomically.

    Under FSDP2 (``fully_shard``) every parameter is a ``DTensor`` holding this process's shard; it is
    all-gathered (``DTensor.full_tensor``, as ``Accelerator.get_state_dict`` does for a full state dict, but
    for the trainable weights only, never the frozen VLM). Under DeepSpeed ZeRO-3 each parameter holds this
    process's partition; ``deepspeed.zero.GatheredParameters`` gathers the trainable ones. Either is a
    collective: with a sharded module every process must call this, and only the one with ``write`` writes
    the file.
    """
    params = module.trainable_state()
    # ZeRO-3 partitions all-gathered for the copy below, partitioned again on exit (a collective, too)
    with gathered(params.values()):
        state = {name: whole(param.detach()).float().cpu().clone().contiguous() for name, param in params.items()}
    if not write:
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
