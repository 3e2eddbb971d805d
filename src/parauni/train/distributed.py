"""How stages I/II run under Accelerate's distributed back-ends where Accelerate alone falls short: FSDP2 on CPU
processes (gloo), the DeepSpeed config filled from the training config, checkpoints that hold only the trainable
weights whatever the back-end (:class:`TrainableCheckpointHooks`), and one float from a gradient norm of any of
them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from ..errors import ConfigError
from ..pipelines.weights import TRAINABLE_FILE, load_trainable
from .model import FlowTrainModule, save_trainable

logger = logging.getLogger(__name__)

# accelerate.utils.DistributedType values (a str enum; compared as strings so importing this module does
# not import Accelerate)
FSDP, DEEPSPEED, MULTI_CPU = "FSDP", "DEEPSPEED", "MULTI_CPU"


def fsdp_on_cpu(acc) -> None:
    """Honour an FSDP launch (``ACCELERATE_USE_FSDP=true``) on CPU processes (gloo).

    ``AcceleratorState`` switches to FSDP only for accelerator device types (CUDA, XPU, ...); CPU
    processes stay ``MULTI_CPU`` and would silently train unsharded under ``accelerate launch --cpu
    --config_file configs/accelerate/fsdp.yaml``. FSDP2's ``fully_shard`` itself runs on a CPU device mesh
    over gloo, so here the shared state is switched to FSDP with the plugin Accelerate builds from the
    launcher's ``FSDP_*`` variables; ``prepare``, ``no_sync``, ``clip_grad_norm_`` and ``save_state`` /
    ``load_state`` then take Accelerate's own FSDP2 paths (used by tests/test_distributed.py). FSDP1
    (``fsdp_version: 1``) is refused: it needs a CUDA device.
    """
    if acc.distributed_type != MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(f"FSDP on CPU processes needs fsdp_version: 2 (FSDP2, fully_shard), got "
                          f"{plugin.fsdp_version}; set fsdp_config.fsdp_version: 2 in the accelerate config")
    if acc.state.mixed_precision != "no":  # as AcceleratorState does when it selects FSDP itself
        plugin.set_mixed_precision(acc.state.mixed_precision)
    # Both shared dicts: a later AcceleratorState() copies PartialState's distributed_type over its own.
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def configure_deepspeed(acc, micro_batch: int, grad_accum: int, global_batch: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config from the training config before ``Accelerator.prepare``.

    ``Accelerator._prepare_deepspeed`` takes ``train_micro_batch_size_per_gpu`` from a prepared
    DataLoader's ``batch_size`` and raises without one; this trainer reads its own global sample order
    (``SampleLoader``), so the value is set here. ``gradient_accumulation_steps`` must equal
    ``train.grad_accum``: DeepSpeed divides each micro-batch loss by it and steps once per that many
    micro-batches (a mismatch in the launch config would make Accelerate use DeepSpeed's value).
    ``gradient_clipping`` is ``optim.max_grad_norm`` (DeepSpeed clips inside ``engine.step``).
    """
    plugin = acc.state.deepspeed_plugin
    if plugin.zero_stage == 3:
        raise ConfigError("DeepSpeed ZeRO-3 partitions the trainable weights, which trainable.safetensors and "
                          "resuming do not gather; use zero_stage: 2 (configs/accelerate/deepspeed_zero2.yaml) "
                          "or FSDP (configs/accelerate/fsdp.yaml)")
    conf = plugin.deepspeed_config
    wanted = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_accum,
              "train_batch_size": global_batch, "gradient_clipping": max_grad_norm}
    for key, value in wanted.items():
        old = conf.get(key, "auto")
        launcher_default = key == "gradient_accumulation_steps" and old == 1  # accelerate launch's default
        if old != "auto" and old != value and not launcher_default:
            logger.warning("DeepSpeed %s=%s in the launch config is replaced by %s from the training config",
                           key, old, value)
        conf[key] = value
    acc.gradient_accumulation_steps = grad_accum


def scalar(x) -> float:
    """A float from a tensor, an FSDP2 DTensor (the norm of sharded gradients) or DeepSpeed's float/None."""
    if x is None:
        return float("nan")
    if hasattr(x, "full_tensor"):
        x = x.full_tensor()
    return float(x)


class TrainableCheckpointHooks:
    """Accelerate's ``save_state`` / ``load_state`` hooks of :class:`parauni.train.trainer.Trainer` (reads its
    ``acc``, ``module`` and ``parts``): a checkpoint holds ``trainable.safetensors``, not the frozen weights."""

    def _raw(self) -> FlowTrainModule:
        return self.acc.unwrap_model(self.module)

    def _save_hook(self, models, weights, output_dir) -> None:
        # Accelerate runs this hook on every process; under FSDP2 the trainable weights are DTensor shards,
        # so save_trainable all-gathers them (a collective) on every process and only the main one writes.
        save_trainable(self._raw(), Path(output_dir) / TRAINABLE_FILE, write=self.acc.is_main_process)
        # the frozen VLM (and in stage I the transformer) are not written by the plain path; under FSDP and
        # DeepSpeed, Accelerate's save_state writes its own (sharded / engine) model state regardless
        weights.clear()

    def _load_hook(self, models, input_dir) -> None:
        models.clear()
        if self.acc.distributed_type in (FSDP, DEEPSPEED):
            # Accelerate's load_state has already restored the module before running this hook: FSDP from
            # its own model state (load_fsdp_model), DeepSpeed from the engine's checkpoint
            # (engine.load_checkpoint, fp32 master weights included); copying full tensors into DTensor
            # shards (or into DeepSpeed's low-precision copy) would be wrong.
            return
        # strict: every weight of the trained parts present, nothing else, the same shapes (a checkpoint of
        # another fusion or layer set fails here, naming the weights)
        load_trainable(self._raw(), input_dir, parts=self.parts)
