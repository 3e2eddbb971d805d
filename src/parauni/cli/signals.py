"""SIGTERM handled as Ctrl-C: what a scheduler (SLURM, Kubernetes) sends before it kills a job stops a run the
way Ctrl-C does. The handler raises :class:`Terminated`, a ``KeyboardInterrupt``, so every ``finally`` and every
cleanup of an interrupted write runs (a checkpoint is written under a temporary name and renamed when complete, so
the last complete one stays), and :func:`parauni.cli.main` prints one line saying how to continue and returns 143
(128 + SIGTERM, as a shell reports a terminated command)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when the process receives SIGTERM."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated(f"signal {signum}")


def terminate_as_interrupt() -> Callable[[], None]:
    """Install the SIGTERM handler where SIGTERM has its default action (main thread only; elsewhere, or where the
    handler cannot be set, nothing); returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    try:
        previous = signal.getsignal(signal.SIGTERM)
        if previous is not signal.SIG_DFL:
            return lambda: None
        signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without SIGTERM handlers
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)
