"""Training step time, throughput, peak memory and FLOPs utilisation of stages I and II, per LIM variant.

Variants: the reference LIM over all layers ("mean"), the cheaper "prefuse" LIM over all layers, and the
last-layer baseline ("mean", layers=[-1]).  Every (stage, variant) runs in its own process so peak memory
is that workload's alone.

    python benchmarks/bench_train.py                            # tiny (or the toy models if shipped), CPU
    python benchmarks/bench_train.py --steps 3 --warmup 1       # quicker
    python benchmarks/bench_train.py --trainer                  # parauni train's step vs the model-only step
    python benchmarks/bench_train.py --size internvl3-2b_sana-1.6b_512 --device cuda --dtype bf16 --batch 32

Small sizes use the project's ``Trainer`` (``parauni.train.trainer``) on the toy data stream: a step is
what ``parauni train`` does (data, VAE encoding, VLM + LIM + SANA forward/backward, clipping, AdamW).  The
toy models (``model.source=toy``) are used when the toy VLM weights are shipped, else the tiny random
pipeline.  Real presets (``--size``) are built at real size with random weights (``build_preset``), the
frozen parts in ``--dtype``, the trainable ones in float32 under bf16 autocast (as Accelerate's bf16 mixed
precision trains), with gradient checkpointing on; latents are random (a cached-latents run: no VAE) and
the tokenizer is the local byte-level one (the templated prompt's token count is printed).

FLOPs: ``parauni.utils.flops.count_flops`` over one forward + backward (``FlopCounterMode`` with PyTorch's
over-count of grouped-convolution weight gradients corrected: SANA's depthwise conv; matmuls, convolutions,
attention; recomputation excluded: at real size the count is taken at batch 1 without checkpointing and
scaled by the batch).  MFU = model FLOPs per step / step time / peak, the peak being ``--peak-tflops`` or,
with ``--dtype bf16`` on CUDA, the GPU's dense bf16 peak from ``parauni.utils.flops.GPU_PEAKS`` (by
``torch.cuda.get_device_name()``); with neither, MFU is not shown.  ``--json`` also writes the rows, the GPU,
the peak and the counting method.  ``benchmarks/mfu_recount.py`` recounts a stored run's FLOPs.  Peak memory:
``torch.cuda.max_memory_allocated`` on CUDA; on CPU the process's peak RSS growth over the built model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import peak_mb, reset_peak, sync

VARIANTS = {"reference": dict(fusion="mean"), "prefuse": dict(fusion="prefuse"),
            "last-layer": dict(fusion="mean", layers=[-1])}
STAGES = ("I", "II")
# ~50 tokens with the local byte-level tokenizer (about what a 35-word caption is with Qwen's)
CAPTION = "a red sports car on a wet cobblestone street at dusk, neon signs in the puddles"


def _toy_available() -> bool:
    from parauni.toy.vlm import DEFAULT_WEIGHTS

    return (DEFAULT_WEIGHTS / "config.json").is_file()


def _count_flops(fn) -> int:
    from parauni.utils.flops import count_flops

    return count_flops(fn)


def _gpu_name(device: str) -> str | None:
    """``torch.cuda.get_device_name`` of ``device`` (asked in a child process: this one holds no CUDA context)."""
    if not device.startswith("cuda"):
        return None
    code = f"import torch; print(torch.cuda.get_device_name(torch.device({device!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: cannot read the name of GPU {device!r}:\n{proc.stderr[-2000:]}")
    return proc.stdout.strip()


def _peak(args, gpu: str | None) -> tuple[float | None, str]:
    """(peak TFLOP/s for MFU or None, where it comes from)."""
    from parauni.utils.flops import gpu_peak_tflops

    if args.peak_tflops:
        return args.peak_tflops, "--peak-tflops"
    if gpu is None:
        return None, "no GPU: pass --peak-tflops for an MFU"
    found = gpu_peak_tflops(gpu)
    if found is None:
        return None, f"no dense bf16 peak known for {gpu!r} (parauni.utils.flops.GPU_PEAKS): pass --peak-tflops"
    if args.dtype != "bf16":
        return None, f"the table's peaks are bf16 ones and this run is {args.dtype}: pass --peak-tflops"
    return found[1], f"{found[0]} dense bf16 (NVIDIA datasheet, without sparsity)"


def _small_step(args, variant: str, stage: str):
    """(step function, FLOP-count function, info) on the project's Trainer with the toy or tiny models."""
    from parauni.train.config import load_config
    from parauni.train.trainer import Trainer

    source = "toy" if _toy_available() else "tiny"
    resolution = args.resolution or (32 if source == "toy" else 16)
    out = tempfile.mkdtemp(prefix="bench_train_")
    overrides = [f"model.source={source}", "data.kind=toy", f"data.resolution={resolution}",
                 f"train.batch_size={args.batch}", "train.logger=none", f"train.output_dir={out}",
                 f"train.stage={stage}", f"train.steps={args.warmup + args.steps + 10}", "optim.warmup_steps=1",
                 f"model.conditioner={json.dumps(VARIANTS[variant])}",
                 f"model.gradient_checkpointing={str(args.checkpointing).lower()}",
                 "train.mixed_precision=" + ("bf16" if args.dtype == "bf16" else "'no'")]  # quoted: YAML no = false
    trainer = Trainer(load_config(None, overrides), progress=False)
    info = dict(model=source, resolution=resolution, trainable=trainer.n_trainable)
    return trainer.train_step, trainer.train_step, info


def _real_step(args, variant: str, stage: str):
    """(step function, FLOP-count function at batch 1, info, module) at a real preset's size, random weights."""
    from types import SimpleNamespace

    import torch

    from parauni.models.presets import build_preset, get_preset
    from parauni.models.prompt import tokenize_prompts
    from parauni.models.tokenizer import build_tokenizer
    from parauni.train.model import FlowTrainModule
    from parauni.train.optim import decay_groups

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    preset = get_preset(args.size)
    parts = build_preset(args.size, device=args.device, dtype=dtype, with_vae=False, **VARIANTS[variant])
    pipe = SimpleNamespace(vlm=parts["vlm"], conditioner=parts["conditioner"], transformer=parts["transformer"],
                           tokenizer=build_tokenizer())
    trained = ["queries", "lim"] + (["transformer"] if stage == "II" else [])
    module = FlowTrainModule(pipe, trained)
    module.conditioner.float()  # trainable weights in float32 (master weights), frozen ones in --dtype
    if stage == "II":
        module.transformer.float()
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    opt = torch.optim.AdamW(decay_groups(params, 0.05), lr=1e-4, betas=(0.9, 0.95))
    latent = preset.resolution // 32
    amp = dict(device_type="cuda" if args.device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
               enabled=args.dtype == "bf16")
    # the meta device (a FLOP count without memory: mfu_recount.py) has no generator
    gen = None if args.device == "meta" else torch.Generator(args.device).manual_seed(0)

    def batch(n: int):
        shape = (n, preset.transformer["in_channels"], latent, latent)
        return ([CAPTION] * n, torch.randn(shape, generator=gen, device=args.device),
                torch.randn(shape, generator=gen, device=args.device), torch.rand(n, generator=gen, device=args.device))

    def forward_backward(n: int) -> None:
        with torch.autocast(**amp):
            loss = module(*batch(n))
        loss.backward()

    def step() -> None:
        forward_backward(args.batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def count() -> None:  # batch 1, no checkpointing: model FLOPs without recomputation
        # FlopCounterMode's SDPA rule rejects grouped-query attention (Qwen2's KV heads), so the VLM
        # counts with eager attention: the same matmuls, counted one by one
        module.vlm.set_attn_implementation("eager")
        try:
            forward_backward(1)
        finally:
            module.vlm.set_attn_implementation("sdpa")
        opt.zero_grad(set_to_none=True)

    tokens = tokenize_prompts(pipe.tokenizer, module.conditioner.template, [CAPTION])[0].shape[1]  # + N queries
    info = dict(model=args.size, resolution=preset.resolution, trainable=sum(p.numel() for p in params),
                prompt_tokens=tokens)
    return step, count, info, module


def worker(args) -> dict:
    """One (stage, variant) measurement in this process."""
    import torch

    torch.manual_seed(0)
    stage, variant = args.stage, args.variant
    if args.size == "tiny":
        step, count, info = _small_step(args, variant, stage)
        flops = None
    else:
        step, count, info, module = _real_step(args, variant, stage)
        flops = _count_flops(count) * args.batch  # before checkpointing: no recomputation in the count
        module.set_gradient_checkpointing(args.checkpointing)
    base = peak_mb(args.device)
    for _ in range(args.warmup):
        step()
    sync(args.device)
    reset_peak(args.device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync(args.device)
        times.append(time.perf_counter() - t0)
    peak = peak_mb(args.device) - (0 if args.device.startswith("cuda") else base)
    if flops is None:
        flops = _count_flops(step)  # the Trainer's models train without checkpointing here
    median = statistics.median(times)
    return dict(stage=stage, variant=variant, median_s=median, samples_per_s=args.batch / median, peak_mb=peak,
                flops_per_step=flops, **info)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", help="'tiny' (the toy models when shipped) or a real preset name")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="real size: the frozen weights' dtype "
                    "and bf16 autocast; small: the Trainer's mixed precision")
    ap.add_argument("--batch", type=int, default=4, help="samples per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--resolution", type=int, help="small sizes: data.resolution (default 16 tiny, 32 toy)")
    ap.add_argument("--stages", default="I,II", help="comma-separated: I, II")
    ap.add_argument("--no-checkpointing", dest="checkpointing", action="store_false",
                    help="real size: train without gradient checkpointing (small sizes never use it)")
    ap.add_argument("--peak-tflops", type=float, help="device peak TFLOP/s for MFU (default: the GPU's dense bf16 "
                    "peak when known and --dtype bf16; no MFU otherwise)")
    ap.add_argument("--json", help="also write the rows, GPU, peak and FLOP-count method to this JSON file")
    ap.add_argument("--worker", nargs=2, metavar=("STAGE", "VARIANT"), help=argparse.SUPPRESS)
    tr = ap.add_argument_group("--trainer: parauni train's own step vs the model-only step, and data throughput "
                               "(benchmarks/trainer_speed.py)")
    tr.add_argument("--trainer", action="store_true", help="time the Trainer on a generated JPEG folder "
                    "(data.kind=folder) against the same step on pre-loaded batches; then the data pipeline")
    tr.add_argument("--data-workers", type=int, default=2, help="--trainer: data.num_workers")
    tr.add_argument("--trainer-image-px", type=int, help="--trainer: JPEG height (default 2 x the resolution)")
    tr.add_argument("--throughput-px", type=int, default=1024, help="--trainer: JPEG height for the data throughput")
    tr.add_argument("--throughput-resolution", type=int, default=512, help="--trainer: crop size for the throughput")
    tr.add_argument("--throughput-workers", default="0,1,2", help="--trainer: loader processes to measure")
    args = ap.parse_args()
    if args.trainer:
        from trainer_speed import report

        report(args)
        return
    if args.worker:
        args.stage, args.variant = args.worker
        if args.size == "tiny":
            args.checkpointing = False
        print(json.dumps(worker(args)))
        return
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        sys.exit(f"error: --peak-tflops {args.peak_tflops} must be > 0 (the GPU's dense TFLOP/s for the run's dtype)")
    gpu = _gpu_name(args.device)
    peak, peak_source = _peak(args, gpu)
    env = dict(os.environ)
    if not args.device.startswith("cuda"):
        env["CUDA_VISIBLE_DEVICES"] = ""  # the Trainer picks CUDA whenever it sees one
    rows = []
    header = f"  {'stage':5s} {'variant':10s} {'step ms':>9s} {'samples/s':>10s} {'peak MB':>9s} {'GFLOP/step':>11s}"
    print(header + (f" {'MFU':>7s}" if peak else ""), flush=True)
    for stage in stages:
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--worker", stage, variant] + [
                a for k, v in [("--size", args.size), ("--device", args.device), ("--dtype", args.dtype),
                               ("--batch", str(args.batch)), ("--steps", str(args.steps)),
                               ("--warmup", str(args.warmup))] for a in (k, v)]
            cmd += ["--resolution", str(args.resolution)] if args.resolution else []
            cmd += [] if args.checkpointing else ["--no-checkpointing"]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"stage {stage} / {variant} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["mfu"] = r["flops_per_step"] / r["median_s"] / (peak * 1e12) if peak else None
            rows.append(r)
            line = f"  {stage:5s} {variant:10s} {r['median_s'] * 1e3:9.1f} {r['samples_per_s']:10.2f} " \
                   f"{r['peak_mb']:9.1f} {r['flops_per_step'] / 1e9:11.3f}"
            print(line + (f" {r['mfu'] * 100:6.2f}%" if peak else ""), flush=True)
    first = rows[0]
    extra = f", prompt {first['prompt_tokens']} tokens + queries" if "prompt_tokens" in first else ""
    print(f"\n{first['model']} at {first['resolution']} px on {args.device} ({args.dtype}, batch {args.batch}, "
          f"{args.steps} timed steps{extra}); ratios vs the last-layer baseline:")
    for stage in stages:
        r = {row["variant"]: row for row in rows if row["stage"] == stage}
        base = r["last-layer"]
        for v in ("reference", "prefuse"):
            print(f"  stage {stage:2s} {v:10s} time x{r[v]['median_s'] / base['median_s']:.2f}  "
                  f"peak memory x{r[v]['peak_mb'] / max(base['peak_mb'], 1e-9):.2f}  "
                  f"FLOPs x{r[v]['flops_per_step'] / max(base['flops_per_step'], 1):.2f}  "
                  f"trainable {r[v]['trainable'] / 1e6:.2f}M")
    from parauni.utils.flops import METHOD

    print(f"\nGPU: {gpu or 'none (' + args.device + ')'}; "
          + (f"MFU peak {peak:g} TFLOP/s ({peak_source})" if peak else f"MFU not shown: {peak_source}")
          + f".\nFLOPs: {METHOD}" + ("; real size: batch 1 without checkpointing, times the batch."
                                      if args.size != "tiny" else "."))
    if args.json:
        meta = dict(size=args.size, device=args.device, dtype=args.dtype, batch=args.batch, steps=args.steps,
                    warmup=args.warmup, checkpointing=args.checkpointing and args.size != "tiny", gpu=gpu,
                    peak_tflops=peak, peak_source=peak_source, flop_count_method=METHOD)
        with open(args.json, "w") as f:
            json.dump(dict(meta, rows=rows), f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
