"""Range checks shared by the configs and the command line.

A :class:`Check` tests one value and describes what it accepts (``"an integer >= 1"``), so that every error
reads ``<key>: expected <description>, got <value>``. :func:`arg_type` turns a check into an argparse ``type=``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Check:
    """``desc``: what the check accepts, as it reads after "expected"; ``test(value) -> bool``."""

    desc: str
    test: Callable[[Any], bool]

    def ok(self, value: Any) -> bool:
        try:
            return bool(self.test(value))
        except (TypeError, ValueError):
            return False

    def message(self, key: str, value: Any) -> str:
        return f"{key}: expected {self.desc}, got {value!r}"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range_desc(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi:g}"
    return ""


def _in_range(v, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return False
    return not (hi is not None and (v >= hi if hi_open else v > hi))


def integer(lo: int | None = None, hi: int | None = None, multiple_of: int | None = None) -> Check:
    """Integers (not booleans) in ``[lo, hi]``, optionally multiples of ``multiple_of``."""
    if multiple_of:
        positive = lo is not None and lo >= 1
        desc = f"a {'positive ' if positive else ''}multiple of {multiple_of}"
        if lo is not None and lo > multiple_of:
            desc += f" >= {lo}"
    else:
        desc = "an integer" + _range_desc(lo, hi, False, False)
    return Check(desc, lambda v: _is_int(v) and _in_range(v, lo, hi, False, False)
                 and (not multiple_of or v % multiple_of == 0))


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    """Finite real numbers (ints too, not booleans, never NaN or infinity) in the given range."""
    return Check("a finite number" + _range_desc(lo, hi, lo_open, hi_open),
                 lambda v: _is_number(v) and _in_range(v, lo, hi, lo_open, hi_open))


def nonempty_str() -> Check:
    return Check("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "")


def choice(*options: str) -> Check:
    return Check(f"one of {', '.join(options)}", lambda v: isinstance(v, str) and v in options)


def boolean() -> Check:
    return Check("true or false", lambda v: isinstance(v, bool))


def optional(check: Check) -> Check:
    return Check(f"{check.desc}, or null", lambda v: v is None or check.ok(v))


def either(*checks: Check) -> Check:
    return Check(" or ".join(c.desc for c in checks), lambda v: any(c.ok(v) for c in checks))


def list_of(item: Check, length: int | None = None, min_length: int = 1) -> Check:
    """A list (or tuple) of ``length`` (or at least ``min_length``) items, each passing ``item``."""
    count = f"{length}" if length is not None else ("one or more" if min_length == 1 else f"{min_length} or more")
    return Check(f"a list of {count} values, each {item.desc}",
                 lambda v: isinstance(v, (list, tuple)) and (len(v) == length if length is not None
                                                            else len(v) >= min_length)
                 and all(item.ok(x) for x in v))


def mapping(value: Check | None = None, min_length: int = 0) -> Check:
    """A mapping with string keys (and values passing ``value``); ``min_length``: at least that many entries."""
    desc = "a mapping" + (f" of names to values, each {value.desc}" if value else "")
    if min_length:
        desc = f"a non-empty {desc.removeprefix('a ')}"
    return Check(desc, lambda v: isinstance(v, dict) and len(v) >= min_length
                 and all(isinstance(k, str) and (value is None or value.ok(x)) for k, x in v.items()))


POSITIVE_INT = integer(lo=1)
NON_NEGATIVE_INT = integer(lo=0)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed and numpy take 64-bit seeds; the derived ones stay under 2**64
SEED = Check(f"an integer >= 0 and <= 2**63-1 ({MAX_SEED})", lambda v: _is_int(v) and 0 <= v <= MAX_SEED)
RESOLUTION = integer(lo=8, multiple_of=8)
PROBABILITY = number(0.0, 1.0)
POSITIVE = number(0.0, lo_open=True)  # real numbers > 0
NON_NEGATIVE = number(0.0)


def arg_type(check: Check, parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type=``: ``parse`` the text, then ``check`` it; errors read "expected ..., got '...'"."""

    def convert(value: str) -> Any:
        try:
            parsed = parse(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {check.desc}, got {value!r}") from None
        if not check.ok(parsed):
            raise argparse.ArgumentTypeError(f"expected {check.desc}, got {value!r}")
        return parsed

    convert.__name__ = getattr(parse, "__name__", "value")
    convert.check = check  # type: ignore[attr-defined]
    return convert


class registered_choice:  # noqa: N801 - used like the check factories above
    """One of ``builtin`` names or a name registered in ``registry`` (plugins add theirs, see
    :mod:`parauni.registry`); the description lists the names known when the check runs."""

    def __init__(self, registry, *builtin: str):
        self.registry, self.builtin = registry, builtin

    @property
    def desc(self) -> str:
        return f"one of {', '.join(dict.fromkeys([*self.builtin, *self.registry.names()]))}"

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and (value in self.builtin or value in self.registry)

    def message(self, key: str, value: Any) -> str:
        return f"{key}: expected {self.desc}, got {value!r}"


# ParaUniConditioner's constructor arguments a config may override (``model.conditioner``); the sizes that come from
# the VLM (llm_hidden_size, llm_num_layers) are not among them. The LIM checks ``fusion`` against its variants.
CONDITIONER_CHECKS: dict[str, Check] = {
    "num_queries": POSITIVE_INT,
    "layers": list_of(integer()),
    "final_norm": boolean(),
    "fusion": nonempty_str(),
    "connector_depth": POSITIVE_INT,
    "connector_heads": POSITIVE_INT,
    "connector_ffn": POSITIVE_INT,
    "caption_channels": POSITIVE_INT,
    "norm_eps": POSITIVE,
    "prompt": mapping(),
}


def conditioner_problem(overrides: Any, key: str = "model.conditioner") -> str | None:
    """Why ``overrides`` cannot configure a ParaUniConditioner (an unknown argument, or a value out of range), or
    ``None`` when they can."""
    if not isinstance(overrides, dict):
        return f"{key}: expected a mapping of ParaUniConditioner arguments, got {overrides!r}"
    for name, value in overrides.items():
        check = CONDITIONER_CHECKS.get(name)
        if check is None:
            return (f"{key}.{name}: not a ParaUniConditioner argument; expected one of "
                    f"{', '.join(CONDITIONER_CHECKS)}")
        if not check.ok(value):
            return check.message(f"{key}.{name}", value)
    return None
