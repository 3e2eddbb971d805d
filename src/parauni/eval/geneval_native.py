"""GenEval's detector rebuilt on transformers: Mask2Former instances + CLIP zero-shot colours, no mmdetection.

GenEval (Ghosh et al., NeurIPS 2023; https://github.com/djghosh13/geneval, ``evaluation/evaluate_images.py``,
cited as ``evaluate_images.py:LINE``) runs mmdetection 2.x's Mask2Former (Swin-S, COCO instance segmentation)
and OpenCLIP's ViT-L/14 (OpenAI weights).  This module does the same with transformers:

- :class:`Mask2FormerDetector`: ``Mask2FormerForUniversalSegmentation`` (default
  ``facebook/mask2former-swin-small-coco-instance``, the Detectron2 release of the same architecture, NOT the
  mmdetection checkpoint GenEval uses) at mmdetection's test scale (short side 800, long side at most 1333).  Its
  instances are derived as mmdetection 2.x's ``MaskFormerFusionHead.instance_postprocess`` does
  (``mmdet/models/seg_heads/panoptic_fusion_heads/maskformer_fusion_head.py``): the top 100 (query, class) pairs
  of the softmax class scores (no-object column dropped), mask logits resized to the input then to the image
  (bilinear), binary mask = logit > 0, score = class score x the mean sigmoid inside the mask, box = the mask's
  extent (``mask2bbox``: ``x2, y2`` one past the last pixel).  Class names map to GenEval's 80 names
  (``object_names.txt``; COCO's ``mouse`` / ``remote`` / ``keyboard`` are GenEval's ``computer mouse`` /
  ``tv remote`` / ``computer keyboard``).
- :class:`ColorClassifier`: ``CLIPModel`` (default ``openai/clip-vit-large-patch14``) zero-shot over GenEval's
  ten colours (evaluate_images.py:76) with its three templates (evaluate_images.py:113-117), text embeddings
  L2-normalised, averaged over templates and normalised again (CLIP_benchmark's ``zero_shot_classifier``); the
  image is the object's pixels composited over a #999 canvas with its mask, cropped to its box
  (evaluate_images.py:81-106), preprocessed as OpenAI CLIP (bicubic shortest side, centre crop); the colour is
  the argmax of the cosine similarities.
- :class:`NativeScorer`: both, then GenEval's rules (:mod:`parauni.eval.geneval_rules`): the same thresholds,
  cap, position margin and verdicts, ``results.jsonl`` with the official keys and ``details`` format, and
  ``summary.json``.

The scores are GenEval-compatible, not official GenEval numbers: the detector checkpoint and the image
preprocessing (PIL resizing) differ from the mmdetection toolchain until someone compares both scorers on the same
images (``parauni eval geneval --scorer official`` runs the official one).  Models load by hub id or local folder;
nothing here downloads on its own beyond ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from ..rewards.clip_common import ClipEmbedder, _check_local, _missing, _name
from . import geneval_rules as rules
from .bundled import geneval_object_names_path
from .geneval_rules import GENEVAL, Detection, Selection

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
# mmdetection's test scale for GenEval's config (mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py:
# img_scale=(1333, 800), keep_ratio=True): short side 800, long side at most 1333.
TEST_SCALE = (800, 1333)
# mmdetection's MaskFormerFusionHead test_cfg max_per_image: the (query, class) pairs kept per image.
MAX_PER_IMAGE = 100
# COCO label spellings (and VOC-style ones) that differ from GenEval's object_names.txt.
COCO_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                "tvmonitor": "tv", "tv monitor": "tv", "hair dryer": "hair drier", "motorbike": "motorcycle",
                "aeroplane": "airplane", "sofa": "couch", "diningtable": "dining table", "pottedplant": "potted plant",
                "doughnut": "donut", "cellphone": "cell phone"}


def geneval_class_names() -> list[str]:
    """GenEval's 80 object names, in its ``object_names.txt`` order (COCO's)."""
    return [line.strip() for line in geneval_object_names_path().read_text().splitlines() if line.strip()]


def _normal(label: str) -> str:
    return " ".join(label.lower().replace("_", " ").replace("-", " ").split())


def label_map(id2label: dict, names: Sequence[str] | None = None) -> dict[int, str]:
    """Detector label id -> GenEval class name, for the labels that are GenEval classes (the rest, e.g. COCO
    panoptic's stuff classes, are never reported).

    Names match after lower-casing and ``_`` / ``-`` -> space, through :data:`COCO_ALIASES`.  A detector whose
    labels are unnamed (``LABEL_0`` ...) but exactly 80 is taken in COCO order.  No match at all is an error."""
    names = list(names) if names is not None else geneval_class_names()
    known = {_normal(n): n for n in names}
    out = {}
    for i, label in id2label.items():
        key = _normal(str(label))
        key = _normal(COCO_ALIASES.get(key, key))
        if key in known:
            out[int(i)] = known[key]
    if not out and len(id2label) == len(names) and all(str(v).startswith("LABEL_") for v in id2label.values()):
        out = {int(i): names[int(i)] for i in id2label}
    if not out:
        sample = ", ".join(repr(v) for v in list(id2label.values())[:5])
        raise ValueError(f"none of the detector's {len(id2label)} labels ({sample}, ...) is one of GenEval's 80 "
                         "COCO class names (object_names.txt); use a COCO instance-segmentation checkpoint such as "
                         f"{DEFAULT_DETECTOR}")
    return out


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` of a binary mask, ``x2, y2`` one past the last pixel (mmdetection's ``mask2bbox``);
    ``(0, 0, 0, 0)`` for an empty mask."""
    xs = np.flatnonzero(mask.any(0))
    ys = np.flatnonzero(mask.any(1))
    if len(xs) == 0 or len(ys) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs[0]), float(ys[0]), float(xs[-1] + 1), float(ys[-1] + 1))


def load_image(path: str | Path) -> Image.Image:
    """An image file as RGB, EXIF orientation applied (evaluate_images.py:227)."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


class Mask2FormerDetector:
    """Instance detections of a ``Mask2FormerForUniversalSegmentation`` as GenEval's detector gives them.

    ``model``: hub id or local folder with the model and its ``preprocessor_config.json`` (mean/std; the resize
    is ``scale`` = (short side, longest side), mmdetection's test scale by default).  Returns every instance with
    a non-empty mask (up to ``max_per_image``), most confident first; GenEval's thresholds are applied later by
    :func:`parauni.eval.geneval_rules.select_objects`."""

    def __init__(self, model: str | Path = DEFAULT_DETECTOR, device: str | torch.device = "cpu",
                 scale: tuple[int, int] = TEST_SCALE, max_per_image: int = MAX_PER_IMAGE):
        from transformers import Mask2FormerForUniversalSegmentation
        from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

        _check_local(model, "Mask2Former detector")
        try:
            self.model = Mask2FormerForUniversalSegmentation.from_pretrained(_name(model))
            # the PIL backend: the default one needs torchvision
            self.processor = Mask2FormerImageProcessorPil.from_pretrained(_name(model))
        except ImportError as err:  # transformers builds Mask2Former's training loss, which needs scipy
            raise ImportError(f"the native GenEval scorer's Mask2Former needs scipy ({err}); install the extra: "
                              "pip install 'parauni[metrics]'") from err
        except OSError as err:
            raise _missing("Mask2Former detector", model, err) from err
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.labels = label_map(self.model.config.id2label)
        self.scale = (int(scale[0]), int(scale[1]))
        self.max_per_image = int(max_per_image)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[Detection]:
        """Detections of one RGB image: GenEval class, box, score and the binary mask at the image's size."""
        width, height = image.size
        enc = self.processor(images=image, size={"shortest_edge": self.scale[0], "longest_edge": self.scale[1]},
                             return_tensors="pt")
        pixels = enc["pixel_values"].to(self.device)  # (1, 3, Hi, Wi)
        valid = enc["pixel_mask"][0]  # (Hi, Wi): 1 on the image, 0 on padding
        out = self.model(pixel_values=pixels, pixel_mask=enc["pixel_mask"].to(self.device))
        cls_logits = out.class_queries_logits[0].float()  # (Q, C + 1), the last column "no object"
        mask_logits = out.masks_queries_logits[0].float()  # (Q, Hi / 4, Wi / 4)
        num_classes = cls_logits.shape[1] - 1
        scores = F.softmax(cls_logits, dim=-1)[:, :-1]  # (Q, C)
        k = min(self.max_per_image, scores.numel())
        top_scores, top = scores.flatten().topk(k)  # sorted: the most confident first
        labels, queries = top % num_classes, torch.div(top, num_classes, rounding_mode="floor")
        keep = [i for i in range(k) if int(labels[i]) in self.labels]
        used = sorted({int(queries[i]) for i in keep})
        hi, wi = int(valid.any(1).sum()), int(valid.any(0).sum())
        masks, mask_scores = {}, {}
        for start in range(0, len(used), 16):  # chunks of queries: full-size masks are large
            idx = used[start:start + 16]
            m = F.interpolate(mask_logits[idx][None], size=tuple(pixels.shape[-2:]), mode="bilinear",
                              align_corners=False)[:, :, :hi, :wi]
            m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False)[0]  # (n, H, W)
            binary = m > 0
            ms = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
            for j, q in enumerate(idx):
                masks[q], mask_scores[q] = binary[j].cpu().numpy(), float(ms[j])
        dets = []
        for i in keep:
            q = int(queries[i])
            if not masks[q].any():
                continue  # mask2bbox gives (0, 0, 0, 0) and the score is 0: never above a threshold
            dets.append(Detection(self.labels[int(labels[i])], mask_to_box(masks[q]),
                                  float(top_scores[i]) * mask_scores[q], mask=masks[q]))
        return sorted(dets, key=lambda d: -d.confidence)


class ColorClassifier:
    """GenEval's zero-shot colour of detected objects with a ``CLIPModel`` (evaluate_images.py:76-127).

    ``model``: hub id or local folder with the model, its tokenizer and (optionally) ``preprocessor_config.json``.
    ``background``: the canvas outside the object's mask (GenEval's ``bgcolor`` option, default #999;
    ``"original"`` keeps the image); ``crop``: crop to the object's box (GenEval's ``crop`` option, default on)."""

    def __init__(self, model: str | Path = DEFAULT_CLIP, device: str | torch.device = "cpu",
                 colors: Sequence[str] = rules.COLORS, templates: Sequence[str] = rules.COLOR_TEMPLATES,
                 background: str = rules.COLOR_BACKGROUND, crop: bool = True):
        self.clip = ClipEmbedder(model, device=device)
        self.colors, self.templates = tuple(colors), tuple(templates)
        self.background, self.crop = background, crop
        self._weights: dict[str, torch.Tensor] = {}

    def weights(self, classname: str) -> torch.Tensor:
        """``(E, n_colors)`` unit text embeddings of each colour for ``classname``, averaged over the templates."""
        if classname not in self._weights:
            cols = []
            for c in self.colors:
                emb = self.clip.text_embeds([t.format(c=c, classname=classname) for t in self.templates])
                mean = emb.mean(0)
                cols.append(mean / mean.norm())
            self._weights[classname] = torch.stack(cols, dim=1)
        return self._weights[classname]

    def crops(self, image: Image.Image, dets: Sequence[Detection]) -> list[Image.Image]:
        """What CLIP sees of each object: its mask's pixels over the background colour, cropped to its box."""
        image = image.convert("RGB")
        blank = image.copy() if self.background == "original" else Image.new("RGB", image.size, self.background)
        out = []
        for d in dets:
            im = image
            if d.mask is not None:
                if tuple(d.mask.shape) != (image.size[1], image.size[0]):
                    raise ValueError(f"mask of shape {d.mask.shape} for an image of {image.size[1]}x{image.size[0]}")
                im = Image.composite(image, blank, Image.fromarray(np.asarray(d.mask, bool)))
            if self.crop:
                im = im.crop(tuple(d.bbox[:4]))
            out.append(im)
        return out

    @torch.no_grad()
    def __call__(self, image: Image.Image, dets: Sequence[Detection], classname: str) -> list[str]:
        """The colour name of each detection of ``classname`` (GenEval's ``color_classification``)."""
        if not dets:
            return []
        feats = self.clip.image_embeds([np.asarray(c) for c in self.crops(image, dets)])  # (N, E), unit
        logits = 100.0 * feats @ self.weights(classname)  # (N, n_colors)
        return [self.colors[i] for i in logits.argmax(1).tolist()]


class NativeScorer:
    """GenEval on transformers: :class:`Mask2FormerDetector` + :class:`ColorClassifier` + GenEval's rules.

    ``detector`` / ``clip``: hub ids or local folders (or already built :class:`Mask2FormerDetector` /
    :class:`ColorClassifier`); ``selection``: which detections are judged (GenEval's thresholds by default)."""

    def __init__(self, detector: str | Path | Mask2FormerDetector = DEFAULT_DETECTOR,
                 clip: str | Path | ColorClassifier = DEFAULT_CLIP, device: str | torch.device = "cpu",
                 selection: Selection = GENEVAL, scale: tuple[int, int] = TEST_SCALE):
        self.detector_name = str(detector) if isinstance(detector, (str, Path)) else type(detector).__name__
        self.clip_name = str(clip) if isinstance(clip, (str, Path)) else type(clip).__name__
        self.detector = (Mask2FormerDetector(detector, device, scale) if isinstance(detector, (str, Path))
                         else detector)
        self.colors = ColorClassifier(clip, device) if isinstance(clip, (str, Path)) else clip
        self.selection = selection

    def judge(self, image: Image.Image, dets: Sequence[Detection], meta: dict) -> tuple[bool, str, dict]:
        """GenEval's verdict on given detections: ``(correct, reason, objects judged per class)``."""
        objects = rules.select_objects(dets, meta.get("tag"), self.selection)
        correct, reason = rules.evaluate(objects, meta, lambda found, cls: self.colors(image, found, cls))
        return correct, reason, objects

    def score_image(self, path: str | Path, meta: dict) -> dict:
        """One ``results.jsonl`` row for the image file ``path`` against the prompt record ``meta``."""
        image = load_image(path)
        correct, reason, objects = self.judge(image, self.detector(image), meta)
        return rules.result_record(path, meta, correct, reason, rules.official_details(objects))

    def about(self) -> dict:
        """What scored: recorded in ``summary.json`` under ``scorer``."""
        return {"kind": "native", "detector": self.detector_name, "clip": self.clip_name,
                "selection": {"threshold": self.selection.threshold,
                              "counting_threshold": self.selection.counting_threshold,
                              "max_objects": self.selection.max_objects, "max_overlap": self.selection.max_overlap},
                "note": "GenEval-compatible (transformers Mask2Former + CLIP, GenEval's rules), not the official "
                        "mmdetection scorer"}

    def score_dir(self, image_dir: str | Path, outfile: str | Path | None = None) -> dict:
        """Score every ``<index>/samples/<k>.png`` of GenEval's layout under ``image_dir``; write
        ``results.jsonl`` (default in ``image_dir``) and ``summary.json`` beside it; return the summary."""
        files = rules.image_files(image_dir)
        for _, meta in files:  # before any model runs: a record without objects cannot be scored
            rules.check_record(meta)
        results = [self.score_image(path, meta) for path, meta in tqdm(files, desc="geneval native", unit="img")]
        out = Path(outfile) if outfile is not None else Path(image_dir) / "results.jsonl"
        return rules.write_results(results, out, lambda rows: {**rules.summarize(rows), "scorer": self.about()})
