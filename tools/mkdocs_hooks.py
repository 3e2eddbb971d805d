"""MkDocs hooks (``hooks:`` in mkdocs.yml): add the generated reference pages to the site at build time, so the
configuration and command-line references are rebuilt from the code on every ``make docs``."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

sys.path.insert(0, str(Path(__file__).resolve().parent))

import docs_reference  # noqa: E402 - the generators, beside this file

PAGES = {
    "reference/config.md": docs_reference.config_reference,
    "reference/cli.md": docs_reference.cli_reference,
}


def on_files(files: Files, config) -> Files:
    for path, make in PAGES.items():
        files.append(File.generated(config, path, content=make()))
    return files
