"""``parauni cache-latents``: a config's dataset encoded once with its VAE."""

from __future__ import annotations

import argparse
import json

from ...errors import UsageError
from ...utils.atomic import check_out_folder
from ...utils.locks import hold_folder_lock


def add_parser(sub) -> None:
    c = sub.add_parser("cache-latents", help="encode a config's dataset once with its VAE (sharded safetensors)")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*")
    c.add_argument("--out", required=True, help="cache folder; train with data.kind=latents data.path=OUT")
    c.add_argument("--limit", type=int, help="at most this many samples (needed for endless streams)")
    c.add_argument("--batch-size", type=int, default=64)
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    # lazy: building the parser loads no command's library
    from ...pipelines.loading import build_model
    from ...train.config import load_config
    from ...train.data import build_source
    from ...train.loader import cache_latents

    check_out_folder(args.out)
    cfg = load_config(args.config, args.overrides)
    source = build_source(cfg.data, cfg.train.seed)
    pipe = build_model(cfg.model, cfg.train.seed)
    if pipe.vae is None:
        raise UsageError("this model works in pixel space (no VAE): there is nothing to cache")
    with hold_folder_lock(args.out, "latent cache"):  # one writer per cache folder
        result = cache_latents(source, cfg.data, pipe.vae, args.out, cfg.train.seed, args.batch_size,
                               limit=args.limit)
    print(json.dumps(result, indent=2))
    return result
