"""What the browser tests share: the chromium binary (skip where there is none, fail where CI asks for the browser
tests) and where their screenshots go."""

import importlib.util
import os
import shutil
from pathlib import Path

import pytest


def find_chromium() -> str | None:
    for name in (os.environ.get("PARAUNI_CHROMIUM"), "chromium", "chromium-browser", "google-chrome",
                 "google-chrome-stable"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def browser_or_skip(*modules: str) -> str:
    """The chromium binary, after importing ``modules``; skips when any is missing, fails instead where CI asks
    for the browser tests (``PARAUNI_REQUIRE_BROWSER=1``, set by .ci/run)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    browser = find_chromium()
    if browser is None:
        missing.append("a chromium binary (apt-get install chromium, or set PARAUNI_CHROMIUM)")
    if missing:
        if os.environ.get("PARAUNI_REQUIRE_BROWSER"):
            pytest.fail(f"PARAUNI_REQUIRE_BROWSER is set but {', '.join(missing)} missing")
        pytest.skip(f"missing: {', '.join(missing)}")
    return browser


def screenshot_path(tmp_path: Path, name: str) -> Path:
    """Where a browser test saves its screenshot: ``$PARAUNI_SCREENSHOTS/<name>`` when set (CI keeps them), else
    the test's temporary folder."""
    folder = Path(os.environ.get("PARAUNI_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
