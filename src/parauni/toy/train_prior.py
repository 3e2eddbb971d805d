"""``parauni toy pretrain-prior``: pre-train the toy diffusion prior on the toy world.

One command trains, in order: (latent space only) a tiny ``AutoencoderDC`` (32x32x3 -> 8x8xc) on
toy images, then the ``SanaTransformer2DModel`` together with its :class:`ToyTextEncoder` by
rectified flow. Flow times of the prior's own pre-training are logit-normal (SD3's choice, more
weight on mid-noise where layouts and shapes form; ParaUni's own stages keep uniform times).
10% of captions are replaced by the unconditional (empty) prompt. An EMA of the weights is what
gets saved. Every argument and the exact command go to ``train_config.json``; progress to
``train_log.txt``.
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
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from tqdm.auto import tqdm

from parauni.flow import TIMESTEP_SAMPLINGS, flow_loss, interpolate, sample_sigmas, sigma_to_timestep
from parauni.models.presets import SANA_SCHEDULER
from parauni.toy.config import PRIOR_FLAGS, add_config_options, config_from_args, flat, load_pretrain_prior_config
from parauni.toy.data import ToyStream
from parauni.toy.prior import UNCOND_PROMPT, ToyPrior, ToyTextEncoder
from parauni.toy.resume import RESUME_FLAGS, Checkpointer, SittingOver, add_resume_options, rng_state, set_rng_state
from parauni.toy.tokenizer import build_toy_tokenizer
from parauni.train.config import save_config
from parauni.train.optim import cosine, decay_groups

from ..errors import ConfigError


def build_vae(latent_channels: int = 8, width: int = 32) -> AutoencoderDC:
    """A tiny ResBlock ``AutoencoderDC``: ``(B, 3, 32, 32)`` -> ``(B, latent_channels, 8, 8)``."""
    chans = (width, 2 * width, 4 * width)
    return AutoencoderDC(
        in_channels=3, latent_channels=latent_channels, attention_head_dim=8, encoder_block_types="ResBlock",
        decoder_block_types="ResBlock", encoder_block_out_channels=chans, decoder_block_out_channels=chans,
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), ()), decoder_qkv_multiscales=((), (), ()),
        upsample_block_type="interpolate", downsample_block_type="Conv", scaling_factor=1.0)


def build_prior(space: str = "latent", hidden: int = 128, layers: int = 4, patch: int | None = None,
                caption_channels: int = 64, text_width: int = 64, text_depth: int = 2, latent_channels: int = 8,
                vae_width: int = 32, flow_shift: float = 1.0, guidance_scale: float = 4.5, seed: int = 0,
                tokenizer=None, world: str = "v1") -> ToyPrior:
    """A freshly initialised prior (pixel space: ``patch`` default 4; latent: 8x8 latents, ``patch`` 1).

    ``tokenizer`` defaults to :func:`build_toy_tokenizer` of ``world``.
    """
    torch.manual_seed(seed)
    tokenizer = tokenizer if tokenizer is not None else build_toy_tokenizer(world)
    vae = build_vae(latent_channels, vae_width) if space == "latent" else None
    channels, size = (latent_channels, 8) if vae is not None else (3, 32)
    patch = patch or (1 if vae is not None else 4)
    heads = max(hidden // 32, 1)
    transformer = SanaTransformer2DModel(
        in_channels=channels, out_channels=channels, num_attention_heads=heads, attention_head_dim=hidden // heads,
        num_layers=layers, num_cross_attention_heads=heads, cross_attention_head_dim=hidden // heads,
        cross_attention_dim=hidden, caption_channels=caption_channels, sample_size=size, patch_size=patch)
    text_encoder = ToyTextEncoder(vocab_size=len(tokenizer), width=text_width, depth=text_depth,
                                  num_heads=max(text_width // 16, 1), ffn_dim=4 * text_width,
                                  caption_channels=caption_channels)
    scheduler = DPMSolverMultistepScheduler(**{**SANA_SCHEDULER, "flow_shift": flow_shift})
    return ToyPrior(tokenizer, text_encoder, transformer, vae, scheduler, guidance_scale=guidance_scale)


class Budget:
    """Training progress in [0, 1] by steps and/or wall minutes, whichever runs out first."""

    def __init__(self, steps: int | None, minutes: float | None, step: int = 0, elapsed: float = 0.0) -> None:
        if not steps and not minutes:
            raise ConfigError("give a number of steps or minutes")
        self.steps, self.seconds, self.step = steps, (minutes or 0) * 60, step
        self.start = time.time() - elapsed  # a resumed run counts the wall time of its earlier sittings

    @property
    def progress(self) -> float:
        by_steps = self.step / self.steps if self.steps else 0.0
        by_time = (time.time() - self.start) / self.seconds if self.seconds else 0.0
        return min(max(by_steps, by_time), 1.0)

    def lr_factor(self, warmup: int) -> float:
        """Linear warm-up over ``warmup`` steps times a cosine decay to 0 over the progress, which counts steps
        or wall time (``--minutes``), whichever is further: the two overlap, unlike :func:`warmup_cosine`."""
        return min(1.0, (self.step + 1) / max(warmup, 1)) * cosine(self.progress)


def batches(seed: int, batch_size: int, template_prob: float, world: str = "v1", start: int = 0
            ) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless ``(images (B, 3, 32, 32) in [-1, 1], captions)`` from :class:`ToyStream` of ``world``, from batch
    ``start`` on."""
    stream = iter(ToyStream(seed=seed, template_prob=template_prob, world=world, start=start * batch_size))
    while True:
        items = [next(stream) for _ in range(batch_size)]
        yield torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def flow_step(prior: ToyPrior, images: torch.Tensor, captions: list[str], generator: torch.Generator,
              timesteps: str = "logit-normal", uncond_prob: float = 0.1) -> torch.Tensor:
    """The rectified-flow loss of one batch (captions dropped to the empty prompt with ``uncond_prob``)."""
    drop = torch.rand(len(captions), generator=generator) < uncond_prob
    captions = [UNCOND_PROMPT if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
    ids, mask = prior.text_encoder.tokenize(prior.tokenizer, captions)
    cond, mask = prior.text_encoder(ids, mask)  # (B, T+1, C), (B, T+1)
    with torch.no_grad():
        x0 = prior.to_latents(images)  # (B, c, h, w)
    noise = torch.randn(x0.shape, generator=generator)
    sigma = sample_sigmas(x0.shape[0], generator, mode=timesteps)
    v = prior.transformer(interpolate(x0, noise, sigma), encoder_hidden_states=cond, encoder_attention_mask=mask,
                          timestep=sigma_to_timestep(sigma), return_dict=False)[0]
    return flow_loss(v, x0, noise)


def make_optimizer(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on >=2-D parameters only, betas (0.9, 0.95)."""
    return torch.optim.AdamW(decay_groups(params, weight_decay), lr=lr, betas=(0.9, 0.95))


class Logger:
    """Appends lines to ``train_log.txt`` and mirrors them above the progress bar."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        with self.path.open("a") as f:
            f.write(line + "\n")
        tqdm.write(line)


def train_autoencoder(vae: AutoencoderDC, args: argparse.Namespace, log: Logger, sitting: Checkpointer | None = None,
                      loaded: tuple[dict, dict] | None = None) -> None:
    """Train the VAE on toy images (L1 + MSE), then set ``scaling_factor`` to 1 / latent std. ``sitting``
    checkpoints (phase ``ae``); ``loaded``: a phase-``ae`` checkpoint to continue from."""
    opt = make_optimizer(list(vae.parameters()), args.ae_lr, 0.0)
    budget = Budget(args.ae_steps, args.ae_minutes)
    if loaded is not None:
        tensors, state = loaded
        vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")})
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        budget = Budget(args.ae_steps, args.ae_minutes, state["step"], state["elapsed"])
    data = batches(args.seed + 1, args.batch_size, args.template_prob, args.world, budget.step)
    bar = tqdm(desc="autoencoder", unit="it")
    vae.train()
    while budget.progress < 1:
        for g in opt.param_groups:
            g["lr"] = args.ae_lr * budget.lr_factor(args.warmup)
        images, _ = next(data)
        recon = vae.decode(vae.encode(images).latent).sample
        loss = (recon - images).abs().mean() + ((recon - images) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        budget.step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        if budget.step % args.log_every == 0:
            log(f"ae step {budget.step} loss {loss.item():.5f} elapsed {time.time() - budget.start:.0f}s")
        if sitting is not None:
            sitting.after_step(budget.step, lambda: ({f"vae.{k}": v for k, v in vae.state_dict().items()}, {
                "optimizer": opt.state_dict(), "rng": rng_state(), "elapsed": time.time() - budget.start}),
                phase="ae", last=budget.progress >= 1)
    bar.close()
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        images, _ = next(batches(args.seed + 2, 512, args.template_prob, args.world))
        z = vae.encode(images).latent
        mse = ((vae.decode(z).sample - images) ** 2).mean().item()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    log(f"ae done: {budget.step} steps, recon mse {mse:.5f}, latent std {z.std().item():.4f}")


def prior_tensors(prior: ToyPrior) -> dict[str, torch.Tensor]:
    """Every weight of ``prior`` by ``<component>.<name>``."""
    parts = {"transformer": prior.transformer, "text_encoder": prior.text_encoder, "vae": prior.vae}
    return {f"{name}.{k}": v for name, m in parts.items() if m is not None for k, v in m.state_dict().items()}


def load_prior_tensors(prior: ToyPrior, tensors: dict[str, torch.Tensor]) -> None:
    """Load what :func:`prior_tensors` returned (other keys are ignored)."""
    parts = {"transformer": prior.transformer, "text_encoder": prior.text_encoder, "vae": prior.vae}
    for name, m in parts.items():
        if m is not None:
            m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})


def train_diffusion(prior: ToyPrior, args: argparse.Namespace, log: Logger, sitting: Checkpointer | None = None,
                    loaded: tuple[dict, dict] | None = None) -> None:
    """Train transformer + text encoder by rectified flow; the EMA weights are copied in at the end. ``sitting``
    checkpoints (phase ``diffusion``); ``loaded``: a phase-``diffusion`` checkpoint to continue from."""
    params = list(prior.transformer.parameters()) + list(prior.text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = make_optimizer(params, args.lr, args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    budget, running = Budget(args.steps, args.minutes), 0.0
    if loaded is not None:
        tensors, state = loaded
        for i, e in enumerate(ema):
            e.copy_(tensors[f"ema.{i}"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        set_rng_state(state["rng"])
        budget = Budget(args.steps, args.minutes, state["step"], state["elapsed"])
        running = state["running"]
    data = batches(args.seed, args.batch_size, args.template_prob, args.world, budget.step)
    prior.transformer.train()
    prior.text_encoder.train()
    bar = tqdm(desc="prior", unit="it", initial=budget.step)
    while budget.progress < 1:
        lr = args.lr * budget.lr_factor(args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        images, captions = next(data)
        loss = flow_step(prior, images, captions, gen, args.timesteps, args.uncond_prob)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        budget.step += 1
        decay = min(args.ema, (1 + budget.step) / (10 + budget.step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        running = loss.item() if budget.step == 1 else 0.98 * running + 0.02 * loss.item()
        bar.update()
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.2e}")
        if budget.step % args.log_every == 0:
            rate = budget.step / (time.time() - budget.start)
            log(f"step {budget.step} loss {running:.5f} lr {lr:.2e} it/s {rate:.2f} "
                f"elapsed {time.time() - budget.start:.0f}s")
        if sitting is not None:
            sitting.after_step(budget.step, lambda r=running: (
                {**prior_tensors(prior), **{f"ema.{i}": e for i, e in enumerate(ema)}},
                {"optimizer": opt.state_dict(), "generator": gen.get_state(), "rng": rng_state(), "running": r,
                 "elapsed": time.time() - budget.start,
                 "scaling_factor": float(prior.vae.config.scaling_factor) if prior.vae is not None else 1.0}),
                phase="diffusion", last=budget.progress >= 1)
    bar.close()
    with torch.no_grad():
        for p, e in zip(params, ema, strict=True):
            p.copy_(e)
    prior.transformer.eval()
    prior.text_encoder.eval()
    log(f"prior done: {budget.step} steps in {time.time() - budget.start:.0f}s")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pretrain-prior`` on an argparse ``subparsers`` object. Every flag names a key of
    :class:`parauni.toy.config.PretrainPriorConfig` (defaults there); ``--config`` and ``key=value`` overrides
    set any key."""
    p = subparsers.add_parser("pretrain-prior", help="pre-train the toy diffusion prior (SANA + text encoder)")
    p.add_argument("--out", help="output folder (default outputs/toy/prior)")
    p.add_argument("--space", choices=("latent", "pixel"), help="default latent")
    p.add_argument("--steps", type=int, help="diffusion steps (0: by --minutes only; default 1500)")
    p.add_argument("--minutes", type=float, help="wall-time cap for the diffusion phase")
    p.add_argument("--ae-steps", type=int, help="autoencoder steps (latent space; default 400)")
    p.add_argument("--ae-minutes", type=float, help="wall-time cap for the autoencoder phase")
    p.add_argument("--batch-size", type=int, help="default 64")
    p.add_argument("--lr", type=float, help="default 1e-3")
    p.add_argument("--ae-lr", type=float, help="default 2e-3")
    p.add_argument("--warmup", type=int, help="default 100")
    p.add_argument("--weight-decay", type=float, help="default 0.01")
    p.add_argument("--ema", type=float, help="default 0.999")
    p.add_argument("--timesteps", choices=TIMESTEP_SAMPLINGS, help="default logit-normal")
    p.add_argument("--uncond-prob", type=float, help="default 0.1")
    p.add_argument("--template-prob", type=float, help="share of GenEval-template captions (default 0.7)")
    p.add_argument("--hidden", type=int, help="default 128")
    p.add_argument("--layers", type=int, help="default 4")
    p.add_argument("--patch", type=int, help="patch size (default: 4 pixel, 1 latent)")
    p.add_argument("--caption-channels", type=int, help="default 64")
    p.add_argument("--text-width", type=int, help="default 64")
    p.add_argument("--text-depth", type=int, help="default 2")
    p.add_argument("--latent-channels", type=int, help="default 8")
    p.add_argument("--vae-width", type=int, help="default 32")
    p.add_argument("--flow-shift", type=float, help="sampling scheduler's flow shift (default 1.0)")
    p.add_argument("--guidance", type=float, help="default CFG scale saved with the prior (default 4.5)")
    p.add_argument("--eval-images", type=int, help="toy GenEval images per prompt after training (default 0)")
    p.add_argument("--eval-steps", type=int, help="default 20")
    p.add_argument("--fp16", action="store_true", default=None, help="save weights in float16")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--threads", type=int, help="default 2")
    p.add_argument("--log-every", type=int, help="default 50")
    add_resume_options(p)
    add_config_options(p, "toy_pretrain_prior.yaml")
    p.set_defaults(func=run)
    return p


def run(cli: argparse.Namespace) -> int:
    """Train and save the prior to ``train.output_dir`` (``--out``), with ``config.yaml``; returns 0. The config
    is ``--config`` (or the defaults), then the flags given, then ``key=value`` overrides."""
    cfg = config_from_args(cli, {**PRIOR_FLAGS, **RESUME_FLAGS}, load_pretrain_prior_config)
    args = argparse.Namespace(**flat(cfg, PRIOR_FLAGS))  # the flags' names, as the training functions read them
    world = cfg.data.world
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.train
    sitting = Checkpointer(out, {**vars(args), "world": world}, t.checkpoint_every, t.stop_after, t.resume)
    loaded = sitting.load()
    if loaded is None:
        (out / "train_log.txt").unlink(missing_ok=True)
    log = Logger(out / "train_log.txt")
    prog = Path(sys.argv[0]).name
    prog = "python -m parauni.toy.train_prior" if prog == "train_prior.py" else prog
    config = {"command": " ".join([prog, shlex.join(sys.argv[1:])]), **vars(args)}
    args.world = world  # after the record: v1 runs record what they always did
    if world != "v1":
        config["world"] = world
    (out / "train_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_config(cfg, out / "config.yaml")
    prior = build_prior(args.space, args.hidden, args.layers, args.patch, args.caption_channels, args.text_width,
                        args.text_depth, args.latent_channels, args.vae_width, args.flow_shift, args.guidance,
                        args.seed, world=world)
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in
         (("transformer", prior.transformer), ("text_encoder", prior.text_encoder), ("vae", prior.vae)) if m}
    log(f"command: {config['command']}\nparameters: {n}" if loaded is None else
        f"resumed at {loaded[1]['phase']} step {loaded[1]['step']}: {config['command']}")
    try:
        if loaded is not None and loaded[1]["phase"] == "diffusion":
            load_prior_tensors(prior, loaded[0])
            if prior.vae is not None:
                prior.vae.eval().requires_grad_(False)
                prior.vae.register_to_config(scaling_factor=loaded[1]["scaling_factor"])
        elif prior.vae is not None:
            train_autoencoder(prior.vae, args, log, sitting, loaded)
            loaded = None
        train_diffusion(prior, args, log, sitting, loaded)
    except SittingOver as over:
        log(f"sitting over after step {over.step}; continue with --resume")
        return 0
    prior.extra = {"train_seconds": round(time.time() - start, 1), "parameters": n}
    prior.save_pretrained(out, fp16=args.fp16)
    log(f"saved to {out} after {time.time() - start:.0f}s")
    if args.eval_images:
        summary = prior.geneval(images_per_prompt=args.eval_images, num_inference_steps=args.eval_steps, world=world)
        (out / "geneval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log("toy geneval: " + json.dumps({k: round(v, 3) for k, v in summary["tasks"].items()}) +
            f" overall {summary['overall']:.3f}")
    log(f"total wall time {time.time() - start:.0f}s")
    sitting.finish()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m parauni.toy.train_prior")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    cli_args = parser.parse_args(["pretrain-prior", *sys.argv[1:]])
    sys.exit(run(cli_args))
