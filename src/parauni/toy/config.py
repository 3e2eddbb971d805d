"""Configurations of the toy world's pre-training commands, loaded like ``parauni train`` / ``parauni grpo``.

``parauni toy pretrain-vlm``, ``parauni toy pretrain-prior`` and ``parauni toy train-rewards`` each read a
dataclass config (:class:`PretrainVLMConfig`, :class:`PretrainPriorConfig`, :class:`TrainRewardsConfig`) with
:func:`parauni.train.config.load_config`: an optional YAML file (``--config``, e.g. the shipped
``toy_pretrain_vlm.yaml``), then the command's flags (each one names a key, see the ``*_FLAGS`` tables; only
flags given on the command line count), then trailing ``section.key=value`` overrides. Every key's range is in the
config's ``checks()`` table; the checks across keys are in ``validate()``. The defaults are those of the flags, so
a command run with flags only does exactly what it did before these configs existed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    Check,
    boolean,
    choice,
    mapping,
    nonempty_str,
    number,
    optional,
)
from ..errors import ConfigError, UsageError
from ..train.config import load_config
from ..train.schema import check_values

POSITIVE = number(0.0, lo_open=True)
NON_NEGATIVE = number(0.0)
# the installed package: the pre-training commands write into it only with --into-package
PACKAGE_DIR = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# the shipped toy alignment reward (parauni.toy.rewards.alignment's DEFAULT_PATH, spelled here so that loading a
# config does not import torch); `parauni toy train-rewards --into-package` writes there
ALIGNMENT_PATH = str(WEIGHTS_DIR / "rewards" / "alignment")
# where `parauni toy train-rewards` writes by default, in the working folder (as the shipped config)
ALIGNMENT_OUT = "outputs/toy/alignment"
# each command's shipped weights, by its shipped config: the folder --into-package writes to
SHIPPED_WEIGHTS = {"toy_pretrain_vlm.yaml": str(WEIGHTS_DIR / "vlm"),
                   "toy_pretrain_prior.yaml": str(WEIGHTS_DIR / "prior"),
                   "toy_train_rewards.yaml": ALIGNMENT_PATH}


# ---- parauni toy pretrain-vlm -------------------------------------------------------------------------------------

@dataclass
class VLMModelConfig:
    vision: dict | None = None  # overrides of parauni.toy.vlm.toy_vlm_config's vision sizes
    text: dict | None = None  # ... and of its language-model sizes


@dataclass
class VLMDataConfig:
    turns: int = 6  # question-answer turns per training image
    describe_prob: float = 0.2  # share of turns that ask for the caption
    by_question: float = 0.5  # share of questions drawn over all questions (else: a kind first)
    chunks: int = 2  # a batch is cut into this many rows of similar length
    workers: int = 0  # data-loader processes (0: in the training process); the batches do not depend on it


@dataclass
class VLMOptimConfig:
    lr: float = 1.5e-3
    warmup: int = 100  # linear warm-up steps, then cosine decay to 0
    weight_decay: float = 0.05  # on >= 2-D weights only


@dataclass
class VLMTrainConfig:
    output_dir: str | None = None  # required: --out or train.output_dir
    steps: int = 2100
    batch_size: int = 32
    seed: int = 0
    eval_examples: int = 300  # held-out scenes for the final accuracy
    eval_every: int = 0  # steps between midway evaluations (0: none)
    mid_eval_examples: int = 40
    log_every: int = 25
    threads: int | None = 2  # torch CPU threads
    fp16: bool = False  # save the weights in float16 (as shipped)
    device: str = "cpu"


@dataclass
class PretrainVLMConfig:
    model: VLMModelConfig = field(default_factory=VLMModelConfig)
    data: VLMDataConfig = field(default_factory=VLMDataConfig)
    optim: VLMOptimConfig = field(default_factory=VLMOptimConfig)
    train: VLMTrainConfig = field(default_factory=VLMTrainConfig)

    @staticmethod
    def checks() -> dict[str, Check]:
        return VLM_CHECKS

    def validate(self) -> None:
        check_values(self, VLM_CHECKS)


VLM_CHECKS: dict[str, Check] = {
    "model.vision": optional(mapping()),
    "model.text": optional(mapping()),
    "data.turns": POSITIVE_INT,
    "data.describe_prob": PROBABILITY,
    "data.by_question": PROBABILITY,
    "data.chunks": POSITIVE_INT,
    "data.workers": NON_NEGATIVE_INT,
    "optim.lr": POSITIVE,
    "optim.warmup": NON_NEGATIVE_INT,
    "optim.weight_decay": NON_NEGATIVE,
    "train.output_dir": optional(nonempty_str()),
    "train.steps": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.seed": SEED,
    "train.eval_examples": POSITIVE_INT,
    "train.eval_every": NON_NEGATIVE_INT,
    "train.mid_eval_examples": POSITIVE_INT,
    "train.log_every": POSITIVE_INT,
    "train.threads": optional(POSITIVE_INT),
    "train.fp16": boolean(),
    "train.device": nonempty_str(),
}

# flag (argparse dest) -> config key
VLM_FLAGS: dict[str, str] = {
    "out": "train.output_dir", "steps": "train.steps", "batch_size": "train.batch_size", "lr": "optim.lr",
    "seed": "train.seed", "warmup": "optim.warmup", "turns": "data.turns", "eval_examples": "train.eval_examples",
    "eval_every": "train.eval_every", "workers": "data.workers", "threads": "train.threads", "fp16": "train.fp16",
    "device": "train.device",
}


# ---- parauni toy pretrain-prior -----------------------------------------------------------------------------------

@dataclass
class PriorModelConfig:
    space: str = "latent"  # "latent": a tiny AutoencoderDC is trained first; "pixel"
    hidden: int = 128
    layers: int = 4
    patch: int | None = None  # None: 4 in pixel space, 1 in latent space
    caption_channels: int = 64
    text_width: int = 64
    text_depth: int = 2
    latent_channels: int = 8
    vae_width: int = 32
    flow_shift: float = 1.0  # the sampling scheduler's flow shift
    guidance: float = 4.5  # default CFG scale saved with the prior


@dataclass
class PriorDataConfig:
    template_prob: float = 0.7  # share of GenEval-template captions
    uncond_prob: float = 0.1  # share of captions replaced by the empty prompt


@dataclass
class PriorOptimConfig:
    lr: float = 1e-3
    ae_lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    ema: float = 0.999


@dataclass
class PriorTrainConfig:
    output_dir: str = "outputs/toy/prior"
    steps: int = 1500  # diffusion steps (0: by minutes only)
    minutes: float | None = None  # wall-time cap of the diffusion phase
    ae_steps: int = 400  # autoencoder steps (latent space)
    ae_minutes: float | None = None  # wall-time cap of the autoencoder phase
    batch_size: int = 64
    timesteps: str = "logit-normal"  # flow-time sampling: "logit-normal" or "uniform"
    eval_images: int = 0  # toy GenEval images per prompt after training
    eval_steps: int = 20
    fp16: bool = False
    seed: int = 0
    threads: int | None = 2
    log_every: int = 50


@dataclass
class PretrainPriorConfig:
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    optim: PriorOptimConfig = field(default_factory=PriorOptimConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)

    @staticmethod
    def checks() -> dict[str, Check]:
        return PRIOR_CHECKS

    def validate(self) -> None:
        check_values(self, PRIOR_CHECKS)
        t = self.train
        if not t.steps and not t.minutes:
            raise ConfigError("train.steps=0 needs train.minutes (the diffusion phase runs by steps or by minutes)")
        if self.model.space == "latent" and not t.ae_steps and not t.ae_minutes:
            raise ConfigError("train.ae_steps=0 needs train.ae_minutes (model.space=latent trains an autoencoder "
                              "first, by steps or by minutes)")
        side = 8 if self.model.space == "latent" else 32  # the prior's input: 8x8 latents or 32x32 pixels
        patch = self.model.patch
        if patch is not None and (side % patch or patch >= side):
            fits = [p for p in range(1, side) if side % p == 0]
            raise ConfigError(f"model.patch: the {self.model.space}-space prior sees {side}x{side} inputs, so the "
                              f"patch size must divide {side} and leave more than one patch; got {patch}, use one of "
                              f"{', '.join(map(str, fits))}")


PRIOR_CHECKS: dict[str, Check] = {
    "model.space": choice("latent", "pixel"),
    "model.hidden": POSITIVE_INT,
    "model.layers": POSITIVE_INT,
    "model.patch": optional(POSITIVE_INT),
    "model.caption_channels": POSITIVE_INT,
    "model.text_width": POSITIVE_INT,
    "model.text_depth": POSITIVE_INT,
    "model.latent_channels": POSITIVE_INT,
    "model.vae_width": POSITIVE_INT,
    "model.flow_shift": POSITIVE,
    "model.guidance": NON_NEGATIVE,
    "data.template_prob": PROBABILITY,
    "data.uncond_prob": number(0.0, 1.0, hi_open=True),
    "optim.lr": POSITIVE,
    "optim.ae_lr": POSITIVE,
    "optim.warmup": NON_NEGATIVE_INT,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.ema": number(0.0, 1.0, hi_open=True),
    "train.output_dir": nonempty_str(),
    "train.steps": NON_NEGATIVE_INT,
    "train.minutes": optional(POSITIVE),
    "train.ae_steps": NON_NEGATIVE_INT,
    "train.ae_minutes": optional(POSITIVE),
    "train.batch_size": POSITIVE_INT,
    "train.timesteps": choice("logit-normal", "uniform"),
    "train.eval_images": NON_NEGATIVE_INT,
    "train.eval_steps": POSITIVE_INT,
    "train.fp16": boolean(),
    "train.seed": SEED,
    "train.threads": optional(POSITIVE_INT),
    "train.log_every": POSITIVE_INT,
}

# flag (argparse dest) -> config key, in the flags' order (train_config.json keeps it)
PRIOR_FLAGS: dict[str, str] = {
    "out": "train.output_dir", "space": "model.space", "steps": "train.steps", "minutes": "train.minutes",
    "ae_steps": "train.ae_steps", "ae_minutes": "train.ae_minutes", "batch_size": "train.batch_size",
    "lr": "optim.lr", "ae_lr": "optim.ae_lr", "warmup": "optim.warmup", "weight_decay": "optim.weight_decay",
    "ema": "optim.ema", "timesteps": "train.timesteps", "uncond_prob": "data.uncond_prob",
    "template_prob": "data.template_prob", "hidden": "model.hidden", "layers": "model.layers",
    "patch": "model.patch", "caption_channels": "model.caption_channels", "text_width": "model.text_width",
    "text_depth": "model.text_depth", "latent_channels": "model.latent_channels", "vae_width": "model.vae_width",
    "flow_shift": "model.flow_shift", "guidance": "model.guidance", "eval_images": "train.eval_images",
    "eval_steps": "train.eval_steps", "fp16": "train.fp16", "seed": "train.seed", "threads": "train.threads",
    "log_every": "train.log_every",
}


# ---- parauni toy train-rewards ------------------------------------------------------------------------------------

@dataclass
class RewardsDataConfig:
    pool: int = 40000  # rendered training pairs


@dataclass
class RewardsOptimConfig:
    lr: float = 2e-3


@dataclass
class RewardsTrainConfig:
    output_dir: str = ALIGNMENT_OUT  # the shipped weights' folder (ALIGNMENT_PATH) only with --into-package
    steps: int = 1500
    batch_size: int = 128
    seed: int = 0
    fp16: bool = False  # save the weights in float16 (as shipped)
    log_every: int = 50
    threads: int | None = None  # torch CPU threads (None: torch's own choice)


@dataclass
class TrainRewardsConfig:
    data: RewardsDataConfig = field(default_factory=RewardsDataConfig)
    optim: RewardsOptimConfig = field(default_factory=RewardsOptimConfig)
    train: RewardsTrainConfig = field(default_factory=RewardsTrainConfig)

    @staticmethod
    def checks() -> dict[str, Check]:
        return REWARDS_CHECKS

    def validate(self) -> None:
        check_values(self, REWARDS_CHECKS)
        if self.train.batch_size > self.data.pool:
            raise ConfigError(f"train.batch_size={self.train.batch_size} is larger than data.pool={self.data.pool}; "
                              "raise the pool or lower the batch")


REWARDS_CHECKS: dict[str, Check] = {
    "data.pool": POSITIVE_INT,
    "optim.lr": POSITIVE,
    "train.output_dir": nonempty_str(),
    "train.steps": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.seed": SEED,
    "train.fp16": boolean(),
    "train.log_every": POSITIVE_INT,
    "train.threads": optional(POSITIVE_INT),
}

REWARDS_FLAGS: dict[str, str] = {
    "out": "train.output_dir", "steps": "train.steps", "batch_size": "train.batch_size", "lr": "optim.lr",
    "pool": "data.pool", "seed": "train.seed", "fp16": "train.fp16", "threads": "train.threads",
}


# ---- loading ------------------------------------------------------------------------------------------------------

def load_pretrain_vlm_config(path=None, overrides: list[str] | None = None) -> PretrainVLMConfig:
    """A :class:`PretrainVLMConfig` from a YAML file and ``key=value`` overrides, every value checked."""
    return load_config(path, overrides, root=PretrainVLMConfig)


def load_pretrain_prior_config(path=None, overrides: list[str] | None = None) -> PretrainPriorConfig:
    """A :class:`PretrainPriorConfig` from a YAML file and ``key=value`` overrides, every value checked."""
    return load_config(path, overrides, root=PretrainPriorConfig)


def load_train_rewards_config(path=None, overrides: list[str] | None = None) -> TrainRewardsConfig:
    """A :class:`TrainRewardsConfig` from a YAML file and ``key=value`` overrides, every value checked."""
    return load_config(path, overrides, root=TrainRewardsConfig)


def flag_overrides(args: argparse.Namespace, flags: dict[str, str]) -> list[str]:
    """``key=value`` overrides for the flags given on the command line (an absent flag is ``None`` in ``args``;
    values are written as JSON, which reads back as the same YAML value)."""
    return [f"{key}={json.dumps(getattr(args, dest))}" for dest, key in flags.items()
            if getattr(args, dest, None) is not None]


def _inside(path: str | Path, folder: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def config_from_args(args: argparse.Namespace, flags: dict[str, str], loader) -> Any:
    """The config of a command: ``--config`` (or the defaults), then the flags given, then ``key=value``.

    An output folder inside the installed package is refused unless ``--into-package`` is given, which sets it to
    the command's shipped weights folder (``args.shipped_weights``)."""
    into, shipped = getattr(args, "into_package", False), getattr(args, "shipped_weights", None)
    given = flag_overrides(args, flags)
    if into:
        if getattr(args, "out", None) is not None and not _same_folder(args.out, shipped):
            raise UsageError(f"--into-package writes to the shipped weights ({shipped}), but --out says "
                             f"{args.out!r}; drop one of them")
        given.append(f"train.output_dir={json.dumps(shipped)}")
    cfg = loader(getattr(args, "config", None), [*given, *(getattr(args, "overrides", None) or [])])
    out = getattr(getattr(cfg, "train", None), "output_dir", None)
    if out is None or shipped is None:
        return cfg
    if into and not _same_folder(out, shipped):
        raise UsageError(f"--into-package writes to the shipped weights ({shipped}), but train.output_dir is "
                         f"{out!r}; drop one of them")
    if not into and _inside(out, PACKAGE_DIR):
        raise UsageError(f"train.output_dir {out!r} is inside the installed parauni package ({PACKAGE_DIR}); give "
                         f"--out DIR elsewhere, or pass --into-package to replace the shipped weights ({shipped})")
    return cfg


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def flat(cfg: Any, flags: dict[str, str]) -> dict[str, Any]:
    """The config's values under the flags' names (``{"steps": ..., "batch_size": ...}``)."""
    out = {}
    for dest, key in flags.items():
        section, name = key.split(".")
        out[dest] = getattr(getattr(cfg, section), name)
    return out


def add_config_options(p: argparse.ArgumentParser, shipped: str) -> None:
    """``--config FILE``, ``--into-package`` and trailing ``section.key=value`` overrides on a toy pre-training
    command (``shipped``: its shipped config, which names its shipped weights in :data:`SHIPPED_WEIGHTS`)."""
    weights = SHIPPED_WEIGHTS[shipped]
    p.add_argument("--into-package", action="store_true",
                   help=f"write into the installed package's own weights ({weights}), replacing the shipped ones; "
                        "without it an output folder inside the package is refused")
    p.set_defaults(shipped_weights=weights)
    p.add_argument("--config", help=f"a YAML config, e.g. the shipped {shipped} (flags given on the command line "
                                    "and key=value overrides after it win)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="section.key=value overrides, e.g. train.steps=10 (see parauni/toy/config.py)")
