"""How stages I/II run under Accelerate's distributed back-ends where Accelerate alone falls short: FSDP2 and
DeepSpeed on CPU processes (gloo), the DeepSpeed config filled from the training config, checkpoints that hold
only the trainable weights whatever the back-end (:class:`TrainableCheckpointHooks`), and one float from a
gradient norm of any of them."""

from __future__ import annotations

import gc
import importlib
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


def refuse_sharded_evaluation(acc, evaluate: bool) -> None:
    """``train.eval_geneval`` runs the whole model on the main process alone, which FSDP and DeepSpeed ZeRO-3
    (weights sharded across processes) cannot: refused in one line naming what to do instead."""
    zero3 = acc.distributed_type == DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
    if (acc.distributed_type == FSDP or zero3) and evaluate:
        engine = "FSDP" if acc.distributed_type == FSDP else "DeepSpeed ZeRO-3"
        raise ConfigError(f"train.eval_geneval=true needs the whole model on one process, but {engine} shards it; "
                          "set train.eval_geneval=false and score the exported checkpoint "
                          "(`parauni export CHECKPOINT --out DIR`) afterwards")


def fsdp_wrap_present(acc, module) -> None:
    """Keep, of the FSDP plugin's ``transformer_cls_names_to_wrap``, the classes ``module`` has, before
    ``Accelerator.prepare(module)``: one launch config names the blocks of every part (configs/accelerate/fsdp.yaml:
    ``SanaTransformerBlock`` and the VLM's ``Qwen2DecoderLayer``), and Accelerate refuses a name the prepared
    module lacks (stage III prepares the transformer alone)."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    plugin = acc.state.fsdp_plugin
    names = plugin.transformer_cls_names_to_wrap
    if names:
        present = [n for n in names if get_module_class_from_name(module, n) is not None]
        if not present:
            raise ConfigError(f"fsdp_transformer_layer_cls_to_wrap names no block of {type(module).__name__} "
                              f"({', '.join(names)}): add its block class to the accelerate config")
        plugin.transformer_cls_names_to_wrap = present


def deepspeed_setup(acc) -> None:
    """A DeepSpeed launch (``ACCELERATE_USE_DEEPSPEED=true``), before the model is built: DeepSpeed on CPU
    processes too (:func:`deepspeed_on_cpu`), and ``zero3_init_flag: false`` honoured.

    Selecting a ZeRO-3 plugin registers its config with ``transformers`` (``HfDeepSpeedConfig``), which then
    builds every model under ``deepspeed.zero.Init`` whatever ``zero3_init_flag`` says: each weight is
    partitioned as it is created and randomly initialised weights draw other values than on one process.
    With the flag off the registration is undone, so the model is built as on one process and
    ``deepspeed.initialize`` partitions it in ``Accelerator.prepare``.
    """
    deepspeed_on_cpu(acc)
    plugin = acc.state.deepspeed_plugin if acc.distributed_type == DEEPSPEED else None
    if plugin is not None and plugin.zero_stage == 3 and not plugin.zero3_init_flag:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


def deepspeed_on_cpu(acc) -> None:
    """Honour a DeepSpeed launch (``ACCELERATE_USE_DEEPSPEED=true``) on CPU processes (gloo).

    ``AcceleratorState`` selects DeepSpeed only when the Accelerator is not built with ``cpu=True``, and
    without an accelerator device it then finds no distributed back-end at all; CPU processes stay
    ``MULTI_CPU`` and would silently train under plain DDP. DeepSpeed itself runs on CPU
    (``DS_ACCELERATOR=cpu``; without oneCCL it communicates over gloo, DeepSpeed >= 0.14.1), so here
    ``deepspeed.comm`` adopts the gloo process group Accelerate started and the shared state is switched to
    DeepSpeed with the plugin Accelerate built from the launcher's ``ACCELERATE_DEEPSPEED_*`` variables, as
    ``AcceleratorState`` does on a GPU; ``prepare`` (``deepspeed.initialize``), ``backward``,
    ``clip_grad_norm_`` and ``save_state`` / ``load_state`` then take Accelerate's own DeepSpeed paths (used
    by tests/test_regimes.py). DeepSpeed's mixed precision then comes from its config (``bf16.enabled``:
    bf16 weights and activations with float32 master weights), not from autocast.
    """
    if acc.distributed_type != MULTI_CPU or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed.comm
        from deepspeed.accelerator import get_accelerator
    except ImportError as err:
        raise ImportError("this launch config uses DeepSpeed: `pip install 'parauni[deepspeed]'`") from err
    if get_accelerator().device_name() != "cpu":
        raise ConfigError(f"DeepSpeed on CPU processes needs DS_ACCELERATOR=cpu, got {get_accelerator().device_name()}"
                          f" (set DS_ACCELERATOR=cpu before the launch)")
    from accelerate.utils import DeepSpeedPlugin

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # `import ... as` would give torch (re-exported)

    # DeepSpeed's CPU back-end JIT-compiles a shared-memory all-reduce (a C++ build, ~1.5 min, once per
    # machine) that serves only inference_all_reduce (tensor-parallel inference), never training's
    # collectives; without it every collective is gloo's
    ds_torch.build_shm_op = lambda: None
    deepspeed.comm.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)  # adopts the gloo group
    state = acc.state
    plugin = state.deepspeed_plugins if isinstance(state.deepspeed_plugins, DeepSpeedPlugin) else DeepSpeedPlugin()
    precision = state._mixed_precision
    plugin.set_mixed_precision(precision)  # the config's bf16 / fp16 sections, as AcceleratorState fills them
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.DEEPSPEED
    AcceleratorState._shared_state["deepspeed_plugins"] = plugin
    plugin.select(_from_accelerator_state=True)
    AcceleratorState._shared_state["_mixed_precision"] = "no"  # DeepSpeed casts (AcceleratorState's DeepSpeed path)
    acc.native_amp = False  # no autocast on top of DeepSpeed's own bf16 (as on a GPU)
    acc.deepspeed_engine_wrapped = None


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


def release_deepspeed(acc) -> None:
    """Destroy the DeepSpeed engine (its ZeRO hooks and the pending communication handles it holds) and collect
    it while the process group is still alive, before ``Accelerator.end_training`` destroys the group: left
    to the interpreter's exit, gloo work objects held by ZeRO-3 are freed during finalization, which can
    abort the process (``terminate called without an active exception``) after a complete run."""
    if acc.distributed_type == DEEPSPEED and getattr(acc, "deepspeed_engine_wrapped", None) is not None:
        acc.deepspeed_engine_wrapped.engine.destroy()
        acc.deepspeed_engine_wrapped = None
        gc.collect()


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
