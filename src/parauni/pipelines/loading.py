"""Resolve ``--model`` arguments: a preset name, ``tiny``, or a saved pipeline folder."""

from __future__ import annotations

import os

import torch

from ..models.presets import PRESETS, build_tiny, check_source, load_preset
from .pipeline_parauni import ParaUniPipeline


def load_pipeline(model: str, dtype: torch.dtype = torch.float32, device: str | None = None) -> ParaUniPipeline:
    """``tiny`` (random, local), ``toy-all-layers`` / ``toy-last-layer`` (the shipped stage-II toy models),
    a real preset name (pretrained weights by hub id), a saved
    ``ParaUniPipeline`` folder, or a hub id of one."""
    if model == "tiny":
        pipe = build_tiny()
    elif model.startswith("toy-"):
        from ..train.model import load_toy_model

        pipe = load_toy_model(model)
    elif model in PRESETS:
        pipe = load_preset(model, dtype=dtype)
    else:
        source = check_source(model, "pipeline")
        if os.path.isdir(source) and not os.path.exists(os.path.join(source, "model_index.json")):
            raise FileNotFoundError(f"{source!r} is a folder but not a saved ParaUniPipeline (no model_index.json); "
                                    "write one with ParaUniPipeline.save_pretrained(DIR)")
        pipe = ParaUniPipeline.from_pretrained(source, torch_dtype=dtype)
    if device:
        pipe = pipe.to(device)
    return pipe
