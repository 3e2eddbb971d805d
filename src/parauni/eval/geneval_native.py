"""GenEval's detector rebuilt on transformers: Mask2Former instances + CLIP zero-shot colours, no mmdetection.

GenEval (Ghosh et al., NeurIPS 2023; https://github.com/djghosh13/geneval, ``evaluation/evaluate_images.py``,
cited as ``evaluate_images.py:LINE``) runs mmdetection 2.x's Mask2Former (Swin-S, COCO instance segmentation)
and OpenCLIP's ViT-L/14 (OpenAI weights).  This module does the same with transformers:

- :class:`Mask2FormerDetector`: ``Mask2FormerForUniversalSegmentation`` (default
  ``facebook/mask2former-swin-small-coco-instance``, the Detectron2 release of the same architecture, NOT the
  mmdetection checkpoint GenEval uses), fed as mmdetection 2.x's test pipeline feeds GenEval's config
  (``configs/mask2former/mask2former_r50_lsj_8x2_50e_coco.py`` ``test_pipeline``, inherited by
  ``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py``; :func:`mmdet_preprocess`): resized keeping the aspect
  ratio to fit (1333, 800) (bilinear), padded bottom/right to a multiple of 32 with grey 128, then normalised.  Its
  instances are derived as mmdetection 2.x's ``MaskFormerFusionHead.instance_postprocess`` does
  (``mmdet/models/seg_heads/panoptic_fusion_heads/maskformer_fusion_head.py``; :func:`top_query_class_pairs`): the
  top 100 (query, class) pairs of the softmax class scores (no-object column dropped), mask logits resized to the
  padded input, the padding cut off, then resized to the image (bilinear), binary mask = logit > 0, score = class
  score x the mean sigmoid inside the mask, box = the mask's extent (``mask2bbox``: ``x2, y2`` one past the last
  pixel), all in the original image's pixels.  Class names map to GenEval's 80 names (``object_names.txt``;
  COCO's ``mouse`` / ``remote`` / ``keyboard`` are GenEval's ``computer mouse`` / ``tv remote`` /
  ``computer keyboard``).
- :class:`ColorClassifier`: ``CLIPModel`` (default ``openai/clip-vit-large-patch14``) zero-shot over GenEval's
  ten colours (evaluate_images.py:76) with its three templates (evaluate_images.py:113-117), text embeddings
  L2-normalised, averaged over templates and normalised again (CLIP_benchmark's ``zero_shot_classifier``); the
  image is the object's pixels composited over a #999 canvas with its mask, cropped to its box
  (evaluate_images.py:81-106), preprocessed as open_clip's ``image_transform`` (bicubic shortest side,
  torchvision's centre crop, OpenAI's mean/std; :class:`parauni.rewards.clip_common.ClipPreprocess`); the colour is
  the argmax of the cosine similarities (evaluate_images.py:127).  On CUDA the text and image towers run under
  fp16 autocast by default, as CLIP_benchmark's ``zero_shot_classifier`` / ``run_classification`` (``amp=True``,
  ``clip_benchmark/metrics/zeroshot_classification.py:40,111``) run them for GenEval; fp32 on the CPU.
- :class:`NativeScorer`: both, then GenEval's rules (:mod:`parauni.eval.geneval_rules`): the same thresholds,
  cap, position margin and verdicts, ``results.jsonl`` with the official keys and ``details`` format, and
  ``summary.json``.

The scores are GenEval-compatible, not official GenEval numbers: the detector checkpoint differs, and the resize is
float bilinear rounded to uint8 rather than OpenCV's fixed-point one (pixel values can differ by one level), until
someone compares both scorers on the same images (``parauni eval geneval --scorer official`` runs the official one;
``benchmarks/compare_geneval_scorers.py`` compares the two results files).  Models load by hub id or local folder;
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
from transformers import Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from ..errors import UsageError
from ..rewards.clip_common import ClipEmbedder, _check_local, _missing, _name
from . import geneval_rules as rules
from .bundled import geneval_object_names_path
from .geneval_rules import GENEVAL, Detection, Selection
from .geneval_schema import geneval_vocabulary, validate_records

DEFAULT_DETECTOR = "facebook/mask2former-swin-small-coco-instance"
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
# mmdetection's test scale for GenEval's config (mask2former_r50_lsj_8x2_50e_coco.py test_pipeline, inherited by
# mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py: img_scale=(1333, 800), Resize keep_ratio=True): short side at
# most 800, long side at most 1333, as (short, long).
TEST_SCALE = (800, 1333)
# the same test_pipeline: Pad(size_divisor=32, pad_val=dict(img=(128, 128, 128))) before Normalize
PAD_DIVISOR = 32
PAD_VALUE = 128
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
        raise UsageError(f"none of the detector's {len(id2label)} labels ({sample}, ...) is one of GenEval's 80 "
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


def rescale_size(width: int, height: int, scale: tuple[int, int] = TEST_SCALE) -> tuple[int, int]:
    """``(new_width, new_height)`` of mmcv's keep-ratio rescale (``mmcv/image/geometric.py`` ``rescale_size`` and
    ``_scale_size``): factor ``min(long_max / long_side, short_max / short_side)``, sizes ``int(x * f + 0.5)``.

    ``scale``: ``(short side, long side)``, in either order (mmcv takes the larger as the long side's limit)."""
    short_max, long_max = min(scale), max(scale)
    factor = min(long_max / max(width, height), short_max / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def bilinear_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image resized to ``(height, width)`` as OpenCV's ``INTER_LINEAR`` (mmcv's default
    ``imresize``): half-pixel centres, edge pixels repeated, no antialiasing, rounded to uint8.

    OpenCV computes in 11-bit fixed point, this in float: a pixel can differ by one level."""
    x = torch.from_numpy(np.array(image, dtype=np.float64)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return torch.floor(y + 0.5).clamp(0, 255)[0].permute(1, 2, 0).numpy().astype(np.uint8)


def mmdet_preprocess(image: Image.Image, mean: Sequence[float], std: Sequence[float],
                     scale: tuple[int, int] = TEST_SCALE, divisor: int = PAD_DIVISOR,
                     pad_value: int = PAD_VALUE) -> tuple[torch.Tensor, tuple[int, int]]:
    """GenEval's detector input: ``(pixels (1, 3, Hp, Wp), (h, w))``, ``(h, w)`` the resized image inside the padding.

    mmdetection 2.x's test pipeline for GenEval's config (``configs/mask2former/mask2former_r50_lsj_8x2_50e_coco.py``
    ``test_pipeline``): ``Resize(keep_ratio=True)`` to ``img_scale=(1333, 800)`` (:func:`rescale_size`,
    :func:`bilinear_resize`), ``Pad(size_divisor=32, pad_val=128)`` on the bottom and right, then ``Normalize``
    with ``mean`` / ``std`` in 0-255 units (RGB; ImageNet's 123.675, 116.28, 103.53 / 58.395, 57.12, 57.375 for
    that config).  A 768x512 image becomes 1200x800 padded to 1216x800, not stretched to 1216x800."""
    arr = np.asarray(image.convert("RGB"))
    width, height = rescale_size(arr.shape[1], arr.shape[0], scale)
    resized = bilinear_resize(arr, width, height)
    ph, pw = -(-height // divisor) * divisor, -(-width // divisor) * divisor
    padded = np.full((ph, pw, 3), pad_value, np.uint8)
    padded[:height, :width] = resized
    x = torch.from_numpy(padded).permute(2, 0, 1).float()
    mean_t, std_t = (torch.tensor(v, dtype=torch.float32).view(3, 1, 1) for v in (mean, std))
    x = (x - mean_t) / std_t
    return x[None], (height, width)


def top_query_class_pairs(class_logits: torch.Tensor, k: int = MAX_PER_IMAGE) -> tuple[torch.Tensor, ...]:
    """``(scores, queries, labels)`` of the ``k`` most confident (query, class) pairs, most confident first.

    mmdetection 2.x ``MaskFormerFusionHead.instance_postprocess``: softmax over each query's classes, the
    no-object column (the last) dropped, then the top ``max_per_image`` over the flattened ``(query, class)``
    scores, so a query can give several instances of different classes and a confident query's runner-up class
    can outrank another query's best.  ``class_logits``: ``(Q, C + 1)``."""
    scores = F.softmax(class_logits.float(), dim=-1)[:, :-1]  # (Q, C)
    num_classes = scores.shape[1]
    top_scores, top = scores.flatten().topk(min(int(k), scores.numel()))
    return top_scores, torch.div(top, num_classes, rounding_mode="floor"), top % num_classes


class Mask2FormerDetector:
    """Instance detections of a ``Mask2FormerForUniversalSegmentation`` as GenEval's detector gives them.

    ``model``: hub id or local folder with the model and its ``preprocessor_config.json`` (its ``image_mean`` /
    ``image_std``; the resize and padding are mmdetection's, :func:`mmdet_preprocess`, at ``scale`` = (short side,
    long side), mmdetection's test scale by default).  Returns every instance with a non-empty mask (up to
    ``max_per_image``), most confident first, boxes and masks in the original image's pixels; GenEval's thresholds
    are applied later by :func:`parauni.eval.geneval_rules.select_objects`."""

    def __init__(self, model: str | Path = DEFAULT_DETECTOR, device: str | torch.device = "cpu",
                 scale: tuple[int, int] = TEST_SCALE, max_per_image: int = MAX_PER_IMAGE):
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
        # transformers' mean/std apply to pixels in [0, 1]; mmdetection's to 0-255
        self.mean = [255.0 * float(m) for m in self.processor.image_mean]
        self.std = [255.0 * float(s) for s in self.processor.image_std]

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> list[Detection]:
        """Detections of one RGB image: GenEval class, box, score and the binary mask at the image's size."""
        width, height = image.size
        pixels, (hi, wi) = mmdet_preprocess(image, self.mean, self.std, self.scale)  # (1, 3, Hp, Wp)
        pixels = pixels.to(self.device)
        # no pixel mask: mmdetection 2.x's Mask2Former reads none either (its pixel decoder's masks are all zeros)
        out = self.model(pixel_values=pixels)
        mask_logits = out.masks_queries_logits[0].float()  # (Q, Hp / 4, Wp / 4)
        top_scores, queries, labels = top_query_class_pairs(out.class_queries_logits[0], self.max_per_image)
        keep = [i for i in range(len(top_scores)) if int(labels[i]) in self.labels]
        used = sorted({int(queries[i]) for i in keep})
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
    ``"original"`` keeps the image); ``crop``: crop to the object's box (GenEval's ``crop`` option, default on).
    ``amp``: run CLIP under fp16 autocast, as GenEval does through CLIP_benchmark (``amp=True``,
    ``zeroshot_classification.py:40,111``) on its CUDA-only scorer (evaluate_images.py:45-46); ``None`` (the
    default): on when ``device`` is CUDA, off (fp32) elsewhere.  fp16 can flip a colour whose two best
    similarities are within fp16 rounding of each other."""

    def __init__(self, model: str | Path = DEFAULT_CLIP, device: str | torch.device = "cpu",
                 colors: Sequence[str] = rules.COLORS, templates: Sequence[str] = rules.COLOR_TEMPLATES,
                 background: str = rules.COLOR_BACKGROUND, crop: bool = True, amp: bool | None = None):
        cuda = torch.device(device).type == "cuda"
        if amp and not cuda:
            raise UsageError(f"fp16 autocast (amp=True) is GenEval's CUDA setting; on {device!r} use amp=None or "
                             "False (fp32), or pass a CUDA device")
        self.clip = ClipEmbedder(model, device=device)
        self.colors, self.templates = tuple(colors), tuple(templates)
        self.background, self.crop = background, crop
        self.amp = cuda if amp is None else bool(amp)
        self._weights: dict[str, torch.Tensor] = {}

    @property
    def precision(self) -> str:
        """``"fp16-autocast"`` or ``"fp32"``: recorded in ``summary.json``."""
        return "fp16-autocast" if self.amp else "fp32"

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.amp)

    def weights(self, classname: str) -> torch.Tensor:
        """``(E, n_colors)`` unit text embeddings of each colour for ``classname``, averaged over the templates."""
        if classname not in self._weights:
            cols = []
            for c in self.colors:
                with self._autocast():
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
        weights = self.weights(classname)
        with self._autocast():  # the logits too, as run_classification does (zeroshot_classification.py:111-115)
            feats = self.clip.image_embeds([np.asarray(c) for c in self.crops(image, dets)])  # (N, E), unit
            logits = 100.0 * feats @ weights  # (N, n_colors); fp16 under autocast
        return [self.colors[i] for i in logits.float().argmax(1).tolist()]


class NativeScorer:
    """GenEval on transformers: :class:`Mask2FormerDetector` + :class:`ColorClassifier` + GenEval's rules.

    ``detector`` / ``clip``: hub ids or local folders (or already built :class:`Mask2FormerDetector` /
    :class:`ColorClassifier`); ``selection``: which detections are judged (GenEval's thresholds by default);
    ``scale``: the detector's test scale; ``amp``: the colour classifier's fp16 autocast (on CUDA by default)."""

    def __init__(self, detector: str | Path | Mask2FormerDetector = DEFAULT_DETECTOR,
                 clip: str | Path | ColorClassifier = DEFAULT_CLIP, device: str | torch.device = "cpu",
                 selection: Selection = GENEVAL, scale: tuple[int, int] = TEST_SCALE, amp: bool | None = None):
        self.detector_name = str(detector) if isinstance(detector, (str, Path)) else type(detector).__name__
        self.clip_name = str(clip) if isinstance(clip, (str, Path)) else type(clip).__name__
        self.detector = (Mask2FormerDetector(detector, device, scale) if isinstance(detector, (str, Path))
                         else detector)
        self.colors = ColorClassifier(clip, device, amp=amp) if isinstance(clip, (str, Path)) else clip
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
                "detector_scale": list(getattr(self.detector, "scale", ())),
                "clip_precision": getattr(self.colors, "precision", None),
                "selection": {"threshold": self.selection.threshold,
                              "counting_threshold": self.selection.counting_threshold,
                              "max_objects": self.selection.max_objects, "max_overlap": self.selection.max_overlap},
                "note": "GenEval-compatible (transformers Mask2Former + CLIP, GenEval's rules), not the official "
                        "mmdetection scorer"}

    def score_dir(self, image_dir: str | Path, outfile: str | Path | None = None) -> dict:
        """Score every ``<index>/samples/<k>.png`` of GenEval's layout under ``image_dir``; write
        ``results.jsonl`` (default in ``image_dir``) and ``summary.json`` beside it; return the summary."""
        files = rules.image_files(image_dir)
        # before any model runs: the records' schema, and only names the detector and colour classifier know
        vocabulary = geneval_vocabulary()
        for path, meta in {str(p.parent.parent): m for p, m in files}.items():
            validate_records([(1, meta)], f"{path}/metadata.jsonl", vocabulary)
        results = [self.score_image(path, meta) for path, meta in tqdm(files, desc="geneval native", unit="img")]
        out = Path(outfile) if outfile is not None else Path(image_dir) / "results.jsonl"
        return rules.write_results(results, out, lambda rows: {**rules.summarize(rows), "scorer": self.about()})
