"""The stage-III algorithm interface: what :class:`parauni.rl.trainer.RLTrainer`'s loop calls, and how a name in
a config (``algorithm:``) becomes a class.

An algorithm is one module under ``parauni.rl`` (or any importable module) holding one class, registered by name
in :data:`parauni.registry.ALGORITHMS` or named in a config as ``package.module:Class``. It declares:

- ``name``: the ``algorithm:`` value (used in messages);
- ``section`` and ``Config``: the key and the dataclass of its own config section (fields declared with
  :func:`parauni.train.schema.setting`), or ``None``; the section exists only in a config that chooses it;
- ``defaults``: shared keys whose default differs for it (dotted key -> value; a file or override still wins);
- ``unused``: shared keys it never reads (a config that sets one to another value than its default is refused);
- ``drops_failed_samples``: samples whose reward is NaN leave the update (``False``: they stay with weight 0);
- ``check(cfg)`` (optional classmethod): checks across keys that only this algorithm needs (raise ``ConfigError``).

and the methods below. :class:`Algorithm` gives the optional ones their defaults; subclassing it is not required.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from functools import cache
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, UsageError
from ..registry import ALGORITHMS, import_target, resolve
from ..train.schema import like


class Algorithm:
    """The interface; subclasses override :meth:`rollout` and :meth:`update` (and the optional methods)."""

    name: ClassVar[str] = ""
    section: ClassVar[str | None] = None
    Config: ClassVar[type | None] = None
    defaults: ClassVar[dict[str, Any]] = {}
    unused: ClassVar[tuple[str, ...]] = ()
    drops_failed_samples: ClassVar[bool] = True

    def __init__(self, trainer):
        self.tr = trainer  # the RLTrainer (its API: see docs/rl.md)

    @classmethod
    def check(cls, cfg) -> None:
        """Checks across keys that only this algorithm needs (raise ``ConfigError``); default: none."""

    def rollout(self, epoch: int):
        """This process's rollout of ``epoch``: an object with ``.prompts``, ``.metadata``, ``.group`` ``(B,)`` and
        ``.images`` (a list of ``B`` uint8 ``(H, W, 3)`` arrays), plus whatever :meth:`update` needs."""
        raise NotImplementedError

    def update(self, roll, adv: torch.Tensor, valid: torch.Tensor, epoch: int) -> dict:
        """One epoch's update from the rollout, its advantages ``(B,)`` and valid samples ``(B,)``; returns its
        metrics, at least ``loss``, ``kl``, ``grad_norm`` and ``diag/optimizer_steps``."""
        raise NotImplementedError

    def after_epoch(self) -> None:
        """Run after each epoch's update (e.g. an old policy's soft update)."""

    def state_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Extra tensors a checkpoint holds, ``{file stem: {name: tensor}}`` (default: none)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore :meth:`state_tensors` from a checkpoint."""

    def progress_numbers(self, row: dict) -> dict[str, str]:
        """The algorithm's own numbers of an epoch's metrics row for the progress bar."""
        return {}


def algorithm_class(name: str) -> type:
    """The class of a registered algorithm name or a ``package.module:Class`` path; a ``ConfigError`` naming the
    known algorithms otherwise."""
    try:
        found = resolve(ALGORITHMS, name)
        cls = import_target(found) if isinstance(found, str) else found
    except UsageError as err:
        raise ConfigError(str(err)) from None
    if not isinstance(cls, type) or not callable(getattr(cls, "update", None)):
        raise ConfigError(f"algorithm: {name!r} is not an algorithm class (see parauni.rl.algorithm.Algorithm)")
    return cls


def importable_algorithms() -> dict[str, type]:
    """Every registered algorithm's class by name, those that import (a broken plugin does not stop a config of
    another algorithm)."""
    out = {}
    for name in ALGORITHMS:
        try:
            out[name] = algorithm_class(name)
        except ConfigError:
            continue
    return out


def section_owner(key: str) -> str | None:
    """The registered algorithm whose own config section is ``key``, if any."""
    return next((n for n, c in importable_algorithms().items() if option(c, "section") == key), None)


@cache
def config_root(algo: type, base: type) -> type:
    """The config root of algorithm class ``algo`` over the shared root dataclass ``base``: ``algorithm``
    defaulting to its name, its section (``algo.section: algo.Config``) and the defaults of ``algo.defaults`` in the
    shared sections (the same keys and checks, other defaults)."""
    hints = typing.get_type_hints(base)
    per_section: dict[str, dict[str, Any]] = {}
    for key, value in option(algo, "defaults", {}).items():
        section, _, leaf = key.partition(".")
        cls = hints.get(section)
        if not dataclasses.is_dataclass(cls) or leaf not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"algorithm {option(algo, 'name')!r}: its default {key!r} is not a shared config key")
        per_section.setdefault(section, {})[leaf] = value
    fields: list = [("algorithm", str, like(base, "algorithm", option(algo, "name") or algo.__name__))]
    for section, values in per_section.items():
        cls = hints[section]
        sub_hints = typing.get_type_hints(cls)
        sub = dataclasses.make_dataclass(cls.__name__, [
            (leaf, sub_hints[leaf], like(cls, leaf, factory=lambda v=v: copy.deepcopy(v))
             if isinstance(v, (list, dict)) else like(cls, leaf, v)) for leaf, v in values.items()], bases=(cls,))
        fields.append((section, sub, dataclasses.field(default_factory=sub)))
    if (section := option(algo, "section")) is not None:
        fields.append((section, algo.Config, dataclasses.field(default_factory=algo.Config)))
    return dataclasses.make_dataclass(f"{algo.__name__}Config", fields, bases=(base,))


def option(cls: type, attr: str, default: Any = None) -> Any:
    """An algorithm class's declaration ``attr``, or ``default`` where it declares none."""
    return getattr(cls, attr, default)
