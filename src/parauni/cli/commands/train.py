"""``parauni train``: stage I / II training from a config."""

from __future__ import annotations

import argparse
import json

from ..options import add_run_arguments


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="stage I / II training from a config (accelerate launch -m parauni train ...)")
    add_run_arguments(p, "configs/toy_stage1.yaml", "optim.lr=3e-4 train.steps=100")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    # lazy: building the parser loads no command's library
    from ...eval.geneval import format_table
    from ...train.config import load_config
    from ...train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume or False, progress=not args.no_progress,
                      allow_config_change=args.allow_config_change, overwrite=args.overwrite)
    result = trainer.run()
    if trainer.acc.is_main_process:
        print(json.dumps({k: v for k, v in result.items() if k != "geneval"}, indent=2))
        if "geneval" in result:
            print(format_table({cfg.train.output_dir: result["geneval"]}))
    return result
