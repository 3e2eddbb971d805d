""":func:`main`, the ``parauni`` console script: parse, run the command, and sort what goes wrong into one line
(bad input, exit status 2), a bug report (the traceback kept) or an interruption (exit status 130)."""

from __future__ import annotations

import logging
import sys

from ..errors import UsageError
from .bad_input import BUG_REPORT, bad_input_message, interrupt_message
from .parser import build_parser, set_threads
from .signals import Terminated, terminate_as_interrupt


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input (:class:`UsageError`, :class:`ConfigError` and the other errors of
    :mod:`parauni.errors`, a missing file, invalid YAML, out of memory) prints one ``<prog>: error: <message>``
    line and returns 2; ``--debug`` shows the traceback instead. Other exceptions are bugs: a line asking for a
    bug report, then their traceback (re-raised). Ctrl-C prints one line saying how to continue and returns 130;
    SIGTERM does the same and returns 143 (:mod:`parauni.cli.signals`).
    Command-line errors found while parsing (an option out of range, a missing argument) exit with
    ``SystemExit(2)``, as argparse does, after the same one line."""
    restore = terminate_as_interrupt()  # SIGTERM as Ctrl-C while the command runs
    try:
        return _main(argv)
    finally:
        restore()


def _main(argv: list[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv  # known before parsing, which can fail too
    prog = "parauni"
    args = None
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        prog = f"parauni {args.command}"
        # key=value overrides may follow options (``parauni train CFG --resume a.b=1``)
        if extra and hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        set_threads(args)
        args.func(args)
    except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: one line saying how to continue, 130 / 143 (as a shell)
        if debug:
            raise
        terminated = isinstance(err, Terminated)
        message = interrupt_message(args)
        if terminated:
            message = message.replace("interrupted", "terminated (SIGTERM)", 1)
        print(f"\n{prog}: {message}", file=sys.stderr)
        return 143 if terminated else 130
    except Exception as err:  # noqa: BLE001 - sorted into bad input (one line) and bugs (re-raised)
        message = bad_input_message(err)
        if message is None and not debug:
            print(f"{prog}: {BUG_REPORT}", file=sys.stderr)
        if message is None or debug:
            raise
        print(f"{getattr(err, 'prog', None) or prog}: error: {message}", file=sys.stderr)
        if isinstance(err, UsageError) and hasattr(err, "prog"):  # found by argparse: exit as argparse does
            raise SystemExit(2) from None
        return 2
    return 0
