"""Stage III's export: a ``ParaUniPipeline`` folder with the (EMA) LoRA merged into a plain transformer, from a
checkpoint (:func:`export_checkpoint`, ``parauni export``) or from a running trainer (:func:`merged_pipeline`,
:func:`write_final`: ``final/`` and the evaluations), and the strict reading of a checkpoint's weights both need."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import torch

from ..errors import UsageError
from ..pipelines.loading import build_model
from ..pipelines.pipeline_parauni import ParaUniPipeline
from ..pipelines.weights import expected_names, load_trainable, mismatch_error, read_trainable
from ..utils.checkpoints import newest_intact
from .config import load_grpo_config
from .lora import make_trainable, merged_transformer

logger = logging.getLogger(__name__)
STATE_FILE = "grpo_state.json"
CHECKPOINT_FILES = ("trainable.safetensors", "ema.safetensors")  # besides Accelerate's states and the state file
# (a DiffusionNFT checkpoint also holds old.safetensors)


def read_like(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's safetensors file, which must hold exactly the names of ``like`` with the same
    shapes (a checkpoint of other LoRA targets, rank or ``train_lim`` fails here, naming the weights)."""

    path, weights = read_trainable(path)
    missing, unexpected = sorted(set(like) - set(weights)), sorted(set(weights) - set(like))
    shapes = [f"{n} {tuple(weights[n].shape)} vs {tuple(like[n].shape)}" for n in sorted(set(like) & set(weights))
              if weights[n].shape != like[n].shape]
    if missing or unexpected or shapes:
        raise mismatch_error(f"{path} does not fit this model:", missing, unexpected, shapes,
                             "was it saved with other model.lora_rank / lora_targets / train_lim or another model?")
    return weights


def _pipeline(pipe, conditioner, transformer) -> ParaUniPipeline:
    """``pipe``'s frozen parts with this conditioner and (merged) transformer."""
    return ParaUniPipeline(vlm=pipe.vlm, tokenizer=pipe.tokenizer, conditioner=conditioner, transformer=transformer,
                           scheduler=pipe.scheduler, vae=pipe.vae)


def export_checkpoint(checkpoint: str | Path, out: str | Path, ema: bool = True) -> Path:
    """A ``ParaUniPipeline`` folder from a ``parauni grpo`` checkpoint (or run folder: its newest intact
    checkpoint), with the EMA LoRA (``ema=False``: the raw LoRA) merged into a plain transformer (a full fine-tune:
    the EMA or raw transformer weights).

    The base model is rebuilt from the checkpoint's ``config.yaml`` (``model.source``, ``model.init``,
    ``model.conditioner``), the LoRA added with its rank, alpha and targets (``model.finetune: lora``), and the saved
    weights loaded strictly (:func:`parauni.pipelines.weights.load_trainable`: every trained weight, nothing else,
    the same shapes).
    """

    ckpt = Path(checkpoint)
    if not (ckpt / STATE_FILE).is_file():
        newest = newest_intact(ckpt, STATE_FILE, required=CHECKPOINT_FILES)
        if newest is None:
            raise UsageError(f"{ckpt} is not a complete `parauni grpo` checkpoint (no {STATE_FILE}) and holds no "
                             "intact checkpoint-* folder to export")
        logger.info("exporting the newest checkpoint of %s: %s", ckpt, newest)
        ckpt = newest
    if not (ckpt / "config.yaml").is_file():
        raise UsageError(f"{ckpt} has no config.yaml: the model it trained cannot be rebuilt")
    cfg = load_grpo_config(ckpt / "config.yaml", migrate=True)  # an older checkpoint: older keys renamed
    m = cfg.model
    pipe = build_model(m, cfg.train.seed)
    tr = pipe.transformer
    make_trainable(tr, m)
    expected = {f"transformer.{n}" for n, p in tr.named_parameters() if p.requires_grad}
    if m.train_lim:
        expected |= expected_names({"conditioner": pipe.conditioner}, ["lim"])
    load_trainable(pipe, ckpt / ("ema.safetensors" if ema else "trainable.safetensors"), expected=expected)
    merged = merged_transformer(tr)
    _pipeline(pipe, pipe.conditioner.eval(), merged).save_pretrained(out)
    return Path(out)


def merged_pipeline(policy, pipe, ema: bool = True) -> ParaUniPipeline:
    """A ``ParaUniPipeline`` of a running trainer's :class:`~parauni.rl.policy.Policy` on ``pipe``: the (EMA) LoRA
    merged into a plain copy of the transformer, a copy of the conditioner. Under DeepSpeed's bf16
    (``policy.master``) the float32 (EMA or master) LoRA weights are merged, in float32, into the bf16 base weights
    the engine ran (upcast exactly): a float32 transformer that is the trained model without a second rounding."""
    if policy.master:
        chosen = policy.ema if ema else policy.weights()
        values = {n.removeprefix("transformer."): v for n, v in chosen.items()}
        merged = merged_transformer(policy.raw_transformer, values=values, dtype=torch.float32)
        return _pipeline(pipe, copy.deepcopy(pipe.conditioner).eval(), merged)
    with policy.swapped_weights(policy.ema if ema else {n: p.detach() for n, p in policy.params.items()}):
        merged = merged_transformer(policy.raw_transformer)
        cond = copy.deepcopy(pipe.conditioner).eval()
    return _pipeline(pipe, cond, merged)


def write_final(pipeline: ParaUniPipeline, out: Path) -> Path:
    """``<out>/final``: ``pipeline`` as a ``ParaUniPipeline`` folder, written under a temporary name and renamed
    (``parauni generate --model``, ``parauni eval ... --model`` read it)."""
    final = out / "final"
    tmp = final.with_name("final.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return final
