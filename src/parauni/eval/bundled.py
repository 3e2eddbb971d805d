"""Benchmark prompt files shipped inside the package, found with :mod:`importlib.resources` so they resolve
the same from a clone, an editable install or a wheel.

- GenEval (Ghosh et al., NeurIPS 2023, https://github.com/djghosh13/geneval, MIT): the 553 prompts of
  ``prompts/evaluation_metadata.jsonl`` and the 80 class names of ``object_names.txt``, unchanged.
- DPG-Bench (from ELLA, Hu et al. 2024, https://github.com/TencentQQGYLab/ELLA, Apache-2.0): the 1065 prompts
  of ``dpg_bench/prompts/<item_id>.txt`` joined into one ``{item_id, prompt}`` JSONL file.

The license notices are beside the files (``parauni/eval/data/*/LICENSE``, ``NOTICE``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def _package_file(package: str, *parts: str) -> Path:
    path = Path(str(resources.files(package).joinpath(*parts)))
    if not path.is_file():
        raise FileNotFoundError(f"bundled file {path} is missing: reinstall parauni (`pip install .`)")
    return path


def geneval_metadata_path() -> Path:
    """GenEval's ``evaluation_metadata.jsonl`` (553 prompts in six tasks)."""
    return _package_file("parauni.eval", "data", "geneval", "evaluation_metadata.jsonl")


def geneval_object_names_path() -> Path:
    """GenEval's ``object_names.txt`` (the 80 COCO class names, one a line)."""
    return _package_file("parauni.eval", "data", "geneval", "object_names.txt")


def dpg_prompts_path() -> Path:
    """DPG-Bench's 1065 prompts as ``{item_id, prompt}`` JSONL."""
    return _package_file("parauni.eval", "data", "dpg_bench", "prompts.jsonl")


def default_geneval_metadata(family=None) -> Path:
    """The prompts ``parauni eval geneval`` uses without ``--metadata``: the model family's own
    (:class:`parauni.registry.Family`), GenEval's otherwise."""
    if family is not None and family.geneval_metadata is not None:
        return Path(str(family.geneval_metadata()))
    return geneval_metadata_path()
