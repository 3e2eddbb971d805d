"""``parauni <command>``: the command line, a thin argparse front over the library.

* :mod:`~parauni.cli.entry` -- :func:`main`: parse, run the command, print bad input as one line;
* :mod:`~parauni.cli.parser` -- :func:`build_parser`: every command, plus ``--threads`` and ``--debug``;
* :mod:`~parauni.cli.options` -- options shared by several commands, and the checks every option gets;
* :mod:`~parauni.cli.bad_input` -- which errors are bad input (one line, exit status 2) and which are bugs;
* :mod:`~parauni.cli.commands` -- one module per command: ``add_parser(subparsers)`` and ``run(args)``.

A command module imports what it runs inside ``run``, so that building the parser does not load every command's
library (the toy world's command modules, which import theirs, aside). :func:`main` here imports the command line
itself inside its own guard: Ctrl-C while parauni is still loading (torch, transformers: the first seconds) ends
with one line and exit status 130, as it does later.
"""

from __future__ import annotations

import sys

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """The ``parauni`` console script: :func:`parauni.cli.entry.main`, loaded here so that an interruption while
    loading is one line (exit status 130) and a termination (SIGTERM) 143, not a traceback."""
    from .signals import Terminated, terminate_as_interrupt

    restore = terminate_as_interrupt()
    try:
        try:
            from .entry import main as run
        except KeyboardInterrupt as err:
            if "--debug" in (sys.argv[1:] if argv is None else argv):
                raise
            code = 143 if isinstance(err, Terminated) else 130
            print(f"\nparauni: {'terminated' if code == 143 else 'interrupted'} while starting; nothing was done: "
                  "rerun the command", file=sys.stderr)
            return code
        code = run(argv)
    finally:
        restore()
    if argv is None:  # the console script: the command is done; Ctrl-C while Python shuts down has nothing to stop
        _ignore_interrupts()
    return code


def _ignore_interrupts() -> None:
    """Ignore SIGINT and SIGTERM from here on (the console script, once its command has returned), so that an
    interruption while the interpreter exits (atexit handlers, thread joins) is not a ``KeyboardInterrupt``
    traceback after the command's own result."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):  # pragma: no cover - not the main thread
            pass


def __getattr__(name: str):
    if name == "build_parser":
        from .parser import build_parser

        return build_parser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
