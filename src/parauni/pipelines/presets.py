"""Pipelines of the model presets (:mod:`parauni.models.presets`): a real preset with pretrained weights by hub id
or local folder (:func:`load_preset`), and ``tiny``, every component tiny and random, built locally for tests
(:func:`build_tiny`)."""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel
from transformers import AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration

from ..errors import UsageError
from ..models.conditioner import ParaUniConditioner
from ..models.presets import check_source, get_preset, sampling_scheduler
from ..models.tokenizer import build_tokenizer
from .pipeline_parauni import ParaUniPipeline


def _load(loader, source: str, what: str, **kwargs):
    source = check_source(source, what)
    try:
        return loader(source, **kwargs)
    except OSError as err:  # hub id not cached and no network, or a folder without weights
        raise UsageError(
            f"could not load the {what} from {source!r}: {err}\nDownload it with "
            f"`huggingface-cli download {source} --local-dir DIR` and pass DIR instead."
        ) from err


def load_preset(name: str, vlm: str | None = None, transformer: str | None = None, vae: str | None = None,
                conditioner: str | None = None, dtype: torch.dtype = torch.float32, **conditioner_overrides):
    """The pipeline of a real preset with pretrained weights from hub ids or local folders.

    ``vlm`` / ``transformer`` / ``vae`` override the preset's sources (a hub id or a local folder;
    ``transformer`` is a SANA diffusers repo with a ``transformer`` subfolder, or a folder holding the
    transformer itself).  ``conditioner`` is a saved queries + LIM folder; without it they are new.
    """
    p = get_preset(name)
    vlm_src = vlm or p.vlm_id
    vlm_model = _load(InternVLForConditionalGeneration.from_pretrained, vlm_src, "VLM", dtype=dtype)
    tokenizer = _load(AutoTokenizer.from_pretrained, vlm_src, "tokenizer")
    t_src = transformer or p.transformer_id
    sub = {} if os.path.exists(os.path.join(t_src, "config.json")) else {"subfolder": "transformer"}
    sana = _load(SanaTransformer2DModel.from_pretrained, t_src, "diffusion transformer", dtype=dtype, **sub)
    ae = _load(AutoencoderDC.from_pretrained, vae or p.vae_id, "VAE", dtype=dtype)
    if conditioner:
        cond = _load(ParaUniConditioner.from_pretrained, conditioner, "conditioner", dtype=dtype)
    else:
        cond = ParaUniConditioner(llm_hidden_size=p.text["hidden_size"], llm_num_layers=p.text["num_hidden_layers"],
                                  caption_channels=p.transformer["caption_channels"],
                                  **{**p.conditioner, **conditioner_overrides}).to(dtype)
    return ParaUniPipeline(vlm=vlm_model, tokenizer=tokenizer, conditioner=cond, transformer=sana, vae=ae,
                           scheduler=sampling_scheduler())


def build_tiny(seed: int = 0, pixel_space: bool = False, sample_size: int = 8, **conditioner_overrides):
    """A complete pipeline with every component tiny and random, built locally (tests, demos)."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    vision = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  image_size=56, patch_size=14, attention_bias=True)
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=False)
    vlm = InternVLForConditionalGeneration(InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=4, downsample_ratio=0.5, tie_word_embeddings=False)).eval()
    vae = None if pixel_space else AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=8, encoder_block_types="ResBlock",
        decoder_block_types="ResBlock", encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
        decoder_qkv_multiscales=((), ()), upsample_block_type="interpolate", downsample_block_type="Conv",
        scaling_factor=1.0).eval()
    transformer = SanaTransformer2DModel(
        in_channels=3 if pixel_space else 4, out_channels=3 if pixel_space else 4, num_attention_heads=2,
        attention_head_dim=8, num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8,
        cross_attention_dim=16, caption_channels=32, sample_size=sample_size, patch_size=1).eval()
    cond_kw = dict(num_queries=8, connector_depth=2, connector_heads=4, connector_ffn=64, caption_channels=32)
    conditioner = ParaUniConditioner(llm_hidden_size=32, llm_num_layers=4, **{**cond_kw, **conditioner_overrides})
    return ParaUniPipeline(vlm=vlm, tokenizer=tokenizer, conditioner=conditioner.eval(), transformer=transformer,
                           vae=vae, scheduler=sampling_scheduler())
