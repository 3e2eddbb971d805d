"""A helper shared by the regime tests of stages II and III: a DeepSpeed ZeRO-3 launch config that partitions every
parameter, however small."""

from __future__ import annotations

import json
from pathlib import Path

ACCELERATE = Path(__file__).resolve().parents[1] / "configs" / "accelerate"

ZERO3_DS_CONFIG = {  # configs/accelerate/deepspeed_zero3.yaml's settings as a DeepSpeed config file, plus
    "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
    # partition every parameter, however small (the default threshold, 1e5 elements, exempts all of them here)
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, "offload_optimizer": {"device": "none"},
                          "offload_param": {"device": "none"}},
}


def zero3_launch_config(folder: Path) -> Path:
    """configs/accelerate/deepspeed_zero3.yaml with its deepspeed_config read from a file (ZERO3_DS_CONFIG)."""
    ds = folder / "zero3.json"
    ds.write_text(json.dumps(ZERO3_DS_CONFIG))
    text = (ACCELERATE / "deepspeed_zero3.yaml").read_text()
    head = text[:text.index("deepspeed_config:")]
    out = folder / "zero3_partitioned.yaml"
    out.write_text(head + f"deepspeed_config:\n  deepspeed_config_file: {ds}\n  zero3_init_flag: false\n")
    return out
