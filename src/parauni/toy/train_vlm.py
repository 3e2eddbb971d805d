"""Pre-training of the toy VLM on toy-world questions and captions (``parauni toy pretrain-vlm``).

Every training row is one toy scene followed by ``turns`` question-answer turns in InternVL's chat format.
The first turn is exactly the single-turn prompt used at evaluation (image block, question, opened
assistant turn); the later turns reuse the same image tokens, so a forward pass supervises several answers
for little more text. The loss is the cross-entropy of the answer tokens (and their ``<|im_end|>``) only.
Batch ``b`` holds training samples ``b * batch_size`` to ``(b + 1) * batch_size - 1`` of the seeded stream,
so a run is reproducible whatever the number of data workers.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from parauni.errors import ConfigError
from parauni.toy.config import (
    VLM_FLAGS,
    add_config_options,
    config_from_args,
    load_pretrain_vlm_config,
)
from parauni.toy.data import TRAIN_DOMAIN, heldout_examples, make_example, qa_by_kind, sample_rng
from parauni.toy.resume import RESUME_FLAGS, Checkpointer, SittingOver, add_resume_options, rng_state, set_rng_state
from parauni.toy.tokenizer import build_toy_tokenizer
from parauni.toy.vlm import DESCRIBE, IGNORE_INDEX, build_toy_vlm, encode_dialogues, format_accuracy, qa_accuracy
from parauni.train.config import save_config
from parauni.train.optim import decay_groups, warmup_cosine


def sample_dialogue(seed: int, index: int, turns: int, describe_prob: float = 0.2,
                    by_question: float = 0.5, world: str = "v1") -> tuple:
    """Training sample ``index``: its RGB uint8 image and ``turns`` distinct ``(question, answer)`` pairs.

    Each turn is the caption request with ``describe_prob``; otherwise, with ``by_question``, a question
    drawn uniformly among all of :func:`qa_by_kind` (weighted as the held-out accuracy weighs them), else
    a kind drawn uniformly and then one of its questions (as :func:`parauni.toy.data.sample_qa` does).
    ``world``: the toy world (its training distribution: no held-out composition).
    """
    rng = sample_rng(TRAIN_DOMAIN, seed, index)
    ex = make_example(rng, world=world)
    kinds = qa_by_kind(ex.scene)
    names = sorted(kinds)
    every = [pair for name in names for pair in kinds[name]]
    pairs: dict[str, str] = {}
    for _ in range(4 * turns):
        if rng.random() < describe_prob:
            q, a = DESCRIBE, ex.caption
        else:
            pool = every if rng.random() < by_question else kinds[names[int(rng.integers(len(names)))]]
            q, a = pool[int(rng.integers(len(pool)))]
        pairs.setdefault(q, a)
        if len(pairs) == turns:
            break
    return ex.image, list(pairs.items()), ex.caption


def encode_captions(tokenizer, captions: list[str]) -> dict[str, torch.Tensor | None]:
    """Text-only rows for the next-token objective on captions: each row is a caption and ``<|im_end|>``, every
    token a label (``input_ids``, ``attention_mask``, ``labels`` ``(B, S)``, right-padded; ``pixel_values``
    ``None``)."""
    rows = [tokenizer(c + "<|im_end|>", add_special_tokens=False)["input_ids"] for c in captions]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        attention_mask[i, : len(r)] = 1
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": None}


def split_by_length(lengths: list[int], chunks: int) -> list[list[int]]:
    """Row indices sorted by length and cut into ``chunks`` groups of equal size (less padding)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    size = -(-len(order) // chunks)
    return [order[i: i + size] for i in range(0, len(order), size)]


class DialogueBatches(IterableDataset):
    """Encoded training batches ``start, start + 1, ...``; worker ``w`` of ``W`` yields ``start + w + k W``.

    A batch is a list of ``chunks`` dicts (rows of similar length, each right-padded to its own longest
    row) with ``input_ids``, ``attention_mask``, ``labels`` ``(B', S')`` and ``pixel_values`` ``(B', 3, 32, 32)``;
    with ``caption_lm`` > 0, one more text-only chunk (:func:`encode_captions`) of the captions of the batch's
    first ``round(caption_lm * batch_size)`` samples, for the next-token objective on captions.
    """

    def __init__(self, tokenizer, seed: int, batch_size: int, turns: int, describe_prob: float = 0.2,
                 by_question: float = 0.5, chunks: int = 2, start: int = 0, world: str = "v1",
                 caption_lm: float = 0.0):
        super().__init__()
        self.world, self.caption_lm = world, caption_lm
        self.tokenizer, self.seed, self.batch_size, self.turns = tokenizer, seed, batch_size, turns
        self.describe_prob, self.by_question, self.chunks, self.start = describe_prob, by_question, chunks, start

    def batch(self, b: int) -> list[dict]:
        """Batch number ``b``."""
        samples = [sample_dialogue(self.seed, k, self.turns, self.describe_prob, self.by_question, self.world)
                   for k in range(b * self.batch_size, (b + 1) * self.batch_size)]
        full = encode_dialogues(self.tokenizer, [s[0] for s in samples], [s[1] for s in samples])
        lengths = full["attention_mask"].sum(1)  # (B,)
        out = []
        for rows in split_by_length(lengths.tolist(), self.chunks):
            idx, width = torch.tensor(rows), int(lengths[rows].max())
            chunk = {k: full[k][idx, :width] for k in ("input_ids", "attention_mask", "labels")}
            out.append({**chunk, "pixel_values": full["pixel_values"][idx]})
        n_captions = round(self.caption_lm * self.batch_size)
        if n_captions:
            out.append(encode_captions(self.tokenizer, [s[2] for s in samples[:n_captions]]))
        return out

    def __iter__(self) -> Iterator[list[dict]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start + wid
        while True:
            yield self.batch(b)
            b += nw


def answer_loss(model, chunks: list[dict]) -> float:
    """Back-propagate the mean cross-entropy over the labelled tokens of all ``chunks`` (the answers; in
    text-only chunks, ``pixel_values`` ``None``, every caption token); returns its value.

    The LM head is applied only at the positions that predict a labelled token.
    """
    total = sum(int((c["labels"][:, 1:] != IGNORE_INDEX).sum()) for c in chunks)
    value = 0.0
    for c in chunks:
        c = {k: v.to(model.device) if v is not None else None for k, v in c.items()}
        hidden = model.model(input_ids=c["input_ids"], attention_mask=c["attention_mask"],
                             pixel_values=c["pixel_values"]).last_hidden_state  # (B', S', D)
        labels = c["labels"][:, 1:]  # (B', S' - 1): token t is predicted at position t - 1
        keep = labels != IGNORE_INDEX
        logits = model.lm_head(hidden[:, :-1][keep])  # (n_answer_tokens, V)
        loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum") / total
        loss.backward()
        value += loss.item()
    return value


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    return lr * warmup_cosine(warmup, steps)(step)


def pretrain_vlm(out_dir: str | Path, steps: int = 2100, batch_size: int = 32, lr: float = 1.5e-3, seed: int = 0,
                 eval_examples: int = 300, warmup: int = 100, turns: int = 6, describe_prob: float = 0.2,
                 by_question: float = 0.5, chunks: int = 2, weight_decay: float = 0.05, eval_every: int = 0,
                 mid_eval_examples: int = 40, workers: int = 0, threads: int | None = None, fp16: bool = False,
                 log_every: int = 25, vision: dict | None = None, text: dict | None = None,
                 command: str | None = None, progress: bool = True, device: str = "cpu", world: str = "v1",
                 caption_lm: float = 0.0, checkpoint_every: int = 0, stop_after: int = 0,
                 resume: bool = False) -> dict:
    """Pre-train a toy VLM from scratch and save it (model + tokenizer) to ``out_dir``.

    AdamW (betas 0.9/0.95, weight decay on >=2-D weights), linear warm-up + cosine decay, gradient
    clipping 1.0, float32. Writes ``train_log.txt`` (step, loss, lr, elapsed; held-out accuracy every
    ``eval_every`` steps on ``mid_eval_examples`` scenes and at the end on ``eval_examples``),
    ``train_config.json`` (every argument and the command) and ``heldout_accuracy.json``. ``fp16`` saves
    the weights in float16. ``vision`` / ``text`` override sizes of :func:`parauni.toy.vlm.toy_vlm_config`.
    ``world``: the toy world (v2: its own tokenizer, training data without its held-out compositions; the
    held-out accuracy on other seeds of the same distribution). ``caption_lm``: text-only caption rows per batch,
    as a share of ``batch_size``, trained with the next-token objective (see :class:`DialogueBatches`).
    ``checkpoint_every`` / ``stop_after`` / ``resume``: see :mod:`parauni.toy.resume` (a sitting that stops early
    returns ``{"stopped_at": step, "out_dir"}``).
    Returns ``{"accuracy": qa_accuracy(...), "wall_s", "train_s", "steps_per_s", "params", "out_dir"}``.
    """
    sitting = Checkpointer(out_dir, {k: v for k, v in locals().items() if k != "command"}, checkpoint_every,
                           stop_after, resume)
    config = {k: v for k, v in locals().items()
              if k not in ("command", "progress", "sitting", "checkpoint_every", "stop_after", "resume")
              and (k, v) not in (("world", "v1"), ("caption_lm", 0.0))}
    config["out_dir"] = str(out_dir)
    config["command"] = command or shlex.join([sys.executable, *sys.argv])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tokenizer = build_toy_tokenizer(world)
    model = build_toy_vlm(tokenizer, seed=seed, vision=vision, text=text).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(decay_groups(model.parameters(), weight_decay), lr=lr, betas=(0.9, 0.95))
    start, smooth, loaded = 0, None, sitting.load()
    if loaded is not None:
        tensors, state = loaded
        model.load_state_dict(tensors)
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start, smooth = state["step"], state["smooth"]
    data = DialogueBatches(tokenizer, seed, batch_size, turns, describe_prob, by_question, chunks, world=world,
                           caption_lm=caption_lm, start=start)
    loader = iter(DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                             persistent_workers=bool(workers)))
    mid_eval = heldout_examples(mid_eval_examples, seed=0, world=world) if eval_every else []
    log = open(out / "train_log.txt", "a" if start else "w")  # written through the whole run, closed at its end

    def note(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    note(f"# toy VLM pre-training, {n_params} parameters; config {json.dumps(config)}" if not start else
         f"# resumed at step {start}")
    try:
        train_s = _train_steps(model, opt, loader, note, t0, steps=steps, lr=lr, warmup=warmup, log_every=log_every,
                               eval_every=eval_every, evaluate=lambda: qa_accuracy(model, tokenizer, mid_eval),
                               mid_examples=mid_eval_examples, progress=progress, start=start, smooth=smooth,
                               sitting=sitting)
    except SittingOver as over:
        note(f"# sitting over after step {over.step}; continue with --resume")
        log.close()
        return {"stopped_at": over.step, "out_dir": str(out)}
    model.eval()
    result = qa_accuracy(model, tokenizer, heldout_examples(eval_examples, seed=0, world=world))
    note(f"final held-out accuracy on {eval_examples} scenes:\n{format_accuracy(result)}")
    model.cpu()
    if fp16:
        model.half()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    wall = time.perf_counter() - t0
    note(f"train {train_s:.1f}s ({steps / train_s:.2f} steps/s); total {wall:.1f}s")
    log.close()
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "heldout_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    sitting.finish()
    return {"accuracy": result, "wall_s": wall, "train_s": train_s, "steps_per_s": steps / train_s,
            "params": n_params, "out_dir": str(out)}


def _train_steps(model, opt, loader, note, t0: float, *, steps: int, lr: float, warmup: int, log_every: int,
                 eval_every: int, evaluate, mid_examples: int, progress: bool, start: int = 0,
                 smooth: float | None = None, sitting: Checkpointer | None = None) -> float:
    """The training loop of :func:`pretrain_vlm`: optimizer steps ``start`` to ``steps - 1`` on the batches of
    ``loader``, a line to ``note`` every ``log_every`` steps and, every ``eval_every`` steps before the last,
    ``evaluate()``'s held-out accuracy (on ``mid_examples`` scenes); ``sitting`` checkpoints (and may end the
    sitting with :class:`SittingOver`). Returns the seconds it took."""
    bar = tqdm(range(start, steps), desc="pretrain-vlm", disable=not progress, dynamic_ncols=True)
    t_train = time.perf_counter()
    for step in bar:
        batch = next(loader)
        current_lr = lr_at(step, steps, lr, warmup)
        for group in opt.param_groups:
            group["lr"] = current_lr
        opt.zero_grad(set_to_none=True)
        loss = answer_loss(model, batch)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
        rate = (step + 1 - start) / (time.perf_counter() - t_train)
        bar.set_postfix(loss=f"{smooth:.4f}", lr=f"{current_lr:.2e}", its=f"{rate:.2f}")
        if (step + 1) % log_every == 0 or step == steps - 1:
            note(f"step {step + 1} loss {smooth:.4f} lr {current_lr:.3e} elapsed {time.perf_counter() - t0:.1f}s")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            model.eval()
            acc = evaluate()
            model.train()
            kinds = " ".join(f"{k} {v:.3f}" for k, v in acc["per_kind"].items())
            note(f"eval step {step + 1} accuracy {acc['accuracy']:.4f} caption_exact {acc['caption_exact']:.4f} "
                 f"({mid_examples} scenes; {kinds})")
        if sitting is not None:
            sitting.after_step(step + 1, lambda s=smooth: (model.state_dict(), {
                "optimizer": opt.state_dict(), "rng": rng_state(), "smooth": s}), last=step + 1 == steps)
    return time.perf_counter() - t_train


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``pretrain-vlm`` command to an argparse ``subparsers`` object. Every flag names a key of
    :class:`parauni.toy.config.PretrainVLMConfig` (defaults there); ``--config`` and ``key=value`` overrides
    set any key."""
    p = subparsers.add_parser("pretrain-vlm", help="pre-train the toy VLM on toy-world questions and captions")
    p.add_argument("--out", help="output folder (model, tokenizer, train_log.txt); train.output_dir")
    p.add_argument("--steps", type=int, help="default 2100")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--lr", type=float, help="default 1.5e-3")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--warmup", type=int, help="default 100")
    p.add_argument("--turns", type=int, help="question-answer turns per training image (default 6)")
    p.add_argument("--eval-examples", type=int, help="held-out scenes for the final accuracy (default 300)")
    p.add_argument("--eval-every", type=int, help="steps between midway evaluations (default 0: none)")
    p.add_argument("--workers", type=int, help="data-loader processes (default 0: in the training process)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default 2)")
    p.add_argument("--fp16", action="store_true", default=None, help="save the weights in float16 (for shipping)")
    p.add_argument("--device", help="e.g. cuda (the data is drawn on the CPU by --workers; default cpu)")
    add_resume_options(p)
    add_config_options(p, "toy_pretrain_vlm.yaml")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> dict:
    """Run ``pretrain-vlm`` from parsed arguments (``--config``, the flags given, ``key=value`` overrides), save
    the config as ``config.yaml`` in the output folder and print the held-out accuracy table."""
    cfg = config_from_args(args, {**VLM_FLAGS, **RESUME_FLAGS}, load_pretrain_vlm_config)
    m, d, o, t = cfg.model, cfg.data, cfg.optim, cfg.train
    if t.output_dir is None:
        raise ConfigError("pretrain-vlm needs an output folder: --out DIR or train.output_dir=DIR")
    Path(t.output_dir).mkdir(parents=True, exist_ok=True)
    save_config(cfg, Path(t.output_dir) / "config.yaml")
    result = pretrain_vlm(t.output_dir, steps=t.steps, batch_size=t.batch_size, lr=o.lr, seed=t.seed,
                          eval_examples=t.eval_examples, warmup=o.warmup, turns=d.turns,
                          describe_prob=d.describe_prob, by_question=d.by_question, chunks=d.chunks,
                          weight_decay=o.weight_decay, eval_every=t.eval_every, mid_eval_examples=t.mid_eval_examples,
                          workers=d.workers, threads=t.threads, fp16=t.fp16, log_every=t.log_every, vision=m.vision,
                          text=m.text, device=t.device, world=d.world, caption_lm=d.caption_lm,
                          checkpoint_every=t.checkpoint_every, stop_after=t.stop_after, resume=t.resume)
    if "stopped_at" in result:
        print(f"stopped after step {result['stopped_at']}; checkpoint in {result['out_dir']}/resume; continue with "
              "--resume")
        return result
    print(format_accuracy(result["accuracy"]))
    print(f"{result['params']} parameters; {result['steps_per_s']:.2f} steps/s; {result['wall_s']:.0f}s in all; "
          f"saved to {result['out_dir']}")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m parauni.toy.train_vlm pretrain-vlm ...``."""
    parser = argparse.ArgumentParser(prog="parauni toy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
