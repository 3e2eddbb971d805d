"""The CLIP-based rewards (PickScore, aesthetic, CLIP score) on a tiny random CLIPModel, and the real aesthetic head."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

from parauni.rewards import WeightedReward, build_reward
from parauni.rewards.aesthetic import AestheticMLP, AestheticReward
from parauni.rewards.clip_common import ClipEmbedder, ClipPreprocess
from parauni.rewards.clipscore import ClipScoreReward
from parauni.rewards.pickscore import PickScoreReward

WORDS = "a photo of red blue green circle square triangle cat dog two three".split()
PREPROCESS = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32},
              "image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}


def _tokenizer(max_len: int) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 2), ("<eos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=max_len)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A saved tiny random CLIP (projection 16, 32x32 images) with a word-level tokenizer and a processor config."""
    path = tmp_path_factory.mktemp("tiny_clip")
    cfg = CLIPConfig(
        text_config=dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(path)
    _tokenizer(16).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESS))
    return path


@pytest.fixture(scope="module")
def tiny_head(tmp_path_factory):
    path = tmp_path_factory.mktemp("head") / "head.pth"
    torch.manual_seed(1)
    torch.save(AestheticMLP(in_dim=16).state_dict(), path)
    return path


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8) for i in range(n)]


PROMPTS = ["a photo of a red circle", "two blue squares", "a green cat", "three dog"]


def test_preprocess_matches_transformers_clip_processor(tiny_clip):
    pil_clip = pytest.importorskip("transformers.models.clip.image_processing_pil_clip")
    ours = ClipPreprocess.from_pretrained(tiny_clip, image_size=99, crop_rounding="floor")  # transformers' crop
    assert (ours.size, ours.crop, ours.mean) == (36, 32, (0.5, 0.4, 0.3))
    ref = pil_clip.CLIPImageProcessorPil(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                         image_mean=PREPROCESS["image_mean"], image_std=PREPROCESS["image_std"])
    images = _images(2) + [np.zeros((70, 50, 3), np.uint8) + 200]
    expected = torch.as_tensor(np.stack(ref(images=images, return_tensors="np")["pixel_values"]))
    torch.testing.assert_close(ours(images), expected.float(), atol=1e-5, rtol=0)


def test_preprocess_defaults_without_config(tmp_path):
    pre = ClipPreprocess.from_pretrained(tmp_path, image_size=24)
    assert (pre.size, pre.crop) == (24, 24) and pre.std[0] == pytest.approx(0.26862954)
    assert pre(_images(1)).shape == (1, 3, 24, 24)


def _reference_logits(path, images, prompts):
    """The model's own forward (logit_scale.exp() * cos) with independently preprocessed inputs."""
    model = CLIPModel.from_pretrained(path).eval()
    tok = _tokenizer(16)
    enc = tok(prompts, padding=True, return_tensors="pt")
    # the rewards preprocess as their reference code does, with transformers' CLIPProcessor (its crop rounds down;
    # test_preprocess_matches_transformers_clip_processor checks that "floor" is that processor)
    pixels = ClipPreprocess(36, 32, tuple(PREPROCESS["image_mean"]), tuple(PREPROCESS["image_std"]), "floor")(images)
    with torch.no_grad():
        scale = model.logit_scale.exp().item()
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    return out.logits_per_image.diagonal(), scale


def test_pickscore_and_clipscore_follow_the_model(tiny_clip):
    images = _images(4)
    logits, logit_scale = _reference_logits(tiny_clip, images, PROMPTS)
    pick = PickScoreReward(model=tiny_clip, processor=tiny_clip)(images, PROMPTS)
    assert pick.shape == (4,) and pick.dtype == torch.float32
    torch.testing.assert_close(pick, logits / 26, atol=1e-5, rtol=1e-5)
    clip = ClipScoreReward(model=tiny_clip)(images, PROMPTS)
    torch.testing.assert_close(clip, (100 * logits / logit_scale).clamp(min=0), atol=1e-4, rtol=1e-5)
    half = ClipScoreReward(model=tiny_clip, scale=0.5)(images, PROMPTS)
    torch.testing.assert_close(half, clip / 2)


def test_scores_are_deterministic_and_depend_on_text_and_image(tiny_clip):
    reward = PickScoreReward(model=tiny_clip, processor=tiny_clip, scale=1.0)
    images = _images(4)
    a = reward(images, PROMPTS)
    assert torch.equal(a, reward(images, PROMPTS))
    swapped = reward(images, PROMPTS[1:] + PROMPTS[:1])
    assert (a - swapped).abs().min() > 1e-4
    other = reward(_images(4, seed=1), PROMPTS)
    assert (a - other).abs().min() > 1e-4


def test_aesthetic_on_tiny_clip(tiny_clip, tiny_head, tmp_path):
    reward = AestheticReward(head=tiny_head, model=tiny_clip)
    images = _images(3)
    scores = reward(images, ["ignored"] * 3)
    emb = ClipEmbedder(tiny_clip, crop_rounding="floor").image_embeds(images)  # Flow-GRPO: transformers' processor
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    head = AestheticMLP(16)
    head.load_state_dict(torch.load(tiny_head, weights_only=True))
    torch.testing.assert_close(scores, head.eval()(emb).detach())
    from safetensors.torch import save_file

    save_file(head.state_dict(), tmp_path / "head.safetensors")
    torch.testing.assert_close(AestheticReward(head=tmp_path / "head.safetensors", model=tiny_clip)(images), scores)
    big = tmp_path / "big.pth"
    torch.save(AestheticMLP(768).state_dict(), big)
    with pytest.raises(ValueError, match="768-d"):
        AestheticReward(head=big, model=tiny_clip)


def test_missing_weights_say_how_to_get_them(tmp_path, tiny_clip):
    with pytest.raises(FileNotFoundError, match="hf download"):
        PickScoreReward(model=tmp_path / "nope", processor=tiny_clip)
    with pytest.raises(FileNotFoundError, match="hf download"):
        ClipScoreReward(model=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="improved-aesthetic-predictor"):
        AestheticReward(model=tiny_clip)
    with pytest.raises(FileNotFoundError, match="improved-aesthetic-predictor"):
        AestheticReward(head=tmp_path / "missing.pth", model=tiny_clip)


def test_weighted_reward_with_the_three_real_rewards(tiny_clip, tiny_head):
    options = {"pickscore": {"model": tiny_clip, "processor": tiny_clip}, "aesthetic": {"head": tiny_head,
               "model": tiny_clip}, "clipscore": {"model": tiny_clip}}
    weights = {"pickscore": 0.5, "aesthetic": 0.3, "clipscore": 0.2}
    combined = WeightedReward(weights, options=options)
    images = _images(4)
    total, parts = combined(images, PROMPTS)
    assert not torch.isnan(total).any() and total.shape == (4,)
    for name in weights:
        torch.testing.assert_close(parts[name], build_reward(name, **options[name])(images, PROMPTS))
    torch.testing.assert_close(total, sum(w * parts[n] for n, w in weights.items()))


def _plain_mlp(state, x):
    for i in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x.squeeze(-1)


def test_real_aesthetic_head(shared_data):
    path = shared_data / "aesthetic" / "sac+logos+ava1-l14-linearMSE.pth"
    if not path.exists():
        pytest.skip(f"{path} missing")
    state = torch.load(path, map_location="cpu", weights_only=True)
    head = AestheticMLP.from_file(path)
    assert not head.training and head.layers[0].in_features == 768
    emb = F.normalize(torch.randn(8, 768, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = head(emb)
    torch.testing.assert_close(out, _plain_mlp(state, emb))
    assert torch.equal(out, head(emb))  # eval mode: dropout is off
    assert torch.isfinite(out).all() and ((out > 1) & (out < 10)).all()  # random directions: mid-scale scores
    assert head(torch.zeros(1, 768)).item() == pytest.approx(5.2366, abs=1e-3)  # the bias path alone, pinned
