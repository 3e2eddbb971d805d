"""The toy diffusion prior: a tiny SANA transformer with its own small text encoder.

As SANA was pre-trained with its own text encoder, the toy prior is pre-trained with
:class:`ToyTextEncoder` (``parauni toy pretrain-prior``); stage I then replaces the text encoder by
the VLM + queries + LIM, whose output width must equal ``transformer.config.caption_channels``.

The folder written by training holds ``transformer/`` (``SanaTransformer2DModel``), ``text_encoder/``
(:class:`ToyTextEncoder`), ``tokenizer/``, ``scheduler/`` (DPM-Solver++ flow scheduler with the flow
shift chosen for 32 px) and, for a latent-space prior, ``vae/`` (``AutoencoderDC``); without ``vae/``
the prior works in pixel space (images in [-1, 1] are the "latents").

The unconditional (CFG) text is the empty string: the text encoder always prepends a learned start
token, so ``""`` encodes to that single token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from tqdm.auto import tqdm

from parauni.toy.data import to_image
from parauni.toy.geneval import load_toy_geneval, score_image, summarize, write_geneval_layout

from ..sampling import sample_flow

UNCOND_PROMPT = ""
DEFAULT_PATH = Path(__file__).parent / "weights" / "prior"
DEFAULT_GUIDANCE = 4.5


class TextEncoderLayer(nn.Module):
    """Pre-LN bidirectional encoder layer whose attention ignores padded keys."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, D), (B, T) -> (B, T, D)
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        keep = mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # (B, H, T, D/H)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class ToyTextEncoder(ModelMixin, ConfigMixin):
    """Token embedding + learned positions + ``depth`` bidirectional layers -> ``caption_channels``.

    A learned start token is prepended to every prompt, so the empty (unconditional) prompt still
    has one valid position. Input ``(B, T)`` ids and mask; output ``(B, T + 1, caption_channels)``
    and the ``(B, T + 1)`` mask.
    """

    @register_to_config
    def __init__(self, vocab_size: int = 512, max_length: int = 24, width: int = 64, depth: int = 2,
                 num_heads: int = 4, ffn_dim: int = 256, caption_channels: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.start = nn.Parameter(torch.randn(width) * 0.02)
        self.pos = nn.Parameter(torch.randn(max_length + 1, width) * 0.02)
        self.layers = nn.ModuleList(TextEncoderLayer(width, num_heads, ffn_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, caption_channels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = input_ids.shape
        x = torch.cat([self.start.expand(b, 1, -1), self.embed(input_ids)], dim=1)  # (B, T+1, W)
        x = x + self.pos[: t + 1]
        mask = torch.cat([attention_mask.new_ones(b, 1), attention_mask], dim=1)  # (B, T+1)
        for layer in self.layers:
            x = layer(x, mask)
        return self.out(self.norm(x)), mask

    def tokenize(self, tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and mask ``(B, max_length)`` for ``prompts`` (``None`` -> unconditional)."""
        texts = [UNCOND_PROMPT if p is None else p for p in prompts]
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=self.config.max_length,
                        return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)


def _noise_for(index: int, seed: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``(n, *shape)`` starting noise of prompt ``index``; independent of batching."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn((n, *shape), generator=gen)


@dataclass
class ToyPrior:
    """The toy diffusion prior: tokenizer, text encoder, SANA transformer, VAE (or ``None``), scheduler."""

    tokenizer: object
    text_encoder: ToyTextEncoder
    transformer: SanaTransformer2DModel
    vae: AutoencoderDC | None
    scheduler: DPMSolverMultistepScheduler
    guidance_scale: float = DEFAULT_GUIDANCE
    extra: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the transformer's input."""
        s = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, s, s)

    @torch.no_grad()
    def encode(self, prompts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition ``(B, T+1, caption_channels)`` and mask ``(B, T+1)`` for ``prompts``."""
        ids, mask = self.text_encoder.tokenize(self.tokenizer, list(prompts))
        emb, mask = self.text_encoder(ids, mask)
        return emb.to(self.transformer.dtype), mask

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, 32, 32)`` in [-1, 1] -> the transformer's (scaled) latents."""
        if self.vae is None:
            return images
        return self.vae.encode(images.to(self.vae.dtype)).latent * self.vae.config.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images ``(B, 3, 32, 32)`` in [-1, 1]."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor, num_inference_steps: int = 20,
               guidance_scale: float | None = None) -> torch.Tensor:
        """Run the flow DPM-Solver++ loop from ``noise`` ``(B, C, h, w)``; returns final latents."""
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        do_cfg = scale != 1.0
        dtype = self.transformer.dtype
        latents = noise.to(self.device, dtype)
        if do_cfg:
            u_emb, u_mask = self.encode([UNCOND_PROMPT])
            cond = torch.cat([u_emb.expand(cond.shape[0], -1, -1), cond])  # (2B, T+1, C): uncond first
            mask = torch.cat([u_mask.expand(mask.shape[0], -1), mask])
        return sample_flow(self.transformer, self.scheduler, latents, cond, mask, num_inference_steps, scale)

    @torch.no_grad()
    def generate(self, prompts: list[str], num_inference_steps: int = 20, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> list[np.ndarray]:
        """Images for ``prompts`` as RGB uint8 ``(32, 32, 3)`` arrays (CFG with the empty prompt)."""
        cond, mask = self.encode(list(prompts))
        if noise is None:
            noise = torch.randn((len(prompts), *self.latent_shape), generator=generator)
        images = self.decode(self.sample(cond, mask, noise, num_inference_steps, guidance_scale))
        return [to_image(img) for img in images]

    @torch.no_grad()
    def geneval(self, metadata: list[dict] | None = None, images_per_prompt: int = 4, out_dir: str | Path | None = None,
                seed: int = 0, num_inference_steps: int = 20, guidance_scale: float | None = None,
                batch_size: int = 128, progress: bool = True, world: str | None = None) -> dict:
        """Generate toy GenEval with this prior and score it; returns :func:`summarize`'s dict.

        Prompt ``i``'s noise depends only on ``(seed, i)``. With ``out_dir`` the images are written in
        GenEval's layout and ``summary.json`` beside them. ``world``: the shipped prompts of that toy world when
        ``metadata`` is ``None`` (default v1).
        """
        metas = load_toy_geneval(world=world) if metadata is None else list(metadata)
        jobs = [(i, k) for i in range(len(metas)) for k in range(images_per_prompt)]
        noise = torch.cat([_noise_for(i, seed, images_per_prompt, self.latent_shape) for i in range(len(metas))])
        images: list[list[np.ndarray]] = [[] for _ in metas]
        results = []
        bar = tqdm(total=len(jobs), desc="toy geneval", unit="img", disable=not progress)
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            out = self.generate([metas[i]["prompt"] for i, _ in chunk], num_inference_steps, guidance_scale,
                                noise=noise[start:start + len(chunk)])
            for (i, _), img in zip(chunk, out, strict=True):
                images[i].append(img)
                correct, reason, partial = score_image(img, metas[i])
                results.append({"tag": metas[i]["tag"], "prompt": metas[i]["prompt"], "correct": correct,
                                "reason": reason, "metadata": json.dumps(metas[i]), "partial": partial})
            bar.update(len(chunk))
        bar.close()
        summary = summarize(results)
        summary.update(images_per_prompt=images_per_prompt, num_inference_steps=num_inference_steps,
                       guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale, seed=seed)
        if out_dir is not None:
            write_geneval_layout(out_dir, metas, images)
            (Path(out_dir) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def save_pretrained(self, path: str | Path, fp16: bool = False) -> None:
        """Write every component (safetensors; fp16 weights with ``fp16``) and ``prior.json``."""
        path = Path(path)
        models = {"transformer": self.transformer, "text_encoder": self.text_encoder, "vae": self.vae}
        for name, model in models.items():
            if model is None:
                continue
            dtype = model.dtype
            model.to(torch.float16 if fp16 else torch.float32).save_pretrained(path / name, safe_serialization=True)
            model.to(dtype)
        self.tokenizer.save_pretrained(path / "tokenizer")
        self.scheduler.save_pretrained(path / "scheduler")
        info = {**self.extra, "guidance_scale": self.guidance_scale, "unconditional_prompt": UNCOND_PROMPT,
                "space": "pixel" if self.vae is None else "latent"}
        (path / "prior.json").write_text(json.dumps(info, indent=2) + "\n")


def load_prior(path: str | Path | None = None, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> ToyPrior:
    """Load a prior folder (default: the one shipped in ``parauni/toy/weights/prior``) in ``dtype``."""
    from .tokenizer import load_toy_tokenizer

    path = Path(path) if path is not None else DEFAULT_PATH
    if not (path / "transformer" / "config.json").is_file():
        raise FileNotFoundError(f"no toy prior at {path}; train one with `parauni toy pretrain-prior --out DIR` "
                                f"and pass DIR")
    info = json.loads((path / "prior.json").read_text()) if (path / "prior.json").is_file() else {}
    load = dict(dtype=dtype)
    transformer = SanaTransformer2DModel.from_pretrained(path / "transformer", **load).to(device).eval()
    text_encoder = ToyTextEncoder.from_pretrained(path / "text_encoder", **load).to(device).eval()
    vae = AutoencoderDC.from_pretrained(path / "vae", **load).to(device).eval() if (path / "vae").is_dir() else None
    scheduler = DPMSolverMultistepScheduler.from_pretrained(path / "scheduler")
    tokenizer = load_toy_tokenizer(path / "tokenizer")  # lowercases, warns about words outside the toy vocabulary
    return ToyPrior(tokenizer, text_encoder, transformer, vae, scheduler,
                    guidance_scale=float(info.get("guidance_scale", DEFAULT_GUIDANCE)), extra=info)


def is_prior_arg(model: str) -> bool:
    """``prior`` (the shipped toy prior) or a toy prior folder (one with ``text_encoder/``)."""
    return str(model) == "prior" or (Path(str(model)) / "text_encoder").is_dir()
