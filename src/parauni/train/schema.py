"""How every config of the package is read, whatever its root dataclass (stages I/II's
:class:`parauni.train.config.Config`, stage III's :class:`parauni.rl.config.GRPOConfig`, the toy world's
pre-training configs): YAML files with ``base:`` inheritance, ``section.key=value`` overrides, unknown keys named
with the closest one (and keys that moved named with their new place), values set on OmegaConf structured configs,
then every value's range and the root's cross-key checks (``cfg.validate()``).

What a key accepts is declared beside its field with :func:`setting` (``lr: float = setting(1e-4, POSITIVE)``);
a field without a declared check is checked by its annotation (``int``, ``float``, ``bool``, ``str``)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..checks import Check, boolean, integer, number, optional
from ..errors import ConfigError, UnknownKeyError
from ..utils.configs import resolve_config, shipped_config, shipped_config_names
from ..utils.names import closest_name


def _hints(cls: type) -> dict[str, Any]:
    """The fields of a config dataclass and their annotations (class variables are not keys)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def setting(default: Any = dataclasses.MISSING, check: Check | None = None, *,
            factory: Any = dataclasses.MISSING) -> Any:
    """A config field, with what it accepts declared beside it: ``check`` (a :class:`parauni.checks.Check`; none:
    the annotation's type) and the default (``factory`` for a mutable one)."""
    metadata = {"check": check} if check is not None else {}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def like(cls: type, name: str, default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING) -> Any:
    """Field ``name`` of the shared section ``cls`` with another default and the same check (a recipe's section
    that extends a shared one, e.g. stage III's optimizer defaults)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return setting(default, found.metadata.get("check"), factory=factory)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return tp, False


def _annotation_check(tp: Any) -> Check | None:
    """The check a type annotation implies (for fields declared without one)."""
    inner, opt = _unwrap_optional(tp)
    base = {int: integer(), float: number(), bool: boolean(),
            str: Check("a string", lambda v: isinstance(v, str))}.get(inner)
    if base is None:
        return None
    return optional(base) if opt else base


def field_check(cls: type, name: str) -> Check | None:
    """What field ``name`` of the config dataclass ``cls`` accepts: its :func:`setting` check, else what its
    annotation implies (``None``: anything)."""
    found = {f.name: f for f in dataclasses.fields(cls)}[name]
    return found.metadata.get("check") or _annotation_check(_hints(cls)[name])


def _check_for(root: type, key: str) -> Check | None:
    cls = root
    *sections, name = key.split(".")
    for s in sections:
        cls = _hints(cls).get(s)
        if not dataclasses.is_dataclass(cls):
            return None
    return field_check(cls, name)


def check_values(cfg: Any, prefix: str = "") -> None:
    """Every leaf of the config ``cfg`` against what its field accepts (:func:`field_check`)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_values(value, f"{prefix}{f.name}.")
        elif (check := field_check(type(cfg), f.name)) is not None and not check.ok(value):
            raise ConfigError(check.message(f"{prefix}{f.name}", value))


def _unknown(key: str, allowed: list[str], prefix: str, source: str) -> UnknownKeyError:
    near = closest_name(key, allowed)
    what = "section" if not prefix else "key"
    hint = f"; did you mean '{prefix}{near}'?" if near else ""
    where = f" in section '{prefix[:-1]}'" if prefix else ""
    return UnknownKeyError(f"{source}unknown config {what} '{prefix}{key}'{hint} (allowed{where}: "
                           f"{', '.join(sorted(allowed))})")


def _check_keys(data: dict, cls: type, source: str = "", prefix: str = "") -> None:
    """Unknown keys in ``data`` (a nested dict meant for dataclass ``cls``) raise, naming the dotted key."""
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise _unknown(str(key), list(hints), prefix, source)
        if dataclasses.is_dataclass(hints[key]):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}{prefix}{key}: expected a section (a mapping of keys), got {value!r}")
            _check_keys(value, hints[key], source, f"{prefix}{key}.")


def _apply_moves(data: dict, root: type, source: str, migrate: bool) -> None:
    """Keys of an older layout (``root.MOVED_KEYS``: old dotted key -> new one) in the nested dict ``data``:
    renamed when ``migrate`` (a saved run's config, e.g. an older checkpoint's), else an error naming the new key."""
    for old, new in getattr(root, "MOVED_KEYS", {}).items():
        *path, name = old.split(".")
        node: Any = data
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or name not in node:
            continue
        if not migrate:
            raise UnknownKeyError(f"{source}{old} has moved to {new}: rename it there (same value)")
        value = node.pop(name)
        *path, name = new.split(".")
        node = data
        for k in path:
            if node.get(k) is None:
                node[k] = {}
            node = node[k]
        if name in node:
            raise ConfigError(f"{source}both {old} (its older place) and {new} are set; keep {new} only")
        node[name] = value


def _yaml_error(path: Path, err: yaml.YAMLError) -> ConfigError:
    mark = getattr(err, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    return ConfigError(f"{path}{where}: invalid YAML: {problem}" + (f" ({context})" if context else ""))


def _is_mapping_field(cls: type, key: str) -> bool:
    """Whether dotted ``key`` names a field of ``cls`` whose value is a mapping (``rewards.weights``), not a
    section."""
    *sections, leaf = key.split(".")
    for name in sections:
        tp = _hints(cls).get(name)
        if tp is None or not dataclasses.is_dataclass(tp):
            return False
        cls = tp
    tp = _unwrap_optional(_hints(cls).get(leaf, type(None)))[0]
    return not dataclasses.is_dataclass(tp) and (tp is dict or typing.get_origin(tp) is dict)


def _inherit(parent: dict, child: dict, cls: type | None, merge: set[str], prefix: str = "") -> dict:
    """``child`` over ``parent``: sections (dataclass fields) merge key by key; every other value replaces the
    parent's, a mapping (``rewards.weights``) too, as on the command line, unless its dotted key is in
    ``merge`` (then the two mappings merge, the child's entries winning)."""
    out = dict(parent)
    hints = _hints(cls) if cls is not None else {}
    for key, value in child.items():
        name = f"{prefix}{key}"
        tp = hints.get(key)
        # a section: a dataclass field, or a mapping outside the known fields (e.g. an algorithm's own section,
        # which exists only in the root of the config's algorithm; unknown keys are refused later)
        section = dataclasses.is_dataclass(tp) if cls is not None and key in hints else True
        if isinstance(value, dict) and isinstance(out.get(key), dict) and (section or name in merge):
            inner = tp if section and cls is not None else None
            out[key] = _inherit(out[key], value, inner, merge, f"{name}.") if section else {**out[key], **value}
        else:
            out[key] = value
    return out


def _merge_keys(path: Path, data: dict, root: type | None) -> set[str]:
    """The child's ``merge:`` list: the mapping keys it adds to its base's instead of replacing them."""
    merge = data.pop("merge", None)
    if merge is None:
        return set()
    if isinstance(merge, str):
        merge = [merge]
    if not isinstance(merge, list) or not all(isinstance(k, str) for k in merge):
        raise ConfigError(f"{path}: merge: expected a list of mapping keys, e.g. merge: [rewards.weights], got "
                          f"{merge!r}")
    if "base" not in data:
        raise ConfigError(f"{path}: merge: {merge} merges with a base config, but this file has no base:")
    for key in merge:
        if root is not None and not _is_mapping_field(root, key):
            raise ConfigError(f"{path}: merge: {key!r} is not a mapping-valued key (sections always merge key by "
                              "key; lists and values are replaced); list keys such as rewards.weights")
    return set(merge)


def _read(path: Path, seen: tuple[Path, ...] = (), root: type | None = None, migrate: bool = False) -> dict:
    """A config file as a plain dict, its ``base`` chain merged under it: sections merge key by key, lists and
    values replace, and so does a mapping (``rewards.weights``: the child's mapping is the whole mapping, as
    ``rewards.weights={...}`` on the command line), unless the child lists its key under ``merge:``. An empty file
    is refused (it would silently be a default run)."""
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    if path.resolve() in seen:
        raise ConfigError(f"config {path} inherits from itself through 'base'")
    try:
        raw = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise _yaml_error(path, err) from None
    except (OmegaConfBaseException, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    except OSError as err:  # OmegaConf's refusal of a file that holds one value ("Invalid loaded object type: int")
        if err.errno is not None:
            raise
        raise ConfigError(f"{path}: a config must be a mapping of sections ({err})") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got a {type(raw).__name__}")
    data = OmegaConf.to_container(raw, resolve=False)
    if not data:
        raise ConfigError(f"{path}: the config is empty; give its sections (e.g. model:, train:), or a base: to "
                          "inherit from (start from a shipped config, e.g. `parauni train configs/toy_stage1.yaml`)")
    merge = _merge_keys(path, data, root)
    base = data.pop("base", None)
    if root is not None:
        _apply_moves(data, root, f"{path}: ", migrate)
        if migrate and (prune := getattr(root, "migrate_data", None)) is not None:
            prune(data)  # keys a saved run's config held that this root no longer has
        _check_keys(data, root, f"{path}: ")
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected the path of another YAML config, got {base!r}")
    parent_path = path.parent / base
    if not parent_path.exists() and not Path(base).is_absolute():
        # a base beside the file first; else a shipped config of that name (`base: toy_grpo.yaml` works from a
        # config in any folder, as `parauni rl toy_grpo.yaml` does)
        try:
            parent_path = shipped_config(base)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: base: {base!r} is neither a file beside it ({parent_path}) nor a shipped config; give its "
                f"path relative to {path.name}'s folder, or one of: {', '.join(shipped_config_names())}") from None
    parent = _read(parent_path, (*seen, path.resolve()), root, migrate)
    return _inherit(parent, data, root, merge)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=3e-4"`` -> ``(["optim", "lr"], 3e-4)``; the value is read as YAML, as
    ``OmegaConf.from_dotlist`` reads it (``1e-3`` is a number, ``null`` is None, ``'no'`` a string)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, value = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(k.strip() for k in keys):
        raise ConfigError(f"override {text!r}: {key.strip()!r} is not a dotted key such as optim.lr")
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={value}"]), resolve=False)["value"]
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem})") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"override {text!r}: {str(err).splitlines()[0]}") from None
    return [k.strip() for k in keys], parsed


def _set_override(data: dict, text: str, root: type) -> None:
    """Set one ``key=value`` override in the nested dict ``data``: the value replaces what was there."""
    keys, value = parse_override(text)
    if (new := getattr(root, "MOVED_KEYS", {}).get(".".join(keys))) is not None:
        raise UnknownKeyError(f"override {text!r}: {'.'.join(keys)} has moved to {new}: rename it there (same value)")
    nested: Any = value
    for k in reversed(keys):
        nested = {k: nested}
    _check_keys_through(nested, root, f"override {text!r}: ")
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(keys[:i + 1])} holds {node!r}, not a mapping")
    node[keys[-1]] = value


def _check_keys_through(data: dict, cls: type, source: str, prefix: str = "") -> None:
    """Like :func:`_check_keys`, for one override: a path into a leaf value (``optim.lr.x``) is an error."""
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise _unknown(str(key), list(hints), prefix, source)
        if dataclasses.is_dataclass(hints[key]):
            if isinstance(value, dict):
                _check_keys_through(value, hints[key], source, f"{prefix}{key}.")
            elif value is not None:
                raise ConfigError(f"{source}{prefix}{key} is a section: set its keys ({prefix}{key}.KEY=VALUE)")


def _section_leaves(data: dict, cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """``(dotted key, value, annotation)`` of the values in ``data`` that replace a field of ``cls``: mappings
    under a dataclass field are walked; any other value (a dict-typed field's mapping too) replaces the field."""
    hints = _hints(cls)
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            yield from _section_leaves(value or {}, tp, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value, tp


def _tuples(obj: Any) -> None:
    """Tuple-typed fields as tuples (OmegaConf < 2.4 gives lists)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _tuples(value)
        elif isinstance(value, list) and typing.get_origin(_unwrap_optional(hints[f.name])[0]) is tuple:
            setattr(obj, f.name, tuple(value))


def build_config(data: dict, root: type):
    """A config of dataclass ``root`` from a nested dict, validated: each value is set on
    ``OmegaConf.structured(root)`` (typed; a mapping replaces a mapping-typed field's default), the result turned
    back into the dataclasses (``OmegaConf.to_object``) and checked (``root.validate()``). Raises
    :class:`ConfigError` / :class:`UnknownKeyError` naming the key."""
    _check_keys(data, root)
    schema = OmegaConf.structured(root)
    for key, value, tp in _section_leaves(data, root):
        check = _check_for(root, key)
        inner = _unwrap_optional(tp)[0]
        if isinstance(value, bool) and inner is str:
            desc = check.desc if check else "a string"
            raise ConfigError(f"{key}: expected {desc}, got {value!r} (YAML reads an unquoted yes/no/on/off/"
                              f"true/false as a boolean: quote it, e.g. {key}='no')")
        try:
            OmegaConf.update(schema, key, value, merge=False)
        except OmegaConfBaseException as err:
            msg = check.message(key, value) if check else f"{key}: {str(err).splitlines()[0]}, got {value!r}"
            raise ConfigError(msg) from None
    try:
        cfg = OmegaConf.to_object(schema)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{err.full_key or 'config'}: {str(err).splitlines()[0]}") from None
    _tuples(cfg)
    check_values(cfg)
    cfg.validate()
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | None, root: type, migrate: bool = False):
    """Read ``path`` (``None``: all defaults; a relative path that is not a file names a shipped config, e.g.
    ``internvl3-2b_sana-1.6b_512_stage1.yaml``), apply ``key=value`` overrides, check every key and value (see
    :func:`build_config`). Returns the dataclass instances. ``migrate``: keys of an older layout in the file
    (``root.MOVED_KEYS``) are renamed instead of refused (for configs a run saved; ``root.migrate_data(data)``, when
    defined, drops keys the root no longer has). A root with a ``root_for(data, overrides, migrate)`` classmethod
    is replaced by the root it returns for the file's raw data and the parsed overrides (stage III: the root of the
    chosen algorithm)."""
    if (choose := getattr(root, "root_for", None)) is not None:
        # a root that depends on the config's own values (stage III: the chosen algorithm's sections and defaults)
        raw = _read(resolve_config(path)) if path is not None else {}
        root = choose(raw, [parse_override(text) for text in overrides or []], migrate)
    data = _read(resolve_config(path), root=root, migrate=migrate) if path is not None else {}
    for text in overrides or []:
        _set_override(data, text, root)
    return build_config(data, root)


def to_yaml_dict(cfg) -> dict:
    """A plain nested dict of a config (tuples as lists), for YAML."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))
