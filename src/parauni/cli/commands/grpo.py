"""``parauni grpo``: the former name of ``parauni rl`` (stage III), kept as an alias that says so once."""

from __future__ import annotations

import argparse
import sys

from . import rl


def add_parser(sub) -> None:
    p = rl.add_parser(sub, "grpo", "alias of `parauni rl` (stage III; any algorithm)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    print("note: `parauni grpo` is now `parauni rl` (it runs every stage-III algorithm); running it as such",
          file=sys.stderr)
    return rl.run(args)
