"""Named extension points: model sources, rewards, stage-III algorithms, dataset kinds, prompt sources and
evaluators.

The core (``models``, ``pipelines``, ``train``, ``rl``, ``rewards``, ``eval``, ``flow``, ``sampling``) looks
names up here and never imports or names a plugin. A plugin announces a ``register()`` function under the
``parauni.plugins`` entry-point group (``pyproject.toml``); the first lookup of any registry calls every such
function once. A plugin fills the tables with its models, rewards, data streams, prompt sources and
evaluations, and may mark some of its names as the defaults (``register(..., default=True)``) that configs
naming none use: ``model.source``, ``data.kind``, ``prompts.kind``, ``rewards.weights`` and the evaluation of
``train.eval_geneval``.

To add your own without packaging, call ``REGISTRY.register(name, obj)`` before building a trainer, or set
``PARAUNI_PLUGINS=package.module:register`` (comma-separated) in the environment.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import UnknownNameError, UsageError
from .utils.names import closest_name

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
        self._defaults: list[str] = []

    def register(self, name: str, obj: Any, help: str = "", replace: bool = False,  # noqa: A002
                 default: bool = False) -> None:
        """``default``: ``name`` is (one of) the table's defaults, what a config that names none uses."""
        if name in self._entries and not replace and self._entries[name].obj is not obj:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = Entry(obj, help)
        if default and name not in self._defaults:
            self._defaults.append(name)

    def defaults(self) -> list[str]:
        """The names registered with ``default=True``, in the order they were registered."""
        load_plugins()
        return list(self._defaults)

    def default(self, fallback: str | None = None) -> str | None:
        """The first default name, else ``fallback`` (no plugin registered one)."""
        names = self.defaults()
        return names[0] if names else fallback

    def get_default(self) -> Any:
        """The object of the first default name; an error when no plugin registered one."""
        name = self.default()
        if name is None:
            where = f" (for {self.key})" if self.key else ""
            raise UsageError(f"no default {self.what} is registered{where}; a plugin registers one with "
                             f"register(name, obj, default=True) (known: {', '.join(self.names()) or 'none'})")
        return self.get(name)

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
        close = closest_name(str(name), known)
        hint = f"; did you mean {close!r}?" if close else ""
        where = f"{self.key}: " if self.key else ""
        listed = ", ".join(known) or "none"
        return UnknownNameError(f"{where}unknown {self.what} {name!r}{hint} (known: {listed}{extra})")


# name -> loader(dtype=..., device=...) -> ParaUniPipeline: finished models (a plugin's shipped models)
MODELS = Registry("model", "--model")
# name -> builder(model_cfg, seed) -> ParaUniPipeline: fresh models to train (model.source=NAME)
MODEL_BUILDERS = Registry("model source", "model.source")
# name -> factory(**options) -> Reward, or a "package.module:Factory" string (imported when built)
REWARDS = Registry("reward", "rewards.weights")
for _name, _target in {"pickscore": "parauni.rewards.pickscore:PickScoreReward",
                       "aesthetic": "parauni.rewards.aesthetic:AestheticReward",
                       "clipscore": "parauni.rewards.clipscore:ClipScoreReward",
                       "redness": "parauni.rewards.redness:RednessReward"}.items():
    REWARDS.register(_name, _target)
# name -> factory(data_cfg, seed) -> dataset: training data kinds (data.kind=NAME)
DATASETS = Registry("data kind", "data.kind")
# name -> factory(prompt_cfg, seed) -> an object with .epoch(epoch, n) -> list[dict]: stage-III prompts.kind=NAME
PROMPT_SOURCES = Registry("prompt source", "prompts.kind")
# name -> fn(pipe, out, images_per_prompt, steps, guidance, ...) -> summary dict: end-of-run evaluations; the
# default one is what train.eval_geneval runs
EVALUATORS = Registry("evaluator", "train.evaluator")
# data.kind / prompts.kind name -> the EVALUATORS name that evaluates runs trained on it, when train.evaluator names
# none (e.g. a world's own benchmark for the runs trained on that world)
EVALUATOR_OF_KIND = Registry("evaluator of a data or prompt kind", "data.kind")
# name -> Family: evaluation defaults of a family of models (--scorer NAME scores with the family's own scorer)
FAMILIES = Registry("model family")
# name -> Generator: benchmark generators that are not pipelines
GENERATORS = Registry("generator", "--model")
# name -> factory(path | None, device) -> image embedder (unit vectors): reconstruction metrics' --clip NAME[:PATH]
IMAGE_EMBEDDERS = Registry("image embedder", "--clip")
# name -> a stage-III algorithm class (parauni.rl.algorithm.Algorithm's interface), or a "package.module:Class"
# string (imported when chosen): the config's ``algorithm:``
ALGORITHMS = Registry("RL algorithm", "algorithm")
ALGORITHMS.register("flow_grpo", "parauni.rl.flow_grpo:FlowGRPO", default=True, help="Flow-GRPO (Liu et al. "
                    "2025): SDE rollouts, clipped-ratio updates with a KL penalty; the paper's (the default)")
ALGORITHMS.register("diffusion_nft", "parauni.rl.diffusion_nft:DiffusionNFT", help="DiffusionNFT (Zheng et al. "
                    "2025): deterministic rollouts, forward-process updates with implicit positive/negative policies")
ALGORITHMS.register("awm", "parauni.rl.awm:AdvantageWeightedMatching", help="Advantage Weighted Matching (Xue et al. "
                    "2025): deterministic rollouts, a clipped ratio of flow-matching likelihood surrogates")
# reward name -> the LDAM layer group ("shallow", "middle" or "deep") a plugin's reward maps to by default
LDAM_GROUPS = Registry("LDAM layer group", "ldam.reward_to_group")


@dataclass
class Family:
    """Models that share evaluation defaults other than the real benchmarks' (e.g. a synthetic world's models:
    its prompts, its detector-based GenEval scorer, its image encoder for reconstruction metrics).

    ``match``: does a loaded pipeline belong to the family; ``geneval_metadata``: ``() -> path`` of the
    family's GenEval-format prompts; ``geneval_scorer``: ``(out_dir) -> summary`` scoring a GenEval layout
    at once; ``embedder``: the :data:`IMAGE_EMBEDDERS` name reconstruction metrics default to;
    ``metadata_match``: GenEval records that belong to the family (e.g. every class one of its shapes).
    """

    name: str
    match: Callable[[Any], bool]
    geneval_metadata: Callable[[], Any] | None = None
    metadata_match: Callable[[list[dict]], bool] | None = None  # GenEval records that only this family can draw
    geneval_scorer: Callable[[Any], dict] | None = None
    embedder: str | None = None
    # ``parauni app``'s view of the family's images, loaded when used: ``() -> view`` with ``view.judge(image,
    # prompt) -> verdict`` (``tag``: the task judged or None, ``caption()``, ``detections``) and ``view.draw(image,
    # verdict) -> image shown``
    app_view: Callable[[], Any] | None = None


@dataclass
class Generator:
    """A model that is not a ``ParaUniPipeline`` but generates for the benchmarks (e.g. a plugin's prior):
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
