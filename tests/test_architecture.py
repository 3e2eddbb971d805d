"""The floor plan holds: the import contracts of ``pyproject.toml`` (``[tool.importlinter]``: the layers of
``docs/architecture.md`` and two forbidden imports), checked with import-linter on the installed sources; every
module imports on its own (no import cycle); and the plugin wiring of the toy world."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """The layers (apps -> recipes -> rewards, pipelines, models -> base); the core never imports ``parauni.toy``
    (nor the command-line layer); inference never imports training. import-linter follows every import,
    function-local ones included."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout
    for contract in ("Layers: apps -> recipes", "The core never imports the toy world",
                     "Inference never imports training"):
        assert any(line.startswith(contract) and line.endswith("KEPT") for line in run.stdout.splitlines()), \
            f"contract {contract!r} did not run:\n{run.stdout[-3000:]}"


# Imports every module of parauni as a fresh interpreter would: before each, every parauni module is dropped from
# sys.modules (third-party packages stay loaded, so torch is imported once). An import cycle shows as an
# ImportError ("partially initialized module") or an AttributeError on a module still being imported.
_IMPORT_EACH = textwrap.dedent(r"""
    import importlib, pkgutil, sys, traceback
    import parauni

    names = sorted(m.name for m in pkgutil.walk_packages(parauni.__path__, "parauni.")
                   if not m.name.endswith("__main__"))  # __main__ runs the command line
    failed = []
    for name in names:
        for loaded in [k for k in sys.modules if k == "parauni" or k.startswith("parauni.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if not (err.name or "").startswith("parauni"):  # an optional third-party dependency not installed
                print(f"skipped {name}: {err}")
                continue
            failed.append(f"{name}: {traceback.format_exc(limit=-3)}")
        except Exception:
            failed.append(f"{name}: {traceback.format_exc(limit=-3)}")
    print(f"imported {len(names)} modules")
    if failed:
        print("\n".join(failed))
        sys.exit(1)
""")


def test_every_module_imports_on_its_own():
    """No import cycle, hidden ones included: each module of ``parauni`` imported first, in one subprocess."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _IMPORT_EACH], cwd=ROOT, capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "imported " in run.stdout


def test_the_toy_world_plugs_in_through_the_registry():
    from parauni.pipelines.loading import model_names
    from parauni.registry import (
        DATASETS,
        EVALUATORS,
        FAMILIES,
        GENERATORS,
        IMAGE_EMBEDDERS,
        MODEL_BUILDERS,
        PROMPT_SOURCES,
        REWARDS,
    )

    assert {"toy-all-layers", "toy-last-layer"} <= set(model_names())
    assert "toy" in MODEL_BUILDERS and "toy" in DATASETS and "toy" in PROMPT_SOURCES and "toy" in FAMILIES
    assert {"toy_alignment", "toy_geneval", "toy_quality", "pickscore"} <= set(REWARDS)
    assert "toy_geneval" in EVALUATORS and "prior" in GENERATORS and "toy" in IMAGE_EMBEDDERS


def test_unknown_names_list_the_known_ones():
    from parauni.errors import UsageError
    from parauni.pipelines.loading import load_pipeline

    with pytest.raises(UsageError, match=r"unknown model 'no-such-model'.*toy-all-layers.*internvl3-2b_sana-1.6b_512"):
        load_pipeline("no-such-model")
    with pytest.raises(UsageError, match=r"did you mean 'toy-all-layers'"):
        load_pipeline("toy-all-layer")
