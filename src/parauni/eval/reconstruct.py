"""Image reconstruction through the VLM (supplementary Table 2): PSNR, SSIM and CLIP image-image similarity.

Each input image goes through the pipeline with the instruction ``"Keep the image as it is."``; the
reconstruction is generated at the model's native resolution (or ``resolution``) and resized (bicubic) to
the input's size, where the metrics are taken.

Classifier-free guidance follows OpenUni's image-editing script (wusize/OpenUni at d1703fc,
``scripts/image_edit.py``): there the unconditional branch keeps the input image and only swaps the
instruction for ``--cfg_prompt`` (lines 48-56 build both prompts around the same image tokens, line 65 fills
the image features into both rows, and ``src/models/openuni/internvl3_sana_hf.py`` lines 384-387 pass the
first half as the condition and the second as the negative), and ``--cfg_prompt`` defaults to the same
``"Keep the image as it is."`` as ``--prompt`` (lines 17-18).  So by default both branches are one condition
and reconstruction is unguided whatever the guidance scale (up to float rounding); here too, with both
branches run as there.  ``cfg_prompt`` (``--cfg-prompt``) sets another instruction for the unconditional
branch, still with the image; ``cfg_text_only`` (``--cfg-text-only``) instead drops the image from the
unconditional branch and uses the text-only unconditional prompt (``"Generate an image."``), which makes
the guidance act.  ``summary.json`` records the branch used under ``settings``: ``cfg_branch`` (``"image"``
or ``"text-only"``) and ``cfg_instruction`` (the unconditional branch's instruction; ``null`` for the
text-only branch).

All metrics are per image, then averaged:

* PSNR on [0, 1] images (data range 1), ``10 log10(1 / MSE)`` over all pixels and channels.  Identical
  images would give infinity; per-image values are capped at ``PSNR_CAP`` = 100 dB (MSE floored at 1e-10)
  so that means and JSON stay finite.
* SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1, the SSIM map taken
  over the reflect-padded image (torchmetrics' convention, so the map has the image's size), averaged over
  pixels and channels.  Images need sides of at least 6 px.
* CLIP similarity: cosine between the image embeddings of input and reconstruction, from a
  ``transformers.CLIPModel`` (hub id or folder; images resized on the short side to the model's size,
  centre-cropped, normalised with CLIP's mean and std), or a registered embedder
  (:data:`parauni.registry.IMAGE_EMBEDDERS`, e.g. a plugin's own image encoder).
"""

from __future__ import annotations

import gc
import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPModel

from ..errors import UsageError
from ..pipelines.loading import load_pipeline
from ..pipelines.pipeline_parauni import RECONSTRUCT_INSTRUCTION
from ..registry import IMAGE_EMBEDDERS, family_of
from ..utils.images import load_image, to_rgb

logger = logging.getLogger(__name__)

PSNR_CAP = 100.0
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
METRICS = (("psnr", "PSNR"), ("ssim", "SSIM"), ("clip_sim", "CLIP-sim"))


def to_tensor(images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    """Equally sized RGB images -> ``(B, 3, H, W)`` float32 in [0, 1]."""
    arrays = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.float32)
              for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, cap: float = PSNR_CAP) -> torch.Tensor:
    """Per-image PSNR in dB of ``(B, C, H, W)`` tensors, capped at ``cap`` (identical images give ``cap``)."""
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    floor = data_range ** 2 * 10 ** (-cap / 10)
    return (10 * torch.log10(data_range ** 2 / mse.clamp(min=floor))).clamp(max=cap).float()


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float64) -> torch.Tensor:
    """A normalised ``(size, size)`` Gaussian window."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM of ``(B, C, H, W)`` tensors: Gaussian window, reflect padding, mean over channels/pixels."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"SSIM needs two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    pad = window // 2
    if min(a.shape[-2:]) <= pad:
        raise ValueError(f"SSIM with a {window}x{window} window needs images of at least {pad + 1} px a side, "
                         f"got {a.shape[-2]}x{a.shape[-1]}")
    c = a.shape[1]
    a, b = a.double(), b.double()
    kernel = gaussian_window(window, sigma).expand(c, 1, window, window)
    x = torch.cat([a, b, a * a, b * b, a * b])
    x = F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), kernel, groups=c)
    mu_a, mu_b, e_aa, e_bb, e_ab = x.split(a.shape[0])
    var_a = (e_aa - mu_a ** 2).clamp(min=0)
    var_b = (e_bb - mu_b ** 2).clamp(min=0)
    cov = e_ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.flatten(1).mean(1).float()


class ClipImageEmbedder:
    """Unit image embeddings from a ``transformers.CLIPModel`` (hub id or folder)."""

    def __init__(self, source: str, device: str = "cpu"):
        self.name = source
        registered = "".join(f", --clip {name}" for name in IMAGE_EMBEDDERS)  # a plugin's embedders
        hint = f"pass --clip PATH (a local CLIPModel folder){registered} or --clip none"
        try:  # the local cache first: no network round trip, and offline machines get the hint at once
            model = CLIPModel.from_pretrained(source, dtype=torch.float32, local_files_only=True)
        except OSError:
            logger.warning("CLIP model %r is not in the local cache; fetching it from the Hub (offline? %s)",
                           source, hint)
            try:
                model = CLIPModel.from_pretrained(source, dtype=torch.float32)
            except OSError as err:
                first = str(err).splitlines()[0]
                raise UsageError(f"cannot load the CLIP model {source!r} ({first}); {hint}") from None
        self.model = model.to(device).eval().requires_grad_(False)
        self.size = int(self.model.config.vision_config.image_size)
        self.device = device

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = []
        for im in images:
            im = to_rgb(im)
            scale = self.size / min(im.size)
            w, h = max(self.size, round(im.width * scale)), max(self.size, round(im.height * scale))
            im = im.resize((w, h), Image.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            out.append(im.crop((left, top, left + self.size, top + self.size)))
        x = to_tensor(out)
        return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=self.preprocess(images).to(self.device))
        feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(feats.float(), dim=-1).cpu()


def load_embedder(spec: str | None, default: str | None = None, device: str = "cpu"):
    """The image embedder of ``--clip``: ``None`` -> ``default`` (a model family's embedder) or ``DEFAULT_CLIP``;
    ``none`` (no CLIP metric); a registered embedder ``NAME`` or ``NAME:PATH``
    (:data:`parauni.registry.IMAGE_EMBEDDERS`, a plugin's); or a ``CLIPModel`` hub id / folder."""
    spec = spec or default or DEFAULT_CLIP
    if spec.lower() == "none":
        return None
    name, _, path = spec.partition(":")
    if name in IMAGE_EMBEDDERS:
        return IMAGE_EMBEDDERS.get(name)(path or None, device=device)
    return ClipImageEmbedder(spec, device)


def clip_similarity(embedder, a: Sequence[Image.Image], b: Sequence[Image.Image]) -> torch.Tensor:
    """Per-pair cosine between the image embeddings of ``a[i]`` and ``b[i]``."""
    return (embedder(list(a)) * embedder(list(b))).sum(-1)


def read_images(folder: str | Path) -> tuple[list[tuple[str, Image.Image]], list[dict]]:
    """``([(name, RGB image)], skipped)``: every image file in ``folder`` (sorted); unreadable ones are
    skipped with a warning and listed as ``{"file", "error"}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    images, skipped = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            images.append((path.name, load_image(path)))
        except (ValueError, OSError) as err:
            skipped.append({"file": path.name, "error": str(err)})
    if skipped:
        logger.warning("skipped %d unreadable image(s) in %s: %s", len(skipped), folder,
                       ", ".join(s["file"] for s in skipped))
    if not images:
        raise UsageError(f"no readable images in {str(folder)!r}")
    return images, skipped


def cfg_settings(cfg_prompt: str | None = None, cfg_text_only: bool = False) -> dict:
    """The unconditional branch as recorded in ``summary.json``: ``cfg_branch`` and ``cfg_instruction``."""
    if cfg_text_only and cfg_prompt is not None:
        raise UsageError("--cfg-prompt is the instruction of the image-keeping unconditional branch; "
                         "it cannot be combined with --cfg-text-only")
    if cfg_text_only:
        return {"cfg_branch": "text-only", "cfg_instruction": None}
    return {"cfg_branch": "image", "cfg_instruction": cfg_prompt or RECONSTRUCT_INSTRUCTION}


def reconstruct(pipe, images: Sequence[Image.Image], steps: int = 20, guidance: float = 4.5, seed: int = 0,
                batch_size: int = 8, resolution: int | None = None, cfg_prompt: str | None = None,
                cfg_text_only: bool = False) -> list[Image.Image]:
    """Reconstructions of ``images`` (image ``i`` seeded with ``seed + i``), each resized to its input's size.

    The unconditional branch keeps the image with the instruction ``cfg_prompt`` (default: the conditional
    instruction, so guidance has no effect); ``cfg_text_only`` drops the image and uses the text-only
    unconditional prompt instead.
    """
    cfg_settings(cfg_prompt, cfg_text_only)  # rejects a contradictory pair
    pipe.set_progress_bar_config(disable=True)
    out: list[Image.Image] = []
    for s in range(0, len(images), batch_size):
        chunk = list(images[s:s + batch_size])
        gens = [torch.Generator().manual_seed(seed + s + j) for j in range(len(chunk))]
        recon = pipe(prompt=RECONSTRUCT_INSTRUCTION, image=chunk, num_inference_steps=steps,
                     guidance_scale=guidance, generator=gens, height=resolution, width=resolution,
                     negative_prompt=cfg_prompt, negative_image=not cfg_text_only).images
        out += [r.convert("RGB").resize(im.size, Image.BICUBIC) if r.size != im.size else r.convert("RGB")
                for r, im in zip(recon, chunk, strict=True)]
    return out


def score_pairs(inputs: Sequence[Image.Image], recons: Sequence[Image.Image], embedder=None) -> dict[str, list[float]]:
    """Per-image ``psnr``, ``ssim`` (and ``clip_sim`` with an embedder) between inputs and reconstructions."""
    scores: dict[str, list[float]] = {"psnr": [], "ssim": []}
    for x, y in zip(inputs, recons, strict=True):
        a, b = to_tensor([x]), to_tensor([y])
        scores["psnr"].append(float(psnr(a, b)[0]))
        scores["ssim"].append(float(ssim(a, b)[0]))
    if embedder is not None:
        scores["clip_sim"] = clip_similarity(embedder, inputs, recons).tolist()
    return scores


def format_table(models: dict[str, dict]) -> str:
    """Markdown table: one row per model, columns PSNR / SSIM / CLIP-sim (``–`` where missing)."""
    lines = ["| model | " + " | ".join(label for _, label in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name, row in models.items():
        cells = [f"{row[k]:.3f}" if isinstance(row.get(k), (int, float)) and math.isfinite(row[k]) else "–"
                 for k, _ in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "model"


def evaluate_reconstruction(models: Sequence[str], image_dir: str | Path, out_dir: str | Path,
                            clip: str | None = None, steps: int = 20, guidance: float = 4.5, seed: int = 0,
                            batch_size: int = 8, resolution: int | None = None, device: str | None = None,
                            load=None, cfg_prompt: str | None = None, cfg_text_only: bool = False,
                            dtype: str = "auto") -> dict:
    """Reconstruct every image of ``image_dir`` with each model; write ``<out>/<model>/`` reconstructions,
    ``per_image.jsonl``, ``summary.json`` and ``table.md``; return the summary.

    ``load(model) -> pipeline`` defaults to :func:`parauni.pipelines.loading.load_pipeline`.
    ``cfg_prompt`` / ``cfg_text_only``: the unconditional branch, as in :func:`reconstruct`.
    """
    cfg = cfg_settings(cfg_prompt, cfg_text_only)
    if load is None:
        load = lambda m: load_pipeline(m, dtype=dtype, device=device)
    if not models:
        raise UsageError("give at least one --model")
    named = dict.fromkeys(models)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items, skipped = read_images(image_dir)
    names, inputs = [n for n, _ in items], [im for _, im in items]
    embedder, defaults, rows, per_image = None, set(), {}, []
    recons_by_model: dict[str, list[Image.Image]] = {}
    for model in tqdm(list(named), desc="models", unit="model"):
        pipe = load(model)
        family = family_of(pipe)
        defaults.add(family.embedder if family else None)
        recons_by_model[model] = reconstruct(pipe, inputs, steps, guidance, seed, batch_size, resolution,
                                             cfg_prompt, cfg_text_only)
        del pipe
        gc.collect()
    # a family's own encoder only when every model is of that family
    embedder = load_embedder(clip, next(iter(defaults)) if len(defaults) == 1 else None, device=device or "cpu")
    used_dirs: set[str] = set()
    for model, recons in recons_by_model.items():
        folder = _slug(model)
        while folder in used_dirs:
            folder += "_"
        used_dirs.add(folder)
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name, im in zip(names, recons, strict=True):
            im.save(out / folder / f"{Path(name).stem}.png")
        scores = score_pairs(inputs, recons, embedder)
        rows[model] = {k: float(np.mean(v)) for k, v in scores.items()}
        rows[model].update(n_images=len(names), folder=folder)
        per_image += [{"model": model, "image": n, **{k: v[i] for k, v in scores.items()}}
                      for i, n in enumerate(names)]
    summary = {
        "models": rows, "n_images": len(names), "skipped": skipped, "n_skipped": len(skipped),
        "clip": getattr(embedder, "name", None), "psnr_cap": PSNR_CAP,
        "settings": {"steps": steps, "guidance": guidance, "seed": seed, "resolution": resolution,
                     "instruction": RECONSTRUCT_INSTRUCTION, **cfg},
    }
    (out / "per_image.jsonl").write_text("".join(json.dumps(r) + "\n" for r in per_image))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(format_table(rows) + "\n")
    return summary


def describe_cfg(settings: dict, guidance: float) -> str:
    """One line on the unconditional branch used, for the command's output."""
    if settings.get("cfg_branch") == "text-only":
        return f"scale {guidance:g}, unconditional branch text-only (image dropped, the unconditional prompt)"
    instruction = settings.get("cfg_instruction")
    same = " = the conditional branch, so unguided" if instruction == settings.get("instruction") else ""
    return f"scale {guidance:g}, unconditional branch keeps the image with {instruction!r}{same}"


def run(args) -> None:
    """``parauni eval reconstruct``."""
    guidance = 4.5 if args.guidance is None else args.guidance
    summary = evaluate_reconstruction(args.model, args.images, args.out, args.clip, args.steps, guidance,
                                      args.seed, args.batch_size, args.resolution, args.device,
                                      cfg_prompt=args.cfg_prompt, cfg_text_only=args.cfg_text_only,
                                      dtype=getattr(args, "dtype", "auto"))
    print(format_table(summary["models"]))
    note = f"; {summary['n_skipped']} unreadable image(s) skipped" if summary["n_skipped"] else ""
    print(f"\n{summary['n_images']} image(s), CLIP: {summary['clip']}{note}; PSNR capped at {PSNR_CAP:g} dB")
    print(f"CFG: {describe_cfg(summary['settings'], guidance)}")
    print(f"reconstructions, per_image.jsonl, summary.json and table.md in {args.out}")
