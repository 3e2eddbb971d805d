""":func:`build_parser`: every command's parser (each from its module in :mod:`parauni.cli.commands`), then
``--threads`` and ``--debug`` on every command and the checks of :mod:`parauni.cli.options` on every option."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .commands import (
    analyze,
    app,
    cache_latents,
    demo,
    export,
    generate,
    grpo,
    report,
    rl,
    toy,
    train,
)
from .commands import eval as eval_commands
from .options import check_options

# in the order `parauni --help` lists them
COMMANDS = (generate, app, eval_commands, report, analyze, demo, train, cache_latents, export, rl, grpo, toy)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` (printed by :func:`parauni.cli.main`) instead of
    exiting."""

    def error(self, message: str):
        err = UsageError(f"{message} (see '{self.prog} --help')")
        err.prog = self.prog  # type: ignore[attr-defined]
        raise err


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="parauni", description="ParaUni: all-layer VLM conditioning for SANA")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    add_threads_option(parser)
    add_debug_option(parser)
    check_options(parser)
    return parser


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N`` on every command (torch's intra-op CPU threads; on a config-driven run also
    ``train.threads=N``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_threads_option(sub)
            return
    if "--threads" in parser._option_string_actions:  # a command with its own --threads (toy pretraining)
        return
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice); "
                                                    "run one heavy job per core group, not several on the same cores")


def set_threads(args: argparse.Namespace) -> None:
    n = getattr(args, "threads", None)
    if n is None:
        return
    if n < 1:
        raise UsageError(f"--threads must be >= 1, got {n}")
    import torch  # only when --threads is given: building the parser does not import torch

    torch.set_num_threads(n)
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, f"train.threads={n}"]


def add_debug_option(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """``--debug`` before or after the command: errors show their Python traceback."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug_option(sub, top=False)
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="on an error, show the Python traceback instead of one line")
