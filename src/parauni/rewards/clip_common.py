"""Shared CLIP plumbing for the real rewards: loading, image preprocessing, unit embeddings.

Preprocessing is CLIP's, done here with PIL so it needs no torchvision and is the same everywhere:
resize the shortest side (bicubic), center crop, scale to [0, 1], normalise, as OpenAI CLIP's and open_clip's
torchvision pipeline ``Resize(size, BICUBIC), CenterCrop(crop), ToTensor(), Normalize(mean, std)``
(open_clip ``src/open_clip/transform.py`` ``image_transform``; torchvision ``transforms/functional.py``
``resize``: the long side becomes ``int(size * long / short)``; ``center_crop``: the offset is
``int(round((h - crop) / 2.0))``, Python's round, half to even).  Sizes and mean/std come
from the processor folder's ``preprocessor_config.json`` when present, else the model's image size and
OpenAI CLIP's constants.  Models load by hub id or local folder; ``trust_remote_code`` is never used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from PIL import Image
from transformers import AutoTokenizer, CLIPModel

from ..errors import ConfigError
from .base import ImageLike, as_uint8_batch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _missing(what: str, name: str | Path, err: Exception | None = None) -> FileNotFoundError:
    cause = f" ({type(err).__name__}: {err})" if err else ""
    return FileNotFoundError(
        f"cannot load the {what} {str(name)!r}{cause}. Download it with `hf download {name} --local-dir DIR` "
        f"on a machine with internet (or let the hub cache fill once), then pass the local folder DIR instead.")


def _check_local(name: str | Path, what: str) -> None:
    """A name that looks like a path must be an existing folder (else it would be taken for a hub id)."""
    text = str(name)
    looks_local = isinstance(name, Path) or text.startswith(("/", "./", "../", "~")) or Path(text).exists()
    if looks_local and not Path(text).expanduser().is_dir():
        raise _missing(what, name, FileNotFoundError("no such folder"))


def _name(name: str | Path) -> str:
    return str(Path(name).expanduser()) if str(name).startswith("~") else str(name)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


CROP_ROUNDINGS = ("round", "floor")


def crop_offset(extent: int, crop: int, rounding: str = "round") -> int:
    """Where a centre crop of ``crop`` pixels starts in ``extent`` pixels.

    ``"round"``: torchvision's ``center_crop`` (``int(round((extent - crop) / 2.0))``, Python's round: half to
    even, so a margin of 15 starts at 8 and one of 13 at 6), which OpenAI CLIP and open_clip (GenEval's colour
    classifier) use; ``"floor"``: transformers' ``CLIPImageProcessor`` (``(extent - crop) // 2``)."""
    if rounding == "round":
        return int(round((extent - crop) / 2.0))
    if rounding == "floor":
        return (extent - crop) // 2
    raise ConfigError(f"crop rounding {rounding!r} is not one of {CROP_ROUNDINGS}")


@dataclass(frozen=True)
class ClipPreprocess:
    """CLIP image preprocessing: shortest side -> ``size`` (bicubic), center crop ``crop``, normalise.

    ``crop_rounding``: where an odd margin puts the crop (:func:`crop_offset`; torchvision's by default)."""

    size: int = 224
    crop: int = 224
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    crop_rounding: str = "round"

    @classmethod
    def from_pretrained(cls, path_or_id: str | Path, image_size: int, crop_rounding: str = "round") -> ClipPreprocess:
        """Read ``preprocessor_config.json`` of a local folder or hub repo; defaults where it is absent."""
        cfg = {}
        _check_local(path_or_id, "CLIP processor")
        local = Path(path_or_id).expanduser()
        if local.is_dir():
            if (local / "preprocessor_config.json").exists():
                cfg = json.loads((local / "preprocessor_config.json").read_text())
        else:
            try:
                cfg = json.loads(Path(hf_hub_download(str(path_or_id), "preprocessor_config.json")).read_text())
            except EntryNotFoundError:
                pass
            except Exception as err:  # noqa: BLE001 - offline, unknown repo, ...: say how to fix it
                raise _missing("CLIP processor", path_or_id, err) from err
        size, crop = cfg.get("size", image_size), cfg.get("crop_size", image_size)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = crop.get("height") if isinstance(crop, dict) else crop
        return cls(int(size), int(crop), tuple(cfg.get("image_mean", OPENAI_CLIP_MEAN)),
                   tuple(cfg.get("image_std", OPENAI_CLIP_STD)), crop_rounding)

    def __call__(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """RGB images -> normalised pixels ``(B, 3, crop, crop)`` float32."""
        out = []
        for arr in as_uint8_batch(images):
            h, w = arr.shape[:2]
            if w <= h:
                new_w, new_h = self.size, int(self.size * h / w)
            else:
                new_w, new_h = int(self.size * w / h), self.size
            im = np.asarray(Image.fromarray(arr).resize((new_w, new_h), Image.Resampling.BICUBIC))
            top = crop_offset(new_h, self.crop, self.crop_rounding)
            left = crop_offset(new_w, self.crop, self.crop_rounding)
            if top < 0 or left < 0:
                raise ValueError(f"image resized to {new_h}x{new_w} is smaller than the crop {self.crop}")
            out.append(im[top:top + self.crop, left:left + self.crop])
        x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255  # (B, 3, crop, crop)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std


class ClipEmbedder:
    """A frozen ``transformers.CLIPModel`` with its tokenizer and preprocessing; unit image/text embeddings.

    ``processor`` is the folder or hub id holding the tokenizer and ``preprocessor_config.json``
    (defaults to ``model``), as PickScore pairs its model with the LAION ViT-H processor.  ``crop_rounding``:
    :func:`crop_offset` (torchvision's by default; ``"floor"`` is transformers' ``CLIPImageProcessor``).
    """

    def __init__(self, model: str | Path, processor: str | Path | None = None, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32, crop_rounding: str = "round"):
        processor = processor or model
        _check_local(model, "CLIP model")
        _check_local(processor, "CLIP processor")
        try:
            self.model = CLIPModel.from_pretrained(_name(model), dtype=_dtype(dtype))
        except OSError as err:
            raise _missing("CLIP model", model, err) from err
        self.model = self.model.to(device).eval().requires_grad_(False)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(_name(processor))
        except OSError as err:
            raise _missing("CLIP tokenizer", processor, err) from err
        self.preprocess = ClipPreprocess.from_pretrained(processor, self.model.config.vision_config.image_size,
                                                         crop_rounding)
        self.max_text_len = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)
        self.device = torch.device(device)

    @torch.no_grad()
    def image_embeds(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Images -> L2-normalised projected embeddings ``(B, E)`` float32."""
        pixels = self.preprocess(images).to(self.device, self.model.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # (B, Dv)
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> L2-normalised projected embeddings ``(B, E)`` float32."""
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_text_len,
                             return_tensors="pt")
        pooled = self.model.text_model(input_ids=enc["input_ids"].to(self.device),
                                       attention_mask=enc["attention_mask"].to(self.device)).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)  # (B, E)

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp())
