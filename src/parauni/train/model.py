"""Build what a training config describes and split it into its frozen and trainable parts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..flow import flow_loss, interpolate, sigma_to_timestep
from ..models.backbone import VLMBackbone
from ..models.prompt import tokenize_prompts
from ..pipelines.pipeline_parauni import ParaUniPipeline

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

    def set_gradient_checkpointing(self, on: bool) -> None:
        if on:
            self.conditioner.enable_gradient_checkpointing()
            if "transformer" in self.parts:
                self.transformer.enable_gradient_checkpointing()
            # The VLM is frozen but the queries' gradients flow through it; its activations dominate.
            self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.vlm.train()  # HF checkpoints layers in train mode only; the language model has no dropout

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
        mask = torch.ones(cond.shape[:2], dtype=torch.long, device=cond.device)
        x_t = interpolate(latents, noise, sigma).to(self.transformer.dtype)
        v = self.transformer(x_t, encoder_hidden_states=cond.to(self.transformer.dtype), encoder_attention_mask=mask,
                             timestep=sigma_to_timestep(sigma).to(x_t.dtype), return_dict=False)[0]
        return flow_loss(v, latents, noise)


def save_trainable(module: FlowTrainModule, path: str | Path, write: bool = True) -> None:
    """The trainable weights as safetensors (float32), written atomically.

    Under FSDP2 (``fully_shard``) every parameter is a ``DTensor`` holding this process's shard; it is
    all-gathered (``DTensor.full_tensor``, as ``Accelerator.get_state_dict`` does for a full state dict, but
    for the trainable weights only, never the frozen VLM). That is a collective: with a sharded module
    every process must call this, and only the one with ``write`` writes the file.
    """
    from safetensors.torch import save_file

    state = {}
    for name, param in module.trainable_state().items():
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):  # torch.distributed.tensor.DTensor
            tensor = tensor.full_tensor()
        state[name] = tensor.float().cpu().contiguous()
    if not write:
        return
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
