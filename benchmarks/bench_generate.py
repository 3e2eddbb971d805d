"""Generation latency and throughput of ``ParaUniPipeline``: warm ``--steps``-step text-to-image generation at
each batch size of ``--batch`` (batch 1 = the latency of one image), CFG on, decoding included.

    python benchmarks/bench_generate.py --size tiny                          # CPU smoke test (random tiny model)
    python benchmarks/bench_generate.py --size toy --batch 1,4               # the shipped toy model, CPU
    python benchmarks/bench_generate.py --size internvl3-2b_sana-1.6b_512 --device cuda --dtype bf16

``tiny`` is the random tiny pipeline, ``toy`` the shipped toy model (``toy-all-layers``); a real preset is built
at real size with random weights (``parauni.models.presets.build_preset``; no download) in ``--dtype`` with the
local byte-level tokenizer, so its timings are those of the real architecture (the 512-px preset: a 16x16x32
DC-AE latent, 20 steps) while its images are noise.  Each batch size runs ``--warmup`` untimed calls, then
``--repeats`` timed ones; the median is reported, split into the condition (VLM + LIM, both branches' prompts)
and the rest (sampling + decoding).  Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's
peak RSS on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import peak_mb, reset_peak, sync

PROMPT = "a red sports car on a wet cobblestone street at dusk, neon signs in the puddles"
TOY_PROMPT = "two red circles above a blue square"  # in the toy tokenizer's vocabulary


def build(args):
    import torch

    from parauni.pipelines.loading import load_pipeline, resolve_dtype

    dtype = resolve_dtype(args.dtype, args.device)
    if args.size in ("tiny", "toy"):
        pipe = load_pipeline("tiny" if args.size == "tiny" else "toy-all-layers", dtype=dtype, device=args.device)
    else:
        from parauni.models.presets import build_preset
        from parauni.models.tokenizer import build_tokenizer
        from parauni.pipelines.pipeline_parauni import ParaUniPipeline

        torch.manual_seed(0)
        parts = build_preset(args.size, device=args.device, dtype=dtype)
        pipe = ParaUniPipeline(tokenizer=build_tokenizer(), **parts)
        for m in (pipe.vlm, pipe.conditioner, pipe.transformer, pipe.vae):
            m.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe, dtype


def time_batch(pipe, args, batch: int) -> dict:
    import torch

    side = args.resolution or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    prompts = [TOY_PROMPT if args.size == "toy" else PROMPT] * batch

    def call():
        gens = [torch.Generator().manual_seed(i) for i in range(batch)]
        return pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance, height=side, width=side,
                    generator=gens, output_type="pt").images

    def encode():
        with torch.no_grad():
            pipe.encode_prompt(prompts)
            pipe.unconditional_condition()

    for _ in range(args.warmup):
        call()
    sync(args.device)
    reset_peak(args.device)
    totals, conds = [], []
    for _ in range(args.repeats):
        sync(args.device)
        t0 = time.perf_counter()
        encode()
        sync(args.device)
        t1 = time.perf_counter()
        call()
        sync(args.device)
        t2 = time.perf_counter()
        conds.append(t1 - t0)
        totals.append(t2 - t1)
    total = statistics.median(totals)
    cond = statistics.median(conds)
    return dict(batch=batch, resolution=side, seconds_per_call=round(total, 4), images_per_s=round(batch / total, 3),
                condition_s=round(cond, 4), sampling_and_decoding_s=round(max(total - cond, 0.0), 4),
                peak_mb=round(peak_mb(args.device), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", help="tiny, toy (the shipped toy model) or a real preset name")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                    help="weights' dtype (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,4")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.5)
    ap.add_argument("--resolution", type=int, help="square side in pixels (default: the model's native size)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    if not batches or min(batches) < 1 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        ap.error("--batch needs sizes >= 1; --steps and --repeats >= 1; --warmup >= 0")
    t0 = time.perf_counter()
    pipe, dtype = build(args)
    sync(args.device)
    info = dict(model=args.size, device=args.device, dtype=str(dtype).removeprefix("torch."), steps=args.steps,
                guidance=args.guidance, build_s=round(time.perf_counter() - t0, 2),
                gpu=torch.cuda.get_device_name() if str(args.device).startswith("cuda") else None)
    print(json.dumps(info))
    rows = []
    for b in batches:
        row = time_batch(pipe, args, b)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if len(rows) > 1:
        base = rows[0]["images_per_s"]
        for r in rows[1:]:
            print(f"batch {r['batch']}: {r['images_per_s'] / base:.2f}x the images/s of batch {rows[0]['batch']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(info=info, rows=rows), f, indent=2)


if __name__ == "__main__":
    main()
