"""Training configuration: YAML files of four sections, loaded with OmegaConf onto the dataclasses below.

A config file has the sections ``model``, ``data``, ``optim`` and ``train`` (see the dataclasses below
for every key and its default). ``base: other.yaml`` at the top level inherits from another file (relative
to this one). ``section.key=value`` overrides are read like OmegaConf's dot-lists (values are YAML:
``optim.lr=1e-3``, ``optim.betas=[0.9,0.95]``, ``sampling.sde_window=null``, ``train.mixed_precision='no'``).

The dataclasses are OmegaConf structured configs (`OmegaConf.structured`), so every value is type-checked as it
is set; :func:`load_config` returns the dataclass instances (`OmegaConf.to_object`). Then one validation layer
(:func:`check_values` with the table :data:`CHECKS`, and the cross-key checks of :func:`validate`) range-checks
every value before any work starts. Every problem raises :class:`parauni.errors.ConfigError` naming the key, the
value and what is allowed; unknown keys raise :class:`parauni.errors.UnknownKeyError` (also a ``KeyError``).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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
    integer,
    list_of,
    mapping,
    nonempty_str,
    number,
    optional,
    registered_choice,
)
from ..errors import ConfigError, UnknownKeyError
from ..flow import TIMESTEP_SAMPLINGS
from ..registry import DATASETS, MODEL_BUILDERS
from ..utils.configs import resolve_config
from ..utils.names import closest_name


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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def _annotation_check(tp: Any) -> Check | None:
    """The check a type annotation implies (for keys without an entry in the table)."""
    inner, opt = _unwrap_optional(tp)
    base = {int: integer(), float: number(), bool: boolean(),
            str: Check("a string", lambda v: isinstance(v, str))}.get(inner)
    if base is None:
        return None
    return optional(base) if opt else base


def _check_for(root: type, key: str, checks: dict[str, Check]) -> Check | None:
    if key in checks:
        return checks[key]
    cls = root
    *sections, name = key.split(".")
    for s in sections:
        cls = _hints(cls).get(s)
        if not dataclasses.is_dataclass(cls):
            return None
    return _annotation_check(_hints(cls).get(name))


def _leaves(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, value, annotation)`` of every leaf field of a dataclass instance."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value, hints[f.name]


def check_values(cfg: Any, checks: dict[str, Check]) -> None:
    """Every leaf of ``cfg`` against ``checks`` (or, for keys not in it, its type annotation)."""
    for key, value, tp in _leaves(cfg):
        check = checks.get(key) or _annotation_check(tp)
        if check is not None and not check.ok(value):
            raise ConfigError(check.message(key, value))


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


# ---- loading ------------------------------------------------------------------------------------------------------

def _unknown(key: str, allowed: list[str], prefix: str, source: str) -> UnknownKeyError:
    near = closest_name(key, allowed)
    what = "section" if not prefix else "key"
    hint = f"; did you mean '{prefix}{near}'?" if near else ""
    where = f" in section '{prefix[:-1]}'" if prefix else ""
    return UnknownKeyError(f"{source}unknown config {what} '{prefix}{key}'{hint} (allowed{where}: "
                           f"{', '.join(sorted(allowed))})")


def _check_keys(data: dict, cls: type, source: str = "", prefix: str = "") -> None:
    """Unknown keys in ``data`` (a nested dict meant for dataclass ``cls``) raise, naming the dotted key."""
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise _unknown(str(key), list(hints), prefix, source)
        if dataclasses.is_dataclass(hints[key]):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}{prefix}{key}: expected a section (a mapping of keys), got {value!r}")
            _check_keys(value, hints[key], source, f"{prefix}{key}.")


def _yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return ConfigError(f"{path}{where}: invalid YAML: {problem}" + (f" ({context})" if context else ""))


def _read(path: Path, seen: tuple[Path, ...] = (), root: type | None = None) -> dict:
    """A config file as a plain dict, its ``base`` chain merged under it (OmegaConf.merge: mappings merge key
    by key, lists and values replace)."""
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    if path.resolve() in seen:
        raise ConfigError(f"config {path} inherits from itself through 'base'")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except (OmegaConfBaseException, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got a {type(raw).__name__}")
    data = OmegaConf.to_container(raw, resolve=False)
    base = data.pop("base", None)
    if root is not None:
        _check_keys(data, root, f"{path}: ")
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected the path of another YAML config, got {base!r}")
    parent = _read(path.parent / base, (*seen, path.resolve()), root)
    return OmegaConf.to_container(OmegaConf.merge(parent, data), resolve=False)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], 3e-4)``; the value is read as YAML, as
    ``OmegaConf.from_dotlist`` reads it (``1e-3`` is a number, ``null`` is None, ``'no'`` a string)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override {text!r}: {key.strip()!r} is not a dotted key such as optim.lr")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]), resolve=False)["value"]
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"override {text!r}: {str(err).splitlines()[0]}") from None
    return [k.strip() for k in keys], parsed


def _set_override(data: dict, text: str, root: type) -> None:
    """Set one ``key=value`` override in the nested dict ``data``: the value replaces what was there."""
    keys, value = parse_override(text)
    nested: Any = value
    for k in reversed(keys):
        nested = {k: nested}
    _check_keys_through(nested, root, f"override {text!r}: ")
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(keys[:i + 1])} holds {node!r}, not a mapping")
    node[keys[-1]] = value


def _check_keys_through(data: dict, cls: type, source: str, prefix: str = "") -> None:
    """Like :func:`_check_keys`, for one override: a path into a leaf value (``optim.lr.x``) is an error."""
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise _unknown(str(key), list(hints), prefix, source)
        if dataclasses.is_dataclass(hints[key]):
            if isinstance(value, dict):
                _check_keys_through(value, hints[key], source, f"{prefix}{key}.")
            elif value is not None:
                raise ConfigError(f"{source}{prefix}{key} is a section: set its keys ({prefix}{key}.KEY=VALUE)")


def _section_leaves(data: dict, cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, value, annotation)`` of the values in ``data`` that replace a field of ``cls``: mappings
    under a dataclass field are walked; any other value (a dict-typed field's mapping too) replaces the field."""
    hints = _hints(cls)
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            yield from _section_leaves(value or {}, tp, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value, tp


def _tuples(obj: Any) -> None:
    """Tuple-typed fields as tuples (OmegaConf < 2.4 gives lists)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _tuples(value)
        elif isinstance(value, list) and typing.get_origin(_unwrap_optional(hints[f.name])[0]) is tuple:
            setattr(obj, f.name, tuple(value))


def _validator(cfg: Any):
    check = getattr(cfg, "validate", None)
    return check if check is not None else functools.partial(validate, cfg)


def build_config(data: dict, root: type | None = None):
    """A config of dataclass ``root`` (default :class:`Config`) from a nested dict, validated: each value is set
    on ``OmegaConf.structured(root)`` (typed; a mapping replaces a mapping-typed field's default), the result
    turned back into the dataclasses (``OmegaConf.to_object``) and checked (``root.validate()`` when the root has
    one, else :func:`validate`). Raises :class:`ConfigError` / :class:`UnknownKeyError` naming the key."""
    root = root or Config
    _check_keys(data, root)
    schema = OmegaConf.structured(root)
    for key, value, tp in _section_leaves(data, root):
        check = _check_for(root, key, _checks_of(root))
        inner = _unwrap_optional(tp)[0]
        if isinstance(value, bool) and inner is str:
            desc = check.desc if check else "a string"
            raise ConfigError(f"{key}: expected {desc}, got {value!r} (YAML reads an unquoted yes/no/on/off/"
                              f"true/false as a boolean: quote it, e.g. {key}='no')")
        try:
            OmegaConf.update(schema, key, value, merge=False)
        except OmegaConfBaseException as err:
            msg = check.message(key, value) if check else f"{key}: {str(err).splitlines()[0]}, got {value!r}"
            raise ConfigError(msg) from None
    try:
        cfg = OmegaConf.to_object(schema)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or 'config'}: {str(err).splitlines()[0]}") from None
    _tuples(cfg)
    _validator(cfg)()
    return cfg


def _checks_of(root: type) -> dict[str, Check]:
    checks = getattr(root, "checks", None)
    return checks() if callable(checks) else CHECKS


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, root: type | None = None):
    """Read ``path`` (``None``: all defaults; a relative path that is not a file names a shipped config, e.g.
    ``internvl3-2b_sana-1.6b_512_stage1.yaml``), apply ``key=value`` overrides, check every key and value (see
    :func:`build_config`). Returns the dataclass instances."""
    root = root or Config
    data = _read(resolve_config(path), root=root) if path is not None else {}
    for text in overrides or []:
        _set_override(data, text, root)
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
