"""Training configuration: YAML files of four sections, loaded with OmegaConf onto the dataclasses below.

A config file has the sections ``model``, ``data``, ``optim`` and ``train`` (see the dataclasses below
for every key and its default). ``base: other.yaml`` at the top level inherits from another file (relative
to this one). ``section.key=value`` overrides are read like OmegaConf's dot-lists (values are YAML:
``optim.lr=1e-3``, ``optim.betas=[0.9,0.95]``, ``sampling.sde_window=null``, ``train.mixed_precision='no'``).

The dataclasses are OmegaConf structured configs (`OmegaConf.structured`), so every value is type-checked as it
is set; :func:`load_config` returns the dataclass instances (`OmegaConf.to_object`). Then one validation layer
(:func:`check_values` with the table :data:`CHECKS`, and the cross-key checks of :func:`validate`) range-checks
every value before any work starts. The reading itself, shared by every config of the package, is
:mod:`parauni.train.schema`. Every problem raises :class:`parauni.errors.ConfigError` naming the key, the
value and what is allowed; unknown keys raise :class:`parauni.errors.UnknownKeyError` (also a ``KeyError``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..checks import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    RESOLUTION,
    SEED,
    Check,
    boolean,
    choice,
    conditioner_problem,
    either,
    list_of,
    mapping,
    nonempty_str,
    number,
    optional,
    registered_choice,
)
from ..errors import ConfigError
from ..flow import TIMESTEP_SAMPLINGS
from ..registry import DATASETS, MODEL_BUILDERS
from . import schema
from .schema import check_values, to_yaml_dict


@dataclass
class ModelSource:
    """What to build, in every training config (stages I/II and III). ``source``: a registered model builder
    (:data:`parauni.registry.MODEL_BUILDERS`), ``"tiny"`` (random, tests), a preset name
    (``internvl3-2b_sana-1.6b_512`` ...) or a saved ``ParaUniPipeline`` folder. Default: the builder a plugin
    registered as the default, else ``"tiny"``."""

    source: str = field(default_factory=lambda: MODEL_BUILDERS.default("tiny"))
    vlm: str | None = None  # preset: hub id or local folder overriding the preset's VLM
    transformer: str | None = None  # preset: the SANA transformer; a registered builder: as it reads it
    vae: str | None = None
    init: str | None = None  # a checkpoint or pipeline folder whose trainable weights start the run
    conditioner: dict = field(default_factory=dict)  # ParaUniConditioner overrides (layers, fusion, ...)


@dataclass
class ModelConfig(ModelSource):
    """Stages I/II's model section: :class:`ModelSource` and how to checkpoint activations."""

    # true / false, or a list of the modules to checkpoint: any of "vlm", "connector", "transformer"
    # (typed Any: OmegaConf has no bool-or-list union)
    gradient_checkpointing: Any = False


@dataclass
class DataConfig:
    """Where the pairs come from. ``kind``: ``json`` (a JSON list of ``{image, annotation}`` records), ``folder``
    (images with ``.txt`` captions), ``webdataset`` (tar shards, a glob or a list), ``latents`` (a ``parauni
    cache-latents`` folder), or a registered data kind (:data:`parauni.registry.DATASETS`). Default: the kind a
    plugin registered as the default, else ``folder``."""

    kind: str = field(default_factory=lambda: DATASETS.default("folder"))
    path: Any = None  # a path, a glob or a list of them (typed Any: OmegaConf has no str-or-list union)
    image_root: str | None = None  # json: folder the ``image`` / ``annotation`` paths are relative to
    caption_key: str = "caption"
    resolution: int = 32
    uncond_prob: float = 0.1  # share of captions replaced by the unconditional prompt
    template_prob: float = 0.5  # a registered kind may read it: share of GenEval-template captions
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
    eval_geneval: bool = False  # run the registered default evaluation on the exported model at the end
    eval_images_per_prompt: int = 1
    eval_steps: int = 20
    eval_limit: int | None = None  # the evaluation's first N prompts of each task only (None: all)
    threads: int | None = None  # torch CPU threads
    timesteps: str = "uniform"  # flow-time sampling: "uniform" (the reference) or "logit-normal"
    compile: bool = False  # torch.compile the transformer and the connector (first steps slower while it compiles)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def checks() -> dict[str, Check]:
        """Every key and what it accepts (:data:`CHECKS`)."""
        return CHECKS

    def validate(self) -> None:
        validate(self)


# ---- the validation layer --------------------------------------------------------------------------------------

STAGES = ("I", "II")
TRAINABLE = ("queries", "lim", "transformer")
DATA_KINDS = ("json", "folder", "webdataset", "latents")  # built in, each reads data.path; plugins register more
PRECISIONS = ("auto", "no", "bf16", "fp16")
LOGGERS = ("tensorboard", "wandb", "none")
CHECKPOINTABLE = ("vlm", "connector", "transformer")  # model.gradient_checkpointing as a list
POSITIVE = number(0.0, lo_open=True)
NON_NEGATIVE = number(0.0)
BETAS = list_of(number(0.0, 1.0, hi_open=True), length=2)
PATH = nonempty_str()

# every key of :class:`ModelSource` and what it accepts (stage III's configs share them)
MODEL_SOURCE_CHECKS: dict[str, Check] = {
    "model.source": nonempty_str(),
    "model.vlm": optional(PATH),
    "model.transformer": optional(PATH),
    "model.vae": optional(PATH),
    "model.init": optional(PATH),
    "model.conditioner": mapping(),
}

# every key of :class:`Config` and what it accepts (keys missing here are checked by their annotation only)
CHECKS: dict[str, Check] = {
    **MODEL_SOURCE_CHECKS,
    "model.gradient_checkpointing": either(boolean(), list_of(choice(*CHECKPOINTABLE))),
    "data.kind": registered_choice(DATASETS, *DATA_KINDS),
    "data.path": optional(either(PATH, list_of(PATH))),
    "data.image_root": optional(PATH),
    "data.caption_key": nonempty_str(),
    "data.resolution": RESOLUTION,
    "data.uncond_prob": number(0.0, 1.0, hi_open=True),
    "data.template_prob": PROBABILITY,
    "data.num_workers": NON_NEGATIVE_INT,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.betas": BETAS,
    "optim.eps": POSITIVE,
    "optim.warmup_steps": NON_NEGATIVE_INT,
    "optim.min_lr_ratio": PROBABILITY,
    "optim.max_grad_norm": POSITIVE,
    "train.stage": choice(*STAGES),
    "train.trainable": optional(list_of(choice(*TRAINABLE))),
    "train.steps": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.grad_accum": POSITIVE_INT,
    "train.mixed_precision": choice(*PRECISIONS),
    "train.seed": SEED,
    "train.output_dir": PATH,
    "train.save_every": POSITIVE_INT,
    "train.keep_last": POSITIVE_INT,
    "train.log_every": POSITIVE_INT,
    "train.logger": choice(*LOGGERS),
    "train.eval_geneval": boolean(),
    "train.eval_images_per_prompt": POSITIVE_INT,
    "train.eval_steps": POSITIVE_INT,
    "train.eval_limit": optional(POSITIVE_INT),
    "train.threads": optional(POSITIVE_INT),
    "train.timesteps": choice(*TIMESTEP_SAMPLINGS),
    "train.compile": boolean(),
}


def check_resolution(factor: int, value: int, key: str = "data.resolution") -> int:
    """``value`` when it is a positive multiple of ``factor`` (a model's VAE x patch size); else a ConfigError
    naming the key and the nearest allowed sizes."""
    if isinstance(value, bool) or not isinstance(value, int) or value < factor or value % factor:
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            lo = max(factor, value // factor * factor)
            hint = f" (e.g. {lo}" + (f" or {lo + factor})" if lo != value + factor and lo < value else ")")
        raise ConfigError(f"{key}: this model needs a positive multiple of {factor}, got {value!r}{hint}")
    return value


def validate(cfg: Config) -> None:
    """Every value of a :class:`Config` in range, then the checks across keys; errors name the key."""
    check_values(cfg, CHECKS)
    if (problem := conditioner_problem(cfg.model.conditioner)) is not None:
        raise ConfigError(problem)
    d = cfg.data
    if d.kind in DATA_KINDS and not d.path:
        raise ConfigError(f"data.kind={d.kind!r} needs data.path (a file, folder, glob or list of them)")
    if cfg.train.batch_size % cfg.train.grad_accum:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be a multiple of train.grad_accum "
                          f"({cfg.train.grad_accum}): it is the global batch, processes x micro-batch x accumulation")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, root: type | None = None):
    """Read ``path`` (``None``: all defaults; a relative path that is not a file names a shipped config, e.g.
    ``internvl3-2b_sana-1.6b_512_stage1.yaml``), apply ``key=value`` overrides, check every key and value
    (:func:`parauni.train.schema.build_config`). ``root``: the config dataclass, default :class:`Config`."""
    return schema.load_config(path, overrides, root or Config)


def resolve_precision(setting: str) -> str:
    """Accelerate's ``mixed_precision`` for a config value: ``auto`` is bf16 on a GPU, fp32 (``no``) on CPU."""
    if setting != "auto":
        return setting

    return "bf16" if torch.cuda.is_available() else "no"


def trainable_parts(cfg: Config) -> list[str]:
    """The parts the run trains: the config's ``train.trainable`` or the stage's default set."""
    if cfg.train.trainable is not None:
        return list(cfg.train.trainable)
    return ["queries", "lim"] if cfg.train.stage == "I" else ["queries", "lim", "transformer"]


def save_config(cfg, path: str | Path) -> None:
    """Write a config as YAML (loadable again with :func:`load_config` and the same root)."""
    Path(path).write_text(yaml.safe_dump(to_yaml_dict(cfg), sort_keys=False))
