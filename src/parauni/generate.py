"""``parauni generate`` and the demo: prompts in, images and a labelled grid out."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import UsageError
from .eval.geneval import format_table
from .pipelines.loading import load_pipeline
from .report import build_report
from .rl.config import load_grpo_config
from .rl.grpo import RLTrainer
from .toy.evaluation import random_latents_floor, toy_geneval
from .toy.models import TOY_MODEL_DIR, TOY_MODELS
from .toy.reproduce import config_file
from .utils.atomic import check_out_folder
from .utils.images import labelled_grid, load_image, save_png_atomic
from .utils.locks import hold_folder_lock


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n] or "image"


def generate_images(pipe, prompts: list[str], out: str | Path, image: str | None = None, seed: int = 0,
                    steps: int = 20, guidance: float = 4.5, height: int | None = None,
                    width: int | None = None, grid_scale: int = 1, progress: bool = True,
                    batch_size: int = 1, images_per_prompt: int = 1) -> list[Path]:
    """``images_per_prompt`` images per prompt, saved as PNGs plus ``grid.png``.

    Image ``k`` of prompt ``i`` is drawn from its own generator seeded ``seed + i * images_per_prompt + k``
    (one image per prompt: ``seed + i``), so it does not depend on ``batch_size``: up to ``batch_size`` images
    (whole prompts' worth where possible) go through one pipeline call, with one generator per image.
    ``progress``: a bar over the images and, below it, the pipeline's own bar over the denoising steps of the
    current batch (a large image takes long per step); ``False`` shows neither."""
    if batch_size < 1 or images_per_prompt < 1:
        raise UsageError(f"batch_size and images_per_prompt must be >= 1, got {batch_size} and {images_per_prompt}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    init = load_image(image) if image else None
    pipe.set_progress_bar_config(disable=not progress, desc="denoising", unit="step", leave=False)
    jobs = [(i, k) for i in range(len(prompts)) for k in range(images_per_prompt)]  # (prompt, image of it)
    paths, images, labels = [], [], []
    bar = tqdm(total=len(jobs), desc="generating", unit="image", disable=not progress)
    for a in range(0, len(jobs), batch_size):
        chunk = jobs[a:a + batch_size]
        texts = [prompts[i] for i, _ in chunk]
        gens = [torch.Generator().manual_seed(seed + i * images_per_prompt + k) for i, k in chunk]
        ims = pipe(texts, image=[init] * len(chunk) if init is not None else None, num_inference_steps=steps,
                   guidance_scale=guidance, height=height, width=width, generator=gens).images
        for (i, k), im in zip(chunk, ims, strict=True):
            name = f"{i:03d}_{slug(prompts[i])}" + (f"_{k}" if images_per_prompt > 1 else "")
            path = out / f"{name}.png"
            save_png_atomic(im, path)
            paths.append(path)
            images.append(im)
            labels.append(prompts[i])
        bar.update(len(chunk))
    bar.close()
    save_png_atomic(labelled_grid(images, labels, scale=grid_scale), out / "grid.png")
    return paths


MAX_SIZE_FACTOR = 4  # --height / --width beyond this many times the model's native side need --force


def check_size(pipe, height: int | None, width: int | None, force: bool = False) -> None:
    """Refuse a height or width over :data:`MAX_SIZE_FACTOR` times the model's native side (the transformer's
    sample size times the VAE's scale), before anything is allocated: such images are out of the range the model
    was trained on and their latents and attention can exhaust the memory. ``force`` allows them."""
    sample = getattr(getattr(getattr(pipe, "transformer", None), "config", None), "sample_size", None)
    if force or not isinstance(sample, int):
        return
    native = sample * getattr(pipe, "vae_scale_factor", 1)
    limit = MAX_SIZE_FACTOR * native
    big = [f"--{name} {value}" for name, value in (("height", height), ("width", width))
           if value is not None and value > limit]
    if big:
        raise UsageError(f"{' and '.join(big)}: over {MAX_SIZE_FACTOR}x this model's native {native}px side (at "
                         f"most {limit}); give a smaller size, or pass --force to try anyway")


def run_generate(args) -> None:
    """``parauni generate``: the images into ``--out``, whose lock is held throughout (another command writing
    there is refused, naming its PID)."""
    check_out_folder(args.out)
    with hold_folder_lock(args.out, "generation"):
        _generate(args)


def _generate(args) -> None:
    pipe = load_pipeline(args.model, dtype=getattr(args, "dtype", "auto"), device=args.device)
    check_size(pipe, args.height, args.width, force=getattr(args, "force", False))
    paths = generate_images(pipe, args.prompt, args.out, args.image, args.seed, args.steps, args.guidance,
                            args.height, args.width, progress=not getattr(args, "no_progress", False),
                            batch_size=getattr(args, "batch_size", 1),
                            images_per_prompt=getattr(args, "images_per_prompt", 1))
    print(f"wrote {len(paths)} image(s) and grid.png to {args.out}")


# configs/toy_nft_geneval_full.yaml (DiffusionNFT on the toy GenEval reward, a full fine-tune, 9 training points a
# sample), evaluated at guidance 1 only, 1 image a prompt; the demo's run is shorter (64 epochs against 150), so it
# takes the faster of the two pilot rates (1e-4; the config's 3e-5 keeps objects per image flatter over a long run)
# and torch's own thread count (train.threads unset: every core; `parauni demo --threads N` sets N)
DEMO_RL_CONFIG = "toy_nft_geneval_full.yaml"
DEMO_RL = ["model.source=toy-all-layers", "optim.lr=1e-4", "train.threads=null", "train.save_every=1000",
           "train.eval_geneval=true", "train.eval_images_per_prompt=1", "train.eval_guidance_scales=[1.0]",
           "train.logger=none"]


def run_demo(args) -> None:
    """The main job on a CPU: the shipped all-layer and last-layer toy models on toy GenEval, a stage-III phase
    (DiffusionNFT on the toy GenEval reward) from the all-layer model, and one report of it all."""
    check_out_folder(args.out)
    with hold_folder_lock(args.out, "demo"):
        _demo(args)


def _demo(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, runs = {}, []
    for name in TOY_MODELS:
        run = out / name
        (run / "eval").mkdir(parents=True, exist_ok=True)
        for f in ("config.yaml", "metrics.jsonl"):  # the stage-II run that made the shipped model
            shutil.copy(TOY_MODEL_DIR / TOY_MODELS[name] / f, run / f)
        print(f"[demo] toy GenEval of the shipped stage-II model {name} "
              f"({'all 300' if not args.limit else f'{args.limit} a task of the'} prompts x {args.images_per_prompt}, "
              f"{args.steps} steps)")
        rows[name] = toy_geneval(load_pipeline(name), run / "eval" / "geneval", args.images_per_prompt, args.steps,
                                 limit=args.limit, mode="refresh", name=name)
        runs.append(run)
    print("[demo] the floor: toy GenEval of decoded random latents (no denoising; all 300 prompts)")
    rows["floor: random latents"] = random_latents_floor(next(iter(TOY_MODELS)),
                                                         images_per_prompt=args.images_per_prompt)
    rl_dir = out / "rl_nft"
    if rl_dir.exists():
        shutil.rmtree(rl_dir)
    quick = [f"train.eval_steps={args.steps}"] + ([f"train.eval_limit={args.limit}"] if args.limit else [])
    cfg = load_grpo_config(config_file(DEMO_RL_CONFIG),
                           [*DEMO_RL, f"train.epochs={args.rl_epochs}", f"train.output_dir={rl_dir}", *quick])
    print(f"[demo] stage III, DiffusionNFT from toy-all-layers (configs/{DEMO_RL_CONFIG}, lr {cfg.optim.lr:g}): "
          f"{args.rl_epochs} epochs x {cfg.prompts.per_epoch} prompts x {cfg.sampling.group_size} images, rewards "
          f"{dict(cfg.rewards.weights)}")
    result = RLTrainer(cfg).run()
    runs.append(rl_dir)
    metrics = [json.loads(x) for x in (rl_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    html, md = build_report(runs, out / "report.html", title="ParaUni demo (toy world)")
    print(f"\nToy GenEval ({'300 prompts' if not args.limit else f'{args.limit} prompts a task'}, "
          "the shipped stage-II models):\n")
    print(format_table({k: v for k, v in rows.items()}))
    k = max(1, len(metrics) // 3)
    print(f"\nDiffusionNFT, mean rollout reward of the first {k} vs the last {k} epochs:")
    for key in [x for x in metrics[0] if x.startswith("reward/") and x != "reward/dropped"]:
        first = sum(r[key] for r in metrics[:k]) / k
        last = sum(r[key] for r in metrics[-k:]) / k
        print(f"  {key[7:]:<14} {first:9.4f} -> {last:9.4f}  ({last - first:+.4f})")
    if (rl_dir / "ldam.jsonl").is_file():
        fired = [json.loads(x) for x in (rl_dir / "ldam.jsonl").read_text().splitlines() if '"active": true' in x]
        print(f"  LDAM fired {len(fired)} time(s): " + ", ".join(f"epoch {d['epoch']} {d['reward']} (gamma "
                                                              f"{d['gamma']:.3g})" for d in fired[:6]))
    if "geneval_before" in result and "geneval_after" in result:
        n = cfg.train.eval_limit
        shown = f"first {n} prompt{'s' if n > 1 else ''} of each task" if n else "all prompts"
        print(f"\nToy GenEval before / after the RL phase ({shown} x 1 image, guidance 1):\n")
        print(format_table({"before RL": result["geneval_before"], "after RL (EMA)": result["geneval_after"]}))
    print(f"\nreport: {html}\n(Markdown twin: {md}; all outputs in {out})")
