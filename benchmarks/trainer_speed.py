"""``parauni train``'s own step against the model-only step, and the data pipeline's throughput.

Used by ``python benchmarks/bench_train.py --trainer`` (see there); importable on its own.

Trainer step: the project's :class:`parauni.train.trainer.Trainer` on a generated on-disk dataset (a folder of
JPEGs with ``.txt`` captions, ``data.kind=folder``), so each step includes what ``parauni train`` does with real
files: the DataLoader with ``data.num_workers`` processes (JPEG decoding, random crop, resize, noise), the uint8
upload, the VAE encoding, the VLM + LIM + SANA forward / backward, clipping and AdamW, and the loss check every
``train.log_every`` steps. Model-only step: the same ``Trainer.train_step`` fed micro-batches loaded beforehand
(the data path taken out, everything else the same). Their ratio is the data path's cost.

Data throughput: images per second of the training data path alone (``MicroBatches`` through the DataLoader:
JPEG decode, random square crop, bicubic resize to ``data.resolution``, noise) on generated 1024-px JPEGs, with
0 (in the main process), 1 and 2 loader processes.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def make_jpeg_folder(root: Path, count: int, size: int, seed: int = 0) -> Path:
    """``count`` landscape JPEGs, ``size`` high and ``size * 5 // 4`` wide (the random square crop has work to
    do), with captions beside them: smooth colour fields plus noise, so they compress like photographs rather
    than like flat colour."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size, size * 5 // 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        f = rng.uniform(0.002, 0.02, size=3)
        phase = rng.uniform(0, 6.3, size=3)
        base = np.stack([127 + 100 * np.sin(f[c] * (xx + yy * (c + 1)) + phase[c]) for c in range(3)], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i:05d}.jpg", quality=90)
        (root / f"{i:05d}.txt").write_text(f"a photograph number {i} of a {['red', 'green', 'blue'][i % 3]} scene")
    return root


def data_throughput(workers: list[int], size: int = 1024, resolution: int = 512, micro: int = 8,
                    batches: int = 6, images: int = 24) -> list[dict]:
    """Images/s of the data path (decode, crop, resize, noise; no model) with each number of loader processes."""
    from parauni.train.config import load_config
    from parauni.train.data import build_source
    from parauni.train.loader import MicroBatches, SampleLoader, micro_batch_loader

    root = make_jpeg_folder(Path(tempfile.mkdtemp(prefix="bench_data_")), images, size)
    cfg = load_config(None, ["data.kind=folder", f"data.path={root}", f"data.resolution={resolution}"])
    rows = []
    for n in workers:
        loader = SampleLoader(build_source(cfg.data, 0), cfg.data, 0, global_batch=micro, world=1, rank=0)
        dataset = MicroBatches(loader, (32, resolution // 32, resolution // 32), 0.1, "uniform")
        it = iter(micro_batch_loader(dataset, 0, n, pin_memory=False))
        for _ in range(max(n, 1)):  # the processes start and fill their first batch
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        rate = batches * micro / (time.perf_counter() - t0)
        del it
        rows.append(dict(workers=n, images_per_s=rate, per_worker=rate / max(n, 1), jpeg_px=size,
                         resolution=resolution))
    return rows


def trainer_vs_model(model: str, resolution: int, batch: int, steps: int, warmup: int, workers: int,
                     image_size: int, log_every: int = 10, mixed_precision: str = "'no'", rounds: int = 3) -> dict:
    """Step times of ``Trainer.train_step`` on a JPEG folder with ``workers`` loader processes, and of the same
    step fed micro-batches loaded beforehand. The two alternate for ``rounds`` rounds of ``steps`` timed steps
    (after ``warmup`` untimed ones each), so a shared machine's load falls on both alike; each kind's time is
    its best round's median."""
    from parauni.train.config import load_config
    from parauni.train.loader import MicroBatches
    from parauni.train.trainer import Trainer

    out = Path(tempfile.mkdtemp(prefix="bench_trainer_"))
    data = make_jpeg_folder(out / "data", max(4 * batch, 16), image_size)
    per_round = warmup + steps
    cfg = load_config(None, [f"model.source={model}", "data.kind=folder", f"data.path={data}",
                             f"data.resolution={resolution}", f"data.num_workers={workers}",
                             f"train.batch_size={batch}", "train.logger=none", f"train.output_dir={out / 'run'}",
                             f"train.steps={2 * rounds * per_round + 10}", "optim.warmup_steps=1",
                             f"train.log_every={log_every}", f"train.mixed_precision={mixed_precision}"])
    trainer = Trainer(cfg, progress=False)
    dataset = MicroBatches(trainer.loader, trainer._latent_shape(), cfg.data.uncond_prob, cfg.train.timesteps)

    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            trainer.train_step()
            if trainer.step % log_every == 0:
                trainer.check_steps()  # the run loop's read-back every train.log_every steps
            times.append(time.perf_counter() - t0)
        trainer.check_steps()
        return times

    with_data, model_only = [], []
    for _ in range(rounds):
        # the Trainer's own path: its DataLoader (re)starts at the current step
        timed(warmup)
        with_data.append(statistics.median(timed(steps)))
        trainer.close_loader()  # the loader processes stop: the model-only step has the CPU to itself
        # the next steps' micro-batches, loaded beforehand in this process: the step without its data path
        ready = iter([dataset[(s, m)] for s in range(trainer.step, trainer.step + per_round)
                      for m in range(cfg.train.grad_accum)])
        trainer._next_batch = lambda ready=ready: next(ready)
        timed(warmup)
        model_only.append(statistics.median(timed(steps)))
        del trainer._next_batch  # back to the Trainer's method
    return dict(model=model, resolution=resolution, batch=batch, workers=workers, image_px=image_size,
                rounds=rounds, trainer_s=min(with_data), model_s=min(model_only), trainer_rounds_s=with_data,
                model_rounds_s=model_only)


def report(args) -> None:
    """``bench_train.py --trainer``: print the trainer / model-only ratio and the data pipeline's images/s."""
    import os

    if not args.device.startswith("cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the Trainer picks CUDA whenever it sees one
    from bench_train import _toy_available

    model = "toy" if _toy_available() else "tiny"
    resolution = args.resolution or (32 if model == "toy" else 16)
    image_px = args.trainer_image_px or 2 * resolution
    r = trainer_vs_model(model, resolution, args.batch, args.steps, args.warmup, args.data_workers, image_px,
                         mixed_precision="bf16" if args.dtype == "bf16" else "'no'")
    ratio = r["trainer_s"] / r["model_s"]
    print(f"parauni train step ({model} at {resolution} px, batch {args.batch}, {image_px}-px JPEGs on disk, "
          f"data.num_workers={args.data_workers}, {args.steps} timed steps, {args.device}):")

    def rounds(key: str) -> str:
        return ", ".join(f"{x * 1e3:.1f}" for x in r[key])

    print(f"  trainer step    {r['trainer_s'] * 1e3:8.1f} ms (best of {r['rounds']} rounds' medians: "
          f"{rounds('trainer_rounds_s')})")
    print(f"  model-only step {r['model_s'] * 1e3:8.1f} ms ({rounds('model_rounds_s')})")
    print(f"  ratio x{ratio:.3f} (target: within x1.15)")
    workers = [int(w) for w in args.throughput_workers.split(",") if w.strip()]
    rows = data_throughput(workers, size=args.throughput_px, resolution=args.throughput_resolution) if workers else []
    if rows:
        print(f"\ndata pipeline on {rows[0]['jpeg_px']}-px JPEGs -> {rows[0]['resolution']} px (decode, crop, resize, "
              f"noise; {os.cpu_count()} CPU cores):")
    for row in rows:
        where = "in the main process" if row["workers"] == 0 else f"{row['workers']} loader process(es)"
        print(f"  {where:24s} {row['images_per_s']:8.1f} images/s  ({row['per_worker']:.1f} per worker)")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(dict(trainer=dict(r, ratio=ratio), data=rows), f, indent=1)
            f.write("\n")
