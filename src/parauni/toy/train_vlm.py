"""Pre-training of the toy VLM on toy-world questions and captions (``parauni toy pretrain-vlm``).

Every training sequence is one toy scene with one to ``turns`` question-answer turns drawn by
:func:`parauni.toy.data.sample_qa` (the first turn has exactly the single-turn format used at evaluation;
later turns reuse the same image tokens, which makes each forward pass cheaper per answer). The loss is
on answer tokens only. Batch ``b`` holds the training samples ``b * batch_size ... (b + 1) * batch_size - 1``
of the seeded stream, so a run is reproducible whatever the number of data workers.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from parauni.toy.data import TRAIN_DOMAIN, heldout_examples, make_example, sample_qa, sample_rng
from parauni.toy.tokenizer import build_toy_tokenizer
from parauni.toy.vlm import IGNORE_INDEX, build_toy_vlm, encode_dialogues, format_accuracy, qa_accuracy, user_turn
from parauni.toy.world import COLORS, SHAPES, Scene

N_MAP = len(SHAPES) + len(COLORS) + len(SHAPES) * len(COLORS)  # a cell's shape, colour, pair


def object_map(scene: Scene, grid: int = 4) -> torch.Tensor:
    """Multi-hot targets ``(grid * grid, N_MAP)`` of the image-context tokens (row-major cells of the
    canvas): the cell holding an object's centre is marked with its shape, colour and shape-colour pair."""
    out = torch.zeros(grid * grid, N_MAP)
    cell = scene.size / grid
    for o in scene.objects:
        j = min(int(o.cy // cell), grid - 1) * grid + min(int(o.cx // cell), grid - 1)
        s, c = SHAPES.index(o.shape), COLORS.index(o.color)
        out[j, [s, len(SHAPES) + c, len(SHAPES) + len(COLORS) + s * len(COLORS) + c]] = 1.0
    return out


def sample_dialogue(seed: int, index: int, turns: int, describe_prob: float) -> tuple:
    """Training sample ``index``: its image, 1..``turns`` distinct ``(question, answer)`` pairs, its scene."""
    rng = sample_rng(TRAIN_DOMAIN, seed, index)
    ex = make_example(rng)
    n = int(rng.integers(1, turns + 1))
    pairs: dict[str, str] = {}
    for _ in range(4 * n):
        q, a = sample_qa(ex, rng, describe_prob)
        pairs.setdefault(q, a)
        if len(pairs) == n:
            break
    return ex.image, list(pairs.items()), ex.scene


def split_by_length(lengths: list[int]) -> list[list[int]]:
    """Row indices in one or two chunks, sorted by length and cut where the padded area is smallest."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    best, cut = n * ls[-1], n
    for k in range(1, n):
        area = k * ls[k - 1] + (n - k) * ls[-1]
        if area < 0.9 * best:
            best, cut = area, k
    return [order[:cut], order[cut:]] if cut < n else [order]


class DialogueBatches(IterableDataset):
    """Encoded training batches ``start, start + 1, ...``; worker ``w`` of ``W`` yields ``start + w + k W``."""

    def __init__(self, tokenizer, seed: int, batch_size: int, turns: int, describe_prob: float, start: int = 0):
        super().__init__()
        self.tokenizer, self.seed, self.batch_size = tokenizer, seed, batch_size
        self.turns, self.describe_prob, self.start = turns, describe_prob, start

    def batch(self, b: int) -> list[dict]:
        """Batch number ``b`` as one or two chunks of similar length (see :func:`split_by_length`)."""
        samples = [sample_dialogue(self.seed, k, self.turns, self.describe_prob)
                   for k in range(b * self.batch_size, (b + 1) * self.batch_size)]
        lengths = [len(self.tokenizer(user_turn(d[0][0]) + d[0][1])["input_ids"]) + 4 * len(d) for _, d, _ in samples]
        chunks = []
        for rows in split_by_length(lengths):
            chunk = encode_dialogues(self.tokenizer, [samples[i][0] for i in rows], [samples[i][1] for i in rows])
            chunk["object_map"] = torch.stack([object_map(samples[i][2]) for i in rows])  # (B', 16, N_MAP)
            chunks.append(chunk)
        return chunks

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        b = self.start + wid
        while True:
            yield self.batch(b)
            b += nw


def training_loss(model, head: torch.nn.Module | None, chunks: list[dict], map_weight: float) -> tuple[float, float]:
    """Back-propagate the answer loss (mean cross-entropy over the answer tokens of all ``chunks``) plus
    ``map_weight`` times the object-map loss of ``head`` on the image-context features; returns both."""
    total = sum(int((c["labels"][:, 1:] != IGNORE_INDEX).sum()) for c in chunks)
    rows = sum(c["input_ids"].shape[0] for c in chunks)
    lm_sum, map_sum = 0.0, 0.0
    for c in chunks:
        out = model(input_ids=c["input_ids"], attention_mask=c["attention_mask"], pixel_values=c["pixel_values"])
        labels = c["labels"][:, 1:]  # (B, S - 1): token t is predicted at position t - 1
        lm = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels.flatten(),
                                               ignore_index=IGNORE_INDEX, reduction="sum") / total
        loss = lm
        if head is not None and map_weight > 0:
            logits = head(out.image_hidden_states)  # (B, 16, N_MAP)
            aux = torch.nn.functional.binary_cross_entropy_with_logits(logits, c["object_map"], reduction="none")
            aux = aux.sum(dim=2).mean(dim=1).sum() / rows  # summed over labels, averaged over cells and rows
            loss = loss + map_weight * aux
            map_sum += aux.item()
        loss.backward()
        lm_sum += lm.item()
    return lm_sum, map_sum


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def pretrain_vlm(out_dir: str | Path, steps: int = 3000, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                 eval_examples: int = 300, warmup: int = 100, turns: int = 4, describe_prob: float = 0.2,
                 weight_decay: float = 0.05, eval_every: int = 0, mid_eval_examples: int = 60, workers: int = 0,
                 threads: int | None = None, fp16: bool = False, log_every: int = 25, map_weight: float = 1.0,
                 vision: dict | None = None, text: dict | None = None, command: str | None = None,
                 progress: bool = True) -> dict:
    """Pre-train a toy VLM from scratch and save it (model + tokenizer) to ``out_dir``.

    AdamW (betas 0.9/0.95, weight decay on >=2-D weights), warm-up + cosine, gradient clipping 1.0,
    float32. Writes ``train_log.txt`` (step, loss, lr, elapsed; held-out accuracy every ``eval_every``
    steps on ``mid_eval_examples`` scenes and at the end on ``eval_examples``), ``train_config.json``
    (every argument and the command) and ``heldout_accuracy.json``. ``fp16`` saves the weights in
    float16. Returns ``{"accuracy": qa_accuracy(...), "wall_s", "steps_per_s", "params", "out_dir"}``.
    """
    config = {k: v for k, v in locals().items() if k != "command"}
    config["out_dir"] = str(out_dir)
    config["command"] = command or shlex.join([sys.executable, *sys.argv])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tokenizer = build_toy_tokenizer()
    model = build_toy_vlm(tokenizer, seed=seed, vision=vision, text=text).train()
    n_params = sum(p.numel() for p in model.parameters())
    head = torch.nn.Linear(model.config.text_config.hidden_size, N_MAP) if map_weight > 0 else None
    params = list(model.parameters()) + (list(head.parameters()) if head is not None else [])
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    data = DialogueBatches(tokenizer, seed, batch_size, turns, describe_prob)
    loader = iter(DataLoader(data, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                             persistent_workers=bool(workers)))
    mid_eval = heldout_examples(mid_eval_examples, seed=0) if eval_every else []
    log = open(out / "train_log.txt", "w")

    def note(line: str) -> None:
        log.write(line + "\n")
        log.flush()

    note(f"# toy VLM pre-training: {n_params} parameters; config {json.dumps(config)}")
    bar = tqdm(range(steps), desc="pretrain-vlm", disable=not progress, dynamic_ncols=True)
    t_train, smooth, smooth_map = time.perf_counter(), None, None
    for step in bar:
        batch = next(loader)
        current_lr = lr_at(step, steps, lr, warmup)
        for group in opt.param_groups:
            group["lr"] = current_lr
        opt.zero_grad(set_to_none=True)
        loss, map_loss = training_loss(model, head, batch, map_weight)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
        smooth_map = map_loss if smooth_map is None else 0.95 * smooth_map + 0.05 * map_loss
        rate = (step + 1) / (time.perf_counter() - t_train)
        bar.set_postfix(loss=f"{smooth:.4f}", map=f"{smooth_map:.3f}", lr=f"{current_lr:.2e}", its=f"{rate:.2f}")
        if (step + 1) % log_every == 0 or step == steps - 1:
            note(f"step {step + 1} loss {smooth:.4f} map_loss {smooth_map:.4f} lr {current_lr:.3e} "
                 f"elapsed {time.perf_counter() - t0:.1f}s")
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            model.eval()
            acc = qa_accuracy(model, tokenizer, mid_eval)
            model.train()
            kinds = " ".join(f"{k} {v:.3f}" for k, v in acc["per_kind"].items())
            note(f"eval step {step + 1} heldout_accuracy {acc['accuracy']:.4f} caption_exact "
                 f"{acc['caption_exact']:.4f} ({mid_eval_examples} scenes; {kinds})")
    train_s = time.perf_counter() - t_train
    model.eval()
    result = qa_accuracy(model, tokenizer, heldout_examples(eval_examples, seed=0))
    note(f"final held-out accuracy on {eval_examples} scenes:\n{format_accuracy(result)}")
    if fp16:
        model.half()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    wall = time.perf_counter() - t0
    note(f"train {train_s:.1f}s ({steps / train_s:.2f} steps/s); total {wall:.1f}s")
    log.close()
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "heldout_accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
    return {"accuracy": result, "wall_s": wall, "steps_per_s": steps / train_s, "params": n_params,
            "out_dir": str(out)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``pretrain-vlm`` command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser("pretrain-vlm", help="pre-train the toy VLM on toy-world questions and captions")
    p.add_argument("--out", required=True, help="output folder (model, tokenizer, train_log.txt)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--turns", type=int, default=4, help="most question-answer turns per training image")
    p.add_argument("--eval-examples", type=int, default=300, help="held-out scenes for the final accuracy")
    p.add_argument("--eval-every", type=int, default=0, help="steps between midway evaluations (0: none)")
    p.add_argument("--workers", type=int, default=0, help="data-loader processes (0: in the training process)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--fp16", action="store_true", help="save the weights in float16 (for shipping)")
    return p


def run(args: argparse.Namespace) -> dict:
    """Run ``pretrain-vlm`` from parsed arguments and print the held-out accuracy table."""
    result = pretrain_vlm(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          eval_examples=args.eval_examples, warmup=args.warmup, turns=args.turns,
                          eval_every=args.eval_every, workers=args.workers, threads=args.threads, fp16=args.fp16)
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
