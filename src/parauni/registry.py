"""Named extension points: model sources, rewards, dataset kinds, prompt sources and evaluators.

The core (``models``, ``pipelines``, ``train``, ``rl``, ``rewards``, ``eval``, ``flow``, ``sampling``) looks
names up here and never imports a plugin. A plugin announces a ``register()`` function under the
``parauni.plugins`` entry-point group (``pyproject.toml``); the first lookup of any registry calls every such
function once. The toy world is a plugin (``parauni.toy.plugin``): it fills the tables with its models
(``toy-all-layers`` ...), its rewards, its data stream, its prompt source and its toy GenEval.

To add your own without packaging, call ``REGISTRY.register(name, obj)`` before building a trainer, or set
``PARAUNI_PLUGINS=package.module:register`` (comma-separated) in the environment.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import UnknownNameError, UsageError

logger = logging.getLogger(__name__)

PLUGIN_GROUP = "parauni.plugins"
_loaded = False


def import_target(target: str) -> Any:
    """``"package.module:attr"`` -> the attribute; a clear error when the module or attribute is missing."""
    if ":" not in target:
        raise UsageError(f"{target!r} is not a 'package.module:attr' path")
    module, attr = target.split(":", 1)
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise UsageError(f"cannot import {module!r} (from {target!r}): {err}") from err
    try:
        return getattr(mod, attr)
    except AttributeError as err:
        raise UsageError(f"module {module!r} has no {attr!r} (from {target!r})") from err


def load_plugins() -> None:
    """Call every plugin's ``register()`` once (entry points, then ``$PARAUNI_PLUGINS``)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    targets = [f"{ep.module}:{ep.attr}" for ep in entry_points(group=PLUGIN_GROUP)]
    targets += [t.strip() for t in os.environ.get("PARAUNI_PLUGINS", "").split(",") if t.strip()]
    for target in dict.fromkeys(targets):
        try:
            import_target(target)()
        except Exception as err:  # noqa: BLE001 - a broken third-party plugin must not stop the core
            logger.warning("plugin %s failed to register: %s", target, err)


@dataclass
class Entry:
    obj: Any
    help: str = ""


class Registry:
    """A table ``name -> object`` of one kind (``what`` names it in errors, e.g. ``"reward"``)."""

    def __init__(self, what: str, key: str | None = None):
        self.what, self.key = what, key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, obj: Any, help: str = "", replace: bool = False) -> None:  # noqa: A002
        if name in self._entries and not replace and self._entries[name].obj is not obj:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = Entry(obj, help)

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return list(self)

    def help(self, name: str) -> str:
        load_plugins()
        return self._entries[name].help

    def get(self, name: str) -> Any:
        """The object registered as ``name``; an error listing the known names (and the closest) otherwise."""
        load_plugins()
        if name not in self._entries:
            raise self.unknown(name)
        return self._entries[name].obj

    def unknown(self, name: str, extra: str = "") -> UnknownNameError:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f"{self.key}: " if self.key else ""
        listed = ", ".join(known) or "none"
        return UnknownNameError(f"{where}unknown {self.what} {name!r}{hint} (known: {listed}{extra})")


# name -> loader(dtype=..., device=...) -> ParaUniPipeline: finished models, e.g. "toy-all-layers"
MODELS = Registry("model", "--model")
# name -> builder(model_cfg, seed) -> ParaUniPipeline: fresh models to train, e.g. model.source=toy
MODEL_BUILDERS = Registry("model source", "model.source")
# name -> factory(**options) -> Reward, or a "package.module:Factory" string (imported when built)
REWARDS = Registry("reward", "rewards.weights")
for _name, _target in {"pickscore": "parauni.rewards.pickscore:PickScoreReward",
                       "aesthetic": "parauni.rewards.aesthetic:AestheticReward",
                       "clipscore": "parauni.rewards.clipscore:ClipScoreReward",
                       "redness": "parauni.rewards.redness:RednessReward"}.items():
    REWARDS.register(_name, _target)
# name -> factory(data_cfg, seed) -> dataset: training data kinds, e.g. data.kind=toy
DATASETS = Registry("data kind", "data.kind")
# name -> factory(prompt_cfg, seed) -> an object with .epoch(epoch, n) -> list[dict]: prompts.kind=toy
PROMPT_SOURCES = Registry("prompt source", "prompts.kind")
# name -> fn(pipe, out, images_per_prompt, steps, guidance, ...) -> summary dict: end-of-run evaluations
EVALUATORS = Registry("evaluator", "train.eval")
# name -> Family: evaluation defaults of a family of models (the toy world registers "toy")
FAMILIES = Registry("model family")
# name -> Generator: benchmark generators that are not pipelines (the toy world registers its prior, "prior")
GENERATORS = Registry("generator", "--model")
# name -> factory(path | None, device) -> image embedder (unit vectors): reconstruction metrics' --clip NAME[:PATH]
IMAGE_EMBEDDERS = Registry("image embedder", "--clip")
DEFAULT_EVALUATOR = "toy_geneval"  # what train.eval_geneval runs: the toy world's GenEval (a plugin)


@dataclass
class Family:
    """Models that share evaluation defaults other than the real benchmarks' (the toy world's models: its
    prompts, its detector-based GenEval scorer, its image encoder for reconstruction metrics).

    ``match``: does a loaded pipeline belong to the family; ``geneval_metadata``: ``() -> path`` of the
    family's GenEval-format prompts; ``geneval_scorer``: ``(out_dir) -> summary`` scoring a GenEval layout
    at once; ``embedder``: the :data:`IMAGE_EMBEDDERS` name reconstruction metrics default to;
    ``metadata_match``: GenEval records that belong to the family (e.g. every class a toy shape).
    """

    name: str
    match: Callable[[Any], bool]
    geneval_metadata: Callable[[], Any] | None = None
    metadata_match: Callable[[list[dict]], bool] | None = None  # GenEval records that only this family can draw
    geneval_scorer: Callable[[Any], dict] | None = None
    embedder: str | None = None


@dataclass
class Generator:
    """A model that is not a ``ParaUniPipeline`` but generates for the benchmarks (e.g. the toy prior):
    ``match(model_arg) -> bool``; ``load(model_arg, steps, guidance) -> (generate, identity)`` with
    ``generate(prompts, seeds) -> uint8 images`` and ``identity`` for provenance; ``family``: a
    :data:`FAMILIES` name."""

    match: Callable[[str], bool]
    load: Callable[..., tuple[Callable, dict]]
    family: str | None = None


def family_of(pipe) -> Family | None:
    """The registered family a loaded pipeline belongs to, if any."""
    for name in FAMILIES:
        family = FAMILIES.get(name)
        if family.match(pipe):
            return family
    return None


def family_of_metadata(metas: list[dict]) -> Family | None:
    """The registered family whose GenEval records these are (its scorer then applies), if any."""
    for name in FAMILIES:
        family = FAMILIES.get(name)
        if family.metadata_match is not None and family.geneval_scorer is not None and family.metadata_match(metas):
            return family
    return None


def resolve(registry: Registry, name: str) -> Any:
    """A registered object, or a ``package.module:attr`` path imported."""
    if name in registry:
        return registry.get(name)
    if isinstance(name, str) and ":" in name:
        return import_target(name)
    raise registry.unknown(name, " or a 'package.module:attr' path")


Factory = Callable[..., Any]
