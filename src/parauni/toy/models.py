"""The toy world's models as pipelines: a fresh toy model to train, and the shipped stage-II models."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UnknownNameError
from ..models.conditioner import ParaUniConditioner
from ..pipelines.pipeline_parauni import ParaUniPipeline
from ..pipelines.weights import load_trainable
from ..train.config import load_config, trainable_parts
from .prior import load_prior
from .vlm import load_toy_vlm

# The toy conditioner: the toy VLM is 128 wide with 4 layers; the toy prior takes 64 caption channels.
TOY_CONDITIONER = dict(num_queries=32, connector_depth=2, connector_heads=4, connector_ffn=256)
TOY_MODELS = {"toy-all-layers": "all_layers", "toy-last-layer": "last_layer"}
TOY_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "stage2"


def build_toy_pipeline(vlm: str | None = None, prior: str | None = None, seed: int = 0,
                       **conditioner_overrides) -> ParaUniPipeline:
    """The shipped (or given) toy VLM and toy prior joined by a fresh conditioner."""
    vlm_model, tokenizer = load_toy_vlm(vlm)
    p = load_prior(prior)
    text = vlm_model.config.text_config
    torch.manual_seed(seed)
    conditioner = ParaUniConditioner(llm_hidden_size=text.hidden_size, llm_num_layers=text.num_hidden_layers,
                                     caption_channels=p.transformer.config.caption_channels,
                                     **{**TOY_CONDITIONER, **conditioner_overrides})
    return ParaUniPipeline(vlm=vlm_model, tokenizer=tokenizer, conditioner=conditioner, transformer=p.transformer,
                           scheduler=p.scheduler, vae=p.vae)


def build_from_config(model_cfg, seed: int = 0) -> ParaUniPipeline:
    """``model.source: toy``: the toy VLM (``model.vlm``) and prior (``model.transformer``), a fresh conditioner."""
    return build_toy_pipeline(model_cfg.vlm, model_cfg.transformer, seed, **dict(model_cfg.conditioner))


def load_toy_model(name: str = "toy-all-layers", dtype: torch.dtype | None = None,
                   device: str | None = None) -> ParaUniPipeline:
    """A shipped stage-II toy model: the toy VLM, the conditioner and the fine-tuned prior transformer.

    ``name``: ``toy-all-layers`` (the ParaUni LIM over every layer) or ``toy-last-layer`` (the baseline).
    The weights load strictly: every weight the run trained must be in its ``trainable.safetensors``.
    """
    if name not in TOY_MODELS:
        raise UnknownNameError(f"unknown toy model {name!r}; known: {sorted(TOY_MODELS)}")
    folder = TOY_MODEL_DIR / TOY_MODELS[name]
    cfg = load_config(folder / "config.yaml")
    pipe = build_toy_pipeline(cfg.model.vlm, cfg.model.transformer, cfg.train.seed, **cfg.model.conditioner)
    load_trainable(pipe, folder, parts=trainable_parts(cfg))
    pipe.conditioner.eval()
    pipe.transformer.eval()
    if dtype is not None and dtype != pipe.transformer.dtype:
        pipe = pipe.to(dtype=dtype)
    return pipe.to(device) if device else pipe
