"""Reconstruction metrics (PSNR, SSIM, CLIP image similarity) and ``parauni eval reconstruct`` end to end."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from parauni.cli import main
from parauni.eval.reconstruct import PSNR_CAP, format_table, psnr, ssim
from parauni.toy.rewards.alignment import ToyImageEmbedder


def test_psnr_hand_values():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # MSE 0.01 -> 20 dB
    b[1, :, :4] = 1.0  # half the pixels off by 1: MSE 0.5 -> 10 log10(2)
    got = psnr(a, b)
    assert got[0].item() == pytest.approx(20.0, abs=1e-4)
    assert got[1].item() == pytest.approx(10 * math.log10(2), abs=1e-4)


def test_identical_images_psnr_capped_and_ssim_one():
    x = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    assert torch.equal(psnr(x, x), torch.full((3,), PSNR_CAP))
    torch.testing.assert_close(ssim(x, x), torch.ones(3))
    assert psnr(x, x + 1e-7).max() <= PSNR_CAP


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 17, 29), (3, 1, 11, 11)])
def test_ssim_matches_torchmetrics(shape):
    tm = pytest.importorskip("torchmetrics")
    g = torch.Generator().manual_seed(1)
    a = torch.rand(shape, generator=g)
    b = (a + 0.2 * torch.randn(shape, generator=g)).clamp(0, 1)
    smooth = torch.nn.functional.avg_pool2d(a, 3, 1, 1)  # structured, not only noise
    metric = tm.image.StructuralSimilarityIndexMeasure(data_range=1.0, reduction="none")
    for x, y in ((a, b), (a, smooth), (b, smooth)):
        ref = metric(x, y)
        metric.reset()
        torch.testing.assert_close(ssim(x, y), ref.float().reshape(-1), atol=1e-5, rtol=1e-5)


def test_ssim_hand_value_for_constant_images():
    # constant images: variances and covariance are 0, so SSIM is the luminance term alone
    a, b = torch.full((1, 3, 12, 12), 0.2), torch.full((1, 3, 12, 12), 0.6)
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="at least"):
        ssim(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_toy_image_embedder_cosine():
    embed = ToyImageEmbedder()
    ims = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    e = embed(ims + [ims[0].resize((64, 64))])
    assert e.shape[0] == 3 and torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (e[0] @ e[2]).item() == pytest.approx(1.0, abs=1e-3)


def test_toy_detection_and_default_embedder(tiny_pipe):
    from types import SimpleNamespace

    from parauni.eval.reconstruct import load_embedder
    from parauni.registry import family_of

    toy = SimpleNamespace(vlm=SimpleNamespace(config=SimpleNamespace(
        vision_config=SimpleNamespace(image_size=[32, 32], patch_size=[4, 4]))))
    assert family_of(toy).name == "toy" and family_of(tiny_pipe) is None
    assert isinstance(load_embedder(None, family_of(toy).embedder), ToyImageEmbedder)
    assert load_embedder("none") is None
    from parauni.toy.rewards.alignment import DEFAULT_PATH

    own = load_embedder(f"toy:{DEFAULT_PATH}")  # a toy alignment model by path
    assert isinstance(own, ToyImageEmbedder)
    with pytest.raises(FileNotFoundError, match="no toy alignment model"):
        load_embedder("toy:/nonexistent/alignment")


def test_format_table_rows_and_missing():
    table = format_table({"a": {"psnr": 13.69, "ssim": 0.372, "clip_sim": 0.99}, "b": {"psnr": 12.0, "ssim": 0.3}})
    assert table.splitlines()[0] == "| model | PSNR | SSIM | CLIP-sim |"
    assert "| a | 13.690 | 0.372 | 0.990 |" in table and "| b | 12.000 | 0.300 | – |" in table


@pytest.fixture
def tiny_clip(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, image_size=32, patch_size=8),
                     projection_dim=8)
    path = tmp_path / "clip"
    CLIPModel(cfg).save_pretrained(path)
    return path


def test_reconstruct_command_end_to_end(tmp_path, tiny_clip, tiny_pipe, capsys):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / "a.png")
    Image.new("RGB", (16, 16), (200, 30, 30)).save(images / "b.jpg")
    (images / "broken.png").write_bytes(b"not an image")
    (images / "notes.txt").write_text("ignored")
    second = tmp_path / "tiny_seed1"
    from parauni import build_tiny

    build_tiny(seed=1).save_pretrained(second)
    out = tmp_path / "out"
    rc = main(["eval", "reconstruct", "--model", "tiny", "--model", str(second), "--images", str(images),
               "--out", str(out), "--clip", str(tiny_clip), "--steps", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| model | PSNR | SSIM | CLIP-sim |" in printed and "1 unreadable image(s) skipped" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == ["tiny", str(second)]
    assert summary["n_images"] == 2 and summary["n_skipped"] == 1
    assert summary["skipped"][0]["file"] == "broken.png" and summary["clip"] == str(tiny_clip)
    for row in summary["models"].values():
        assert 0 < row["psnr"] < PSNR_CAP and -1 <= row["ssim"] <= 1 and -1 <= row["clip_sim"] <= 1
        recon = out / row["folder"]
        assert Image.open(recon / "a.png").size == (24, 20) and Image.open(recon / "b.png").size == (16, 16)
    assert len((out / "per_image.jsonl").read_text().splitlines()) == 4
    settings = summary["settings"]
    assert settings["cfg_branch"] == "image" and settings["cfg_instruction"] == "Keep the image as it is."
    assert "unconditional branch keeps the image with 'Keep the image as it is.'" in printed
    assert (out / "table.md").read_text().count("\n") == 4
    # the first model's numbers are those of the tiny pipeline used directly
    from parauni.eval.reconstruct import reconstruct, score_pairs
    from parauni.utils.images import load_image

    inputs = [load_image(images / "a.png"), load_image(images / "b.jpg")]
    scores = score_pairs(inputs, reconstruct(tiny_pipe, inputs, steps=2))
    assert summary["models"]["tiny"]["psnr"] == pytest.approx(np.mean(scores["psnr"]), abs=1e-3)


def test_reconstruct_errors(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "reconstruct", "--model", "tiny", "--images", str(empty), "--out", str(tmp_path / "o"),
                 "--clip", "none"]) == 2
    assert "no readable images" in capsys.readouterr().err


@pytest.mark.parametrize("options, negative_prompt, negative_image, settings", [
    ([], None, True, {"cfg_branch": "image", "cfg_instruction": "Keep the image as it is."}),
    (["--cfg-prompt", "Make it sharper."], "Make it sharper.", True,
     {"cfg_branch": "image", "cfg_instruction": "Make it sharper."}),
    (["--cfg-text-only"], None, False, {"cfg_branch": "text-only", "cfg_instruction": None}),
])
def test_reconstruct_cfg_options_reach_the_pipeline(tmp_path, monkeypatch, capsys, options, negative_prompt,
                                                    negative_image, settings):
    from parauni import ParaUniPipeline

    calls, call = [], ParaUniPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ParaUniPipeline, "__call__", spy)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (16, 16), (30, 200, 30)).save(images / "g.png")
    out = tmp_path / "out"
    assert main(["eval", "reconstruct", "--model", "tiny", "--images", str(images), "--out", str(out),
                 "--clip", "none", "--steps", "1", *options]) == 0
    assert len(calls) == 1
    assert calls[0]["negative_prompt"] == negative_prompt and calls[0]["negative_image"] is negative_image
    assert calls[0]["prompt"] == "Keep the image as it is."
    summary = json.loads((out / "summary.json").read_text())
    assert {k: summary["settings"][k] for k in settings} == settings
    assert ("text-only" in capsys.readouterr().out) is (not negative_image)


def test_reconstruct_cfg_options_exclude_each_other(tmp_path, capsys):
    from parauni.eval.reconstruct import reconstruct

    with pytest.raises(SystemExit):
        main(["eval", "reconstruct", "--model", "tiny", "--images", str(tmp_path), "--out", str(tmp_path / "o"),
              "--cfg-prompt", "x", "--cfg-text-only"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cannot be combined"):
        reconstruct(None, [], cfg_prompt="x", cfg_text_only=True)
