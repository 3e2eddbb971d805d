"""Training configuration: YAML files of four sections, loaded with OmegaConf onto the dataclasses below.

A config file has the sections ``model``, ``data``, ``optim`` and ``train`` (see the dataclasses below
for every key and its default). ``base: other.yaml`` at the top level inherits from another file (relative
to this one). ``section.key=value`` overrides are read like OmegaConf's dot-lists (values are YAML:
``optim.lr=1e-3``, ``optim.betas=[0.9,0.95]``, ``sampling.sde_window=null``, ``train.mixed_precision='no'``).

The dataclasses are OmegaConf structured configs (`OmegaConf.structured`), so every value is type-checked as it
is set; :func:`load_config` returns the dataclass instances (`OmegaConf.to_object`). Then every value is checked
against what its field accepts, declared beside it (:func:`parauni.train.schema.setting`), and the cross-key
checks run (:meth:`Config.validate`), before any work starts. The sections every recipe shares
(:class:`ModelSource`, :class:`AdamWConfig`, :class:`RunConfig`) are extended by stages I/II here and by stage III
(:mod:`parauni.rl.config`). The reading itself, shared by every config of the package, is
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
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    RESOLUTION,
    SEED,
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
from .schema import setting, to_yaml_dict

STAGES = ("I", "II")
TRAINABLE = ("queries", "lim", "transformer")
DATA_KINDS = ("json", "folder", "webdataset", "latents")  # built in, each reads data.path; plugins register more
PRECISIONS = ("auto", "no", "bf16", "fp16")
LOGGERS = ("tensorboard", "wandb", "none")
CHECKPOINTABLE = ("vlm", "connector", "transformer")  # model.gradient_checkpointing as a list
BETAS = list_of(number(0.0, 1.0, hi_open=True), length=2)
PATH = nonempty_str()


# ---- the sections every training recipe shares (stages I/II and III) -------------------------------------------

@dataclass
class ModelSource:
    """What to build, in every training config (stages I/II and III). ``source``: a registered model builder
    (:data:`parauni.registry.MODEL_BUILDERS`), ``"tiny"`` (random, tests), a preset name
    (``internvl3-2b_sana-1.6b_512`` ...) or a saved ``ParaUniPipeline`` folder. Default: the builder a plugin
    registered as the default, else ``"tiny"``."""

    source: str = setting(factory=lambda: MODEL_BUILDERS.default("tiny"), check=nonempty_str())
    vlm: str | None = setting(None, optional(PATH))  # preset: hub id or local folder overriding the preset's VLM
    # preset: the SANA transformer; a registered builder: as it reads it
    transformer: str | None = setting(None, optional(PATH))
    vae: str | None = setting(None, optional(PATH))
    # a checkpoint or pipeline folder whose trainable weights start the run
    init: str | None = setting(None, optional(PATH))
    # ParaUniConditioner overrides (layers, fusion, ...; checked by parauni.checks.conditioner_problem)
    conditioner: dict = setting(factory=dict, check=mapping())


@dataclass
class AdamWConfig:
    """The ``optim`` section's keys every training recipe shares: AdamW (weight decay on parameters with >= 2
    dimensions only), gradient clipping, and the learning rate: a linear warm-up over ``warmup_steps`` optimizer
    steps, then a cosine to ``lr * min_lr_ratio`` at the run's last step (``min_lr_ratio = 1``: constant after the
    warm-up). The defaults are stages I/II's; stage III's section sets its own."""

    lr: float = setting(1e-4, POSITIVE)
    weight_decay: float = setting(0.05, NON_NEGATIVE)
    betas: tuple[float, float] = setting((0.9, 0.95), BETAS)
    eps: float = setting(1e-8, POSITIVE)
    warmup_steps: int = setting(1000, NON_NEGATIVE_INT)
    min_lr_ratio: float = setting(0.0, PROBABILITY)
    max_grad_norm: float = setting(1.0, POSITIVE)


@dataclass
class RunConfig:
    """The ``train`` section's keys every training recipe shares: the seed, the output folder, checkpoints, where
    metrics go, and the evaluation of the trained model at the end (with ``eval_geneval``: the registered default
    evaluation, a GenEval-style one, into ``<output_dir>/eval/geneval``; each further guidance scale into
    ``eval/geneval_cfg<scale>``)."""

    seed: int = setting(0, SEED)
    output_dir: str = setting("runs/default", PATH)
    save_every: int = setting(500, POSITIVE_INT)  # steps (stage III: epochs) between checkpoints
    keep_last: int = setting(2, POSITIVE_INT)  # checkpoints kept
    threads: int | None = setting(None, optional(POSITIVE_INT))  # torch CPU threads
    mixed_precision: str = setting("auto", choice(*PRECISIONS))  # "auto": bf16 on GPU, fp32 on CPU
    logger: str = setting("tensorboard", choice(*LOGGERS))  # metrics.jsonl is always written
    eval_geneval: bool = setting(False, boolean())
    # the evaluation of eval_geneval, a parauni.registry.EVALUATORS name; None: the one registered for the run's
    # data.kind (stages I/II) or prompts.kind (stage III) in EVALUATOR_OF_KIND, else the default evaluator
    evaluator: str | None = setting(None, optional(nonempty_str()))
    eval_images_per_prompt: int = setting(1, POSITIVE_INT)
    eval_steps: int = setting(20, POSITIVE_INT)  # sampling steps of the evaluation
    eval_limit: int | None = setting(None, optional(POSITIVE_INT))  # the first N prompts of each task (None: all)
    # the guidance scales to evaluate at (the first: the main one); None: the evaluation's own (stage III: the
    # rollouts' sampling.guidance_scale)
    eval_guidance_scales: list[float] | None = setting(None, optional(list_of(NON_NEGATIVE, min_length=1)))


# ---- stages I/II ----------------------------------------------------------------------------------------------

@dataclass
class ModelConfig(ModelSource):
    """Stages I/II's model section: :class:`ModelSource` and how to checkpoint activations."""

    # true / false, or a list of the modules to checkpoint: any of "vlm", "connector", "transformer"
    # (typed Any: OmegaConf has no bool-or-list union)
    gradient_checkpointing: Any = setting(False, either(boolean(), list_of(choice(*CHECKPOINTABLE))))


@dataclass
class DataConfig:
    """Where the pairs come from. ``kind``: ``json`` (a JSON list of ``{image, annotation}`` records), ``folder``
    (images with ``.txt`` captions), ``webdataset`` (tar shards, a glob or a list), ``latents`` (a ``parauni
    cache-latents`` folder), or a registered data kind (:data:`parauni.registry.DATASETS`). Default: the kind a
    plugin registered as the default, else ``folder``."""

    kind: str = setting(factory=lambda: DATASETS.default("folder"), check=registered_choice(DATASETS, *DATA_KINDS))
    # a path, a glob or a list of them (typed Any: OmegaConf has no str-or-list union)
    path: Any = setting(None, optional(either(PATH, list_of(PATH))))
    # json: folder the ``image`` / ``annotation`` paths are relative to
    image_root: str | None = setting(None, optional(PATH))
    caption_key: str = setting("caption", nonempty_str())
    resolution: int = setting(32, RESOLUTION)
    uncond_prob: float = setting(0.1, number(0.0, 1.0, hi_open=True))  # share of captions made unconditional
    template_prob: float = setting(0.5, PROBABILITY)  # a registered kind may read it: share of GenEval templates
    num_workers: int = setting(0, NON_NEGATIVE_INT)


@dataclass
class OptimConfig(AdamWConfig):
    """Stages I/II's optimizer section: :class:`AdamWConfig` with its defaults (the warm-up + cosine span
    ``train.steps``)."""


@dataclass
class TrainConfig(RunConfig):
    """Stages I/II's train section: :class:`RunConfig` and the steps."""

    stage: str = setting("I", choice(*STAGES))  # "I": queries + LIM; "II": also the diffusion transformer
    # overrides the stage's set: any of "queries", "lim", "transformer"
    trainable: list[str] | None = setting(None, optional(list_of(choice(*TRAINABLE))))
    steps: int = setting(1000, POSITIVE_INT)
    batch_size: int = setting(64, POSITIVE_INT)  # global batch: processes x micro-batch x accumulation
    grad_accum: int = setting(1, POSITIVE_INT)
    log_every: int = setting(10, POSITIVE_INT)
    # flow-time sampling: "uniform" (the reference) or "logit-normal"
    timesteps: str = setting("uniform", choice(*TIMESTEP_SAMPLINGS))
    # torch.compile the transformer and the connector (first steps slower while it compiles)
    compile: bool = setting(False, boolean())


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """The checks across keys (each key's own range is declared beside its field); errors name the key."""
        if (problem := conditioner_problem(self.model.conditioner)) is not None:
            raise ConfigError(problem)
        d = self.data
        if d.kind in DATA_KINDS and not d.path:
            raise ConfigError(f"data.kind={d.kind!r} needs data.path (a file, folder, glob or list of them)")
        if self.train.batch_size % self.train.grad_accum:
            raise ConfigError(f"train.batch_size ({self.train.batch_size}) must be a multiple of train.grad_accum "
                              f"({self.train.grad_accum}): it is the global batch, processes x micro-batch x "
                              "accumulation")


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, root: type | None = None,
                migrate: bool = False):
    """Read ``path`` (``None``: all defaults; a relative path that is not a file names a shipped config, e.g.
    ``internvl3-2b_sana-1.6b_512_stage1.yaml``), apply ``key=value`` overrides, check every key and value
    (:func:`parauni.train.schema.build_config`). ``root``: the config dataclass, default :class:`Config`;
    ``migrate``: rename keys of an older layout instead of refusing them (a config a run saved)."""
    return schema.load_config(path, overrides, root or Config, migrate)


def resolve_precision(value: str) -> str:
    """Accelerate's ``mixed_precision`` for a config value: ``auto`` is bf16 on a GPU, fp32 (``no``) on CPU."""
    if value != "auto":
        return value

    return "bf16" if torch.cuda.is_available() else "no"


def trainable_parts(cfg: Config) -> list[str]:
    """The parts the run trains: the config's ``train.trainable`` or the stage's default set."""
    if cfg.train.trainable is not None:
        return list(cfg.train.trainable)
    return ["queries", "lim"] if cfg.train.stage == "I" else ["queries", "lim", "transformer"]


def save_config(cfg, path: str | Path) -> None:
    """Write a config as YAML (loadable again with :func:`load_config` and the same root)."""
    Path(path).write_text(yaml.safe_dump(to_yaml_dict(cfg), sort_keys=False))
