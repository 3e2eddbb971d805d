"""Configurations of the toy world's pre-training commands, loaded like ``parauni train`` / ``parauni grpo``.

``parauni toy pretrain-vlm``, ``parauni toy pretrain-prior`` and ``parauni toy train-rewards`` each read a
dataclass config (:class:`PretrainVLMConfig`, :class:`PretrainPriorConfig`, :class:`TrainRewardsConfig`) with
:func:`parauni.train.config.load_config`: an optional YAML file (``--config``, e.g. the shipped
``toy_pretrain_vlm.yaml``), then the command's flags (each one names a key, see the ``*_FLAGS`` tables; only
flags given on the command line count), then trailing ``section.key=value`` overrides. Every key's range is in the
config's dataclass, beside its field (:func:`parauni.train.schema.setting`); the checks across keys are in
``validate()``. The defaults are those of the flags, so a command run with flags only does exactly what it did
before these configs existed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    PROBABILITY,
    SEED,
    boolean,
    choice,
    mapping,
    nonempty_str,
    number,
    optional,
)
from ..errors import ConfigError, UsageError
from ..train.config import load_config
from ..train.schema import setting

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
    # overrides of parauni.toy.vlm.toy_vlm_config's vision sizes
    vision: dict | None = setting(None, optional(mapping()))
    text: dict | None = setting(None, optional(mapping()))  # ... and of its language-model sizes


@dataclass
class VLMDataConfig:
    turns: int = setting(6, POSITIVE_INT)  # question-answer turns per training image
    describe_prob: float = setting(0.2, PROBABILITY)  # share of turns that ask for the caption
    by_question: float = setting(0.5, PROBABILITY)  # share of questions drawn over all questions (else: a kind first)
    chunks: int = setting(2, POSITIVE_INT)  # a batch is cut into this many rows of similar length
    world: str = setting("v1", choice("v1", "v2"))  # the toy world (parauni.toy.worlds); v2 hides its held-out split
    # text-only caption rows per batch (a share of train.batch_size) for the next-token objective on captions
    caption_lm: float = setting(0.0, number(0.0, 1.0))
    # data-loader processes (0: in the training process); the batches do not depend on it
    workers: int = setting(0, NON_NEGATIVE_INT)


@dataclass
class VLMOptimConfig:
    lr: float = setting(1.5e-3, POSITIVE)
    warmup: int = setting(100, NON_NEGATIVE_INT)  # linear warm-up steps, then cosine decay to 0
    weight_decay: float = setting(0.05, NON_NEGATIVE)  # on >= 2-D weights only


@dataclass
class VLMTrainConfig:
    output_dir: str | None = setting(None, optional(nonempty_str()))  # required: --out or train.output_dir
    steps: int = setting(2100, POSITIVE_INT)
    batch_size: int = setting(32, POSITIVE_INT)
    seed: int = setting(0, SEED)
    eval_examples: int = setting(300, POSITIVE_INT)  # held-out scenes for the final accuracy
    eval_every: int = setting(0, NON_NEGATIVE_INT)  # steps between midway evaluations (0: none)
    mid_eval_examples: int = setting(40, POSITIVE_INT)
    log_every: int = setting(25, POSITIVE_INT)
    threads: int | None = setting(2, optional(POSITIVE_INT))  # torch CPU threads
    fp16: bool = setting(False, boolean())  # save the weights in float16 (as shipped)
    device: str = setting("cpu", nonempty_str())
    # resumable runs (parauni.toy.resume): steps between checkpoints in <out>/resume (0: none), steps in this
    # sitting (0: to the end), continue from the checkpoint
    checkpoint_every: int = setting(0, NON_NEGATIVE_INT)
    stop_after: int = setting(0, NON_NEGATIVE_INT)
    resume: bool = setting(False, boolean())


@dataclass
class PretrainVLMConfig:
    model: VLMModelConfig = field(default_factory=VLMModelConfig)
    data: VLMDataConfig = field(default_factory=VLMDataConfig)
    optim: VLMOptimConfig = field(default_factory=VLMOptimConfig)
    train: VLMTrainConfig = field(default_factory=VLMTrainConfig)

    def validate(self) -> None:
        """No checks across keys (each key's range is declared beside its field)."""


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
    # "latent": a tiny AutoencoderDC is trained first; "pixel"
    space: str = setting("latent", choice("latent", "pixel"))
    hidden: int = setting(128, POSITIVE_INT)
    layers: int = setting(4, POSITIVE_INT)
    patch: int | None = setting(None, optional(POSITIVE_INT))  # None: 4 in pixel space, 1 in latent space
    caption_channels: int = setting(64, POSITIVE_INT)
    text_width: int = setting(64, POSITIVE_INT)
    text_depth: int = setting(2, POSITIVE_INT)
    latent_channels: int = setting(8, POSITIVE_INT)
    vae_width: int = setting(32, POSITIVE_INT)
    flow_shift: float = setting(1.0, POSITIVE)  # the sampling scheduler's flow shift
    guidance: float = setting(4.5, NON_NEGATIVE)  # default CFG scale saved with the prior


@dataclass
class PriorDataConfig:
    template_prob: float = setting(0.7, PROBABILITY)  # share of GenEval-template captions
    uncond_prob: float = setting(0.1, number(0.0, 1.0, hi_open=True))  # share of captions replaced by the empty prompt
    world: str = setting("v1", choice("v1", "v2"))  # the toy world (parauni.toy.worlds); v2 hides its held-out split


@dataclass
class PriorOptimConfig:
    lr: float = setting(1e-3, POSITIVE)
    ae_lr: float = setting(2e-3, POSITIVE)
    warmup: int = setting(100, NON_NEGATIVE_INT)
    weight_decay: float = setting(0.01, NON_NEGATIVE)
    ema: float = setting(0.999, number(0.0, 1.0, hi_open=True))


@dataclass
class PriorTrainConfig:
    output_dir: str = setting("outputs/toy/prior", nonempty_str())
    steps: int = setting(1500, NON_NEGATIVE_INT)  # diffusion steps (0: by minutes only)
    minutes: float | None = setting(None, optional(POSITIVE))  # wall-time cap of the diffusion phase
    ae_steps: int = setting(400, NON_NEGATIVE_INT)  # autoencoder steps (latent space)
    ae_minutes: float | None = setting(None, optional(POSITIVE))  # wall-time cap of the autoencoder phase
    batch_size: int = setting(64, POSITIVE_INT)
    # flow-time sampling: "logit-normal" or "uniform"
    timesteps: str = setting("logit-normal", choice("logit-normal", "uniform"))
    eval_images: int = setting(0, NON_NEGATIVE_INT)  # toy GenEval images per prompt after training
    eval_steps: int = setting(20, POSITIVE_INT)
    fp16: bool = setting(False, boolean())
    seed: int = setting(0, SEED)
    threads: int | None = setting(2, optional(POSITIVE_INT))
    log_every: int = setting(50, POSITIVE_INT)
    # resumable runs (parauni.toy.resume): steps between checkpoints in <out>/resume (0: none), steps in this
    # sitting (0: to the end), continue from the checkpoint
    checkpoint_every: int = setting(0, NON_NEGATIVE_INT)
    stop_after: int = setting(0, NON_NEGATIVE_INT)
    resume: bool = setting(False, boolean())


@dataclass
class PretrainPriorConfig:
    model: PriorModelConfig = field(default_factory=PriorModelConfig)
    data: PriorDataConfig = field(default_factory=PriorDataConfig)
    optim: PriorOptimConfig = field(default_factory=PriorOptimConfig)
    train: PriorTrainConfig = field(default_factory=PriorTrainConfig)


    def validate(self) -> None:
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
    pool: int = setting(40000, POSITIVE_INT)  # rendered training pairs
    world: str = setting("v1", choice("v1", "v2"))  # the toy world (parauni.toy.worlds); v2 hides its held-out split


@dataclass
class RewardsOptimConfig:
    lr: float = setting(2e-3, POSITIVE)


@dataclass
class RewardsTrainConfig:
    # the shipped weights' folder (ALIGNMENT_PATH) only with --into-package
    output_dir: str = setting(ALIGNMENT_OUT, nonempty_str())
    steps: int = setting(1500, POSITIVE_INT)
    batch_size: int = setting(128, POSITIVE_INT)
    seed: int = setting(0, SEED)
    fp16: bool = setting(False, boolean())  # save the weights in float16 (as shipped)
    log_every: int = setting(50, POSITIVE_INT)
    threads: int | None = setting(None, optional(POSITIVE_INT))  # torch CPU threads (None: torch's own choice)
    # resumable runs (parauni.toy.resume): steps between checkpoints in <out>/resume (0: none), steps in this
    # sitting (0: to the end), continue from the checkpoint
    checkpoint_every: int = setting(0, NON_NEGATIVE_INT)
    stop_after: int = setting(0, NON_NEGATIVE_INT)
    resume: bool = setting(False, boolean())


@dataclass
class TrainRewardsConfig:
    data: RewardsDataConfig = field(default_factory=RewardsDataConfig)
    optim: RewardsOptimConfig = field(default_factory=RewardsOptimConfig)
    train: RewardsTrainConfig = field(default_factory=RewardsTrainConfig)


    def validate(self) -> None:
        if self.train.batch_size > self.data.pool:
            raise ConfigError(f"train.batch_size={self.train.batch_size} is larger than data.pool={self.data.pool}; "
                              "raise the pool or lower the batch")



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
