"""Options shared by several commands, and the checks every option of every command gets.

:func:`check_options` gives each numeric option a range-checking ``type`` (every integer >= 1 unless
:data:`INT_OPTIONS` says otherwise; floats finite, with the ranges of :data:`FLOAT_OPTIONS`), and ``--device``,
``--image``, ``--images``, ``--prompt`` / ``--model`` / ``--out`` their checks."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checks import NON_NEGATIVE_INT, POSITIVE_INT, RESOLUTION, SEED, Check, arg_type, nonempty_str, number


def add_run_arguments(p, config_example: str, override_example: str) -> None:
    """The arguments every config-driven run takes: CONFIG, key=value overrides, --resume,
    --allow-config-change, --overwrite, --no-progress."""
    p.add_argument("config", help=f"a YAML config, e.g. {config_example}, or the name of a shipped config "
                                  "(parauni/configs/, found from any folder)")
    p.add_argument("overrides", nargs="*", help=f"section.key=value overrides, e.g. {override_example}")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest intact checkpoint of train.output_dir (a corrupt newer one is "
                        "skipped with a warning), or from the given checkpoint folder; '--resume auto' starts afresh "
                        "when there is none. The config must match the checkpoint's except for the keys listed in "
                        "parauni.utils.resume_config.RESUME_SAFE_KEYS (length, logging, saving, evaluation, threads)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even when the config differs from the checkpoint's in keys that "
                        "change the training (batch size, model, data, optimizer, sampling, ...); the differences are "
                        "logged to <output_dir>/config_changes.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a train.output_dir that holds another run: that run (its checkpoints, "
                        "weights, logs) is first moved aside into a new <output_dir>.previous-<time> folder, never "
                        "deleted (without it such a start is refused)")
    p.add_argument("--no-progress", action="store_true")


def add_dtype_option(p) -> None:
    """``--dtype`` of the commands that run a pipeline (:func:`parauni.pipelines.loading.resolve_dtype`)."""
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weights' dtype: auto (default) is bf16 on CUDA and fp32 on CPU")


# every integer option is >= 1 unless listed here (by option, or by command and option); floats are finite
INT_OPTIONS: dict[str | tuple[str, str], Check] = {
    "seed": SEED, "seeds": SEED, "warmup": NON_NEGATIVE_INT, "workers": NON_NEGATIVE_INT,
    "eval_every": NON_NEGATIVE_INT, "eval_images": NON_NEGATIVE_INT, "samples_per_task": NON_NEGATIVE_INT,
    "height": RESOLUTION, "width": RESOLUTION, "resolution": RESOLUTION,
    ("parauni toy pretrain-prior", "steps"): NON_NEGATIVE_INT,  # 0: by --minutes only
    ("parauni toy pretrain-prior", "ae_steps"): NON_NEGATIVE_INT,
}
FLOAT_OPTIONS: dict[str | tuple[str, str], Check] = {
    "guidance": number(0.0), "lr": number(0.0, lo_open=True), "ae_lr": number(0.0, lo_open=True),
    "minutes": number(0.0, lo_open=True), "ae_minutes": number(0.0, lo_open=True),
    "flow_shift": number(0.0, lo_open=True), "scale": number(0.0, 100.0, lo_open=True), "weight_decay": number(0.0),
    "ema": number(0.0, 1.0, hi_open=True), "uncond_prob": number(0.0, 1.0, hi_open=True),
    "template_prob": number(0.0, 1.0),
}


def device_type(value: str) -> str:
    """``--device``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch  # only when --device is given: building the parser does not import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a device such as cpu, cuda or cuda:0, got {value!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("CUDA is not available on this machine; use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(f"{value}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError("MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {value!r}; use cpu or cuda")
    return value


def image_file(value: str) -> str:
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a folder, not an image file")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value!r} does not exist")
    return value


def folder(value: str) -> str:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a file, not a folder")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{value!r} does not exist")
    return value


def option_type(prog: str, action: argparse.Action):
    dest = action.dest
    if action.type is int:
        return arg_type(INT_OPTIONS.get((prog, dest)) or INT_OPTIONS.get(dest) or POSITIVE_INT, int)
    if action.type is float:
        return arg_type(FLOAT_OPTIONS.get((prog, dest)) or FLOAT_OPTIONS.get(dest) or number(), float)
    if action.type is None and action.option_strings:
        if dest == "device":
            return device_type
        if dest == "image":
            return image_file
        if dest == "images" and prog == "parauni eval reconstruct":
            return folder
        if dest in ("prompt", "model", "out"):
            return arg_type(nonempty_str(), str)
    return None


def check_options(parser: argparse.ArgumentParser) -> None:
    """Give every numeric option of every command a range-checking ``type`` (see :data:`INT_OPTIONS`), and
    ``--device``, ``--image``, ``--prompt`` / ``--model`` / ``--out`` their checks; errors read
    ``argument --steps: expected an integer >= 1, got '0'``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                check_options(sub)
            continue
        numeric = action.type in (int, float)
        new = option_type(parser.prog, action)
        if new is not None:
            action.type = new
            check = getattr(new, "check", None)
            if numeric and check is not None and action.help != argparse.SUPPRESS:  # the range in --help
                action.help = f"{action.help} ({check.desc})" if action.help else check.desc
