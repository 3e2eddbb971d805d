"""Trained weights into a pipeline, strictly: every expected weight present, nothing unknown, shapes equal.

A training run saves only what it trains (``trainable.safetensors``: ``conditioner.queries``,
``conditioner.lim.…`` and, in stage II, ``transformer.…``). Loading such a file silently half-way, e.g. without
the LIM's norm weights, would leave freshly initialised weights in a model that then generates plausible
but wrong images; the reference code had exactly that bug, so every load here checks both directions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from ..errors import UsageError, WeightsMismatchError

TRAINABLE_FILE = "trainable.safetensors"
# what each trainable part of a run holds, by pipeline weight name prefix
PART_PREFIXES = {"queries": ("conditioner.queries",), "lim": ("conditioner.lim.",), "transformer": ("transformer.",)}


def _names(names: Iterable[str], most: int = 8) -> str:
    names = sorted(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def mismatch_error(header: str, missing, unexpected, shapes, hint: str = "") -> WeightsMismatchError:
    """The one message of every strict load: ``header``, then the missing, unexpected and mis-shaped names (each
    list cut to its first few), then ``hint``."""
    lines = [header]
    if missing:
        lines.append(f"  missing ({len(missing)}): {_names(missing)}")
    if unexpected:
        lines.append(f"  unexpected ({len(unexpected)}): {_names(unexpected)}")
    if shapes:
        lines.append(f"  shape mismatch: {_names(shapes)}")
    return WeightsMismatchError("\n".join(lines + ([hint] if hint else [])))


def expected_names(modules: dict[str, torch.nn.Module], parts: Iterable[str]) -> set[str]:
    """The pipeline weight names that trainable ``parts`` (``queries``, ``lim``, ``transformer``) hold."""
    prefixes = tuple(p for part in parts for p in PART_PREFIXES[part])
    return {f"{head}.{n}" for head, mod in modules.items() for n, _ in mod.named_parameters()
            if f"{head}.{n}".startswith(prefixes)}


def read_trainable(path: str | Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """``trainable.safetensors`` (a file, or a checkpoint / run folder holding one) and its tensors."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAINABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TRAINABLE_FILE} at {str(path)!r}; pass a checkpoint or run folder of "
                                "`parauni train` (or its trainable.safetensors)")
    try:
        return path, load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path} is not a readable safetensors file ({err}); it may be truncated: "
                         "use an older checkpoint") from err


def load_trainable(target, path: str | Path, parts: Iterable[str] | None = None,
                   expected: set[str] | None = None) -> list[str]:
    """Load trained weights into ``target`` (anything with ``.conditioner`` and ``.transformer``).

    Every tensor of the file must name a parameter of ``target`` with the same shape. The file must hold
    every weight of the trainable ``parts`` (e.g. ``["queries", "lim"]`` for stage I), or exactly the names
    in ``expected``; ``parts=None`` and ``expected=None`` require only the conditioner's weights (queries and
    LIM, which every stage trains). Errors name the file and the offending weights. Returns the loaded names.
    """
    path, weights = read_trainable(path)
    modules = {"conditioner": target.conditioner, "transformer": target.transformer}
    params = {f"{head}.{n}": p for head, mod in modules.items() for n, p in mod.named_parameters()}
    unexpected = set(weights) - set(params)
    if expected is None:
        expected = expected_names(modules, parts if parts is not None else ("queries", "lim"))
    missing = expected - set(weights)
    shapes = {n: (tuple(weights[n].shape), tuple(params[n].shape)) for n in set(weights) & set(params)
              if weights[n].shape != params[n].shape}
    if unexpected or missing or shapes:
        raise mismatch_error(f"{path} does not fit this model:", missing, unexpected,
                        [f"{n} {a} vs {b}" for n, (a, b) in shapes.items()],
                        "was it saved by a run of another model, fusion, layer set or stage?")
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor.to(params[name].dtype))
    return sorted(weights)


def saved_tensors(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of every tensor in a component folder's ``*.safetensors`` files (headers only)."""
    out: dict[str, tuple[int, ...]] = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                out[key] = tuple(f.get_slice(key).get_shape())
    return out


def check_component(module: torch.nn.Module, folder: str | Path, name: str, renamed: bool = False) -> None:
    """A component loaded from ``folder`` holds every tensor of the folder and nothing fresh.

    diffusers and transformers only *warn* when a checkpoint lacks weights (and initialise them at random),
    so a pipeline folder missing, say, the LIM's norm weights would load and generate. ``renamed``: the
    library renames keys on save (transformers' VLMs), so only the multiset of shapes is compared.
    """
    saved = saved_tensors(folder)
    if not saved:  # weights in another format (e.g. .bin): nothing to compare here
        return
    state = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if renamed:
        have, want = Counter(saved.values()), Counter(state.values())
        if have != want:
            lacking = want - have
            extra = have - want
            raise WeightsMismatchError(
                f"{folder} does not fit the {name} ({type(module).__name__}): the model has "
                f"{sum(want.values())} tensors, the files {sum(have.values())}; shapes without a saved tensor: "
                f"{_names(str(s) for s in lacking.elements())}; saved shapes the model lacks: "
                f"{_names(str(s) for s in extra.elements()) or 'none'}")
        return
    missing, unexpected = set(state) - set(saved), set(saved) - set(state)
    shapes = [f"{k} {saved[k]} vs {state[k]}" for k in set(saved) & set(state) if saved[k] != state[k]]
    if missing or unexpected or shapes:
        raise mismatch_error(f"{folder} does not fit the {name} ({type(module).__name__}):", missing, unexpected,
                             shapes)
