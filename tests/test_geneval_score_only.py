"""``parauni eval geneval --score-only DIR``: images made elsewhere in GenEval's layout are scored in place with any
scorer, recorded as external in ``provenance.json``, and never mixed with images parauni generates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parauni.cli import main
from parauni.eval import GENEVAL_SCORER_ENV
from parauni.eval import provenance as prov
from parauni.toy.geneval import load_toy_geneval

ROOT = Path(__file__).resolve().parents[1]
TOY_META = str(ROOT / "src" / "parauni" / "toy" / "data" / "toy_geneval_metadata.jsonl")


def external_layout(folder: Path, metas: list[dict], per_prompt: int = 2, seed: int = 0) -> Path:
    """GenEval's layout as another tool writes it (evaluate_images.py reads <index>/metadata.jsonl, a single JSON
    object, and samples/<k>.png); no provenance.json."""
    rng = np.random.default_rng(seed)
    for i, meta in enumerate(metas):
        d = folder / f"{i:05d}"
        (d / "samples").mkdir(parents=True)
        (d / "metadata.jsonl").write_text(json.dumps(meta))
        for k in range(per_prompt):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "samples" / f"{k:05d}.png")
    return folder


def test_score_only_external_images_with_the_toy_scorer(tmp_path, capsys):
    metas = [next(m for m in load_toy_geneval() if m["tag"] == t) for t in ("single_object", "counting")]
    d = external_layout(tmp_path / "elsewhere", metas)
    assert main(["eval", "geneval", "--score-only", str(d), "--scorer", "toy"]) == 0
    rows = [json.loads(x) for x in (d / "results.jsonl").read_text().splitlines()]
    assert [Path(r["filename"]).relative_to(d).as_posix() for r in rows] == [
        "00000/samples/00000.png", "00000/samples/00001.png", "00001/samples/00000.png", "00001/samples/00001.png"]
    summary = json.loads((d / "summary.json").read_text())
    assert summary["total_images"] == 4 and set(summary["tasks"]) == {"single_object", "counting"}
    record = json.loads((d / prov.PROVENANCE_FILE).read_text())
    assert record["source"] == "external" and record["model"] is None and record["layout"] == "geneval"
    assert record["images"] == 4 and record["prompts"] == 2 and len(record["images_sha256"]) == 64
    assert f"| external images (images {record['images_sha256'][:8]}) |" in capsys.readouterr().out

    # generating into it is refused (no mixing of parauni's images with the external ones); nothing changes
    before = {p: p.read_bytes() for p in sorted(d.rglob("*.png"))}
    assert main(["eval", "geneval", "--model", "prior", "--metadata", TOY_META, "--out", str(d), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "images made elsewhere" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in sorted(d.rglob("*.png"))} == before

    # scoring again: same images, same record; changed images, a new hash
    assert main(["eval", "geneval", "--score-only", str(d), "--scorer", "toy"]) == 0
    assert json.loads((d / prov.PROVENANCE_FILE).read_text()) == record
    Image.new("RGB", (32, 32), "red").save(d / "00001" / "samples" / "00001.png")
    assert main(["eval", "geneval", "--score-only", str(d), "--scorer", "toy"]) == 0
    changed = json.loads((d / prov.PROVENANCE_FILE).read_text())
    assert changed["source"] == "external" and changed["images_sha256"] != record["images_sha256"]

    # --overwrite replaces the external images with the model's own, and the record with the model's
    assert main(["eval", "geneval", "--model", "prior", "--metadata", TOY_META, "--out", str(d), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", "1", "--overwrite"]) == 0
    replaced = json.loads((d / prov.PROVENANCE_FILE).read_text())
    assert replaced["model"] == "prior" and "source" not in replaced
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*.png"))[0] == "00000/samples/0000.png"
    assert len(list(d.rglob("*.png"))) == 6  # one image for each of the six toy tasks' first prompt


def test_score_only_keeps_the_record_of_parauni_images(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--model", "prior", "--metadata", TOY_META, "--out", str(out), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", "1"]) == 0
    record = json.loads((out / prov.PROVENANCE_FILE).read_text())
    capsys.readouterr()
    assert main(["eval", "geneval", "--score-only", str(out), "--scorer", "toy"]) == 0
    assert json.loads((out / prov.PROVENANCE_FILE).read_text()) == record  # the model that made them, kept
    assert f"| prior (weights {record['weights_sha256'][:8]}) |" in capsys.readouterr().out
    # an image the record does not account for: refused (the scores would mix sources)
    Image.new("RGB", (32, 32), "red").save(out / "00000" / "samples" / "0007.png")
    assert main(["eval", "geneval", "--score-only", str(out), "--scorer", "toy"]) == 2
    assert "also holds 1 other image(s) (00000/samples/0007.png)" in capsys.readouterr().err


def test_score_only_with_the_official_scorer_command(tmp_path, monkeypatch):
    metas = [next(m for m in load_toy_geneval() if m["tag"] == "colors")]
    d = external_layout(tmp_path / "elsewhere", metas, per_prompt=3)
    scorer = tmp_path / "scorer.py"
    scorer.write_text(
        "import json, pathlib, sys\n"
        "images, outfile = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[sys.argv.index('--outfile') + 1])\n"
        "rows = []\n"
        "for d in sorted(images.glob('[0-9]*')):\n"
        "    meta = json.loads((d / 'metadata.jsonl').read_text())\n"
        "    for k, s in enumerate(sorted((d / 'samples').glob('*.png'))):\n"
        "        rows.append({'filename': str(s), 'tag': meta['tag'], 'prompt': meta['prompt'], 'correct': k == 0,\n"
        "                     'reason': '', 'metadata': json.dumps(meta), 'details': '{}'})\n"
        "outfile.write_text(''.join(json.dumps(r) + '\\n' for r in rows))\n")
    monkeypatch.setenv(GENEVAL_SCORER_ENV, f"{sys.executable} {scorer}")
    assert main(["eval", "geneval", "--score-only", str(d), "--scorer", "official"]) == 0
    summary = json.loads((d / "summary.json").read_text())
    assert summary["tasks"] == {"colors": 1 / 3} and summary["correct_prompts"] == 1.0


def test_score_only_refusals(tmp_path, capsys):
    metas = [next(m for m in load_toy_geneval() if m["tag"] == "colors")]
    d = external_layout(tmp_path / "elsewhere", metas)
    assert main(["eval", "geneval", "--score-only", str(d), "--model", "prior", "--scorer", "toy"]) == 2
    assert "drop --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # one or the other: argparse's own refusal
        main(["eval", "geneval", "--score-only", str(d), "--out", str(d)])
    assert stop.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert main(["eval", "geneval", "--out", str(tmp_path / "x")]) == 2
    assert "--model is required" in capsys.readouterr().err
    assert main(["eval", "geneval", "--score-only", str(tmp_path / "missing"), "--scorer", "toy"]) == 2
    err = capsys.readouterr().err  # (the output-folder lock may have made the folder: then it is empty)
    assert "no such folder" in err or "no images in GenEval's layout" in err
    (tmp_path / "empty" / "00000").mkdir(parents=True)
    assert main(["eval", "geneval", "--score-only", str(tmp_path / "empty"), "--scorer", "toy"]) == 2
    assert "metadata.jsonl" in capsys.readouterr().err
    prov.write(d, {"layout": "dpg", "model": "m"})
    assert main(["eval", "geneval", "--score-only", str(d), "--scorer", "toy"]) == 2
    assert "'dpg' layout" in capsys.readouterr().err
    assert not (d / "results.jsonl").exists()
