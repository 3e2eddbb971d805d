"""configs/accelerate/*.yaml parse with accelerate's own loader and launcher, and give the intended plugins."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
EXPECTED = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "deepspeed_zero2.yaml": "DEEPSPEED",
            "deepspeed_zero3.yaml": "DEEPSPEED"}
WRAPPED = ["SanaTransformerBlock", "Qwen2DecoderLayer"]


def _launch_args(path: Path):
    """What `accelerate launch --config_file PATH -m parauni train CONFIG` resolves before starting processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    raw = parser.parse_args(["--config_file", str(path), "-m", "parauni", "train", "configs/toy_stage1.yaml"])
    known = set(vars(raw))
    args, defaults, mp_from_config = _validate_launch_command(raw)
    return args, defaults, mp_from_config, known


def _set_env(monkeypatch, env: dict) -> None:
    for k, v in env.items():
        if k.startswith(("ACCELERATE_", "FSDP_")):
            monkeypatch.setenv(k, v)


def test_the_configs_exist_and_document_their_launch_command():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    for name in EXPECTED:
        text = (CONFIGS / name).read_text()
        assert re.search(rf"accelerate launch --config_file configs/accelerate/{name} -m parauni train", text)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_loads_and_validates(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = CONFIGS / name
    cfg = load_config_from_file(str(path))  # unknown top-level keys raise here
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type.value == EXPECTED[name] and cfg.mixed_precision == "bf16"
    args, _, _, known = _launch_args(path)
    # nested keys are copied onto the launcher's arguments without a check: each must be one it knows
    raw = yaml.safe_load(path.read_text())
    for section in ("fsdp_config", "deepspeed_config"):
        for key in raw.get(section, {}):
            assert key in known, f"{name}: {section}.{key} is not an `accelerate launch` option"
    assert args.module and args.training_script == "parauni" and args.training_script_args[0] == "train"
    assert args.mixed_precision == "bf16"


def test_ddp_config(monkeypatch):
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, *_ = _launch_args(CONFIGS / "ddp.yaml")
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_fsdp_config_gives_full_shard_by_decoder_layer(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, *_ = _launch_args(CONFIGS / "fsdp.yaml")
    assert args.use_fsdp
    _set_env(monkeypatch, prepare_multi_gpu_env(args))
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FSDP2 full shard
    assert plugin.transformer_cls_names_to_wrap == WRAPPED
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"  # per-process DCP shards, no rank-0 gather


def test_fsdp_wrap_classes_exist_in_the_model(tiny_pipe):
    """The class names resolve in a real module tree (the tiny pipeline has the same classes as the presets)."""
    from accelerate.utils.dataclasses import get_module_class_from_name

    for name, module in zip(WRAPPED, (tiny_pipe.transformer, tiny_pipe.vlm), strict=True):
        assert get_module_class_from_name(module, name) is not None, name


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_gives_zero_stage_bf16_clip(monkeypatch, stage):
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mp_from_config, _ = _launch_args(CONFIGS / f"deepspeed_zero{stage}.yaml")
    assert args.use_deepspeed
    # as accelerate's launch_command does before starting the DeepSpeed launcher
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    _set_env(monkeypatch, env)
    ds = DeepSpeedPlugin().deepspeed_config
    assert ds["zero_optimization"]["stage"] == stage and ds["gradient_clipping"] == 1.0
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_accepts_the_config(monkeypatch, stage):
    """With DeepSpeed installed, its own config parser accepts the plugin's config (auto values filled)."""
    pytest.importorskip("deepspeed")
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env
    from deepspeed.runtime.config import DeepSpeedConfig

    args, defaults, _, _ = _launch_args(CONFIGS / f"deepspeed_zero{stage}.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join([*defaults.deepspeed_config, "mixed_precision"])
    _set_env(monkeypatch, prepare_deepspeed_cmd_env(args)[1])
    cfg = dict(DeepSpeedPlugin().deepspeed_config)
    cfg.update(train_micro_batch_size_per_gpu=4, train_batch_size=4, bf16={"enabled": True})
    parsed = DeepSpeedConfig(cfg)  # no process group: world size 1
    assert parsed.zero_optimization_stage == stage and parsed.gradient_clipping == 1.0
    assert parsed.bfloat16_config.enabled
