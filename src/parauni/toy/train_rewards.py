"""``parauni toy train-rewards``: train the toy alignment model (CLIP-score role).

The other two toy rewards need no training: GenEval partial credit comes from the programmatic
detector, and the quality score is a fixed formula (``parauni.toy.rewards.quality``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..train.config import save_config
from ..train.optim import decay_groups, warmup_cosine
from .config import ALIGNMENT_OUT, REWARDS_FLAGS, add_config_options, config_from_args, load_train_rewards_config
from .data import HELDOUT_DOMAIN, TRAIN_DOMAIN, make_example, sample_rng
from .resume import RESUME_FLAGS, Checkpointer, SittingOver, add_resume_options, rng_state, set_rng_state
from .rewards.alignment import ToyCLIP, contrastive_loss, images_to_tensor, tokenize
from .tokenizer import build_toy_tokenizer


def make_pool(n: int, seed: int, domain: int = TRAIN_DOMAIN, world: str = "v1") -> tuple[torch.Tensor, list[str]]:
    """``n`` rendered examples of ``world`` (without its held-out compositions): images ``(n, 3, 32, 32)`` in
    [-1, 1] and captions."""
    exs = [make_example(sample_rng(domain, seed, i), world=world)
           for i in tqdm(range(n), desc="rendering", leave=False)]
    return images_to_tensor([e.image for e in exs]), [e.caption for e in exs]


@torch.no_grad()
def retrieval_accuracy(model: ToyCLIP, tokenizer, images: torch.Tensor, captions: list[str], group: int = 64) -> dict:
    """Image->text and text->image top-1 retrieval within groups of ``group`` held-out pairs
    (a hit is any caption string equal to the true one), and how often the true caption
    outscores a shuffled one."""
    model.eval()
    hits_i2t = hits_t2i = wins = total = 0
    for s in range(0, len(captions) - group + 1, group):
        caps = captions[s:s + group]
        img = model.encode_image(images[s:s + group])
        txt = model.encode_text(*tokenize(tokenizer, caps, model.config.max_text_len))
        sim = img @ txt.T  # (G, G)
        same = torch.tensor([[a == b for b in caps] for a in caps])
        hits_i2t += int(same[torch.arange(group), sim.argmax(1)].sum())
        hits_t2i += int(same[sim.argmax(0), torch.arange(group)].sum())
        other = torch.roll(torch.arange(group), 1)
        diff = ~same[torch.arange(group), other]
        wins += int(((sim.diag() > sim[torch.arange(group), other]) & diff).sum())
        total += group
        n_diff = int(diff.sum())
        wins += group - n_diff  # identical captions: nothing to tell apart, count as a win
    model.train()
    return {"i2t_top1": hits_i2t / total, "t2i_top1": hits_t2i / total, "pair_win": wins / total}


def train_alignment(out: str | Path, steps: int = 1500, batch_size: int = 128, lr: float = 2e-3, pool: int = 40000,
                    seed: int = 0, fp16: bool = False, log_every: int = 50, world: str = "v1",
                    checkpoint_every: int = 0, stop_after: int = 0, resume: bool = False) -> dict:
    """Train ``ToyCLIP`` on a pool of toy pairs of ``world`` and save it (with its tokenizer and log) to ``out``.

    ``checkpoint_every`` / ``stop_after`` / ``resume``: see :mod:`parauni.toy.resume` (a sitting that stops early
    returns ``{"stopped_at": step}``)."""
    sitting = Checkpointer(out, {k: v for k, v in locals().items() if k != "out"}, checkpoint_every, stop_after,
                           resume)
    if batch_size > pool:
        raise ConfigError(f"--batch-size {batch_size} is larger than --pool {pool}; raise the pool or lower the batch")
    torch.manual_seed(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tokenizer = build_toy_tokenizer(world)
    images, captions = make_pool(pool, seed, world=world)
    held_images, held_captions = make_pool(1024, seed, HELDOUT_DOMAIN, world)
    model = ToyCLIP(vocab_size=len(tokenizer))
    opt = torch.optim.AdamW(decay_groups(model.parameters(), 0.05), lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(steps // 20, 1), steps))
    gen = np.random.default_rng(seed)
    ids, mask = tokenize(tokenizer, captions, model.config.max_text_len)  # the pool, tokenised once
    caption_id = torch.tensor(np.unique(np.asarray(captions), return_inverse=True)[1])
    start, loaded = 0, sitting.load()
    if loaded is not None:
        tensors, state = loaded
        model.load_state_dict(tensors)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.bit_generator.state = state["numpy"]
        set_rng_state(state["rng"])
        start = state["step"]
    log = open(out / "train_log.txt", "a" if start else "w")
    bar = tqdm(range(start, steps), desc="toy alignment", unit="step", mininterval=5)
    for step in bar:
        idx = torch.from_numpy(gen.choice(len(captions), batch_size, replace=False))
        x = images[idx]
        x = x + 0.1 * torch.randn_like(x)  # robustness to the imperfect images generators make
        same = caption_id[idx][:, None] == caption_id[idx][None, :]  # (B, B) pairs that share a caption
        img = model.encode_image(x)
        b_mask = mask[idx]
        t = int(b_mask.sum(1).max())
        txt = model.encode_text(ids[idx, :t], b_mask[:, :t])
        loss = contrastive_loss(img, txt, model.logit_scale, same)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        if step % log_every == 0 or step == steps - 1:
            log.write(f"step {step} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.3e} "
                      f"elapsed {time.time() - t0:.1f}s\n")
            log.flush()
        try:
            sitting.after_step(step + 1, lambda: (model.state_dict(), {
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "numpy": gen.bit_generator.state,
                "rng": rng_state()}), last=step + 1 == steps)
        except SittingOver as over:
            log.write(f"# sitting over after step {over.step}; continue with --resume\n")
            log.close()
            return {"stopped_at": over.step}
    metrics = retrieval_accuracy(model, tokenizer, held_images, held_captions)
    metrics["wall_s"] = round(time.time() - t0, 1)
    log.write(f"held-out {json.dumps(metrics)}\n")
    log.close()
    model.eval()
    (model.half() if fp16 else model).save_pretrained(out)
    tokenizer.save_pretrained(out)
    config = dict(steps=steps, batch_size=batch_size, lr=lr, pool=pool, seed=seed, fp16=fp16)
    config["command"] = (f"parauni toy train-rewards --out {out} --steps {steps} --batch-size {batch_size} "
                         f"--lr {lr} --pool {pool} --seed {seed}" + (" --fp16" if fp16 else "")
                         + ("" if world == "v1" else f" data.world={world}"))
    if world != "v1":
        config["world"] = world
    (out / "train_config.json").write_text(json.dumps({**config, "heldout": metrics}, indent=2))
    sitting.finish()
    return metrics


def add_parser(sub) -> None:
    """Register ``train-rewards``. Every flag names a key of :class:`parauni.toy.config.TrainRewardsConfig`
    (defaults there); ``--config`` and ``key=value`` overrides set any key."""
    p = sub.add_parser("train-rewards", help="train the toy alignment reward model (CLIP-score role)")
    p.add_argument("--out", help=f"output folder (default {ALIGNMENT_OUT}; the shipped weights only with "
                                 "--into-package)")
    p.add_argument("--steps", type=int, help="default 1500")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--lr", type=float, help="default 2e-3")
    p.add_argument("--pool", type=int, help="rendered training pairs (default 40000)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--fp16", action="store_true", default=None, help="save weights in fp16 (as shipped)")
    add_resume_options(p)
    add_config_options(p, "toy_train_rewards.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> dict:
    """Train from ``--config`` (or the defaults), the flags given and ``key=value`` overrides; the config goes to
    ``config.yaml`` in the output folder. Returns the held-out metrics."""
    cfg = config_from_args(args, {**REWARDS_FLAGS, **RESUME_FLAGS}, load_train_rewards_config)
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    Path(t.output_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(t.output_dir) / "config.yaml")
    m = train_alignment(t.output_dir, t.steps, t.batch_size, cfg.optim.lr, cfg.data.pool, t.seed, t.fp16,
                        t.log_every, cfg.data.world, t.checkpoint_every, t.stop_after, t.resume)
    if "stopped_at" in m:
        print(f"stopped after step {m['stopped_at']}; checkpoint in {t.output_dir}/resume; continue with --resume")
        return m
    print(f"held-out retrieval: image->text top-1 {m['i2t_top1']:.3f}, text->image top-1 {m['t2i_top1']:.3f}, "
          f"true caption beats another {m['pair_win']:.3f}; {m['wall_s']:.0f} s; saved to {t.output_dir}")
    return m


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m parauni.toy.train_rewards")
    add_parser(parser.add_subparsers(dest="command", required=True))
    torch.set_num_threads(2)
    ns = parser.parse_args(["train-rewards", *sys.argv[1:]])
    ns.func(ns)
