"""``parauni grpo`` configuration: sections ``model``, ``prompts``, ``rewards``, ``sampling``, ``optim``,
``ldam`` and ``train``, read and checked like the stage I / II configs (unknown keys are errors)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GRPOModelConfig:
    source: str = "toy"  # a saved ParaUniPipeline folder, "toy", "tiny" or a preset
    init: str | None = None  # trainable.safetensors of a stage I/II run to start from (e.g. runs/toy_stage2)
    conditioner: dict = field(default_factory=dict)  # fresh models only: ParaUniConditioner overrides
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    train_lim: bool = False  # also train the LIM (queries stay frozen)


@dataclass
class PromptConfig:
    kind: str = "toy"  # "toy": random toy GenEval-style records; "file": a .txt (one a line) or GenEval .jsonl
    path: str | None = None
    per_epoch: int = 8  # prompts per epoch (all processes together)
    pool: int | None = None  # toy: draw a fixed set of this many prompts once (None: fresh prompts every epoch)


@dataclass
class RewardConfig:
    weights: dict = field(default_factory=lambda: {"toy_alignment": 1.0, "toy_quality": 1.0, "toy_geneval": 1.0})
    options: dict = field(default_factory=dict)  # per reward: factory keyword options (weights paths, scales)


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


@dataclass
class GRPOOptimConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-4  # Flow-GRPO's
    betas: tuple[float, float] = (0.9, 0.999)
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
class LDAMConfig:
    enabled: bool = True
    window: int = 5
    gamma0: float = 0.1
    patience: int = 5
    groups: dict | None = None  # name -> layer positions; None: thirds (shallow, middle, deep)
    reward_to_group: dict | None = None  # reward -> group; None: the figure's map (see parauni.rl.ldam)


@dataclass
class GRPOTrainConfig:
    epochs: int = 100
    seed: int = 0
    output_dir: str = "runs/grpo"
    save_every: int = 10
    keep_last: int = 2
    eval_geneval: bool = False  # toy GenEval of the initial and the final (EMA) model
    eval_before: bool = True  # with eval_geneval: also the initial model (false: only the final one)
    eval_limit: int | None = None  # toy GenEval: first N prompts of each task only
    threads: int | None = None
    mixed_precision: str = "auto"
    logger: str = "tensorboard"  # "tensorboard" (under <output_dir>/logs) or "none"; metrics.jsonl is always written


@dataclass
class GRPOConfig:
    model: GRPOModelConfig = field(default_factory=GRPOModelConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: GRPOOptimConfig = field(default_factory=GRPOOptimConfig)
    ldam: LDAMConfig = field(default_factory=LDAMConfig)
    train: GRPOTrainConfig = field(default_factory=GRPOTrainConfig)

    def validate(self) -> None:
        if self.prompts.kind not in ("toy", "file"):
            raise ValueError(f"prompts.kind must be toy or file, got {self.prompts.kind!r}")
        if self.prompts.kind == "file" and not self.prompts.path:
            raise ValueError("prompts.kind=file needs prompts.path")
        if not self.rewards.weights:
            raise ValueError("rewards.weights: give at least one reward")
        if self.sampling.group_size < 2:
            raise ValueError("sampling.group_size must be >= 2 (advantages are relative to the group)")
        if self.sampling.steps < 2:
            raise ValueError("sampling.steps must be >= 2 (the last transition is not trained)")
        if self.train.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError("train.mixed_precision must be auto, no, bf16 or fp16")
        from .objective import KL_FORMS
        from .sde import GRIDS

        s, o = self.sampling, self.optim
        if s.grid not in GRIDS:
            raise ValueError(f"sampling.grid must be one of {GRIDS}, got {s.grid!r}")
        if o.kl_form not in KL_FORMS:
            raise ValueError(f"optim.kl_form must be one of {KL_FORMS}, got {o.kl_form!r}")
        if s.sde_window is not None and not 1 <= s.sde_window <= s.steps - 1:
            raise ValueError(f"sampling.sde_window must be between 1 and sampling.steps - 1 = {s.steps - 1} "
                             f"(the last transition is never trained), got {s.sde_window}")
        if s.sde_window_range is not None:
            lo, hi = s.sde_window_range
            if not 0 <= lo < hi <= s.steps - 1 or (s.sde_window or 1) > hi - lo:
                raise ValueError(f"sampling.sde_window_range must be [lo, hi] with 0 <= lo < hi <= sampling.steps - 1 "
                                 f"= {s.steps - 1} and room for sde_window = {s.sde_window}, got {s.sde_window_range}")
        if o.steps_per_epoch is not None and o.steps_per_epoch < 1:
            raise ValueError(f"optim.steps_per_epoch must be >= 1 or null, got {o.steps_per_epoch}")
        if o.ema_every < 1 or not 0 <= o.ema_decay < 1:
            raise ValueError("optim.ema_every must be >= 1 and optim.ema_decay in [0, 1)")
        if self.train.save_every < 1 or self.train.epochs < 1:
            raise ValueError("train.save_every and train.epochs must be >= 1")
        if self.train.logger not in ("tensorboard", "none"):
            raise ValueError(f"train.logger must be tensorboard or none, got {self.train.logger!r}")


def load_grpo_config(path=None, overrides: list[str] | None = None) -> GRPOConfig:
    from ..train.config import load_config

    return load_config(path, overrides, root=GRPOConfig)
