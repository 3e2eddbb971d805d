"""``benchmarks/compare_geneval_scorers.py``: per-task deltas and per-image disagreements of two scorers' results
on the same images, checked against numbers worked out by hand."""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "compare_geneval_scorers.py"


def row(index, k, tag, correct, root="", reason=""):
    meta = {"tag": tag, "prompt": f"prompt {index}", "include": [{"class": "cat", "count": 1}]}
    return {"filename": f"{root}{index:05d}/samples/{k:04d}.png", "tag": tag, "prompt": meta["prompt"],
            "correct": correct, "reason": reason, "metadata": json.dumps(meta), "details": "{}"}


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(*args):
    """The script as a command, in this process (a fresh interpreter would spend seconds importing parauni):
    its exit status and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [str(SCRIPT), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(str(SCRIPT), run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = argv
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_per_task_deltas_and_disagreements(tmp_path):
    # colors: A 2/2, B 1/2 (image 0/1 differs); counting: A 0/2, B 1/2 (image 1/0 differs); position: both 1/2
    # A's paths absolute, B's relative: matched by <index>/samples/<k>.png
    native = [row(0, 0, "colors", True, "/abs/run/"), row(0, 1, "colors", True, "/abs/run/"),
              row(1, 0, "counting", False, "/abs/run/", "expected cat>=1, found 0"),
              row(1, 1, "counting", False, "/abs/run/"),
              row(2, 0, "position", True, "/abs/run/"), row(2, 1, "position", False, "/abs/run/")]
    official = [row(0, 0, "colors", True, "run/"), row(0, 1, "colors", False, "run/", "expected red cat>=1"),
                row(1, 0, "counting", True, "run/"), row(1, 1, "counting", False, "run/"),
                row(2, 0, "position", True, "run/"), row(2, 1, "position", False, "run/"),
                row(3, 0, "colors", True, "run/")]  # scored by B only: left out, and said so
    a, b = write(tmp_path / "native.jsonl", native), write(tmp_path / "official.jsonl", official)
    out = run(a, b, "--names", "native", "official", "--json", tmp_path / "d.json")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "6 images scored by both; verdicts agree on 66.7%" in text
    assert "| colors | 2 | 1.000 | 0.500 | -0.500 | 1 | 0 |" in text
    assert "| counting | 2 | 0.000 | 0.500 | +0.500 | 0 | 1 |" in text
    assert "| position | 2 | 0.500 | 0.500 | +0.000 | 0 | 0 |" in text
    # overall = mean of the tasks: (1 + 0 + 0.5) / 3 = 0.5 vs (0.5 + 0.5 + 0.5) / 3 = 0.5
    assert "| overall (mean of tasks) | 6 | 0.500 | 0.500 | +0.000 | | |" in text
    assert "1 image(s) scored by official only (left out above): 00003/samples/0000.png" in text
    assert ("- 00000/samples/0001.png [colors] 'prompt 0': native correct, official wrong (expected red cat>=1)"
            in text)
    assert "- 00001/samples/0000.png [counting] 'prompt 1': native wrong (expected cat>=1, found 0), official correct" \
        in text
    saved = json.loads((tmp_path / "d.json").read_text())
    assert saved["names"] == ["native", "official"] and len(saved["disagreements"]) == 2
    assert saved["tasks"]["colors"]["delta"] == -0.5 and saved["only_b"] == ["00003/samples/0000.png"]


def test_refusals(tmp_path):
    a = write(tmp_path / "a.jsonl", [row(0, 0, "colors", True)])
    other = write(tmp_path / "b.jsonl", [row(5, 0, "colors", True)])
    out = run(a, other)
    assert out.returncode == 2 and "share no image" in out.stderr
    notag = write(tmp_path / "c.jsonl", [{k: v for k, v in row(0, 0, "colors", True).items() if k != "tag"}])
    out = run(a, notag)
    assert out.returncode == 2 and f"{notag}, line 1, field 'tag': missing" in out.stderr
    retagged = write(tmp_path / "d.jsonl", [row(0, 0, "counting", True)])
    out = run(a, retagged)
    assert out.returncode == 2 and "not of the same GenEval folder" in out.stderr
