"""The YAML configs shipped inside the package (``parauni/configs/``), found with :mod:`importlib.resources` so
they resolve the same from a clone, an editable install or a wheel.  The repository's top-level ``configs``
is a link to this folder, so ``parauni train configs/internvl3-2b_sana-1.6b_512_stage1.yaml`` works
from a clone."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIGS_DIR = "configs"


def shipped_configs_dir() -> Path:
    """The folder of the shipped configs inside the installed package."""
    ref = resources.files("parauni").joinpath(CONFIGS_DIR)
    path = Path(str(ref))
    if not path.is_dir():
        raise FileNotFoundError(f"the shipped configs folder {path} is missing: reinstall parauni "
                                "(`pip install .` or `pip install -e .` from a clone)")
    return path


def shipped_config_names() -> list[str]:
    """The shipped configs, as paths relative to :func:`shipped_configs_dir` (e.g. ``accelerate/ddp.yaml``)."""
    root = shipped_configs_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def shipped_config(name: str) -> Path:
    """The shipped config ``name`` (``accelerate/ddp.yaml``; a leading ``configs/``
    is dropped); ``FileNotFoundError`` listing the shipped names otherwise."""
    parts = Path(name).parts
    if parts[:1] == (CONFIGS_DIR,):
        parts = parts[1:]
    path = shipped_configs_dir().joinpath(*parts) if parts else None
    if path is None or ".." in parts or not path.is_file():
        raise FileNotFoundError(f"no shipped config {name!r}; shipped: {', '.join(shipped_config_names())}")
    return path


def resolve_config(path: str | Path) -> Path:
    """``path`` itself when that file exists; otherwise, for a relative path, the shipped config of that name
    (so ``parauni train NAME.yaml`` or ``configs/NAME.yaml`` works from any folder)."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    try:
        return shipped_config(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"config file {str(path)!r} not found in {Path.cwd()} and it is not a shipped config; "
            f"give a path to a YAML file, or one of: {', '.join(shipped_config_names())}") from None
