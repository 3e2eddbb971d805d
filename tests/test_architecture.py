"""The floor plan holds: the import contracts of ``pyproject.toml`` (``[tool.importlinter]``), checked with
import-linter on the installed sources, and the plugin wiring of the toy world."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    """The core never imports ``parauni.toy`` (nor the command-line layer); inference never imports training.
    import-linter follows every import, function-local ones included."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "0 broken" in run.stdout


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
