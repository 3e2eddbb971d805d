"""The native GenEval scorer (parauni.eval.geneval_native) on tiny random-weight Mask2Former and CLIP models:
label mapping, detections (boxes from masks, scores, shapes), the colour crops, forced detections through GenEval's
rules, and ``parauni eval geneval --scorer native`` end to end."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPConfig,
    CLIPModel,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    PreTrainedTokenizerFast,
    SwinConfig,
)
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from parauni.cli import main
from parauni.eval import GENEVAL_SCORER_ENV
from parauni.eval import geneval_rules as rules
from parauni.eval.bundled import geneval_metadata_path
from parauni.eval.geneval import generate_geneval
from parauni.eval.geneval_native import (
    ColorClassifier,
    Mask2FormerDetector,
    NativeScorer,
    geneval_class_names,
    label_map,
    mask_to_box,
)
from parauni.eval.geneval_rules import Detection

LABELS = {0: "person", 1: "mouse", 2: "dog", 3: "wall-other"}  # COCO spellings; 'wall-other' is a stuff class
WORDS = "a photo of red orange yellow green blue purple pink brown black white colored object car dog cup".split()
SCALE = (64, 96)  # the test detector's input scale (GenEval's is 800 / 1333)


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    """A saved random Mask2Former (Swin backbone, 10 queries, 4 labels) with its PIL image processor config."""
    path = tmp_path_factory.mktemp("tiny_m2f")
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                            encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
                            num_attention_heads=2, num_queries=10, common_stride=4, id2label=LABELS,
                            label2id={v: k for k, v in LABELS.items()})
    torch.manual_seed(0)
    Mask2FormerForUniversalSegmentation(cfg).save_pretrained(path)
    Mask2FormerImageProcessorPil().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dog_detector(tiny_detector, tmp_path_factory):
    """The tiny detector with its class head forced to "dog" (weights 0, bias +20 for dog, -20 else)."""
    path = tmp_path_factory.mktemp("dog_m2f")
    model = Mask2FormerForUniversalSegmentation.from_pretrained(tiny_detector)
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.bias.fill_(-20.0)
        model.class_predictor.bias[2] = 20.0
    model.save_pretrained(path)
    Mask2FormerImageProcessorPil().save_pretrained(path)
    return path


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 2), ("<eos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=16)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A saved random CLIP (projection 16, 32x32 images) with a word-level tokenizer and a processor config."""
    path = tmp_path_factory.mktemp("tiny_clip")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(1)
    CLIPModel(cfg).save_pretrained(path)
    _tokenizer().save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 32},
                                                               "crop_size": {"height": 32, "width": 32}}))
    return path


def _image(h=40, w=48, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_label_map_to_genevals_names():
    assert len(geneval_class_names()) == 80
    assert label_map(LABELS) == {0: "person", 1: "computer mouse", 2: "dog"}  # the stuff class is no GenEval class
    assert label_map({0: "tv_remote", 1: "Hair-Drier", 2: "keyboard"}) == {
        0: "tv remote", 1: "hair drier", 2: "computer keyboard"}
    generic = {i: f"LABEL_{i}" for i in range(80)}
    assert label_map(generic)[64] == "computer mouse"  # unnamed labels: COCO order
    with pytest.raises(ValueError, match="none of the detector's 2 labels.*COCO"):
        label_map({0: "wall", 1: "sky"})


def test_mask_to_box_is_mmdetections_mask2bbox():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_to_box(mask) == (3.0, 2.0, 9.0, 5.0)  # x2, y2 one past the last pixel
    assert mask_to_box(np.zeros((4, 4), bool)) == (0.0, 0.0, 0.0, 0.0)


def test_detector_plumbing(tiny_detector):
    detector = Mask2FormerDetector(tiny_detector, scale=SCALE)
    image = _image()
    dets = detector(image)
    assert 0 < len(dets) <= detector.max_per_image
    assert [d.confidence for d in dets] == sorted((d.confidence for d in dets), reverse=True)
    for d in dets:
        assert d.cls in {"person", "computer mouse", "dog"}
        assert d.mask.shape == (40, 48) and d.mask.dtype == bool and d.mask.any()
        assert d.bbox == mask_to_box(d.mask)
        assert 0 <= d.bbox[0] < d.bbox[2] <= 48 and 0 <= d.bbox[1] < d.bbox[3] <= 40
        assert 0.0 <= d.confidence <= 1.0
    assert detector(image) == dets  # deterministic
    # a class forced by the weights: every query says "dog", so every confident detection is a dog
    with torch.no_grad():
        head = detector.model.class_predictor
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.bias[2] = 20.0
    forced = detector(image)
    confident = [d for d in forced if d.confidence > rules.THRESHOLD]
    assert confident and {d.cls for d in confident} == {"dog"}
    # score = class probability (~1) x the mean mask probability inside the mask (> 0.5)
    assert all(0.5 < d.confidence <= 1.0 for d in confident)


def test_color_crops_mask_the_background_and_crop_the_box(tiny_clip):
    colors = ColorClassifier(tiny_clip)
    arr = np.zeros((20, 30, 3), np.uint8)
    arr[...] = (0, 0, 255)
    arr[5:10, 4:12] = (255, 0, 0)
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:10] = True  # the mask misses two red columns of the box
    d = Detection("car", (4.0, 5.0, 12.0, 10.0), 0.9, mask=mask)
    crop = np.asarray(colors.crops(Image.fromarray(arr), [d])[0])
    assert crop.shape == (5, 8, 3)
    assert (crop[:, :6] == (255, 0, 0)).all() and (crop[:, 6:] == (153, 153, 153)).all()  # #999 outside the mask
    w = colors.weights("car")
    assert w.shape == (16, len(rules.COLORS)) and torch.allclose(w.norm(dim=0), torch.ones(len(rules.COLORS)))
    got = colors(Image.fromarray(arr), [d, Detection("car", (0.0, 0.0, 30.0, 20.0), 0.5)], "car")
    assert len(got) == 2 and set(got) <= set(rules.COLORS)
    assert colors(Image.fromarray(arr), [], "car") == []


def test_forced_detections_go_through_genevals_rules(tiny_detector, tiny_clip):
    scorer = NativeScorer(tiny_detector, tiny_clip, scale=SCALE)
    image = _image(seed=1)
    mask = np.zeros((40, 48), bool)
    mask[4:20, 6:30] = True
    car = Detection("car", mask_to_box(mask), 0.95, mask=mask)
    said = scorer.colors(image, [car], "car")[0]
    other = next(c for c in rules.COLORS if c != said)
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": said}], "prompt": "p"}
    assert scorer.judge(image, [car], meta)[:2] == (True, "")
    wrong = {**meta, "include": [{"class": "car", "count": 1, "color": other}]}
    assert scorer.judge(image, [car], wrong)[:2] == (False, f"expected {other} car>=1, found 0 {other}; and 1 {said}")
    cars = [Detection("car", (i * 10.0, 0.0, i * 10.0 + 8, 8.0), c) for i, c in enumerate((0.95, 0.93, 0.85))]
    count = {"tag": "counting", "include": [{"class": "car", "count": 3}], "exclude": [{"class": "car", "count": 4}],
             "prompt": "p"}
    correct, reason, objects = scorer.judge(image, cars, count)
    assert (correct, reason) == (False, "expected car>=3, found 2") and len(objects["car"]) == 2
    assert rules.official_details(objects) == {"car": [[0, 0, 8, 8, 0.95], [10, 0, 18, 8, 0.93]]}


def _genevals_first(tags):
    records = [json.loads(x) for x in geneval_metadata_path().read_text().splitlines()]
    return [next(r for r in records if r["tag"] == t) for t in tags]


def test_native_scorer_end_to_end_on_genevals_layout(tmp_path, dog_detector, tiny_clip):
    """GenEval-schema prompts about dogs, noise images in GenEval's layout, a detector that only sees dogs (with
    random masks, at about 0.5 confidence: above the detection threshold, below the counting one)."""
    metas = [{"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}],
              "prompt": "a photo of a red dog"},
             {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
              "prompt": "a photo of two dogs"}]

    def noise(prompts, seeds):
        return [np.asarray(_image(32, 32, s)) for s in seeds]

    out = generate_geneval(noise, metas, tmp_path, images_per_prompt=2)
    scorer = NativeScorer(dog_detector, tiny_clip, scale=SCALE)
    summary = scorer.score_dir(out)
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and [r["tag"] for r in rows] == ["colors", "colors", "counting", "counting"]
    for r in rows:
        assert list(r) == list(rules.RESULT_KEYS)  # the official keys, no toy extras
        assert json.loads(r["metadata"])["prompt"] == r["prompt"] and isinstance(r["correct"], bool)
        details = json.loads(r["details"])
        assert r["correct"] == (r["reason"] == "")
        if r["tag"] == "counting":  # no dog reaches the counting threshold 0.9
            assert details == {} and r["reason"] == "expected dog>=2, found 0"
            continue
        assert set(details) == {"dog"}  # the forced class, mapped to GenEval's name
        assert all(len(b) == 5 and 0.3 < b[4] < 0.9 for b in details["dog"])
        image = Image.open(r["filename"]).convert("RGB")
        top = scorer.detector(image)[0]  # the colour of the most confident dog, as the classifier sees it
        assert details["dog"][0] == top.box_and_score()
        said = scorer.colors(image, [top], "dog")[0]
        assert r["correct"] == (said == "red")
        assert r["correct"] or r["reason"] == f"expected red dog>=1, found 0 red; and 1 {said}"
    assert summary["tasks"]["counting"] == 0.0 and summary["total_images"] == 4
    assert summary["overall"] == pytest.approx(np.mean(list(summary["tasks"].values())))
    assert summary["scorer"]["kind"] == "native" and summary["scorer"]["detector"] == str(dog_detector)
    assert json.loads((out / "summary.json").read_text()) == summary


def test_cli_native_scorer(tmp_path, tiny_detector, tiny_clip, capsys):
    """``parauni eval geneval --scorer native``: generate with the toy prior, score with the given models."""
    meta_file = tmp_path / "m.jsonl"
    meta_file.write_text("".join(json.dumps(m) + "\n" for m in _genevals_first(("colors", "position"))))
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--model", "prior", "--metadata", str(meta_file), "--out", str(out),
                 "--images-per-prompt", "1", "--steps", "1", "--scorer", "native", "--detector", str(tiny_detector),
                 "--clip", str(tiny_clip)]) == 0
    assert "overall" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in rows] == ["colors", "position"]
    assert all(list(r) == list(rules.RESULT_KEYS) and isinstance(json.loads(r["details"]), dict) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"colors", "position"}
    assert summary["scorer"] == NativeScorer(tiny_detector, tiny_clip).about()


def test_cli_scorer_choices(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(GENEVAL_SCORER_ENV, raising=False)
    meta_file = tmp_path / "m.jsonl"
    meta_file.write_text(json.dumps(_genevals_first(("single_object",))[0]) + "\n")
    base = ["eval", "geneval", "--model", "prior", "--metadata", str(meta_file), "--images-per-prompt", "1",
            "--steps", "1"]
    assert main([*base, "--out", str(tmp_path / "a"), "--scorer", "toy", "--detector", "x"]) == 2
    assert "--detector is read by --scorer native only" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before generating
    # official on a toy model: no toy scoring, the official instructions
    assert main([*base, "--out", str(tmp_path / "b"), "--scorer", "official"]) == 0
    assert "evaluate_images.py" in capsys.readouterr().out and not (tmp_path / "b" / "results.jsonl").exists()
    # toy on GenEval's prompts: refused, naming the class the toy detector cannot detect (a score of 0 for every
    # bench would describe the detector, not the model)
    assert main([*base, "--out", str(tmp_path / "c"), "--scorer", "toy"]) == 2
    err = capsys.readouterr().err
    assert '"bench" is not one of the' in err and "metadata.jsonl, line 1" in err
    assert not (tmp_path / "c" / "results.jsonl").exists()


def test_cli_official_scorer_summarises_official_results(tmp_path, monkeypatch):
    """--scorer official on a toy model runs $PARAUNI_GENEVAL_SCORER; its rows are summarised as GenEval's
    summary_scores.py does, checked against numbers worked out by hand: per task the share of correct images,
    overall the mean of the tasks (not of the images), prompts correct when any of their images is."""
    scorer = tmp_path / "fake_scorer.py"
    scorer.write_text(
        "import json, pathlib, sys\n"
        "images, outfile = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[sys.argv.index('--outfile') + 1])\n"
        "verdicts = {'single_object': [True, True], 'colors': [True, False], 'counting': [False, False]}\n"
        "rows = []\n"
        "for d in sorted(images.glob('[0-9]*')):\n"
        "    meta = json.loads((d / 'metadata.jsonl').read_text())\n"
        "    for k, s in enumerate(sorted((d / 'samples').glob('*.png'))):\n"
        "        ok = verdicts[meta['tag']][k]\n"
        "        rows.append({'filename': str(s), 'tag': meta['tag'], 'prompt': meta['prompt'],\n"
        "                     'reason': '' if ok else 'no', 'correct': ok, 'metadata': json.dumps(meta),\n"
        "                     'details': json.dumps({'bench': [[1.0, 2.0, 3.0, 4.0, 0.9]]})})\n"
        "outfile.write_text(''.join(json.dumps(r) + '\\n' for r in rows))\n")
    monkeypatch.setenv(GENEVAL_SCORER_ENV, f"{sys.executable} {scorer}")
    meta_file = tmp_path / "m.jsonl"
    meta_file.write_text("".join(json.dumps(m) + "\n" for m in _genevals_first(("single_object", "colors",
                                                                                  "counting"))))
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--model", "prior", "--metadata", str(meta_file), "--out", str(out),
                 "--images-per-prompt", "2", "--steps", "1", "--scorer", "official"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # 6 images, 3 correct; 3 prompts, 2 with a correct image; tasks 2/2, 1/2, 0/2; overall (1 + 0.5 + 0) / 3
    assert summary == {"total_images": 6, "total_prompts": 3, "correct_images": 0.5, "correct_prompts": 2 / 3,
                       "tasks": {"single_object": 1.0, "colors": 0.5, "counting": 0.0},
                       "task_images": {"single_object": 2, "colors": 2, "counting": 2}, "overall": 0.5}


# ---- the reference's preprocessing and post-processing, written out here independently of the module ----

# OpenAI CLIP's normalisation (open_clip/constants.py OPENAI_DATASET_MEAN / _STD) and ImageNet's in 0-255 units
# (mmdetection's img_norm_cfg in mask2former_r50_lsj_8x2_50e_coco.py).
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
MMDET_MEAN, MMDET_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _open_clip_preprocess(image: Image.Image, size: int = 32) -> np.ndarray:
    """open_clip's eval transform: torchvision Resize(size, BICUBIC) (long side int(size * long / short)),
    CenterCrop(size) (offset int(round(margin / 2.0))), ToTensor, Normalize(OpenAI mean, std); (3, size, size)."""
    w, h = image.size
    new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    im = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = np.asarray(im.crop((left, top, left + size, top + size)), np.float32) / 255
    return ((x - np.array(OPENAI_MEAN, np.float32)) / np.array(OPENAI_STD, np.float32)).transpose(2, 0, 1)


def _cv2_bilinear(arr: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """OpenCV INTER_LINEAR (imgproc/src/resize.cpp): source = (dst + 0.5) * in / out - 0.5, clamped at the
    edges, no antialiasing, rounded half up to uint8."""
    def taps(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    y0, y1, wy = taps(out_h, arr.shape[0])
    x0, x1, wx = taps(out_w, arr.shape[1])
    a = arr.astype(np.float64)
    rows = a[y0] * (1 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    out = rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return np.floor(out + 0.5).astype(np.uint8)


def _mmdet_input(image: Image.Image, scale=(1333, 800)) -> tuple[np.ndarray, int, int]:
    """mmdetection 2.x's test pipeline for GenEval's config: Resize(img_scale, keep_ratio=True) with mmcv's
    rescale_size (factor min(long_max / long, short_max / short), sizes int(x * f + 0.5)), Pad(size_divisor=32,
    pad_val=128), Normalize(ImageNet mean/std); returns (1, 3, Hp, Wp) and the resized (h, w)."""
    arr = np.asarray(image.convert("RGB"))
    h, w = arr.shape[:2]
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    nw, nh = int(w * f + 0.5), int(h * f + 0.5)
    ph, pw = int(np.ceil(nh / 32)) * 32, int(np.ceil(nw / 32)) * 32
    padded = np.full((ph, pw, 3), 128, np.uint8)
    padded[:nh, :nw] = _cv2_bilinear(arr, nh, nw)
    x = (padded.astype(np.float32) - np.array(MMDET_MEAN, np.float32)) / np.array(MMDET_STD, np.float32)
    return x.transpose(2, 0, 1)[None], nh, nw


def test_detector_input_is_mmdetections_test_pipeline(tiny_detector):
    """Keep-ratio resize to the detector's scale + grey padding to a multiple of 32, not a stretch; the scale
    setting is what the model sees."""
    from parauni.eval.geneval_native import mmdet_preprocess, rescale_size

    assert rescale_size(768, 512) == (1200, 800)  # GenEval's scale on a 3:2 image: 1200x800 (not 1216x800)
    assert rescale_size(512, 512) == (800, 800) and rescale_size(2000, 500) == (1333, 333)
    pixels, (h, w) = mmdet_preprocess(_image(512, 768), MMDET_MEAN, MMDET_STD)
    assert tuple(pixels.shape) == (1, 3, 800, 1216) and (h, w) == (800, 1200)
    detector = Mask2FormerDetector(tiny_detector, scale=SCALE)
    seen = []
    detector.model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["pixel_values"]),
                                             with_kwargs=True)
    for hw in ((40, 48), (37, 90)):
        image = _image(*hw, seed=hw[1])
        detector(image)
        expected, nh, nw = _mmdet_input(image, scale=(96, 64))
        got = seen[-1].numpy()
        assert got.shape == expected.shape, (hw, got.shape, expected.shape)
        diff = np.abs(got - expected)  # float vs fixed-point rounding: a pixel may differ by one level (1 / std)
        assert (diff <= 1.01 / min(MMDET_STD)).all() and (diff > 1e-4).mean() < 1e-3, diff.max()
        assert (got[..., nh:, :] == got[0, :, -1:, -1:]).all()  # grey padding below and right: one value


def test_detections_follow_mmdets_instance_postprocess(tiny_detector):
    """Every detection recomputed here from the model's raw outputs with mmdetection 2.x's rule
    (maskformer_fusion_head.py instance_postprocess): top-k over the flattened (query, class) softmax scores,
    masks upsampled to the padded input, cut to the resized image, upsampled to the original, score = class score
    x mean sigmoid inside the mask, box = the mask's extent."""
    image = _image(40, 52, seed=3)
    k = 7
    detector = Mask2FormerDetector(tiny_detector, scale=SCALE, max_per_image=k)
    expected_pixels, nh, nw = _mmdet_input(image, scale=(96, 64))
    model = Mask2FormerForUniversalSegmentation.from_pretrained(tiny_detector).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(expected_pixels))
    probs = torch.softmax(out.class_queries_logits[0], -1)[:, :-1].numpy()  # (10 queries, 4 classes)
    pairs = sorted(((float(probs[q, c]), q, c) for q in range(probs.shape[0]) for c in range(probs.shape[1])),
                   reverse=True)[:k]
    assert len({q for _, q, _ in pairs}) < k  # some query gives two of the top pairs (two classes)
    names = {0: "person", 1: "computer mouse", 2: "dog"}  # label 3 (wall-other) is no GenEval class
    expected = []
    for p, q, c in pairs:
        if c not in names:
            continue
        m = torch.nn.functional.interpolate(out.masks_queries_logits[0, q][None, None], size=expected_pixels.shape[-2:],
                                            mode="bilinear", align_corners=False)[:, :, :nh, :nw]
        m = torch.nn.functional.interpolate(m, size=(40, 52), mode="bilinear", align_corners=False)[0, 0]
        binary = (m > 0).numpy()
        if not binary.any():
            continue
        ys, xs = np.nonzero(binary)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        expected.append((names[c], box, p * float(m.sigmoid().numpy()[binary].mean())))
    expected.sort(key=lambda e: -e[2])
    got = detector(image)
    assert [(d.cls, d.bbox) for d in got] == [(c, b) for c, b, _ in expected]
    np.testing.assert_allclose([d.confidence for d in got], [s for _, _, s in expected], rtol=1e-4)


def test_top_k_is_over_query_class_pairs():
    """A query's runner-up class outranks another query's best: mmdetection keeps both of the first query's
    classes (a per-query argmax would keep one class per query)."""
    from parauni.eval.geneval_native import top_query_class_pairs

    probs = torch.tensor([[0.50, 0.45, 0.00, 0.05],  # query 0: class 0, then class 1 (last column: no object)
                          [0.10, 0.00, 0.30, 0.60],  # query 1: class 2
                          [0.05, 0.05, 0.05, 0.85]])
    scores, queries, labels = top_query_class_pairs(probs.log(), k=3)
    torch.testing.assert_close(scores, torch.tensor([0.50, 0.45, 0.30]))
    assert queries.tolist() == [0, 0, 1] and labels.tolist() == [0, 1, 2]
    assert len(top_query_class_pairs(probs.log(), k=100)[0]) == 9  # k capped at queries x classes


def test_clip_preprocessing_is_open_clips(tiny_clip):
    """The colour classifier's CLIP input against open_clip's transform written out here: bicubic, OpenAI
    mean/std, torchvision's rounded centre crop (a 40x59 crop resized to 32x47 starts 8 columns in, not 7)."""
    colors = ColorClassifier(tiny_clip)
    images = [_image(40, 59, seed=5), _image(70, 33, seed=6), _image(20, 25, seed=7), _image(32, 32, seed=8)]
    got = colors.clip.preprocess([np.asarray(im) for im in images]).numpy()
    expected = np.stack([_open_clip_preprocess(im) for im in images])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_colors_are_the_zero_shot_argmax(tiny_clip):
    """Colours recomputed here from the CLIP model: each colour's text embedding = the mean of the unit embeddings
    of GenEval's three templates, renormalised (CLIP_benchmark zero_shot_classifier); the colour = the argmax of the
    image-text cosine (evaluate_images.py:127)."""
    colors = ColorClassifier(tiny_clip)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    tok = _tokenizer()
    templates = ["a photo of a {c} car", "a photo of a {c}-colored car", "a photo of a {c} object"]
    with torch.no_grad():
        cols = []
        for c in rules.COLORS:
            enc = tok([t.format(c=c) for t in templates], padding=True, return_tensors="pt")
            pooled = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
            e = torch.nn.functional.normalize(model.text_projection(pooled), dim=-1).mean(0)
            cols.append(e / e.norm())
        weights = torch.stack(cols, 1)
        torch.testing.assert_close(colors.weights("car"), weights, atol=1e-5, rtol=1e-5)
        images = [_image(30 + 3 * i, 40, seed=20 + i) for i in range(16)]
        pixels = torch.from_numpy(np.stack([_open_clip_preprocess(im) for im in images]))
        feats = torch.nn.functional.normalize(model.visual_projection(
            model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
    logits = 100 * feats @ weights
    expected = [rules.COLORS[i] for i in logits.argmax(1).tolist()]
    assert len(set(expected)) > 1 or logits.argmin(1).tolist() != logits.argmax(1).tolist()
    got = [colors(im, [Detection("car", (0.0, 0.0, float(im.size[0]), float(im.size[1])), 0.9)], "car")[0]
           for im in images]
    assert got == expected
    assert colors.precision == "fp32" and not colors.amp  # CPU: fp32 (GenEval's fp16 autocast is CUDA-only)
    with pytest.raises(ValueError, match="CUDA"):
        ColorClassifier(tiny_clip, amp=True)


def test_cli_native_scorer_score_only(tmp_path, tiny_detector, tiny_clip):
    """``--score-only DIR --scorer native``: images made elsewhere (non-square, no provenance) scored in place."""
    folder = tmp_path / "elsewhere"
    for i, meta in enumerate(_genevals_first(("colors", "two_object"))):
        (folder / f"{i:05d}" / "samples").mkdir(parents=True)
        (folder / f"{i:05d}" / "metadata.jsonl").write_text(json.dumps(meta))
        _image(48, 72, seed=i).save(folder / f"{i:05d}" / "samples" / "00000.png")
    assert main(["eval", "geneval", "--score-only", str(folder), "--scorer", "native", "--detector",
                 str(tiny_detector), "--clip", str(tiny_clip)]) == 0
    rows = [json.loads(x) for x in (folder / "results.jsonl").read_text().splitlines()]
    assert [r["tag"] for r in rows] == ["colors", "two_object"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["scorer"]["kind"] == "native" and summary["scorer"]["clip_precision"] == "fp32"
    assert json.loads((folder / "provenance.json").read_text())["source"] == "external"
