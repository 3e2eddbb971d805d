"""The parts both training recipes are built from (stages I/II: :class:`parauni.train.trainer.Trainer`; stage III:
:class:`parauni.rl.trainer.RLTrainer`), each written once:

- ``_setup_accelerator``: CPU threads, the Accelerator with its logger and mixed precision;
- ``_hold_output_folder`` and ``run``: one run per output folder, its lock held from construction to the end;
  ``_claim_output_folder``: a fresh start never mixes with another run's files there;
- ``_checked_checkpoint``: the checkpoint ``--resume`` names, its files read back and its config compared with
  this one (:func:`parauni.utils.resume_config.check_resume_config`), before any model is built;
- ``_start_output`` and :class:`JsonlLog`: the run folder's config and its logs, cut back to the checkpoint;
- ``_evaluations``: the evaluation after (or before) training, into ``<out>/eval/<name>`` (one folder a guidance
  scale).

A recipe sets the class attributes below and implements ``_run``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, ProjectConfiguration

from ..registry import EVALUATOR_OF_KIND, EVALUATORS
from ..utils.checkpoint_files import read_state
from ..utils.checkpoints import checkpoint_number, complete_checkpoints, resume_path, truncate_jsonl
from ..utils.locks import owned_lock, with_lock
from ..utils.resume_config import check_resume_config
from ..utils.run_folder import claim_run_folder
from .config import resolve_precision, save_config
from .schema import to_yaml_dict

logger = logging.getLogger(__name__)


class JsonlLog:
    """A JSON-lines log written by the main process (elsewhere every call does nothing): first cut back to the
    rows ``keep(row)`` accepts (a resumed run redoes the steps after its checkpoint), then appended to, one
    flushed line a row."""

    def __init__(self, path: Path, keep: Callable[[dict], bool], enabled: bool = True, append: bool = True):
        self.file = None
        if enabled:
            truncate_jsonl(path, keep)
            if append:  # else only cut back (a log this run does not write, e.g. LDAM's when it is off)
                self.file = open(path, "a")  # held open for the run; close() closes it

    def write(self, *rows: dict) -> None:
        if self.file:
            for row in rows:
                self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def flat(d: dict, prefix: str = "") -> dict:
    """A nested config as ``{"section.key": value}`` with plain values, as the trackers take it."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class Recipe:
    """The shared parts of a training recipe (see the module's docstring)."""

    STATE_FILE: str  # a checkpoint's state file, written last (its completion marker)
    REQUIRED_FILES: tuple[str, ...]  # the files every checkpoint holds besides it
    COUNTER: str  # the state file's count of progress: "step" or "epoch"
    RUN_KIND: str  # names the run in a refusal of a second run on the same folder
    CONFIG: type  # the config's class: a checkpoint's config.yaml is read over its defaults

    cfg: object
    config_changes: list
    overwrite: bool = False  # --overwrite: a fresh start moves an earlier run in the folder aside

    def _setup_accelerator(self, grad_accum: int | None = None, timeout_minutes: float | None = None) -> None:
        """``train.threads``, the output folder and the Accelerator (``train.logger``, ``train.mixed_precision``;
        ``grad_accum``: the one source of its gradient accumulation, whatever a launcher says; ``timeout_minutes``:
        how long a collective operation waits for the other processes before the run fails, e.g. while the main
        process evaluates; None: torch's default)."""
        t = self.cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.out = Path(t.output_dir)
        log_with = None
        if t.logger != "none":
            log_with = t.logger
            if t.logger == "tensorboard":
                try:
                    import tensorboard  # noqa: F401 - only this logger needs it: probed for a clear error
                except ImportError as err:
                    raise ImportError("train.logger=tensorboard needs `pip install tensorboard` "
                                      "(or set train.logger=none)") from err
        accumulate = {} if grad_accum is None else {"gradient_accumulation_steps": grad_accum}
        if timeout_minutes is not None:
            accumulate["kwargs_handlers"] = [InitProcessGroupKwargs(timeout=timedelta(minutes=timeout_minutes))]
        self.acc = Accelerator(mixed_precision=resolve_precision(t.mixed_precision), log_with=log_with,
                               cpu=not torch.cuda.is_available(), **accumulate,
                               project_config=ProjectConfiguration(project_dir=str(self.out),
                                                                   logging_dir=str(self.out / "logs")))
        if grad_accum is not None:
            # a launcher's --gradient_accumulation_steps (ACCELERATE_GRADIENT_ACCUMULATION_STEPS) must not change it
            self.acc.gradient_accumulation_steps = grad_accum

    def _hold_output_folder(self, setup: Callable[[], None]) -> None:
        """``setup()`` with the output folder locked: one run per folder (a second run, another process, is refused
        naming this one's PID). The lock is held until ``run()`` ends (or the recipe is collected) and released by
        the OS if the process dies."""
        self._lock = owned_lock(self, self.out, self.RUN_KIND) if self.acc.is_main_process else None
        with_lock(self._lock, setup, keep=True)

    def run(self, stop_after: int | None = None) -> dict:
        """Train to the end (``stop_after``: end after that step or epoch without saving anything more, as an
        interrupted run would), then the recipe's end (final weights, evaluation)."""
        return with_lock(self._lock, lambda: self._run(stop_after))  # held since __init__ (or taken again)

    def _run(self, stop_after: int | None) -> dict:
        raise NotImplementedError

    # -- resuming -------------------------------------------------------------------------------------------------
    def _resume_conditions(self, done: int) -> dict[str, Callable] | None:
        """Extra conditions on keys that may change on resume (see ``check_resume_config``); ``done``: the
        checkpoint's steps or epochs."""
        return None

    def _required_files(self) -> tuple[str, ...]:
        """The files a checkpoint of this run must hold: the recipe's, and Accelerate's ``optimizer.bin`` where the
        optimizer state is one file (not under FSDP / DeepSpeed, which shard it into folders of their own)."""
        sharded = self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        return self.REQUIRED_FILES + (() if sharded else ("optimizer.bin",))

    def _checked_checkpoint(self, resume: bool | str, allow_config_change: bool = False) -> Path | None:
        """The checkpoint ``resume`` names (corrupt ones skipped or refused, see
        :func:`parauni.utils.checkpoints.resume_path`), its config compared with this one: only the keys of
        :data:`parauni.utils.resume_config.RESUME_SAFE_KEYS` may differ without ``allow_config_change`` (the
        differences let through are kept in ``self.config_changes``)."""
        ckpt = resume_path(self.out, resume, self.STATE_FILE, required=self._required_files())
        if ckpt is None:  # --resume auto without a checkpoint: a fresh start
            return None
        done = read_state(ckpt / self.STATE_FILE)[self.COUNTER]
        newer = [p.name for p in complete_checkpoints(self.out, self.STATE_FILE)
                 if checkpoint_number(p) > checkpoint_number(ckpt)]
        if newer and self.acc.is_main_process:
            logger.warning("resuming from %s while %s holds newer checkpoints (%s) of the run's earlier course: "
                           "this run replaces each as it reaches its step (pruning keeps them until then)", ckpt.name,
                           self.out, ", ".join(newer))
        self.config_changes = check_resume_config(
            ckpt, to_yaml_dict(self.cfg), to_yaml_dict(self.CONFIG()), allow_config_change,
            self.out if self.acc.is_main_process else None, conditions=self._resume_conditions(done),
            where={self.COUNTER: done}, migrate=getattr(self.CONFIG, "migrate_data", None))
        return ckpt

    def _claim_output_folder(self, resume: bool | str, allow_config_change: bool = False) -> None:
        """One run per folder: a fresh start into a folder holding another run's checkpoints or final weights is
        refused, or with ``self.overwrite`` (``--overwrite``) that run is moved aside first
        (:func:`parauni.utils.run_folder.claim_run_folder`); ``--allow-config-change`` needs ``--resume``."""
        if self.acc.is_main_process or not self.overwrite:  # every process refuses alike; the main one moves
            claim_run_folder(self.out, resume, self.overwrite, allow_config_change, self.RUN_KIND, self.STATE_FILE)
        self.acc.wait_for_everyone()

    # -- the run's folder and logs ----------------------------------------------------------------------------
    def _start_output(self) -> None:
        """The output folder with this run's ``config.yaml`` (main process)."""
        if self.acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out / "config.yaml")

    def _log(self, name: str, keep: Callable[[dict], bool], append: bool = True) -> JsonlLog:
        """``<out>/<name>`` as a :class:`JsonlLog` (main process only)."""
        return JsonlLog(self.out / name, keep, self.acc.is_main_process, append)

    # -- evaluation -------------------------------------------------------------------------------------------
    def _chosen_evaluator(self) -> Callable:
        """``train.evaluator`` (an :data:`parauni.registry.EVALUATORS` name); when it is ``None``, the evaluator
        registered for the run's ``data.kind`` (stages I/II) or ``prompts.kind`` (stage III) in
        :data:`parauni.registry.EVALUATOR_OF_KIND`, else the default one. An unknown name is an error listing the
        known ones."""
        name = getattr(self.cfg.train, "evaluator", None)
        if name is None:
            for section in ("data", "prompts"):
                kind = getattr(getattr(self.cfg, section, None), "kind", None)
                if kind is not None and kind in EVALUATOR_OF_KIND:
                    name = EVALUATOR_OF_KIND.get(kind)
                    break
        return EVALUATORS.get(name) if name is not None else EVALUATORS.get_default()

    def _evaluations(self, pipe, name: str, scales: list[float | None], title: str) -> dict[str, dict]:
        """The evaluation (``evaluate`` given to the recipe, else :data:`parauni.registry.EVALUATORS`' default, a
        GenEval-style one) of ``pipe`` with the run's ``train.eval_*`` settings at each guidance scale of ``scales``
        (``None``: the evaluation's own): the first into ``<out>/eval/<name>``, the others into
        ``<out>/eval/<name>_cfg<scale>``. Returns ``{folder: summary}``."""
        evaluate = self._evaluate or self._chosen_evaluator()
        t, out = self.cfg.train, {}
        for k, g in enumerate(scales):
            folder = name if k == 0 else f"{name}_cfg{g:g}"
            # "refresh": the images are kept only when provenance.json matches these weights (a resumed, longer
            # run regenerates them)
            out[folder] = evaluate(pipe, self.out / "eval" / folder, t.eval_images_per_prompt, t.eval_steps,
                                   *([] if g is None else [float(g)]), limit=t.eval_limit, mode="refresh", name=title)
        return out
