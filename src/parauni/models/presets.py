"""Model presets: the paper's real configurations (sizes, hub ids, SANA's sampler).

Real presets build at real size with random weights, on the ``meta`` device or a real one, for speed and
memory benchmarks (``build_preset``). The pipelines they make, with pretrained weights by hub id or local
folder (``load_preset``) or tiny and random for tests (``build_tiny``), are built in
:mod:`parauni.pipelines.presets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaTransformer2DModel
from transformers import InternVLConfig, InternVLForConditionalGeneration

from ..errors import UnknownNameError
from .conditioner import ParaUniConditioner

_INTERNVIT_300M = dict(  # InternViT-300M-448px-V2.5, the vision tower of InternVL3-1B/2B
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    image_size=448, patch_size=14, attention_bias=True, use_qk_norm=False, norm_type="layer_norm",
    layer_scale_init_value=0.1, use_mean_pooling=True, hidden_act="gelu",
)
_QWEN25 = dict(vocab_size=151674, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
               hidden_act="silu", tie_word_embeddings=False, model_type="qwen2")
_QWEN25_05B = dict(_QWEN25, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2)
_QWEN25_15B = dict(_QWEN25, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2)
_SANA_06B = dict(in_channels=32, out_channels=32, num_attention_heads=36, attention_head_dim=32, num_layers=28,
                 num_cross_attention_heads=16, cross_attention_head_dim=72, cross_attention_dim=1152,
                 caption_channels=2304, mlp_ratio=2.5, patch_size=1)
_SANA_16B = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
                 num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                 caption_channels=2304, mlp_ratio=2.5, patch_size=1)
_DC_AE_F32C32 = dict(  # DC-AE f32c32 as shipped with SANA (32x down, 32 latent channels)
    in_channels=3, latent_channels=32, attention_head_dim=32,
    encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    encoder_layers_per_block=[2, 2, 2, 3, 3, 3], decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]], decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    upsample_block_type="interpolate", downsample_block_type="Conv", decoder_norm_types="rms_norm",
    decoder_act_fns="silu", scaling_factor=0.41407,
)
# SANA's sampler: DPM-Solver++ with flow prediction and flow shift 3.0.
SANA_SCHEDULER = dict(algorithm_type="dpmsolver++", prediction_type="flow_prediction", use_flow_sigmas=True,
                      flow_shift=3.0, solver_order=2, num_train_timesteps=1000, final_sigmas_type="zero",
                      lower_order_final=True)


@dataclass(frozen=True)
class Preset:
    """A named configuration: where each component comes from and its exact size."""

    name: str
    resolution: int
    vlm_id: str
    transformer_id: str  # a diffusers pipeline repo; the transformer is in its "transformer" subfolder
    vae_id: str
    vision: dict
    text: dict
    transformer: dict
    conditioner: dict
    vae: dict = field(default_factory=lambda: dict(_DC_AE_F32C32))

    def vlm_config(self) -> InternVLConfig:
        return InternVLConfig(vision_config=self.vision, text_config=self.text, image_token_id=151667,
                              image_seq_length=256, downsample_ratio=0.5, tie_word_embeddings=False)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("internvl3-1b_sana-0.6b_512", 512, "OpenGVLab/InternVL3-1B-hf",
               "Efficient-Large-Model/Sana_600M_512px_diffusers", "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers",
               _INTERNVIT_300M, _QWEN25_05B, dict(_SANA_06B, sample_size=16),
               dict(connector_depth=6, connector_heads=14, connector_ffn=3072)),
        Preset("internvl3-2b_sana-1.6b_512", 512, "OpenGVLab/InternVL3-2B-hf",
               "Efficient-Large-Model/Sana_1600M_512px_diffusers", "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers",
               _INTERNVIT_300M, _QWEN25_15B, dict(_SANA_16B, sample_size=16),
               dict(connector_depth=6, connector_heads=24, connector_ffn=8960)),
        Preset("internvl3-2b_sana1.5-1.6b_1024", 1024, "OpenGVLab/InternVL3-2B-hf",
               "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers",
               _INTERNVIT_300M, _QWEN25_15B, dict(_SANA_16B, sample_size=32, qk_norm="rms_norm_across_heads"),
               dict(connector_depth=6, connector_heads=24, connector_ffn=8960)),
    ]
}


def sampling_scheduler() -> DPMSolverMultistepScheduler:
    """SANA's inference scheduler (DPM-Solver++, flow prediction, shift 3.0)."""
    return DPMSolverMultistepScheduler(**SANA_SCHEDULER)


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownNameError(f"unknown preset {name!r}; known: {sorted(PRESETS)} and 'tiny'")
    return PRESETS[name]


def build_preset(name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32,
                 with_vae: bool = True, **conditioner_overrides) -> dict:
    """Components of a real preset at real size with random weights (no download).

    On ``device="meta"`` nothing is allocated (parameter counts, shapes); on a real device the
    weights are random, for speed and memory measurements.  Returns the pipeline's components
    except the tokenizer (use :func:`parauni.pipelines.presets.load_preset` for the real one).
    """
    p = get_preset(name)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype rather than casting afterwards
    try:
        with torch.device(device):
            vlm = InternVLForConditionalGeneration(p.vlm_config())
            transformer = SanaTransformer2DModel(**p.transformer)
            vae = AutoencoderDC(**p.vae) if with_vae else None
            conditioner = ParaUniConditioner(
                llm_hidden_size=p.text["hidden_size"], llm_num_layers=p.text["num_hidden_layers"],
                caption_channels=p.transformer["caption_channels"], **{**p.conditioner, **conditioner_overrides},
            )
    finally:
        torch.set_default_dtype(default)
    return dict(vlm=vlm, conditioner=conditioner, transformer=transformer, vae=vae, scheduler=sampling_scheduler())


def _is_local(source: str) -> bool:
    return source.startswith((os.sep, ".", "~")) or os.path.exists(source) or (os.sep in source and
                                                                              source.count("/") > 1)


def check_source(source: str | os.PathLike, what: str) -> str:
    """Fail early, with the fix, when a local weights path does not exist."""
    source = os.path.expanduser(str(source))
    if _is_local(source) and not os.path.exists(source):
        raise FileNotFoundError(
            f"{what} weights path {source!r} does not exist. Point to a local folder holding the "
            f"{what} (config.json + *.safetensors), or give a Hugging Face hub id and download it first, "
            f"e.g. `huggingface-cli download <hub-id> --local-dir {source}`."
        )
    return source
