"""Atomic, verified, pruned checkpoint folders shared by ``parauni train`` and ``parauni grpo``.

A checkpoint is written to ``<name>.tmp`` (Accelerate's state plus the caller's files, the state file
last) and renamed to ``<name>`` only when complete, so an interrupted write never replaces a good one. A
``checkpoint-<n>`` folder counts only while it holds its state file (``trainer_state.json`` /
``grpo_state.json``): pruning deletes that file first, so a prune cut short leaves a folder that no longer
counts (and the next prune removes it).

Resuming reads the files before trusting them (:func:`checkpoint_problems`): a truncated
``trainable.safetensors`` or ``optimizer.bin`` makes ``--resume`` fall back to the newest intact checkpoint,
with a warning naming the file. It also compares the config that made the checkpoint (its ``config.yaml``)
with the new one (:func:`check_resume_config`): only the keys of :data:`RESUME_SAFE_KEYS` may change
silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, UsageError
from .atomic import ordinary_permissions, write_failure

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
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


class CorruptCheckpointError(UsageError):
    """A checkpoint whose files cannot be read back (truncated or damaged); the message names the file."""


class ResumeConfigError(ConfigError):
    """A resume whose config differs from the checkpoint's in keys that change the training."""


# -- finding and writing checkpoints --------------------------------------------------------------------------
def checkpoint_number(path: Path) -> int | None:
    """``n`` of a ``checkpoint-<n>`` folder name, else ``None`` (``.tmp`` folders and other names)."""
    m = CHECKPOINT_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


def _checkpoint_dirs(out: Path) -> list[Path]:
    found = [p for p in Path(out).glob("checkpoint-*") if p.is_dir() and checkpoint_number(p) is not None]
    return sorted(found, key=checkpoint_number)


def complete_checkpoints(out: Path, state_file: str) -> list[Path]:
    """Complete ``checkpoint-<n>`` folders of a run (those holding ``state_file``), oldest first."""
    return [p for p in _checkpoint_dirs(out) if (p / state_file).is_file()]


def remove_checkpoint(folder: Path, state_file: str) -> None:
    """Delete a checkpoint folder, its state file first: a removal cut short leaves a folder that no longer
    counts as a checkpoint (instead of one that counts but lacks its weights)."""
    (Path(folder) / state_file).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def prune_checkpoints(out: Path, state_file: str, keep_last: int, current: Path | None = None) -> None:
    """Keep the newest ``keep_last`` complete checkpoints of ``out``; also remove ``checkpoint-<n>`` folders
    without their state file (left by an interrupted prune) and stale ``checkpoint-*.tmp`` folders (left by an
    interrupted write).

    ``current``: the checkpoint just written. It is never removed, and neither is any checkpoint numbered above it
    (a run resumed from an older checkpoint replaces those as it reaches them): only checkpoints older than
    ``current`` are pruned, so pruning never deletes the newest state of the run that is writing."""
    out = Path(out)
    found = complete_checkpoints(out, state_file)
    if current is not None:
        n = checkpoint_number(current)
        found = [p for p in found if checkpoint_number(p) <= n]
    for old in found[:-keep_last]:
        if current is None or Path(old).name != Path(current).name:
            remove_checkpoint(old, state_file)
    for folder in _checkpoint_dirs(out):
        if not (folder / state_file).is_file():
            logger.info("removing %s: an incomplete checkpoint (no %s)", folder, state_file)
            shutil.rmtree(folder, ignore_errors=True)
    for tmp in out.glob("checkpoint-*.tmp"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)


def write_checkpoint(acc, out: Path, name: str, write_files: Callable[[Path], None], keep_last: int,
                     state_file: str) -> Path:
    """Save Accelerate's state and ``write_files(folder)`` into ``out/name`` atomically; keep the last
    ``keep_last`` complete checkpoints. Collective: every process calls it."""
    final = Path(out) / name
    tmp = final.with_name(final.name + ".tmp")
    if acc.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp))
        acc.wait_for_everyone()  # every process has written its files (RNG states, shards) before the rename
        if acc.is_main_process:
            write_files(tmp)
            if not (tmp / state_file).is_file():
                raise RuntimeError(f"checkpoint writer did not write {state_file}")
            ordinary_permissions(tmp)  # safetensors writes 0600: a checkpoint is readable as ordinary files are
            if final.exists():
                remove_checkpoint(final, state_file)
            tmp.replace(final)
    except BaseException as err:  # a full disk, a read-only folder, Ctrl-C: no partial checkpoint-*.tmp stays
        shutil.rmtree(tmp, ignore_errors=True)
        cause = write_failure(out, err)  # torch's writer reports a full disk without its errno
        if cause is not None:
            raise cause from err
        raise
    if acc.is_main_process:
        prune_checkpoints(out, state_file, keep_last, current=final)
    acc.wait_for_everyone()
    return final


# -- reading checkpoints back ---------------------------------------------------------------------------------
def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file: its 8-byte header length, JSON header and the byte ranges
    of its tensors must fit the file's size exactly (the format of huggingface/safetensors)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than a safetensors header"
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if 8 + n > size:
            return f"its header claims {n} bytes but the file has {size - 8} after the length"
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            return "its header is not valid JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if need != size:
        return f"its tensors need {need} bytes but the file has {size} ({'truncated' if size < need else 'damaged'}?)"
    return None


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ``torch.save`` file (a zip archive): a truncated archive loses its central
    directory (at the end), and every member must lie inside the file."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + 30 + len(info.filename) + info.compress_size > size:
                    return f"member {info.filename!r} runs past the end of the file (truncated?)"
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        return f"not a readable torch.save archive ({err}; truncated?)"
    return None


def _text_problem(path: Path) -> str | None:
    try:
        text = path.read_text()
        if path.suffix == ".json":
            json.loads(text)
        else:
            yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - UnicodeDecodeError, ValueError, yaml.YAMLError
        return f"not readable ({' '.join(str(err).split())[:120]})"
    return None


# a checkpoint's state file (its completion marker) and its counts: each a non-negative integer; the first is
# required (the step or epoch the checkpoint was taken at)
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "trainer_state.json": ("step", "samples_seen", "skipped_images"),
    "grpo_state.json": ("epoch", "optimizer_steps"),
}


def _state_problem(path: Path) -> str | None:
    """Why a state file is not one our trainers wrote: not a JSON object, its counter missing, or a count that is
    not a non-negative integer (the key named)."""
    problem = _text_problem(path)
    if problem:
        return problem
    state = json.loads(path.read_text())
    keys = STATE_KEYS[path.name]
    if not isinstance(state, dict):
        return f"not a JSON object with the key {keys[0]!r}"
    if keys[0] not in state:
        return f"the key {keys[0]!r} is missing"
    for key in keys:
        value = state.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"the key {key!r} is {json.dumps(value)}, not a non-negative integer"
    return None


def read_state(path: Path) -> dict:
    """A checkpoint's state file, checked (:func:`_state_problem`); a damaged one is refused naming the file, the
    key and the fix."""
    problem = _state_problem(Path(path))
    if problem:
        raise CorruptCheckpointError(f"{path}: {problem}; resume from an older checkpoint (--resume "
                                     "<run>/checkpoint-<n>) or start afresh without --resume")
    return json.loads(Path(path).read_text())


CHECKERS: dict[str, Callable[[Path], str | None]] = {
    ".safetensors": _safetensors_problem, ".bin": _zip_problem, ".pkl": _zip_problem, ".pt": _zip_problem,
    ".pth": _zip_problem, ".json": _text_problem, ".yaml": _text_problem,
}


def checkpoint_problems(folder: Path, required: tuple[str, ...] = ()) -> list[str]:
    """``"<file>: <what is wrong>"`` for every file of a checkpoint folder that cannot be read back: the
    safetensors weights, Accelerate's ``optimizer.bin`` / ``scheduler.bin`` / ``*.pkl`` states and our ``.pt``
    files (``torch.save`` zip archives), the JSON state and ``config.yaml``; and for each ``required`` file
    that is missing. Reads headers and archive directories, not every tensor, so it is cheap on large
    checkpoints."""
    problems = [f"{Path(folder) / name}: missing" for name in required if not (Path(folder) / name).is_file()]
    for path in sorted(Path(folder).rglob("*")):
        check = _state_problem if path.name in STATE_KEYS else CHECKERS.get(path.suffix)
        if check is None or not path.is_file():
            continue
        try:
            problem = check(path)
        except OSError as err:
            problem = f"cannot be read ({err})"
        if problem:
            problems.append(f"{path}: {problem}")
    return problems


def newest_intact(out: Path, state_file: str, before: int | None = None,
                  required: tuple[str, ...] = ()) -> Path | None:
    """The newest complete checkpoint of ``out`` (below number ``before``) whose files read back; each newer
    corrupt one is skipped with a warning naming its bad files."""
    for ckpt in reversed(complete_checkpoints(out, state_file)):
        if before is not None and checkpoint_number(ckpt) >= before:
            continue
        problems = checkpoint_problems(ckpt, required)
        if not problems:
            return ckpt
        logger.warning("skipping corrupt checkpoint %s: %s", ckpt, "; ".join(problems))
    return None


def resume_path(out: Path, resume: bool | str, state_file: str, required: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint to resume from.

    ``resume`` ``True`` / ``"latest"`` / ``"true"``: the newest complete checkpoint of ``out`` whose files read
    back; a corrupt newer one is skipped with a warning naming the file. ``"auto"``: the same, or ``None`` (a
    fresh start) when ``out`` has no checkpoint. Any other string names a checkpoint folder, which must be
    complete and intact: otherwise the error names the bad file and the older checkpoint to pass instead.
    ``required``: files every checkpoint must hold (e.g. ``trainable.safetensors``).
    """
    if isinstance(resume, str) and resume not in ("latest", "true", "auto"):
        return _named_checkpoint(Path(resume), state_file, required)
    found = complete_checkpoints(out, state_file)
    if not found:
        if resume == "auto":
            return None
        raise FileNotFoundError(f"--resume: no complete checkpoint in {out}; start without --resume "
                                "(or with --resume auto)")
    for ckpt in reversed(found):
        problems = checkpoint_problems(ckpt, required)
        if not problems:
            return ckpt
        logger.warning("skipping corrupt checkpoint %s: %s; falling back to an older checkpoint", ckpt,
                       "; ".join(problems))
    raise CorruptCheckpointError(f"--resume: every checkpoint in {out} is corrupt ({', '.join(p.name for p in found)}"
                                 f"; e.g. {checkpoint_problems(found[-1], required)[0]}); delete them to start afresh")


def _named_checkpoint(ckpt: Path, state_file: str, required: tuple[str, ...]) -> Path:
    if not ckpt.is_dir():
        raise FileNotFoundError(f"--resume {ckpt}: no such checkpoint folder")
    if not (ckpt / state_file).is_file():
        raise UsageError(f"--resume {ckpt}: not a complete checkpoint (no {state_file}); pass a checkpoint-* "
                         f"folder that has one, or --resume alone for the newest complete checkpoint")
    problems = checkpoint_problems(ckpt, required)
    if problems:
        n = checkpoint_number(ckpt)
        older = newest_intact(ckpt.parent, state_file, before=n, required=required)
        hint = (f"resume from the newest intact older checkpoint instead: --resume {older}" if older is not None
                else f"{ckpt.parent} has no intact older checkpoint: start afresh without --resume")
        raise CorruptCheckpointError(f"--resume {ckpt}: corrupt checkpoint: {'; '.join(problems)}; {hint}")
    return ckpt


# -- the config of a resumed run ------------------------------------------------------------------------------
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


# -- per-step logs ------------------------------------------------------------------------------------------
def truncate_jsonl(path: Path, keep: Callable[[dict], bool]) -> int:
    """Keep only the rows of a JSON-lines log for which ``keep(row)`` holds, atomically (a temporary file
    renamed over the log), so a resumed run does not append after rows of steps it will redo. A torn line (a kill
    mid-write) or a row ``keep`` cannot judge (``{"step": "x"}``) is dropped too, with a warning naming its line.
    Returns the number of rows removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped, bad = [], 0, []
    # bytes that are not UTF-8 (a damaged file) make their line unreadable, as a torn line is: dropped, named
    for n, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            if "\ufffd" in line:
                raise ValueError("not UTF-8")
            row = json.loads(line)
            if isinstance(row, dict) and not keep(row):
                dropped += 1
                continue
        except (ValueError, TypeError):  # a torn line, or a row whose step is not a number ({"step": "x"})
            dropped += 1
            bad.append(n)
            continue
        kept.append(line)
    if bad:
        logger.warning("%s: dropped %d unreadable row(s) (line %s): not JSON, or a step that is not a number",
                       path, len(bad), ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else ""))
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text("".join(x + "\n" for x in kept))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("%s: removed %d rows after the resumed checkpoint", path, dropped)
    return dropped
