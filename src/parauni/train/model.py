"""Build what a training config describes and split it into its frozen and trainable parts."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..flow import flow_loss, interpolate, sigma_to_timestep
from ..models.backbone import VLMBackbone
from ..models.conditioner import ParaUniConditioner
from ..models.prompt import tokenize_prompts
from ..pipelines.pipeline_parauni import ParaUniPipeline

logger = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
# The toy conditioner: the toy VLM is 128 wide with 4 layers; the toy prior takes 64 caption channels.
TOY_CONDITIONER = dict(num_queries=32, connector_depth=2, connector_heads=4, connector_ffn=256)


def build_toy_pipeline(vlm: str | None = None, prior: str | None = None, seed: int = 0,
                       **conditioner_overrides) -> ParaUniPipeline:
    """The shipped (or given) toy VLM and toy prior joined by a fresh conditioner."""
    from ..toy.prior import load_prior
    from ..toy.vlm import load_toy_vlm

    vlm_model, tokenizer = load_toy_vlm(vlm)
    p = load_prior(prior)
    text = vlm_model.config.text_config
    torch.manual_seed(seed)
    conditioner = ParaUniConditioner(llm_hidden_size=text.hidden_size, llm_num_layers=text.num_hidden_layers,
                                     caption_channels=p.transformer.config.caption_channels,
                                     **{**TOY_CONDITIONER, **conditioner_overrides})
    return ParaUniPipeline(vlm=vlm_model, tokenizer=tokenizer, conditioner=conditioner, transformer=p.transformer,
                           scheduler=p.scheduler, vae=p.vae)


TOY_MODELS = {"toy-all-layers": "all_layers", "toy-last-layer": "last_layer"}
TOY_MODEL_DIR = Path(__file__).resolve().parents[1] / "toy" / "weights" / "stage2"


def load_toy_model(name: str = "toy-all-layers") -> ParaUniPipeline:
    """A shipped stage-II toy model: the toy VLM, the conditioner and the fine-tuned prior transformer.

    ``name``: ``toy-all-layers`` (the ParaUni LIM over every layer) or ``toy-last-layer`` (the baseline).
    """
    from .config import load_config

    if name not in TOY_MODELS:
        raise KeyError(f"unknown toy model {name!r}; known: {sorted(TOY_MODELS)}")
    folder = TOY_MODEL_DIR / TOY_MODELS[name]
    cfg = load_config(folder / "config.yaml")
    pipe = build_toy_pipeline(cfg.model.vlm, cfg.model.transformer, cfg.train.seed, **cfg.model.conditioner)
    load_trainable(pipe, folder)
    pipe.conditioner.eval()
    pipe.transformer.eval()
    return pipe


def build_pipeline(model_cfg, seed: int = 0) -> ParaUniPipeline:
    """A ``ParaUniPipeline`` from ``model.source`` (toy, tiny, a preset name or a pipeline folder)."""
    from ..models.presets import PRESETS, build_tiny, load_preset

    src, overrides = model_cfg.source, dict(model_cfg.conditioner)
    if src == "toy":
        pipe = build_toy_pipeline(model_cfg.vlm, model_cfg.transformer, seed, **overrides)
    elif src == "tiny":
        pipe = build_tiny(seed=seed, **overrides)
    elif src in PRESETS:
        pipe = load_preset(src, vlm=model_cfg.vlm, transformer=model_cfg.transformer, vae=model_cfg.vae,
                           **overrides)
    else:
        if overrides:
            raise ValueError("model.conditioner overrides need a fresh model (source toy, tiny or a preset); "
                             f"{src!r} is a saved pipeline whose conditioner is fixed")
        from ..pipelines.loading import load_pipeline

        pipe = load_pipeline(src)
    if model_cfg.init:
        load_trainable(pipe, model_cfg.init, strict=False)
    return pipe


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


def save_trainable(module: FlowTrainModule, path: str | Path) -> None:
    """The trainable weights as safetensors (float32), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({n: p.detach().float().cpu().contiguous() for n, p in module.trainable_state().items()}, str(tmp))
    tmp.replace(path)


def load_trainable(target: ParaUniPipeline | FlowTrainModule, path: str | Path, strict: bool = True) -> list[str]:
    """Load ``trainable.safetensors`` (a file, or a checkpoint / run folder holding one) into ``target``.

    With ``strict``, every trainable parameter of ``target`` must be in the file. Returns the loaded names.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRAINABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TRAINABLE_FILE} at {str(path)!r}; pass a checkpoint folder of `parauni train`")
    weights = load_file(str(path))
    modules = {"conditioner": target.conditioner, "transformer": target.transformer}
    loaded = []
    for name, tensor in weights.items():
        head, _, rest = name.partition(".")
        if head not in modules:
            raise KeyError(f"{path}: unexpected weight {name!r}")
        param = modules[head].get_parameter(rest)
        with torch.no_grad():
            param.copy_(tensor.to(param.dtype))
        loaded.append(name)
    if strict and isinstance(target, FlowTrainModule):
        missing = set(target.trainable_state()) - set(loaded)
        if missing:
            raise KeyError(f"{path} lacks trainable weights {sorted(missing)[:5]}...; was it saved by another stage?")
    return loaded
