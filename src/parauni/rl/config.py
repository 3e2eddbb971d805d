"""``parauni grpo`` configuration: ``algorithm`` (``flow_grpo`` or ``diffusion_nft``) and the sections ``model``,
``prompts``, ``rewards``, ``sampling``, ``optim``, ``nft`` (DiffusionNFT only), ``ldam`` and ``train``, loaded
like the stage I / II configs (:func:`parauni.train.config.load_config`: OmegaConf structured configs over these
dataclasses, unknown keys are errors) and validated by :meth:`GRPOConfig.validate`
(every key's range in :func:`grpo_checks`, then the checks across keys). ``parauni grpo`` also checks the reward
names (:func:`check_reward_names`) before building any model."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field

from ..checks import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    SEED,
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
from ..errors import ConfigError
from ..registry import PROMPT_SOURCES, REWARDS
from ..train.config import BETAS, MODEL_SOURCE_CHECKS, PRECISIONS, ModelSource, load_config
from ..train.schema import check_values
from .nft import ADV_MODES, DECAY_TYPES
from .objective import KL_FORMS
from .ode import SOLVERS
from .sde import GRIDS

ALGORITHMS = ("flow_grpo", "diffusion_nft")


@dataclass
class GRPOModelConfig(ModelSource):
    """Stage III's model section: :class:`parauni.train.config.ModelSource` (``init``: e.g. a stage I/II run's
    folder) and the LoRA the policy trains."""

    lora_rank: int = 32
    lora_alpha: int = 64
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_lim: bool = False  # also train the LIM (queries stay frozen)


@dataclass
class PromptConfig:
    # "file": a .txt (one a line) or GenEval .jsonl; or a registered prompt source. Default: the source a plugin
    # registered as the default, else "file"
    kind: str = field(default_factory=lambda: PROMPT_SOURCES.default("file"))
    path: str | None = None
    per_epoch: int = 8  # prompts per epoch (all processes together)
    pool: int | None = None  # a registered source may read it: a fixed set of this many prompts (None: fresh ones)


@dataclass
class RewardConfig:
    # default: the rewards plugins registered as the defaults, each weighted 1
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(REWARDS.defaults(), 1.0))
    options: dict[str, dict] = field(default_factory=dict)  # per reward: factory options (weights paths, scales)


@dataclass
class SamplingConfig:
    group_size: int = 8  # G images per prompt
    steps: int = 10  # SDE steps of a training rollout
    noise_level: float = 0.7
    grid: str = "scheduler"  # "scheduler": diffusers' FlowMatchEulerDiscreteScheduler sigmas (Flow-GRPO); "uniform"
    sde_window: int | None = None  # N: SDE (and training) on a window of N transitions, ODE elsewhere
    sde_window_range: list[int] | None = None  # [lo, hi]: the window lies in transitions lo..hi-1 (None: 0..steps-1)
    merge_lora: bool = True  # roll out with the LoRA merged into a plain copy of the transformer (faster, same policy)
    guidance_scale: float = 4.5
    flow_shift: float | None = None  # None: the scheduler's own
    rollout_batch: int = 64  # images per sampling forward
    eval_steps: int = 20  # ODE (DPM-Solver) steps for evaluation
    eval_images_per_prompt: int = 1
    eval_guidance_scales: list[float] | None = None  # evaluate at each (the first: the main one); None: guidance_scale


@dataclass
class GRPOOptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4  # Flow-GRPO's
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8  # AdamW's; flow_grpo and DiffusionNFT config/base.py train.adam_epsilon
    # the learning rate: a linear warm-up over warmup_steps optimizer steps, then a cosine to lr * min_lr_ratio at
    # the last planned step (train.epochs x optimizer steps an epoch); the default 0 / 1.0 keeps lr constant, as
    # both references do
    warmup_steps: int = 0
    min_lr_ratio: float = 1.0
    max_grad_norm: float = 1.0
    clip_range: float = 1e-4
    kl_beta: float = 0.04
    kl_form: str = "reference"  # "reference": Flow-GRPO code's / (2 std_dev_t^2); "transition": / (2 (std sqrt(-dt))^2)
    adv_clip: float = 5.0
    per_group_std: bool = False  # False: one std over the epoch's rewards (Flow-GRPO's global std)
    train_batch: int = 16  # samples per update micro-batch
    steps_per_epoch: int | None = 2  # optimizer steps an epoch (gradients accumulate); None: one per micro-batch
    drop_zero_adv: bool = True  # samples of groups with all-equal rewards leave the update (Flow-GRPO)
    timestep_fraction: float = 1.0  # share of the trainable transitions (all but the last) used per sample
    ema_decay: float = 0.9  # the EMA's (largest) decay
    ema_every: int = 8  # update the EMA every N optimizer steps (Flow-GRPO: 8)
    ema_warmup: bool = True  # decay min((1 + k) / (10 + k), ema_decay) at optimizer step k (Flow-GRPO)


@dataclass
class NFTConfig:
    """DiffusionNFT's own settings (NVlabs/DiffusionNFT ``config/nft.py``); the shared ones are in ``optim``:
    ``adv_clip`` (adv_clip_max), ``kl_beta`` (train.beta), ``timestep_fraction``, the EMA and AdamW."""

    beta: float = 1.0  # implicit policies v+ = beta v + (1 - beta) v_old (reference: 1; 0.1 for several rewards)
    adv_mode: str = "all"  # how advantages become r: all, positive_only, negative_only, one_only, binary
    decay_type: int = 1  # the old policy's soft-update schedule (0: on-policy; 1: 0 -> 0.5 over 500 steps; 2)
    solver: str = "dpm2"  # the rollout's deterministic solver: dpm2 (DPM-Solver++(2M)) or euler


@dataclass
class LDAMConfig:
    enabled: bool = True
    window: int = 5
    gamma0: float = 0.1
    patience: int = 5
    groups: dict | None = None  # name -> layer positions; None: thirds (shallow, middle, deep)
    reward_to_group: dict | None = None  # reward -> group; None: the figure's map and the plugins' (parauni.rl.ldam)


@dataclass
class GRPOTrainConfig:
    epochs: int = 100
    seed: int = 0
    output_dir: str = "runs/grpo"
    save_every: int = 10
    keep_last: int = 2
    eval_geneval: bool = False  # the registered default evaluation of the initial and the final (EMA) model
    eval_before: bool = True  # with eval_geneval: also the initial model (false: only the final one)
    eval_limit: int | None = None  # the evaluation's first N prompts of each task only
    max_idle_epochs: int = 5  # stop with an error after this many epochs in a row that cannot learn (0: never)
    threads: int | None = None
    mixed_precision: str = "auto"
    logger: str = "tensorboard"  # "tensorboard" (under <output_dir>/logs) or "none"; metrics.jsonl is always written


@dataclass
class GRPOConfig:
    algorithm: str = "flow_grpo"  # flow_grpo (the paper's) or diffusion_nft
    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: GRPOOptimConfig = field(default_factory=GRPOOptimConfig)
    nft: NFTConfig = field(default_factory=NFTConfig)
    ldam: LDAMConfig = field(default_factory=LDAMConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)

    @staticmethod
    def checks() -> dict[str, Check]:
        """Every key and what it accepts (:func:`grpo_checks`)."""
        return grpo_checks()

    def validate(self) -> None:
        """Every value in range (:func:`grpo_checks`), then the checks across keys; raises ``ConfigError``."""
        check_values(self, grpo_checks())
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
        if self.algorithm == "diffusion_nft" and self.model.train_lim:
            raise ConfigError("model.train_lim=true is not supported with algorithm=diffusion_nft yet (its old "
                              "policy would need a copy of the LIM); use algorithm=flow_grpo or train_lim=false")
        if s.sde_window_range is not None:
            lo, hi = s.sde_window_range
            if not 0 <= lo < hi <= s.steps - 1 or (s.sde_window or 1) > hi - lo:
                raise ConfigError(f"sampling.sde_window_range: expected [lo, hi] with 0 <= lo < hi <= sampling.steps "
                                  f"- 1 = {s.steps - 1} and room for sampling.sde_window = {s.sde_window}, got "
                                  f"{list(s.sde_window_range)}")


@functools.cache
def grpo_checks() -> dict[str, Check]:
    """What every key of :class:`GRPOConfig` accepts (built once; the grid, KL-form, solver, advantage-mode and
    decay choices come from the modules that implement them)."""
    # over 60 lines on purpose: one line per config key, a table read (and diffed) whole, with no logic to split
    positive, non_negative = number(0.0, lo_open=True), number(0.0)
    return {
        "algorithm": choice(*ALGORITHMS),
        **MODEL_SOURCE_CHECKS,
        "model.lora_rank": POSITIVE_INT,
        "model.lora_alpha": POSITIVE_INT,
        "model.lora_targets": list_of(nonempty_str()),
        "model.train_lim": boolean(),
        "prompts.kind": registered_choice(PROMPT_SOURCES, "file"),
        "prompts.path": optional(nonempty_str()),
        "prompts.per_epoch": POSITIVE_INT,
        "prompts.pool": optional(POSITIVE_INT),
        "rewards.weights": mapping(number(), min_length=1),
        "rewards.options": mapping(mapping()),
        "sampling.group_size": integer(lo=2),  # advantages are relative to the group
        "sampling.steps": integer(lo=2),  # the last transition is not trained
        "sampling.noise_level": positive,  # 0 is a point mass: no log-probability to train
        "sampling.grid": choice(*GRIDS),
        "sampling.sde_window": optional(POSITIVE_INT),
        "sampling.sde_window_range": optional(list_of(NON_NEGATIVE_INT, length=2)),
        "sampling.merge_lora": boolean(),
        "sampling.guidance_scale": non_negative,
        "sampling.flow_shift": optional(positive),
        "sampling.rollout_batch": POSITIVE_INT,
        "sampling.eval_steps": POSITIVE_INT,
        "sampling.eval_images_per_prompt": POSITIVE_INT,
        "sampling.eval_guidance_scales": optional(list_of(non_negative, min_length=1)),
        "optim.lr": positive,
        "optim.weight_decay": non_negative,
        "optim.betas": BETAS,
        "optim.eps": positive,
        "optim.warmup_steps": NON_NEGATIVE_INT,
        "optim.min_lr_ratio": number(0.0, 1.0),
        "optim.max_grad_norm": positive,
        "optim.clip_range": positive,
        "optim.kl_beta": non_negative,
        "optim.kl_form": choice(*KL_FORMS),
        "optim.adv_clip": positive,
        "optim.per_group_std": boolean(),
        "optim.train_batch": POSITIVE_INT,
        "optim.steps_per_epoch": optional(POSITIVE_INT),
        "optim.drop_zero_adv": boolean(),
        "optim.timestep_fraction": number(0.0, 1.0, lo_open=True),
        "optim.ema_decay": number(0.0, 1.0, hi_open=True),
        "optim.ema_every": POSITIVE_INT,
        "optim.ema_warmup": boolean(),
        "nft.beta": positive,
        "nft.adv_mode": choice(*ADV_MODES),
        "nft.decay_type": Check(f"one of {', '.join(map(str, DECAY_TYPES))}",
                                lambda v: isinstance(v, int) and not isinstance(v, bool) and v in DECAY_TYPES),
        "nft.solver": choice(*SOLVERS),
        "ldam.enabled": boolean(),
        "ldam.window": POSITIVE_INT,
        "ldam.gamma0": non_negative,
        "ldam.patience": POSITIVE_INT,
        "ldam.groups": optional(mapping(list_of(NON_NEGATIVE_INT), min_length=1)),
        "ldam.reward_to_group": optional(mapping(nonempty_str())),
        "train.epochs": POSITIVE_INT,
        "train.seed": SEED,
        "train.output_dir": nonempty_str(),
        "train.save_every": POSITIVE_INT,
        "train.keep_last": POSITIVE_INT,
        "train.eval_geneval": boolean(),
        "train.eval_before": boolean(),
        "train.eval_limit": optional(POSITIVE_INT),
        "train.max_idle_epochs": NON_NEGATIVE_INT,
        "train.threads": optional(POSITIVE_INT),
        "train.mixed_precision": choice(*PRECISIONS),
        "train.logger": choice("tensorboard", "none"),
    }


def check_reward_names(rewards: RewardConfig) -> None:
    """Every reward of ``rewards.weights`` (and ``rewards.options``) is a registered name
    (:data:`parauni.rewards.REWARDS`) or a ``package.module:Factory`` path that imports; else a ``ConfigError``.
    Run by ``parauni grpo`` before any model is built (programmatic runs may pass their own reward callables to
    :class:`~parauni.rl.grpo.GRPOTrainer` under any name)."""


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


def load_grpo_config(path=None, overrides: list[str] | None = None) -> GRPOConfig:
    """A :class:`GRPOConfig` from a YAML file and ``key=value`` overrides, every value checked (see
    :func:`parauni.train.config.load_config`)."""
    return load_config(path, overrides, root=GRPOConfig)
