"""LDAM, the Layer-wise Dynamic Adjustment Mechanism of the ParaUni paper.

Per reward, LDAM keeps the last ``window`` epochs' mean reward ``r`` and gradient norm ``g`` and two
counters, updated once per epoch by :meth:`LDAM.update`:

* ``g_s``: consecutive epochs in which ``g`` rose above the previous epoch's (reset to 0 otherwise);
* ``r_s``: consecutive epochs in which ``r`` did not exceed the maximum of the previous ``window`` epochs
  (reset to 0 otherwise).  The first epoch has no history, so both start at 0.

When both reach ``patience`` the reward is *active*: the next rollouts add ``gamma * eps``, ``eps ~ N(0, I)``,
to the per-layer query features (before the LIM) of the layer group mapped to that reward, with
``gamma = gamma0 * (Gmax - Gmin + Rmax - Rmin)`` over the window (current epoch included).  Several active
rewards on the same layers add their noises.  Choices:

* A decision made at the end of epoch ``e`` applies to the rollouts of epoch ``e + 1``; it holds while both
  counters stay ``>= patience`` and switches off as soon as either resets.
* ``g`` is the gradient norm of the diffusion transformer's trainable parameters over the epoch; in a
  multi-reward run the caller may pass the same value for every reward (one float is accepted).
* Rewards map to groups as in the paper's figure (:data:`PAPER_REWARD_TO_GROUP`); a plugin maps its own rewards
  in :data:`parauni.registry.LDAM_GROUPS` (:func:`default_reward_to_group`), a config overrides both.
* Groups default to thirds of the read layer stack (``shallow``, ``middle``, ``deep``, the first groups one
  layer larger when the count is not divisible by 3); layer indices count the layers read, from 0.
* The noise is drawn once per rollout by :meth:`LDAM.noise` (from the caller's generator, or LDAM's own
  seeded one) and the caller stores it with the rollout so the update replays the same condition.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ConfigError, UnknownKeyError
from ..registry import LDAM_GROUPS

PAPER_REWARD_TO_GROUP = {"clipscore": "deep", "aesthetic": "middle", "pickscore": "shallow"}  # the paper's figure


def default_reward_to_group() -> dict[str, str]:
    """The reward -> layer group map without a config's: the paper's figure, then the plugins' rewards
    (:data:`parauni.registry.LDAM_GROUPS`)."""
    return {**PAPER_REWARD_TO_GROUP, **{name: LDAM_GROUPS.get(name) for name in LDAM_GROUPS}}


def default_layer_groups(num_layers: int) -> dict[str, list[int]]:
    """Thirds of ``range(num_layers)`` as ``{"shallow", "middle", "deep"}``."""
    if num_layers < 3:
        raise ConfigError(f"need at least 3 layers for the default thirds, got {num_layers}; pass layer_groups")
    base, extra = divmod(num_layers, 3)
    groups, start = {}, 0
    for i, name in enumerate(("shallow", "middle", "deep")):
        size = base + (1 if i < extra else 0)
        groups[name] = list(range(start, start + size))
        start += size
    return groups


class LDAM:
    """The LDAM controller: per-reward stall detection and layer-group noise for the query features."""

    def __init__(self, rewards: list[str], layer_groups: dict[str, list[int]] | None = None,
                 reward_to_group: dict[str, str] | None = None, num_layers: int | None = None, window: int = 5,
                 gamma0: float = 0.1, patience: int = 5, seed: int = 0):
        if num_layers is None or num_layers < 1:
            raise ConfigError(f"num_layers (the number of VLM layers read) must be >= 1, got {num_layers}")
        if window < 1 or patience < 1:
            raise ConfigError(f"window and patience must be >= 1, got {window} and {patience}")
        self.rewards = list(rewards)
        self.num_layers = num_layers
        self.window, self.gamma0, self.patience = window, gamma0, patience
        self.layer_groups = {k: sorted(v) for k, v in (layer_groups or default_layer_groups(num_layers)).items()}
        for name, layers in self.layer_groups.items():
            if not layers or any(not 0 <= i < num_layers for i in layers):
                raise ConfigError(f"layer group {name!r} = {layers} must be non-empty indices in [0, {num_layers})")
        self.reward_to_group = {**default_reward_to_group(), **(reward_to_group or {})}
        for r in self.rewards:
            group = self.reward_to_group.get(r)
            if group is None:
                raise UnknownKeyError(f"LDAM has no layer group for reward {r!r}; map it with reward_to_group="
                               f"{{{r!r}: <one of {sorted(self.layer_groups)}>}}")
            if group not in self.layer_groups:
                raise UnknownKeyError(f"reward {r!r} maps to unknown layer group {group!r}; "
                               f"groups: {sorted(self.layer_groups)}")
        self.history: dict[str, dict[str, deque]] = {
            r: {"r": deque(maxlen=window), "g": deque(maxlen=window)} for r in self.rewards}
        self.counters = {r: {"g_s": 0, "r_s": 0} for r in self.rewards}
        self.current: dict[str, dict[str, Any]] = {}  # the latest decision per reward
        self.log: list[dict[str, Any]] = []  # every decision, in order
        self.generator = torch.Generator().manual_seed(seed)

    def update(self, epoch: int, rewards: dict[str, float], grad_norms: dict[str, float] | float) -> list[dict]:
        """Record one epoch's mean reward and gradient norm per reward; return this epoch's decisions."""
        missing = [n for n in self.rewards if n not in rewards]
        if isinstance(grad_norms, Mapping):
            missing += [f"grad norm of {n}" for n in self.rewards if n not in grad_norms]
        if missing:
            raise KeyError(f"no value for {missing} at epoch {epoch}; got rewards for {sorted(rewards)}")
        decisions = []
        for name in self.rewards:
            r = float(rewards[name])
            g = float(grad_norms[name] if isinstance(grad_norms, Mapping) else grad_norms)
            hist, count = self.history[name], self.counters[name]
            count["g_s"] = count["g_s"] + 1 if hist["g"] and g > hist["g"][-1] else 0
            count["r_s"] = count["r_s"] + 1 if hist["r"] and r <= max(hist["r"]) else 0
            hist["r"].append(r)
            hist["g"].append(g)
            gamma = self.gamma0 * (max(hist["g"]) - min(hist["g"]) + max(hist["r"]) - min(hist["r"]))
            active = count["g_s"] >= self.patience and count["r_s"] >= self.patience
            group = self.reward_to_group[name]
            decision = {"epoch": epoch, "reward": name, "g_s": count["g_s"], "r_s": count["r_s"], "gamma": gamma,
                        "active": active, "group": group, "layers": list(self.layer_groups[group]) if active else []}
            self.current[name] = decision
            decisions.append(decision)
        self.log.extend(decisions)
        return decisions

    @property
    def active(self) -> list[dict]:
        """The latest decisions that are active."""
        return [d for d in self.current.values() if d["active"]]

    def noise(self, num_layers_read: int, shape_per_layer: tuple[int, ...] | torch.Size,
              generator: torch.Generator | None = None, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
        """``gamma * eps`` on the active rewards' layers, zeros elsewhere: ``(L, *shape_per_layer)``, or None.

        ``shape_per_layer`` is one layer's query-feature shape, e.g. ``(B, N, D)``.  Draws from ``generator``
        (on its device) or LDAM's own seeded CPU generator, in the order of ``rewards``.
        """
        if num_layers_read != self.num_layers:
            raise ValueError(f"LDAM was built for {self.num_layers} layers but {num_layers_read} were read")
        active = self.active
        if not active:
            return None
        gen = generator or self.generator
        out = torch.zeros((num_layers_read, *shape_per_layer), device=gen.device)  # (L, B, N, D)
        for d in active:
            idx = torch.tensor(d["layers"], device=gen.device)
            eps = torch.randn((len(idx), *shape_per_layer), generator=gen, device=gen.device)
            out.index_add_(0, idx, d["gamma"] * eps)
        return out.to(device=device, dtype=dtype)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume (settings are checked on load)."""
        return {
            "rewards": list(self.rewards), "num_layers": self.num_layers, "window": self.window,
            "gamma0": self.gamma0, "patience": self.patience, "layer_groups": copy.deepcopy(self.layer_groups),
            "reward_to_group": {r: self.reward_to_group[r] for r in self.rewards},
            "history": {r: {k: list(v) for k, v in h.items()} for r, h in self.history.items()},
            "counters": copy.deepcopy(self.counters), "current": copy.deepcopy(self.current),
            "log": copy.deepcopy(self.log), "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; a mismatch in the settings is an error naming them."""
        mine = self.state_dict()
        keys = ("rewards", "num_layers", "window", "gamma0", "patience", "layer_groups", "reward_to_group")
        diff = [k for k in keys if state.get(k) != mine[k]]
        if diff:
            raise ConfigError(f"LDAM state does not match this controller's settings: {diff}")
        self.history = {r: {k: deque(v, maxlen=self.window) for k, v in h.items()} for r, h in state["history"].items()}
        self.counters = copy.deepcopy(state["counters"])
        self.current = copy.deepcopy(state["current"])
        self.log = copy.deepcopy(state["log"])
        self.generator.set_state(state["generator"])


def build_ldam(lc, reward_names: list[str], n_layers: int, seed: int) -> LDAM | None:
    """The LDAM of config section ``ldam`` (``lc``) over ``n_layers`` read layers (groups: thirds by default) for
    the run's rewards, or ``None`` when off."""
    if not lc.enabled:
        return None
    groups_cfg = lc.groups or (default_layer_groups(n_layers) if n_layers >= 3 else
                               {g: list(range(n_layers)) for g in ("shallow", "middle", "deep")})
    mapping = {**default_reward_to_group(), **(lc.reward_to_group or {})}
    mapping = {r: mapping[r] for r in reward_names if r in mapping}
    return LDAM(reward_names, groups_cfg, mapping, n_layers, lc.window, lc.gamma0, lc.patience, seed=seed)
