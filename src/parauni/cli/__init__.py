"""``parauni <command>``: the command line, a thin argparse front over the library.

* :mod:`~parauni.cli.entry` -- :func:`main`: parse, run the command, print bad input as one line;
* :mod:`~parauni.cli.parser` -- :func:`build_parser`: every command, plus ``--threads`` and ``--debug``;
* :mod:`~parauni.cli.options` -- options shared by several commands, and the checks every option gets;
* :mod:`~parauni.cli.bad_input` -- which errors are bad input (one line, exit status 2) and which are bugs;
* :mod:`~parauni.cli.commands` -- one module per command: ``add_parser(subparsers)`` and ``run(args)``.

A command module imports what it runs inside ``run``, so that building the parser does not load every command's
library (the toy world's command modules, which import theirs, aside).
"""

from .entry import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
