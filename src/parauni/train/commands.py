"""The ``train``, ``cache-latents`` and ``export`` commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UsageError


def add_run_arguments(p, config_example: str, override_example: str) -> None:
    """The arguments every config-driven run takes: CONFIG, key=value overrides, --resume, --no-progress."""
    p.add_argument("config", help=f"a YAML config, e.g. {config_example}, or the name of a shipped config "
                                  "(parauni/configs/, found from any folder)")
    p.add_argument("overrides", nargs="*", help=f"section.key=value overrides, e.g. {override_example}")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest intact checkpoint of train.output_dir (a corrupt newer one is "
                        "skipped with a warning), or from the given checkpoint folder; '--resume auto' starts afresh "
                        "when there is none. The config must match the checkpoint's except for the keys listed in "
                        "parauni.utils.checkpoints.RESUME_SAFE_KEYS (length, logging, saving, evaluation, threads)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even when the config differs from the checkpoint's in keys that "
                        "change the training (batch size, model, data, optimizer, sampling, ...); the differences are "
                        "logged to <output_dir>/config_changes.jsonl")
    p.add_argument("--no-progress", action="store_true")


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="stage I / II training from a config (accelerate launch -m parauni train ...)")
    add_run_arguments(p, "configs/toy_stage1.yaml", "optim.lr=3e-4 train.steps=100")
    p.set_defaults(func=run_train)

    c = sub.add_parser("cache-latents", help="encode a config's dataset once with its VAE (sharded safetensors)")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--out", required=True, help="cache folder; train with data.kind=latents data.path=OUT")
    c.add_argument("--limit", type=int, help="at most this many samples (needed for endless streams)")
    c.add_argument("--batch-size", type=int, default=64)
    c.set_defaults(func=run_cache)

    e = sub.add_parser("export", help="write a full ParaUniPipeline folder from a training checkpoint "
                                      "(stage I / II, or stage III with its LoRA merged)")
    e.add_argument("checkpoint", help="a checkpoint-* folder or a run folder of `parauni train` or `parauni grpo` "
                                      "(a run folder without final weights: its newest intact checkpoint)")
    e.add_argument("--out", required=True,
                   help="the pipeline folder; written beside it (<out>.tmp-<pid>) and swapped in when complete")
    e.add_argument("--overwrite", action="store_true",
                   help="replace an --out folder that holds another model or other files (without it, only an "
                        "identical export is replaced)")
    e.add_argument("--no-ema", action="store_true",
                   help="stage III: merge the raw LoRA weights instead of their EMA (the default, as evaluated)")
    e.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> dict:
    from .config import load_config
    from .trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume or False, progress=not args.no_progress,
                      allow_config_change=args.allow_config_change)
    result = trainer.run()
    if trainer.acc.is_main_process:
        print(json.dumps({k: v for k, v in result.items() if k != "geneval"}, indent=2))
        if "geneval" in result:
            from ..eval.geneval import format_table

            print(format_table({cfg.train.output_dir: result["geneval"]}))
    return result


def run_cache(args: argparse.Namespace) -> dict:
    from ..pipelines.loading import build_model
    from .config import load_config
    from .data import build_source, cache_latents

    cfg = load_config(args.config, args.overrides)
    source = build_source(cfg.data, cfg.train.seed)
    pipe = build_model(cfg.model, cfg.train.seed)
    if pipe.vae is None:
        raise UsageError("this model works in pixel space (no VAE): there is nothing to cache")
    result = cache_latents(source, cfg.data, pipe.vae, args.out, cfg.train.seed, args.batch_size, limit=args.limit)
    print(json.dumps(result, indent=2))
    return result


def is_grpo_run(folder) -> bool:
    """Whether a checkpoint or run folder comes from ``parauni grpo``: its state file, or a saved config with
    stage III's sections."""
    import yaml

    folder = Path(folder)
    if (folder / "grpo_state.json").is_file():
        return True
    cfg_file = folder / "config.yaml"
    if not cfg_file.is_file():
        return False
    try:
        data = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError:
        return False
    return isinstance(data, dict) and ("sampling" in data or "lora_rank" in (data.get("model") or {}))


def _export_target_problem(out: Path) -> str | None:
    """Why ``out`` cannot receive an export without ``--overwrite`` before any work: ``None`` when it is free, is
    an empty folder or holds an earlier export (compared with the new one when that is written)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return None  # a file: refused whatever --overwrite says (see run_export)
    entries = list(out.iterdir())
    if entries and not (out / "model_index.json").is_file():
        names = ", ".join(sorted(p.name for p in entries)[:3]) + (", ..." if len(entries) > 3 else "")
        return (f"--out {str(out)!r} is a folder that holds other files ({names}), not an exported pipeline; "
                "pass --overwrite to replace it, or give a new folder")
    return None


def _differing_files(old: Path, new: Path) -> list[str]:
    """Files (relative paths) that differ between two folders: only in one of them, or different bytes."""
    import filecmp

    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}

    a, b = files(old), files(new)
    differ = sorted(a ^ b)
    differ += sorted(f for f in a & b if not filecmp.cmp(old / f, new / f, shallow=False))
    return differ


def run_export(args: argparse.Namespace) -> None:
    """``parauni export``: the pipeline is written to ``<out>.tmp-<pid>`` and swapped into place when complete
    (:func:`parauni.utils.atomic.atomic_folder`), so an interrupted export leaves ``--out`` as it was. An
    existing ``--out`` that holds another model (different weights) or other files is replaced only with
    ``--overwrite``; an identical export replaces it silently."""
    from ..errors import UsageError
    from ..utils.atomic import atomic_folder

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder path")
    if Path(args.checkpoint).resolve().is_relative_to(out.resolve()):
        raise UsageError(f"--out {args.out!r} holds the checkpoint {args.checkpoint!r} being exported; give another "
                         "folder (replacing it would delete the checkpoint)")
    overwrite = getattr(args, "overwrite", False)
    problem = None if overwrite else _export_target_problem(out)
    if problem:
        raise UsageError(problem)
    grpo = is_grpo_run(args.checkpoint)
    if args.no_ema and not grpo:
        raise UsageError("--no-ema: stage I / II checkpoints have no EMA (it applies to `parauni grpo` "
                         "checkpoints only)")
    with atomic_folder(out) as tmp:
        if grpo:
            from ..rl.grpo import export_checkpoint

            export_checkpoint(args.checkpoint, tmp, ema=not args.no_ema)
        else:
            from .trainer import export

            export(args.checkpoint, tmp)
        if not overwrite and out.is_dir() and any(out.iterdir()):
            differ = _differing_files(out, tmp)
            if differ:
                shown = ", ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
                raise UsageError(f"--out {args.out!r} already holds another model (differs in {shown}); pass "
                                 "--overwrite to replace it, or give a new folder")
    print(f"pipeline written to {out}")
