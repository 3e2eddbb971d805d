"""``parauni rl``: stage III, online RL by a registered algorithm (``algorithm:`` in the config) from a config."""

from __future__ import annotations

import argparse
import logging

from ..options import add_run_arguments

logger = logging.getLogger(__name__)


def algorithms_help() -> str:
    """One line per registered stage-III algorithm (names only: no algorithm module is imported)."""
    from ...registry import ALGORITHMS

    return "\n".join(f"  {name:<14} {ALGORITHMS.help(name)}" for name in ALGORITHMS)


def add_parser(sub, name: str = "rl", help_text: str | None = None) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text or "stage III: online RL (algorithm: in the config) with several "
                                               "rewards and LDAM", formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, "configs/toy_grpo.yaml", "ldam.enabled=false")
    p.epilog = ("algorithms (the config's `algorithm:`, or a package.module:Class path):\n" + algorithms_help()
                + "\n\nAt the end the EMA model is written to <output_dir>/final (a ParaUniPipeline folder).")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict:
    """The config and its reward names checked before any model is built, then the run."""
    # lazy: building the parser loads no command's library
    from ...eval.geneval import format_table
    from ...rl.config import check_reward_names, load_grpo_config
    from ...rl.trainer import RLTrainer

    cfg = load_grpo_config(args.config, args.overrides)
    check_reward_names(cfg.rewards)
    negative = {k: v for k, v in dict(cfg.rewards.weights).items() if v < 0}
    if negative:  # allowed (a penalty), said once
        logger.warning("rewards.weights %s: a negative weight is allowed; it makes the run lower that reward (a "
                       "penalty) instead of raising it", ", ".join(f"{k}={v:g}" for k, v in negative.items()))
    trainer = RLTrainer(cfg, resume=args.resume or False, progress=not args.no_progress,
                        allow_config_change=getattr(args, "allow_config_change", False), overwrite=args.overwrite)
    result = trainer.run()
    if trainer.acc.is_main_process:
        rows = {k.replace("geneval_", ""): v for k, v in result.items() if k.startswith("geneval_")}
        if rows:
            print(format_table(rows))
        print(f"{result['epochs']} epochs in {result['seconds']:.0f}s; curves in {trainer.out / 'curves'}")
        if "final" in result:
            kind = "LoRA merged" if cfg.model.finetune == "lora" else "full weights"
            print(f"EMA model ({kind}) in {result['final']}")
    return result
