"""The config of a resumed run: compared with the ``config.yaml`` of the checkpoint it resumes, key by key; only
the keys of :data:`RESUME_SAFE_KEYS` may change silently."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CONFIG_CHANGES_FILE = "config_changes.jsonl"

# The config keys a resumed run may change without changing what it computes: the weights, optimizer state,
# data order, rollouts and logged values of every later step stay those of an uninterrupted run with the new
# value. Every other key (model source / init / conditioner, trainable parts, batch size, grad_accum, data,
# seed, resolution, the optimizer, the sampling settings, prompts, rewards, LDAM, mixed precision ...) is
# compared with the checkpoint's config.yaml and a difference refuses the resume unless
# --allow-config-change. A key listed here covers the keys under it. This is the one list; the trainers
# only add conditions to an entry (see ``conditions`` of check_resume_config).
RESUME_SAFE_KEYS: dict[str, str] = {
    "train.steps": "how long stage I / II runs; allowed while the steps already taken keep their learning rates "
                   "(the cosine decay spans train.steps: extending it is exact only inside the warm-up)",
    "train.epochs": "how long stage III runs; allowed while the optimizer steps already taken keep their learning "
                    "rates (a decaying optim.min_lr_ratio < 1 spans train.epochs; the default lr is constant)",
    "train.save_every": "when checkpoints are written",
    "train.keep_last": "how many checkpoints stay",
    "train.log_every": "how often metrics.jsonl gets a row",
    "train.logger": "where metrics also go (TensorBoard, W&B, none)",
    "train.output_dir": "where the run writes (e.g. resuming a copied run folder)",
    "train.dist_timeout_minutes": "how long a process waits for the others in a collective",
    "train.threads": "CPU threads (the same operations; a reduction split over other threads can differ in float "
                     "round-off only)",
    "train.eval_geneval": "the evaluation after training",
    "train.eval_before": "the evaluation before training (stage III)",
    "train.eval_images_per_prompt": "the evaluation after training",
    "train.eval_steps": "the evaluation after training",
    "train.eval_limit": "the evaluation after training",
    "train.eval_guidance_scales": "the evaluation after training",
    # an older stage-III checkpoint's evaluation keys (now train.eval_*)
    "sampling.eval_steps": "the evaluation of stage III (not its rollouts); now train.eval_steps",
    "sampling.eval_images_per_prompt": "the evaluation of stage III (not its rollouts); now "
                                       "train.eval_images_per_prompt",
    "sampling.eval_guidance_scales": "the evaluation of stage III (not its rollouts); now train.eval_guidance_scales",
    "data.num_workers": "loader processes (the samples and their order are fixed by the seed and the step)",
    "model.gradient_checkpointing": "which activations are recomputed in the backward (the same values)",
}


class ResumeConfigError(ConfigError):
    """A resume whose config differs from the checkpoint's in keys that change the training."""


UNSET = "<unset>"


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"section.key": value}`` (mappings inside values flattened too; lists kept)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):  # an empty mapping adds no key: {} and a missing mapping are the same
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _over_defaults(defaults: dict, stored: dict) -> dict:
    """A saved config over the defaults, section by section (keys added to a section since it was saved take
    their default); a mapping-valued key (``rewards.weights``) replaces its default, as in the config loader."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in defaults.items()}
    for section, values in stored.items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section].update(values)
        else:
            out[section] = values
    return out


def config_differences(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(key, old, new)`` for every flattened key whose value differs (``<unset>`` where a side lacks it)."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k, UNSET), b.get(k, UNSET)) for k in keys if a.get(k, UNSET) != b.get(k, UNSET)]


def safe_key(key: str) -> str | None:
    """The entry of :data:`RESUME_SAFE_KEYS` that covers ``key``, or ``None``."""
    for safe in RESUME_SAFE_KEYS:
        if key == safe or key.startswith(safe + "."):
            return safe
    return None


def _fmt(value: Any) -> str:
    return value if value == UNSET else json.dumps(value)


def format_change(key: str, old: Any, new: Any, why: str | None = None) -> str:
    return f"{key}: {_fmt(old)} -> {_fmt(new)}" + (f" ({why})" if why else "")


def check_resume_config(ckpt: Path, new: dict, defaults: dict, allow: bool, log_dir: Path | None,
                        conditions: dict[str, Callable[[Any, Any], str | None]] | None = None,
                        where: dict | None = None,
                        migrate: Callable[[dict], None] | None = None) -> list[tuple[str, Any, Any]]:
    """Compare the config that made checkpoint ``ckpt`` (its ``config.yaml``, over ``defaults`` for keys added
    since) with the resumed run's ``new`` one (both plain nested dicts, e.g. ``to_yaml_dict(cfg)``).

    Differences in keys of :data:`RESUME_SAFE_KEYS` pass silently, unless ``conditions[key](old, new)`` returns
    a reason (e.g. stage I/II's ``train.steps`` when the steps already taken would get other learning rates).
    Any other difference raises :class:`ResumeConfigError` listing each as ``key: old -> new``; with ``allow``
    (``--allow-config-change``) they are logged instead, and appended to ``log_dir/config_changes.jsonl`` with
    ``where`` (e.g. the step). Returns the differences that were let through that way. ``migrate(stored)``: drops,
    in place, keys of the stored config that an older layout held and that never acted (e.g. another algorithm's
    section).
    """
    cfg_file = Path(ckpt) / CONFIG_FILE
    if not cfg_file.is_file():
        if not allow:
            raise ResumeConfigError(f"--resume {ckpt}: it has no {CONFIG_FILE}, so this config cannot be checked "
                                    "against the one that made it; pass --allow-config-change to resume anyway")
        logger.warning("%s has no %s: the config is not checked", ckpt, CONFIG_FILE)
        return []
    stored = yaml.safe_load(cfg_file.read_text()) or {}
    if migrate is not None and isinstance(stored, dict):
        migrate(stored)
    old = _over_defaults(defaults, stored)
    unsafe = []
    for key, a, b in config_differences(old, new):
        entry = safe_key(key)
        why = None
        if entry is not None:
            check = (conditions or {}).get(entry)
            why = check(a, b) if check else None
            if why is None:
                continue
        unsafe.append((key, a, b, why))
    if not unsafe:
        return []
    lines = [format_change(*u) for u in unsafe]
    if not allow:
        raise ResumeConfigError(
            f"--resume {ckpt}: the config differs from the one that made this checkpoint ({cfg_file}) in keys that "
            f"change the training: {'; '.join(lines)}. Resume with the checkpoint's values, start a new run "
            f"(another train.output_dir), or pass --allow-config-change to continue with the new values (the changes "
            f"are then logged to {CONFIG_CHANGES_FILE})")
    logger.warning("--allow-config-change: resuming %s with a changed config: %s", ckpt, "; ".join(lines))
    if log_dir is not None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": str(ckpt), **(where or {}),
               "changes": [{"key": k, "old": a, "new": b, **({"note": w} if w else {})} for k, a, b, w in unsafe]}
        with open(log_dir / CONFIG_CHANGES_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
    return [(k, a, b) for k, a, b, _ in unsafe]
