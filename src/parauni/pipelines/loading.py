"""The one resolver of model names: every ``--model`` argument and every ``model.source`` goes through here.

A name is, in this order:

1. ``tiny``: every component tiny and random (tests, laptops; it draws noise);
2. a registered model (:data:`parauni.registry.MODELS`: a plugin's shipped models);
3. a real preset (``internvl3-2b_sana-1.6b_512`` ...; pretrained weights by hub id or local folder);
4. a saved ``ParaUniPipeline`` folder, or the hub id of one.

A name of 1-3 that is also a file or folder in the working directory is refused (:func:`refuse_shadowed_folder`):
``./name`` says the folder.

Training builds a *fresh* model from ``model.source`` with :func:`build_model`: ``tiny``, a registered
builder (:data:`parauni.registry.MODEL_BUILDERS`, a plugin's), a preset, or a finished
model by any name above; ``model.init`` then loads trained weights strictly.
"""

from __future__ import annotations

import os

import torch

from ..errors import UsageError
from ..models.presets import PRESETS, check_source
from ..registry import MODEL_BUILDERS, MODELS
from ..utils.names import closest_name
from .pipeline_parauni import ParaUniPipeline
from .presets import build_tiny, load_preset
from .weights import load_trainable


def model_names() -> list[str]:
    """Every name :func:`load_pipeline` knows without a path: ``tiny``, the registered models, the presets."""
    return ["tiny", *MODELS.names(), *sorted(PRESETS)]


def _path_or_hub_id(name: str) -> bool:
    """A local path (``/x``, ``./x``, ``~/x``, ``a/b/c``, an existing file) or a hub id ``owner/name``; a plain
    word is neither (it must be a known name)."""
    return "/" in name or name.startswith((".", "~")) or os.path.exists(name)


def refuse_shadowed_folder(name: str) -> None:
    """A known model name that is also a file or folder in the working directory is refused: which one was meant
    cannot be told, and a silent choice would describe the wrong model. The error names both ways to say it."""
    if os.path.exists(name):
        raise UsageError(f"{name!r} is both a known model name and a path in the working directory "
                         f"({os.path.abspath(name)}): pass ./{name} for the folder, or run from another directory "
                         "for the named model")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """The weights' dtype for a ``--dtype`` value: ``auto`` (or ``None``) is bfloat16 on CUDA, as SANA's and
    InternVL3's released weights run, and float32 anywhere else (CPU results stay float32); ``fp32`` /
    ``bf16`` / ``fp16`` or a ``torch.dtype`` are taken as they are."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device is not None and torch.device(device).type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UsageError(f"dtype: expected one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_pipeline(model: str, dtype: str | torch.dtype = "auto", device: str | None = None) -> ParaUniPipeline:
    """A ready ``ParaUniPipeline`` for a model name (see the module docstring for the order).

    ``dtype``: see :func:`resolve_dtype` (the default ``auto``: bfloat16 on CUDA, float32 on CPU / no device).
    A plain word that is not a known name is an error listing the known names; a missing local path is an
    error naming it.
    """
    dtype = resolve_dtype(dtype, device)
    if model == "tiny" or model in MODELS or model in PRESETS:
        refuse_shadowed_folder(model)
    if model == "tiny":
        pipe = build_tiny()
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    elif model in MODELS:
        pipe = MODELS.get(model)(dtype=dtype)
    elif model in PRESETS:
        pipe = load_preset(model, dtype=dtype)
    else:
        source = os.path.expanduser(str(model))
        if not _path_or_hub_id(source):
            close = closest_name(model, model_names())
            hint = f"; did you mean {close!r}?" if close else ""
            raise UsageError(f"unknown model {model!r}: not a known name, a folder or a hub id 'owner/name'{hint} "
                             f"(known names: {', '.join(model_names())})")
        source = check_source(source, "pipeline")
        if os.path.isfile(source):
            raise UsageError(f"{source!r} is a file, not a model: give a saved ParaUniPipeline folder (written by "
                             "ParaUniPipeline.save_pretrained or `parauni export`), a preset name or 'tiny'")
        if os.path.isdir(source) and not os.path.exists(os.path.join(source, "model_index.json")):
            raise FileNotFoundError(f"{source!r} is a folder but not a saved ParaUniPipeline (no model_index.json); "
                             "write one with ParaUniPipeline.save_pretrained(DIR) or `parauni export`")
        try:
            pipe = ParaUniPipeline.from_pretrained(source, dtype=dtype)
        except OSError as err:  # a folder with a missing component file, a hub id not cached (no network)
            if os.path.isdir(source):
                fix = "write the folder again (ParaUniPipeline.save_pretrained or `parauni export`)"
            else:
                fix = f"download it with `huggingface-cli download {source} --local-dir DIR` and pass DIR"
            why = " ".join(str(err).split()).rstrip(".")
            raise UsageError(f"could not load the pipeline {source!r}: {why}; {fix}") from err
    if device:
        pipe = pipe.to(device)
    return pipe


def build_model(model_cfg, seed: int = 0) -> ParaUniPipeline:
    """A pipeline to train from a ``model`` config section: ``source`` (fresh: ``tiny``, a registered builder
    (a plugin's), a preset; finished: any :func:`load_pipeline` name), ``conditioner`` overrides (fresh
    sources only), then ``init``: trained weights loaded strictly (:func:`load_trainable`)."""
    src, overrides = model_cfg.source, dict(model_cfg.conditioner)
    if src == "tiny" or src in MODEL_BUILDERS or src in PRESETS:
        refuse_shadowed_folder(src)
    if src == "tiny":
        pipe = build_tiny(seed=seed, **overrides)
    elif src in MODEL_BUILDERS:
        pipe = MODEL_BUILDERS.get(src)(model_cfg, seed)
    elif src in PRESETS:
        pipe = load_preset(src, vlm=model_cfg.vlm, transformer=model_cfg.transformer, vae=model_cfg.vae, **overrides)
    else:
        if src not in MODELS and not _path_or_hub_id(str(src)):
            fresh = ["tiny", *MODEL_BUILDERS.names(), *sorted(PRESETS)]
            raise UsageError(f"model.source: unknown model {src!r} (fresh models: {', '.join(fresh)}; finished "
                             f"models: {', '.join(MODELS.names())}; or a saved pipeline folder / hub id)")
        if overrides:
            raise UsageError("model.conditioner overrides need a fresh model (model.source "
                             f"{', '.join(['tiny', *MODEL_BUILDERS.names()])} or a preset); {src!r} is a finished "
                             "model whose conditioner is fixed")
        pipe = load_pipeline(src)
    if model_cfg.init:
        load_trainable(pipe, model_cfg.init)
    return pipe
