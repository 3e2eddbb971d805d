""":func:`build_report`: the run folders read, the page written, and the files swapped in when complete."""

from __future__ import annotations

import datetime
import html
import os
from pathlib import Path

from ..errors import UsageError
from ..utils.atomic import atomic_folder, remove_stale_siblings, temporary_sibling
from ..utils.locks import refuse_if_written
from .page import CSS, Page
from .runs import Run, load_run
from .sections import curves_section, headline, run_sections


def _load_runs(run_dirs: list[str | Path], samples_per_task: int) -> list[Run]:
    """Every run folder read; runs whose folders share a name are told apart as ``name (2)``, ``name (3)``. A
    folder (or one of its evaluations) that another process is writing is refused, naming that process's PID."""
    names: list[str] = []
    runs = []
    for d in run_dirs:
        refuse_if_written(d, "report")
    for d in run_dirs:
        base = Path(d).resolve().name
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base} ({n})"
        names.append(name)
        runs.append(load_run(d, samples_per_task, name))
    return runs


def _write_page(page: Page, runs: list[Run], title: str) -> str:
    """Fill ``page`` in reading order; the HTML document."""
    page.heading(title, 1)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page.para(f"{len(runs)} run(s): {', '.join(r.name for r in runs)}; generated {stamp}", cls="note")
    headline(page, runs)
    curves_section(page, runs)
    for run in runs:
        run_sections(page, run)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(page.html) + "\n</body></html>\n")


def build_report(run_dirs: list[str | Path], out: str | Path, samples_per_task: int = 4,
                 title: str = "ParaUni report") -> tuple[Path, Path]:
    """Write ``out`` (HTML) and its Markdown twin (``.md``, images in ``<stem>_files/``); return both paths."""
    if not run_dirs:
        raise UsageError("give at least one run folder")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must be an .html file, got {str(out)!r}")
    files_dir = out.with_name(out.stem + "_files")
    md_path = out.with_suffix(".md")
    _refuse_foreign_twins(out, md_path, files_dir)
    runs = _load_runs(run_dirs, samples_per_task)
    out.parent.mkdir(parents=True, exist_ok=True)
    # built beside the previous report under temporary names and swapped in at the end: a report cut short
    # (an error, Ctrl-C) leaves the previous one whole
    for stale in (out, md_path):  # a killed report's temporary files
        remove_stale_siblings(stale)
    html_tmp, md_tmp = temporary_sibling(out), temporary_sibling(md_path)
    try:
        with atomic_folder(files_dir) as files_tmp:
            page = Page(files_tmp, link_name=files_dir.name)
            html_tmp.write_text(_write_page(page, runs, title), encoding="utf-8")
            md_tmp.write_text("\n".join(page.md), encoding="utf-8")
        os.replace(md_tmp, md_path)
        os.replace(html_tmp, out)
    finally:
        html_tmp.unlink(missing_ok=True)
        md_tmp.unlink(missing_ok=True)
    if files_dir.is_dir() and not any(files_dir.iterdir()):  # a report without images needs no folder
        files_dir.rmdir()
    return out, md_path


def _refuse_foreign_twins(out: Path, md_path: Path, files_dir: Path) -> None:
    """A report replaces its own ``.md`` twin and ``_files/`` folder; where ``out`` is not there yet, a file or
    folder of those names is someone else's (notes, a folder of images), not a previous report's: refused."""
    if out.exists():
        return
    for other in (md_path, files_dir):
        if other.exists() or other.is_symlink():
            raise UsageError(f"--out {out}: the report also writes {other}, which exists and is not a previous "
                             f"report's; choose another --out, or move {other.name} away")

