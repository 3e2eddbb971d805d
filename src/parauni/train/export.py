"""``parauni export`` of a stage I / II run: a full ``ParaUniPipeline`` folder from a checkpoint (or a run folder)
of ``parauni train``."""

from __future__ import annotations

import logging
from pathlib import Path

from safetensors import safe_open

from ..errors import UsageError
from ..pipelines.loading import build_model
from ..pipelines.weights import TRAINABLE_FILE, load_trainable
from ..utils.checkpoints import complete_checkpoints, newest_intact
from .config import load_config, trainable_parts
from .trainer import STATE_FILE

logger = logging.getLogger(__name__)


def _weight_names(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def _export_init(init: str | None, trained: set[str]) -> str | None:
    """``model.init`` for rebuilding a run's model: dropped when the checkpoint holds every weight it gave (the
    usual case: stage II from stage I), kept when it gave weights the run did not train (e.g. a frozen
    transformer), dropped with a warning when it is gone."""
    if not init:
        return None
    path = Path(init) / TRAINABLE_FILE if Path(init).is_dir() else Path(init)
    if not path.is_file():
        if Path(init).exists():
            return init
        logger.warning("model.init %s no longer exists: the export holds the checkpoint's weights on %s", init,
                       "the model's own for the rest")
        return None
    try:
        names = _weight_names(path)
    except Exception:  # noqa: BLE001 - unreadable: building with it reports the file
        return init
    return init if names - trained else None


def export(checkpoint: str | Path, out: str | Path) -> Path:
    """A full ``ParaUniPipeline`` folder from a checkpoint (or a run folder) of ``parauni train``.

    The model is built from the config saved with the weights (``config.yaml``: its source, conditioner fusion
    and layers), and the weights load strictly (:func:`parauni.pipelines.weights.load_trainable`): every weight
    of the run's trainable parts, nothing else, the same shapes; a mismatch names the weights. A run folder
    without final weights exports its newest intact checkpoint.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise FileNotFoundError(f"{ckpt}: no such checkpoint or run folder")
    if not (ckpt / TRAINABLE_FILE).is_file() and complete_checkpoints(ckpt, STATE_FILE):
        newest = newest_intact(ckpt, STATE_FILE, required=(TRAINABLE_FILE,))
        if newest is None:
            raise UsageError(f"{ckpt} has no final {TRAINABLE_FILE} and no intact checkpoint to export")
        logger.info("%s has no final weights yet: exporting its newest intact checkpoint %s", ckpt, newest)
        ckpt = newest
    cfg_file = ckpt / "config.yaml"
    if not cfg_file.is_file():
        raise UsageError(f"{ckpt} has no config.yaml; pass a checkpoint-* folder or a run folder of `parauni train`")
    cfg = load_config(cfg_file)
    weights_file = ckpt / TRAINABLE_FILE
    if weights_file.is_file():
        try:
            cfg.model.init = _export_init(cfg.model.init, _weight_names(weights_file))
        except Exception:  # noqa: BLE001 - an unreadable file: load_trainable below names it
            cfg.model.init = None
    pipe = build_model(cfg.model, cfg.train.seed)
    load_trainable(pipe, ckpt, parts=trainable_parts(cfg))
    pipe.save_pretrained(out)
    return Path(out)
