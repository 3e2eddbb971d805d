"""Real presets at real size on the meta device; the tiny preset; loading errors."""

import pytest
import torch

from parauni import PRESETS, build_preset, load_preset
from parauni.models.presets import check_source, get_preset
from parauni.pipelines.loading import load_pipeline


def _count(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


# (VLM, diffusion transformer) parameter counts in billions, measured on the meta device.
EXPECTED = {
    "internvl3-1b_sana-0.6b_512": (0.938, 0.592),
    "internvl3-2b_sana-1.6b_512": (2.089, 1.604),
    "internvl3-2b_sana1.5-1.6b_1024": (2.089, 1.605),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_real_presets_build_on_meta_with_documented_sizes(name):
    parts = build_preset(name, device="meta", dtype=torch.bfloat16, with_vae=False)
    vlm_b, sana_b = EXPECTED[name]
    assert _count(parts["vlm"]) == pytest.approx(vlm_b, abs=0.001)
    assert _count(parts["transformer"]) == pytest.approx(sana_b, abs=0.001)
    assert parts["vlm"].device.type == "meta" and parts["transformer"].dtype == torch.bfloat16
    p = get_preset(name)
    cond = parts["conditioner"]
    assert cond.queries.shape == (256, p.text["hidden_size"])
    assert cond.lim.num_layers == p.text["num_hidden_layers"]
    assert cond.config.caption_channels == parts["transformer"].config.caption_channels == 2304


def test_dc_ae_is_32x_down_32_channels():
    vae = build_preset("internvl3-1b_sana-0.6b_512", device="meta")["vae"]
    assert vae.config.latent_channels == 32 and 2 ** (len(vae.config.encoder_block_out_channels) - 1) == 32


def test_missing_weights_path_says_how_to_fix(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(FileNotFoundError, match="huggingface-cli download"):
        load_preset("internvl3-1b_sana-0.6b_512", vlm=missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pipeline(missing)
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path))
    assert check_source("OpenGVLab/InternVL3-1B-hf", "VLM") == "OpenGVLab/InternVL3-1B-hf"


def test_unknown_preset():
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("sana-9000")


def test_real_preset_loads_from_local_folders(tmp_path):
    """The pretrained-loading path, fed with folders written by save_pretrained (random weights)."""
    from parauni import build_tiny

    tiny = build_tiny()
    tiny.vlm.save_pretrained(tmp_path / "vlm")
    tiny.tokenizer.save_pretrained(tmp_path / "vlm")
    tiny.transformer.save_pretrained(tmp_path / "sana" / "transformer")
    tiny.vae.save_pretrained(tmp_path / "vae")
    tiny.conditioner.save_pretrained(tmp_path / "cond")
    pipe = load_preset("internvl3-1b_sana-0.6b_512", vlm=str(tmp_path / "vlm"), transformer=str(tmp_path / "sana"),
                       vae=str(tmp_path / "vae"), conditioner=str(tmp_path / "cond"))
    for name in ("vlm", "transformer", "vae", "conditioner"):
        a, b = getattr(pipe, name).state_dict(), getattr(tiny, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
