"""``parauni rl`` configuration: ``algorithm`` (a registered stage-III algorithm, :data:`parauni.registry.ALGORITHMS`,
or a ``package.module:Class`` path) and the sections ``model``, ``prompts``, ``rewards``, ``sampling``, ``optim``,
``ldam`` and ``train``, plus the chosen algorithm's own section (e.g. DiffusionNFT's ``nft``), loaded like the stage
I / II configs (:func:`parauni.train.config.load_config`: OmegaConf structured configs over these dataclasses,
unknown keys are errors). The root dataclass is built from the chosen algorithm (:func:`config_root`): its section,
and its own defaults for shared keys (``Algorithm.defaults``); a section of another algorithm is refused naming
it, as is a shared key the algorithm never reads (``Algorithm.unused``) set to another value than its default.
``model``, ``optim`` and ``train`` extend the sections every recipe shares
(:class:`~parauni.train.config.ModelSource`, :class:`~parauni.train.config.AdamWConfig`,
:class:`~parauni.train.config.RunConfig`: the evaluation's keys are ``train.eval_*`` in both). Each key's range is
declared beside its field; the checks across keys are :meth:`GRPOConfig.validate`. ``parauni rl`` also checks
the reward names (:func:`check_reward_names`) before building any model."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..checks import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    Check,
    boolean,
    choice,
    conditioner_problem,
    integer,
    list_of,
    mapping,
    nonempty_str,
    number,
    optional,
    registered_choice,
)
from ..errors import ConfigError, UnknownKeyError
from ..registry import ALGORITHMS, PROMPT_SOURCES, REWARDS
from ..train.config import AdamWConfig, ModelSource, RunConfig, load_config
from ..train.schema import like, setting
from .algorithm import algorithm_class, importable_algorithms, option, section_owner
from .algorithm import config_root as algorithm_root
from .objective import KL_FORMS
from .sde import GRIDS

ALGORITHM = Check("a registered algorithm or a 'package.module:Class' path",
                  lambda v: isinstance(v, str) and (v in ALGORITHMS or ":" in v))
FINETUNE = ("lora", "full")  # model.finetune


@dataclass
class GRPOModelConfig(ModelSource):
    """Stage III's model section: :class:`parauni.train.config.ModelSource` (``init``: e.g. a stage I/II run's
    folder) and what the policy trains: a LoRA on the transformer (``finetune: lora``, the references' choice) or
    every transformer weight (``finetune: full``; the reference policy of the KL term is then a frozen copy of the
    starting transformer, and checkpoints hold whole transformers)."""

    finetune: str = setting("lora", choice(*FINETUNE))
    lora_rank: int = setting(32, POSITIVE_INT)
    lora_alpha: int = setting(64, POSITIVE_INT)
    lora_targets: list[str] = setting(factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
                                      check=list_of(nonempty_str()))
    train_lim: bool = setting(False, boolean())  # also train the LIM (queries stay frozen)


@dataclass
class PromptConfig:
    # "file": a .txt (one a line) or GenEval .jsonl; or a registered prompt source. Default: the source a plugin
    # registered as the default, else "file"
    kind: str = setting(factory=lambda: PROMPT_SOURCES.default("file"),
                        check=registered_choice(PROMPT_SOURCES, "file"))
    path: str | None = setting(None, optional(nonempty_str()))
    per_epoch: int = setting(8, POSITIVE_INT)  # prompts per epoch (all processes together)
    # a registered source may read it: a fixed set of this many prompts (None: fresh ones)
    pool: int | None = setting(None, optional(POSITIVE_INT))


@dataclass
class RewardConfig:
    # default: the rewards plugins registered as the defaults, each weighted 1
    weights: dict[str, float] = setting(factory=lambda: dict.fromkeys(REWARDS.defaults(), 1.0),
                                        check=mapping(number(), min_length=1))
    # per reward: factory options (weights paths, scales)
    options: dict[str, dict] = setting(factory=dict, check=mapping(mapping()))


@dataclass
class SamplingConfig:
    """How the rollouts sample (the evaluation's settings are in ``train``: ``train.eval_*``)."""

    group_size: int = setting(8, integer(lo=2))  # G images per prompt (advantages are relative to the group)
    steps: int = setting(10, integer(lo=2))  # sampling steps of a rollout (the last transition is not trained)
    noise_level: float = setting(0.7, POSITIVE)  # 0 is a point mass: no log-probability to train
    # "scheduler": diffusers' FlowMatchEulerDiscreteScheduler sigmas (Flow-GRPO); "uniform"
    grid: str = setting("scheduler", choice(*GRIDS))
    # N: SDE (and training) on a window of N transitions, ODE elsewhere
    sde_window: int | None = setting(None, optional(POSITIVE_INT))
    # [lo, hi]: the window lies in transitions lo..hi-1 (None: 0..steps-1)
    sde_window_range: list[int] | None = setting(None, optional(list_of(NON_NEGATIVE_INT, length=2)))
    # roll out with the LoRA merged into a plain copy of the transformer (faster, same policy); applies only when
    # the update runs in float32: under bf16/fp16 a merged weight rounds differently, so the adapter samples
    merge_lora: bool = setting(True, boolean())
    guidance_scale: float = setting(4.5, NON_NEGATIVE)
    flow_shift: float | None = setting(None, optional(POSITIVE))  # None: the scheduler's own
    rollout_batch: int = setting(64, POSITIVE_INT)  # images per sampling forward


@dataclass
class GRPOOptimConfig(AdamWConfig):
    """Stage III's optimizer section: :class:`parauni.train.config.AdamWConfig` with the references' defaults
    (Flow-GRPO's and DiffusionNFT's ``config/base.py``: AdamW 0.9 / 0.999, weight decay 1e-4, eps 1e-8, a constant
    learning rate; the warm-up + cosine, when asked for, span the run's planned optimizer steps) and the update's
    settings."""

    weight_decay: float = like(AdamWConfig, "weight_decay", 1e-4)
    betas: tuple[float, float] = like(AdamWConfig, "betas", (0.9, 0.999))
    warmup_steps: int = like(AdamWConfig, "warmup_steps", 0)
    min_lr_ratio: float = like(AdamWConfig, "min_lr_ratio", 1.0)
    clip_range: float = setting(1e-4, POSITIVE)
    kl_beta: float = setting(0.04, NON_NEGATIVE)
    # "reference": Flow-GRPO code's / (2 std_dev_t^2); "transition": / (2 (std sqrt(-dt))^2)
    kl_form: str = setting("reference", choice(*KL_FORMS))
    adv_clip: float = setting(5.0, POSITIVE)
    # False: one std over the epoch's rewards (Flow-GRPO's global std)
    per_group_std: bool = setting(False, boolean())
    train_batch: int = setting(16, POSITIVE_INT)  # samples per update micro-batch
    # optimizer steps an epoch (gradients accumulate); None: one per micro-batch
    steps_per_epoch: int | None = setting(2, optional(POSITIVE_INT))
    # samples of groups with all-equal rewards leave the update (Flow-GRPO)
    drop_zero_adv: bool = setting(True, boolean())
    # share of the trainable transitions (all but the last) used per sample
    timestep_fraction: float = setting(1.0, number(0.0, 1.0, lo_open=True))
    ema_decay: float = setting(0.9, number(0.0, 1.0, hi_open=True))  # the EMA's (largest) decay
    ema_every: int = setting(8, POSITIVE_INT)  # update the EMA every N optimizer steps (Flow-GRPO: 8)
    # decay min((1 + k) / (10 + k), ema_decay) at optimizer step k (Flow-GRPO)
    ema_warmup: bool = setting(True, boolean())


@dataclass
class LDAMConfig:
    enabled: bool = setting(True, boolean())
    window: int = setting(5, POSITIVE_INT)
    gamma0: float = setting(0.1, NON_NEGATIVE)
    patience: int = setting(5, POSITIVE_INT)
    # name -> layer positions; None: thirds (shallow, middle, deep)
    groups: dict | None = setting(None, optional(mapping(list_of(NON_NEGATIVE_INT), min_length=1)))
    # reward -> group; None: the figure's map and the plugins' (parauni.rl.ldam)
    reward_to_group: dict | None = setting(None, optional(mapping(nonempty_str())))


@dataclass
class GRPOTrainConfig(RunConfig):
    """Stage III's train section: :class:`parauni.train.config.RunConfig` (with ``eval_geneval`` the initial and
    the final EMA model are evaluated) and the epochs."""

    output_dir: str = like(RunConfig, "output_dir", "runs/grpo")
    save_every: int = like(RunConfig, "save_every", 10)
    epochs: int = setting(100, POSITIVE_INT)
    # with eval_geneval: also the initial model (false: only the final one)
    eval_before: bool = setting(True, boolean())
    # stop with an error after this many epochs in a row that cannot learn (0: never)
    max_idle_epochs: int = setting(5, NON_NEGATIVE_INT)
    # minutes a process waits for the others in a collective (every rank waits while the main process evaluates
    # before and after training) before the run fails; torch's own default is 10 (NCCL)
    dist_timeout_minutes: float = setting(120.0, POSITIVE)


@dataclass
class GRPOConfig:
    # see parauni rl --help for the registered ones; default: the one registered as the default (the paper's)
    algorithm: str = setting(factory=lambda: ALGORITHMS.default(), check=ALGORITHM)
    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: GRPOOptimConfig = field(default_factory=GRPOOptimConfig)
    ldam: LDAMConfig = field(default_factory=LDAMConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)

    # keys of the older layout: a config file or override naming one is refused with its new place; a saved run's
    # config (an older checkpoint) is read with them renamed
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "sampling.eval_steps": "train.eval_steps",
        "sampling.eval_images_per_prompt": "train.eval_images_per_prompt",
        "sampling.eval_guidance_scales": "train.eval_guidance_scales",
    }

    @classmethod
    def root_for(cls, data: dict, overrides: list[tuple[list[str], Any]], migrate: bool = False) -> type:
        """The root dataclass for a config's raw ``data`` (a file's nested dict) and parsed ``overrides``: that of
        the algorithm they choose (:func:`config_root`). A section of another algorithm is refused naming it."""
        name = data.get("algorithm", _root_default(cls))
        for keys, value in overrides:
            if keys == ["algorithm"]:
                name = value
        if not isinstance(name, str) or not ALGORITHM.ok(name):
            raise ConfigError(ALGORITHM.message("algorithm", name) + f" (known: {', '.join(ALGORITHMS)})")
        root = config_root(algorithm_class(name))
        if migrate:
            return root
        fields = {f.name for f in dataclasses.fields(root)}
        for key, shown in [*((k, k) for k in data), *((keys[0], ".".join(keys)) for keys, _ in overrides)]:
            if key not in fields and (owner := section_owner(key)) is not None:
                raise UnknownKeyError(f"{shown}: the section {key!r} belongs to algorithm {owner!r}, and this config "
                                      f"runs {name!r}: remove it, or set algorithm: {owner}")
        return root

    @classmethod
    def migrate_data(cls, data: dict) -> None:
        """A saved run's config (an older layout held every algorithm's section, and keys the algorithm never
        reads): other algorithms' sections and the algorithm's unused keys are dropped (they never acted)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in [k for k in data if k not in fields and section_owner(k) is not None]:
            data.pop(key)
        algo = algorithm_class(str(data.get("algorithm", _root_default(cls))))
        for key in option(algo, "unused", ()):
            section, leaf = key.split(".", 1)
            if isinstance(data.get(section), dict):
                data[section].pop(leaf, None)

    def validate(self) -> None:
        """The checks across keys (each key's own range is declared beside its field); raises ``ConfigError``."""
        algo = algorithm_class(self.algorithm)
        ref = config_root(algo)()
        for key in option(algo, "unused", ()):
            if _get(self, key) != _get(ref, key):
                users = [n for n, c in importable_algorithms().items() if key not in option(c, "unused", ())]
                raise ConfigError(f"{key}: algorithm {self.algorithm!r} does not use it (it is read by "
                                  f"{', '.join(users) or 'no registered algorithm'}); remove it, or choose "
                                  f"{'that algorithm' if len(users) == 1 else 'one of those'}")
        if self.model.finetune == "full":
            for k in ("lora_rank", "lora_alpha", "lora_targets"):
                if getattr(self.model, k) != getattr(ref.model, k):
                    raise ConfigError(f"model.{k}: model.finetune=full trains every transformer weight and adds no "
                                      f"LoRA; remove model.{k}, or use model.finetune=lora")
        if (problem := conditioner_problem(self.model.conditioner)) is not None:
            raise ConfigError(problem)
        p, s = self.prompts, self.sampling
        if p.kind == "file" and not p.path:
            raise ConfigError("prompts.kind=file needs prompts.path (a .txt file, one prompt a line, or a GenEval "
                              ".jsonl)")
        if s.sde_window is not None and not 1 <= s.sde_window <= s.steps - 1:
            raise ConfigError(f"sampling.sde_window: expected null or an integer in [1, sampling.steps - 1 = "
                              f"{s.steps - 1}] (the last transition is never trained), got {s.sde_window}")
        if not any(w != 0 for w in self.rewards.weights.values()):
            raise ConfigError(f"rewards.weights: every weight is 0 ({dict(self.rewards.weights)}), so every reward is "
                              "equal and nothing can be learnt; give at least one reward a non-zero weight")
        o = self.optim
        samples = p.per_epoch * s.group_size
        micro = -(-samples // o.train_batch)
        if o.steps_per_epoch is not None and o.steps_per_epoch > micro:
            raise ConfigError(f"optim.steps_per_epoch: an epoch of {p.per_epoch} prompts x {s.group_size} images in "
                              f"micro-batches of optim.train_batch={o.train_batch} holds at most {micro} optimizer "
                              f"steps, got {o.steps_per_epoch}; use at most {micro} (or a smaller optim.train_batch)")
        if s.sde_window_range is not None:
            lo, hi = s.sde_window_range
            if not 0 <= lo < hi <= s.steps - 1 or (s.sde_window or 1) > hi - lo:
                raise ConfigError(f"sampling.sde_window_range: expected [lo, hi] with 0 <= lo < hi <= sampling.steps "
                                  f"- 1 = {s.steps - 1} and room for sampling.sde_window = {s.sde_window}, got "
                                  f"{list(s.sde_window_range)}")
        if (check := getattr(algo, "check", None)) is not None:
            check(self)


def _root_default(root: type) -> str:
    """The ``algorithm`` a root defaults to: its algorithm's (a built root), else the registered default."""
    default = next(f.default for f in dataclasses.fields(root) if f.name == "algorithm")
    return default if isinstance(default, str) else ALGORITHMS.default()


def _get(cfg: Any, key: str) -> Any:
    for k in key.split("."):
        cfg = getattr(cfg, k)
    return cfg


def config_root(algo: type) -> type:
    """The config root of algorithm class ``algo`` (:func:`parauni.rl.algorithm.config_root` over
    :class:`GRPOConfig`)."""
    return algorithm_root(algo, GRPOConfig)


def steps_per_epoch(cfg: GRPOConfig, processes: int) -> int:
    """The optimizer steps of an epoch on ``processes`` processes: ``optim.steps_per_epoch``, or one per
    micro-batch of a process's samples (``None``). Micro-batches are cut per process, so an epoch of
    ``prompts.per_epoch x sampling.group_size`` samples holds ``ceil(samples / processes / optim.train_batch)``
    of them on each; a ``steps_per_epoch`` above that is refused (the run would make fewer steps than planned,
    and the learning-rate schedule and the EMA would drift)."""
    o = cfg.optim
    per_process = cfg.prompts.per_epoch * cfg.sampling.group_size // processes
    micro = -(-per_process // o.train_batch)
    if o.steps_per_epoch is None:
        return micro
    if o.steps_per_epoch > micro:
        raise ConfigError(f"optim.steps_per_epoch: on {processes} processes each rolls out {per_process} samples "
                          f"({cfg.prompts.per_epoch} prompts x {cfg.sampling.group_size} images / {processes}), "
                          f"{micro} micro-batch(es) of optim.train_batch={o.train_batch}, so at most {micro} optimizer "
                          f"step(s) an epoch, got {o.steps_per_epoch}; use optim.steps_per_epoch={micro}, a smaller "
                          "optim.train_batch or more prompts.per_epoch")
    return o.steps_per_epoch


def check_reward_names(rewards: RewardConfig) -> None:
    """Every reward of ``rewards.weights`` (and ``rewards.options``) is a registered name
    (:data:`parauni.rewards.REWARDS`) or a ``package.module:Factory`` path that imports; else a ``ConfigError``.
    Run by ``parauni grpo`` before any model is built (programmatic runs may pass their own reward callables to
    :class:`~parauni.rl.trainer.RLTrainer` under any name)."""


    for key, names in (("rewards.weights", rewards.weights), ("rewards.options", rewards.options)):
        for name in names:
            if name in REWARDS:
                continue
            if ":" not in name:
                raise ConfigError(f"{key}: unknown reward {name!r}; expected one of {', '.join(sorted(REWARDS))} "
                                  "or a 'package.module:Factory' path")
            module, attr = name.split(":", 1)
            try:
                found = getattr(importlib.import_module(module), attr, None)
            except ImportError as err:
                raise ConfigError(f"{key}: reward {name!r}: cannot import {module!r} ({err})") from None
            if not callable(found):
                raise ConfigError(f"{key}: reward {name!r}: {module!r} has no factory {attr!r}")


def load_grpo_config(path=None, overrides: list[str] | None = None, migrate: bool = False) -> GRPOConfig:
    """A config of the chosen algorithm's root (:func:`config_root`, a :class:`GRPOConfig`) from a YAML file and
    ``key=value`` overrides, every value checked (see :func:`parauni.train.config.load_config`; ``migrate``: a
    saved run's config, older keys renamed, other algorithms' sections dropped)."""
    return load_config(path, overrides, root=GRPOConfig, migrate=migrate)
