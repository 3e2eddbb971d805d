"""The one closest-name lookup behind every "did you mean ...?" (config keys, registered names, model names,
GenEval's vocabulary)."""

from __future__ import annotations

from collections.abc import Iterable


def _distance(a: str, b: str) -> int:
    """Edit distance counting a swap of two neighbouring letters as one edit (optimal string alignment)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def closest_name(name: str, known: Iterable[str]) -> str | None:
    """The known name ``name`` was most likely meant to be, only when it is really close: the same but for
    ``_`` / ``-`` / case, one or two edits away (one for names of up to 5 letters), or the only known name made of
    some of its ``_``-parts (``max_steps`` -> ``steps``); otherwise ``None``. Ties go to the first in sorted order."""
    def norm(s: str) -> str:
        return s.replace("_", "").replace("-", "").lower()

    name, known = str(name), sorted(known)
    same = [k for k in known if norm(k) == norm(name)]
    if same:
        return same[0]
    limit = 1 if len(name) <= 5 else 2
    close = sorted((_distance(name, k), k) for k in known)
    if close and close[0][0] <= limit:
        return close[0][1]
    parts = set(name.split("_"))
    inside = [k for k in known if set(k.split("_")) < parts]
    return inside[0] if len(inside) == 1 else None
