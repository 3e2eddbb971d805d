"""Stage III speed: rollout images/s, reward time, update steps/s and samples/s (``parauni.rl.grpo``), for
Flow-GRPO (default) or DiffusionNFT (``--algorithm diffusion_nft``: its toy settings, ``configs/toy_nft_geneval.yaml``:
guidance 1, DPM-Solver++(2M) rollouts, 2 training points a sample, KL beta 1e-4, one optimizer step an epoch).

One epoch of ``GRPOTrainer`` is timed part by part: the SDE rollout (``prompts x G`` images, ``--sde-steps``
steps, CFG as one batched forward, decoding included), the rewards, and the update (micro-batches of
``--train-batch`` samples over every trained transition, accumulated into the config's optimizer steps per epoch:
the policy forward/backward and, with ``kl_beta > 0``, the reference forward with the LoRA adapter off).

    python benchmarks/bench_grpo.py                      # the shipped toy model, CPU
    python benchmarks/bench_grpo.py --epochs 2 --warmup 0   # quicker
    python benchmarks/bench_grpo.py --size internvl3-2b_sana-1.6b_512 --device cuda --dtype bf16 \\
        --prompts 4 --group-size 8 --train-batch 8 --rollout-batch 32
    python benchmarks/bench_grpo.py --compare --epochs 3     # the earlier path against today's, in one run
    python benchmarks/bench_grpo.py --algorithm diffusion_nft   # DiffusionNFT's epoch

``--compare`` times, on one trainer and alternating epoch by epoch, the earlier path (the rollout through the
LoRA adapter, 1 thread) against today's (the rollout through a merged copy, ``--threads`` or 2 threads); the
work per epoch is the same, so the ratio of the median epoch times is the speed-up on this machine.

The toy size runs the trainer exactly as ``parauni grpo configs/toy_grpo.yaml`` does (its three toy rewards).
``tiny`` (random tiny models) and the real presets hand the trainer a ready pipeline; real presets are built
at real size with random weights (``build_preset``; no download), the frozen parts in ``--dtype``, the LoRA
adapters in float32 under bf16 autocast.  Their reward is ``toy_quality`` (a CPU image statistic, no weights
needed), so the reward time there is not that of PickScore & co.
Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

from common import peak_mb, sync


def build_trainer(args):
    """A ``GRPOTrainer`` for ``args.size`` and the info line of the model."""
    import torch

    from parauni.rl.config import load_grpo_config
    from parauni.rl.grpo import GRPOTrainer
    from parauni.toy.reproduce import config_file

    out = tempfile.mkdtemp(prefix="bench_grpo_")
    overrides = [f"train.output_dir={out}", f"prompts.per_epoch={args.prompts}",
                 f"sampling.group_size={args.group_size}", f"sampling.steps={args.sde_steps}",
                 f"sampling.rollout_batch={args.rollout_batch}", f"optim.train_batch={args.train_batch}",
                 f"optim.kl_beta={0.04 if args.kl_beta is None else args.kl_beta}", "train.eval_geneval=false",
                 "ldam.enabled=false",
                 f"sampling.sde_window={args.sde_window or 'null'}", "train.logger=none",
                 "train.mixed_precision=" + ("bf16" if args.dtype == "bf16" else "'no'")]
    overrides.append(f"algorithm={args.algorithm}")
    if args.algorithm == "flow_grpo":  # time the update on every sample, whatever the rewards (NFT keeps them all)
        overrides.append("optim.drop_zero_adv=false")
    if args.algorithm == "diffusion_nft":
        nft = load_grpo_config(config_file("toy_nft_geneval.yaml"))
        overrides += [f"sampling.guidance_scale={nft.sampling.guidance_scale}", "optim.steps_per_epoch=1",
                      f"optim.timestep_fraction={nft.optim.timestep_fraction}", f"nft.solver={nft.nft.solver}"]
        if args.kl_beta is None:
            overrides.append(f"optim.kl_beta={nft.optim.kl_beta}")
    if args.lora_rank:
        overrides += [f"model.lora_rank={args.lora_rank}", f"model.lora_alpha={2 * args.lora_rank}"]
    pipeline = None
    if args.size == "toy":
        overrides.append("model.source=toy-all-layers")
        name = "toy-all-layers"
    elif args.size == "tiny":  # the same code path as a real preset: a ready pipeline, random weights
        from parauni.pipelines.presets import build_tiny

        pipeline = build_tiny(seed=0)
        overrides.append("rewards.weights={toy_quality: 1.0}")
        name = "tiny"
    else:
        from parauni.models.presets import build_preset
        from parauni.models.tokenizer import build_tokenizer
        from parauni.pipelines.pipeline_parauni import ParaUniPipeline

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
        parts = build_preset(args.size, device=args.device, dtype=dtype)
        pipeline = ParaUniPipeline(tokenizer=build_tokenizer(), **parts)
        overrides.append("rewards.weights={toy_quality: 1.0}")
        name = args.size
    cfg = load_grpo_config(config_file("toy_grpo.yaml"), overrides)
    trainer = GRPOTrainer(cfg, progress=False, pipeline=pipeline)
    if args.dtype == "bf16":  # LoRA master weights in float32 (bf16 autocast computes)
        for p in trainer.params.values():
            p.data = p.data.float()
    n_lora = sum(p.numel() for p in trainer.params.values())
    tr = trainer.pipe.transformer
    info = dict(model=name, device=args.device, dtype=args.dtype, images_per_epoch=args.prompts * args.group_size,
                sde_steps=args.sde_steps, latent=f"{tr.config.in_channels}x{tr.config.sample_size}^2",
                trainable=n_lora, kl_beta=args.kl_beta)
    return trainer, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="toy", help="toy (the shipped toy model), tiny, or a real preset name")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--prompts", type=int, default=8, help="prompts per epoch")
    ap.add_argument("--group-size", type=int, default=8, help="G images per prompt")
    ap.add_argument("--sde-steps", type=int, default=10)
    ap.add_argument("--sde-window", type=int, help="SDE (and training) on a window of N transitions (default: all)")
    ap.add_argument("--rollout-batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--kl-beta", type=float, help="default: 0.04 (Flow-GRPO), 1e-4 (DiffusionNFT)")
    ap.add_argument("--algorithm", default="flow_grpo", choices=["flow_grpo", "diffusion_nft"])
    ap.add_argument("--lora-rank", type=int, help="LoRA rank (alpha = 2 x rank; default: the toy config's 32)")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--compare", action="store_true",
                    help="time the earlier path (adapter rollout, 1 thread) against today's, epoch by epoch")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()

    import torch

    from parauni.rl.rollout import trained_transitions

    if args.device == "cpu" and args.dtype == "bf16":
        print("note: bf16 on a CPU is usually much slower than fp32")
    trainer, info = build_trainer(args)
    variants = {"now": (True, args.threads or 2)}
    if args.compare:
        variants = {"before": (False, 1), **variants}
    times = {v: {"rollout": [], "reward": [], "update": []} for v in variants}
    n_updates = None
    for epoch in range(args.warmup + args.epochs):
        for name, (merge, threads) in variants.items():
            trainer.cfg.sampling.merge_lora = merge
            if args.compare or args.threads:
                torch.set_num_threads(threads)
            marks = [time.perf_counter()]
            roll = trainer.rollout(epoch)
            sync(args.device)
            marks.append(time.perf_counter())
            adv, valid, _ = trainer.advantages(roll)
            marks.append(time.perf_counter())
            stats = trainer.update(roll, adv, valid, epoch)
            sync(args.device)
            marks.append(time.perf_counter())
            n_updates = stats["diag/optimizer_steps"]
            if epoch >= args.warmup:
                for k, (a, b) in zip(times[name], zip(marks, marks[1:], strict=False), strict=True):
                    times[name][k].append(b - a)
    if args.compare:
        epoch_s = {v: statistics.median([sum(x) for x in zip(*times[v].values(), strict=True)]) for v in variants}
        print(json.dumps({v: {k: statistics.median(x) for k, x in t.items()} for v, t in times.items()}, indent=1))
        print(f"epoch: before {epoch_s['before']:.2f}s (adapter rollout, 1 thread), now {epoch_s['now']:.2f}s "
              f"(merged rollout, {variants['now'][1]} threads): {epoch_s['before'] / epoch_s['now']:.2f}x")
    times = times["now"]
    med = {k: statistics.median(v) for k, v in times.items()}
    images = info["images_per_epoch"]
    o = trainer.cfg.optim
    if args.algorithm == "flow_grpo":
        per_sample = trained_transitions(len(roll.trainable), o.timestep_fraction)
    else:  # DiffusionNFT's training points (rl/diffusion_nft.training_points)
        per_sample = max(1, int(args.sde_steps * o.timestep_fraction))
    transitions = int(stats["diag/trained_samples"]) * per_sample
    result = dict(**info, rollout_s=med["rollout"], reward_s=med["reward"], update_s=med["update"],
                  rollout_images_per_s=images / med["rollout"], update_steps_per_s=n_updates / med["update"],
                  transitions_per_s=transitions / med["update"], samples_per_s=images / sum(med.values()),
                  epoch_s=sum(med.values()), peak_mb=peak_mb(args.device))
    print(json.dumps(result, indent=1))
    print(f"\n{args.algorithm}, {info['model']} on {args.device} ({args.dtype}): rollout "
          f"{result['rollout_images_per_s']:.1f} images/s ({images} images x {args.sde_steps} steps in "
          f"{med['rollout']:.2f}s), rewards {med['reward']:.2f}s, update {result['update_steps_per_s']:.2f} optimizer "
          f"steps/s ({transitions} trained transitions in {med['update']:.2f}s), epoch {result['epoch_s']:.1f}s "
          f"({result['samples_per_s']:.1f} samples/s), peak {result['peak_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
