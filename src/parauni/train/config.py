"""Training configuration: YAML files of four sections, checked key by key, with ``key=value`` overrides.

A config file has the sections ``model``, ``data``, ``optim`` and ``train`` (see the dataclasses below
for every key and its default). ``base: other.yaml`` at the top level inherits from another file (relative
to this one). Unknown keys are errors that name the key and the keys allowed there.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    """What to build. ``source``: ``"toy"`` (the shipped toy VLM and prior), ``"tiny"`` (random, tests),
    a preset name (``internvl3-2b_sana-1.6b_512`` ...) or a saved ``ParaUniPipeline`` folder."""

    source: str = "toy"
    vlm: str | None = None  # preset: hub id or local folder overriding the preset's VLM
    transformer: str | None = None  # preset: the SANA transformer; toy: the prior folder
    vae: str | None = None
    init: str | None = None  # a checkpoint or pipeline folder whose trainable weights start the run
    conditioner: dict = field(default_factory=dict)  # ParaUniConditioner overrides (layers, fusion, ...)
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    """Where the pairs come from. ``kind``: ``toy`` (the toy-world stream), ``json`` (a JSON list of
    ``{image, annotation}`` records), ``folder`` (images with ``.txt`` captions), ``webdataset`` (tar
    shards, a glob or a list) or ``latents`` (a ``parauni cache-latents`` folder)."""

    kind: str = "toy"
    path: str | list[str] | None = None
    image_root: str | None = None  # json: folder the ``image`` / ``annotation`` paths are relative to
    caption_key: str = "caption"
    resolution: int = 32
    uncond_prob: float = 0.1  # share of captions replaced by the unconditional prompt
    template_prob: float = 0.5  # toy: share of GenEval-template captions (the rest are free descriptions)
    num_workers: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05  # on parameters with >= 2 dimensions only
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 1000
    min_lr_ratio: float = 0.0  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0


@dataclass
class TrainConfig:
    stage: str = "I"  # "I": queries + LIM; "II": also the diffusion transformer
    trainable: list[str] | None = None  # overrides the stage's set: any of "queries", "lim", "transformer"
    steps: int = 1000
    batch_size: int = 64  # global batch: processes x micro-batch x accumulation
    grad_accum: int = 1
    mixed_precision: str = "auto"  # "auto": bf16 on GPU, fp32 on CPU; or "no" / "bf16" / "fp16"
    seed: int = 0
    output_dir: str = "runs/default"
    save_every: int = 500
    keep_last: int = 2
    log_every: int = 10
    logger: str = "tensorboard"  # "tensorboard", "wandb" or "none" (metrics.jsonl is always written)
    eval_geneval: bool = False  # toy models: score toy GenEval with the exported model at the end
    eval_images_per_prompt: int = 1
    eval_steps: int = 20
    eval_limit: int | None = None  # toy GenEval: first N prompts of each task only (None: all 300)
    threads: int | None = None  # torch CPU threads
    timesteps: str = "uniform"  # flow-time sampling: "uniform" (the reference) or "logit-normal"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _unknown(key: str, allowed: list[str], where: str) -> KeyError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return KeyError(f"unknown config key '{where}{key}'{hint} (allowed: {', '.join(sorted(allowed))})")


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    if path.resolve() in seen:
        raise ValueError(f"config {path} inherits from itself through 'base'")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _merge(_read((path.parent / base), (*seen, path.resolve())), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], 3e-4)``; the value is read as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            parsed = float(parsed)
        except ValueError:
            pass
    return key.strip().split("."), parsed


def build_config(data: dict, root: type = None):
    """A config of dataclass ``root`` (default :class:`Config`) from a nested dict; unknown sections or keys
    raise ``KeyError`` naming them. Tuple-typed defaults (e.g. ``betas``) accept YAML lists."""
    root = root or Config
    sections_of = {f.name: f.default_factory for f in dataclasses.fields(root)}
    sections = {}
    for name, values in data.items():
        if name not in sections_of:
            raise _unknown(name, list(sections_of), "section ")
        values = dict(values or {})
        default = sections_of[name]()
        allowed = [f.name for f in dataclasses.fields(default)]
        for key in values:
            if key not in allowed:
                raise _unknown(key, allowed, f"{name}.")
            if isinstance(getattr(default, key), tuple) and isinstance(values[key], list):
                values[key] = tuple(values[key])
        sections[name] = type(default)(**values)
    cfg = root(**sections)
    check = getattr(cfg, "validate", None)
    (check or (lambda: validate(cfg)))()
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, root: type = None):
    """Read ``path`` (``None``: all defaults), apply ``key=value`` overrides, check every key."""
    data = _read(Path(path)) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return build_config(data, root)


def to_yaml_dict(cfg) -> dict:
    """A plain nested dict of a config (tuples as lists), for YAML."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def validate(cfg: Config) -> None:
    """Errors for values that cannot work, each naming the key."""
    t, d = cfg.train, cfg.data
    if t.stage not in ("I", "II"):
        raise ValueError(f"train.stage must be 'I' or 'II', got {t.stage!r}")
    if t.trainable is not None:
        bad = set(t.trainable) - {"queries", "lim", "transformer"}
        if bad or not t.trainable:
            raise ValueError(f"train.trainable: unknown or empty {sorted(bad)}; use queries, lim, transformer")
    if d.kind not in ("toy", "json", "folder", "webdataset", "latents"):
        raise ValueError(f"data.kind must be toy, json, folder, webdataset or latents, got {d.kind!r}")
    if d.kind != "toy" and not d.path:
        raise ValueError(f"data.kind={d.kind!r} needs data.path")
    if t.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be auto, no, bf16 or fp16, got {t.mixed_precision!r}")
    if t.logger not in ("tensorboard", "wandb", "none"):
        raise ValueError(f"train.logger must be tensorboard, wandb or none, got {t.logger!r}")
    for name in ("steps", "batch_size", "grad_accum", "keep_last", "save_every", "log_every"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1")
    if t.timesteps not in ("uniform", "logit-normal"):
        raise ValueError(f"train.timesteps must be uniform or logit-normal, got {t.timesteps!r}")
    if not 0.0 <= d.uncond_prob < 1.0:
        raise ValueError("data.uncond_prob must be in [0, 1)")


def resolve_precision(setting: str) -> str:
    """Accelerate's ``mixed_precision`` for a config value: ``auto`` is bf16 on a GPU, fp32 (``no``) on CPU."""
    if setting != "auto":
        return setting
    import torch

    return "bf16" if torch.cuda.is_available() else "no"


def trainable_parts(cfg: Config) -> list[str]:
    """The parts the run trains: the config's ``train.trainable`` or the stage's default set."""
    if cfg.train.trainable is not None:
        return list(cfg.train.trainable)
    return ["queries", "lim"] if cfg.train.stage == "I" else ["queries", "lim", "transformer"]


def save_config(cfg, path: str | Path) -> None:
    """Write a config as YAML (loadable again with :func:`load_config` and the same root)."""
    Path(path).write_text(yaml.safe_dump(to_yaml_dict(cfg), sort_keys=False))
