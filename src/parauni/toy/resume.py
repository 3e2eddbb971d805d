"""Resumable toy pre-training: an atomic checkpoint every N steps, and ``--resume`` continuing exactly from it.

``parauni toy pretrain-vlm``, ``pretrain-prior`` and ``train-rewards`` keep one checkpoint, ``<out>/resume/``:

* ``tensors.safetensors``: every weight that the run will need again (the model, an EMA), by name;
* ``state.pt``: optimizer and scheduler states, RNG states, counters (``torch.save``; read back with
  ``weights_only=True``);
* ``state.json``: the step, the phase and the training settings the checkpoint was made with.

It is written under a temporary sibling folder and swapped into place (:func:`parauni.utils.atomic.atomic_folder`),
so a run killed while writing leaves the previous checkpoint intact. The data of every toy command is a function of
the step (the seeded stream's sample index), so a resumed run draws the same batches, and with the same weights,
optimizer moments and RNG states it takes bit-identical steps (on the same machine and torch build).

``train.stop_after`` ends a sitting after that many steps (with a checkpoint), so a long schedule can be spread over
several sittings; the learning-rate schedule follows the full ``train.steps`` throughout. A run that completes
removes its checkpoint. Budgets in minutes (``pretrain-prior --minutes``) resume, but by wall time, not exactly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, UsageError
from ..utils.atomic import atomic_folder

RESUME_DIR = "resume"
# settings that may differ between sittings; any other difference is refused
FREE_KEYS = frozenset({"resume", "stop_after", "checkpoint_every", "threads", "workers", "command", "progress",
                       "eval_every", "log_every", "device", "out", "out_dir", "eval_examples", "mid_eval_examples",
                       "eval_images", "eval_steps", "fp16"})
# flag (argparse dest) -> config key, shared by the three commands
RESUME_FLAGS: dict[str, str] = {"resume": "train.resume", "checkpoint_every": "train.checkpoint_every",
                                "stop_after": "train.stop_after"}


class SittingOver(Exception):  # noqa: N818 -- not an error: the sitting's steps are done
    """Raised after the checkpoint of the last step of a sitting (``train.stop_after``); ``step`` is where the next
    sitting starts."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped after step {step}; continue with --resume")
        self.step = step


def add_resume_options(p) -> None:
    """``--resume``, ``--checkpoint-every N`` and ``--stop-after N`` on a toy pre-training command."""
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue from the checkpoint in OUT/resume (same settings), exactly where it stopped")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints in OUT/resume (default 0: none)")
    p.add_argument("--stop-after", type=int,
                   help="end this sitting after N steps, with a checkpoint (default 0: run to the end)")


class Checkpointer:
    """The checkpoint of one run in ``out/resume``.

    ``settings``: the run's training settings (JSON-able), compared on resume. ``every``: steps between
    checkpoints (0: only at a sitting's end). ``stop_after``: steps in this sitting (0: no limit).
    """

    def __init__(self, out: str | Path, settings: dict, every: int = 0, stop_after: int = 0,
                 resume: bool = False) -> None:
        self.folder = Path(out) / RESUME_DIR
        self.settings = json.loads(json.dumps(settings, default=str))
        self.every, self.stop_after, self.resume, self.done = every, stop_after, resume, 0
        if every < 0 or stop_after < 0:
            raise ConfigError("train.checkpoint_every and train.stop_after must be >= 0")

    def load(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """``(tensors, state)`` of the checkpoint when resuming (``state`` holds ``step``, ``phase`` and what the
        caller saved), else ``None``. A checkpoint made with other settings is refused, naming them."""
        if not self.resume:
            return None
        info_path = self.folder / "state.json"
        if not info_path.is_file():
            raise UsageError(f"--resume: no checkpoint in {self.folder}; run without --resume to start afresh")
        info = json.loads(info_path.read_text())
        old = info["settings"]
        changed = sorted(k for k in set(old) | set(self.settings)
                         if k not in FREE_KEYS and old.get(k) != self.settings.get(k))
        if changed:
            diffs = ", ".join(f"{k}: {old.get(k)!r} -> {self.settings.get(k)!r}" for k in changed)
            raise ConfigError(f"--resume: the checkpoint in {self.folder} was made with other settings ({diffs}); "
                              "resume with the same settings, or start afresh in another folder")
        tensors = load_file(str(self.folder / "tensors.safetensors"))
        state = torch.load(self.folder / "state.pt", weights_only=True)
        state.update(step=int(info["step"]), phase=info.get("phase"))
        return tensors, state

    def save(self, step: int, tensors: dict[str, torch.Tensor], state: dict, phase: str | None = None) -> None:
        """Write the checkpoint of ``step`` atomically (``tensors`` by name; ``state``: anything ``torch.load``
        reads with ``weights_only=True``)."""
        with atomic_folder(self.folder) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "tensors.safetensors"))
            torch.save(state, tmp / "state.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, "phase": phase, "settings": self.settings},
                                                       indent=2) + "\n")

    def after_step(self, step: int, collect: Callable[[], tuple[dict[str, torch.Tensor], dict]],
                   phase: str | None = None, last: bool = False) -> None:
        """Call after optimizer step ``step`` (1-based, counted over the whole run): checkpoints every ``every``
        steps and at the end of the sitting, then raises :class:`SittingOver` there. ``collect()`` returns the
        ``(tensors, state)`` to save; ``last``: the run's final step (no checkpoint needed, nothing raised)."""
        self.done += 1
        stop = bool(self.stop_after) and self.done >= self.stop_after and not last
        if stop or (self.every and step % self.every == 0 and not last):
            self.save(step, *collect(), phase=phase)
        if stop:
            raise SittingOver(step)

    def finish(self) -> None:
        """The run completed: its checkpoint is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)


def rng_state() -> dict:
    """The global torch CPU RNG state (to save with a checkpoint)."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
