"""``parauni eval geneval`` and ``parauni eval dpg``: the benchmark layouts, file by file, with the tiny model."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from parauni.cli import main
from parauni.eval.bundled import dpg_prompts_path, geneval_metadata_path, geneval_object_names_path
from parauni.eval.dpg import generate_dpg, load_dpg_prompts, make_grid, pipeline_generate
from parauni.eval.geneval import limit_per_task


def _first_lines(path, n):
    return [line for line in path.read_text().splitlines() if line.strip()][:n]


def test_bundled_benchmark_files():
    """The bundled GenEval and DPG-Bench prompt files are complete (counts of the originals) and licensed."""
    metas = [json.loads(line) for line in _first_lines(geneval_metadata_path(), 10_000)]
    tasks = {}
    for m in metas:
        tasks[m["tag"]] = tasks.get(m["tag"], 0) + 1
    assert tasks == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94, "position": 100,
                     "color_attr": 100}
    names = _first_lines(geneval_object_names_path(), 1000)
    assert len(names) == 80 and names[0] == "person"
    assert {inc["class"] for m in metas for inc in m["include"]} <= set(names)
    dpg = [json.loads(line) for line in _first_lines(dpg_prompts_path(), 10_000)]
    assert len(dpg) == 1065 and len({r["item_id"] for r in dpg}) == 1065
    assert all(set(r) == {"item_id", "prompt"} and r["prompt"].strip() for r in dpg)
    geneval_dir, dpg_dir = geneval_metadata_path().parent, dpg_prompts_path().parent
    assert "Copyright (c) 2023 Dhruba Ghosh" in (geneval_dir / "LICENSE").read_text()
    assert "djghosh13/geneval" in (geneval_dir / "README.md").read_text()
    notice = (dpg_dir / "NOTICE").read_text()
    assert "TencentQQGYLab/ELLA" in notice and "http://www.apache.org/licenses/LICENSE-2.0" in notice
    assert "Apache License" in (dpg_dir / "LICENSE").read_text()


def test_geneval_layout_on_real_metadata(tmp_path, capsys, monkeypatch):
    """Without --metadata a non-toy model gets GenEval's own bundled prompts."""
    monkeypatch.delenv("PARAUNI_GENEVAL_SCORER", raising=False)
    meta_file = geneval_metadata_path()
    out = tmp_path / "geneval"
    args = ["eval", "geneval", "--model", "tiny", "--out", str(out), "--limit", "1",
            "--images-per-prompt", "1", "--steps", "2", "--batch-size", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"prompts: {meta_file}" in printed
    assert "evaluate_images.py" in printed and "PARAUNI_GENEVAL_SCORER" in printed
    firsts = limit_per_task([json.loads(line) for line in _first_lines(meta_file, 10_000)], 1)  # one per task
    assert len(firsts) == 6
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [f"{i:05d}" for i in range(6)]
    for i, meta in enumerate(firsts):
        folder = out / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == meta
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png"]
        im = Image.open(folder / "samples" / "0000.png")
        assert im.size == (16, 16) and im.mode == "RGB"
    assert not (out / "results.jsonl").exists()  # a real model is not scored without a scorer
    # resumable: a second run keeps the finished images
    before = (out / "00001" / "samples" / "0000.png").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "00001" / "samples" / "0000.png").stat().st_mtime_ns == before


def test_geneval_calls_the_configured_scorer(tmp_path, capsys, monkeypatch):
    scorer = tmp_path / "fake_scorer.py"
    scorer.write_text(
        "import json, pathlib, sys\n"
        "images, outfile = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[sys.argv.index('--outfile') + 1])\n"
        "rows = []\n"
        "for d in sorted(images.glob('[0-9]*')):\n"
        "    meta = json.loads((d / 'metadata.jsonl').read_text())\n"
        "    for s in sorted((d / 'samples').glob('*.png')):\n"
        "        rows.append({'filename': str(s), 'tag': meta['tag'], 'prompt': meta['prompt'],\n"
        "                     'correct': d.name == '00000', 'reason': '', 'metadata': json.dumps(meta)})\n"
        "outfile.write_text(''.join(json.dumps(r) + '\\n' for r in rows))\n")
    monkeypatch.setenv("PARAUNI_GENEVAL_SCORER", f"{sys.executable} {scorer}")
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--model", "tiny", "--metadata",
                 str(geneval_metadata_path()), "--out", str(out), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # --limit 1: the first prompt of each task; the fake scorer passes only folder 00000 (single_object)
    assert summary["tasks"] == {"single_object": 1.0, "two_object": 0.0, "counting": 0.0, "colors": 0.0,
                                "position": 0.0, "color_attr": 0.0}
    assert summary["overall"] == pytest.approx(1 / 6)
    assert "| tiny " in capsys.readouterr().out  # the table row of the model


def test_geneval_toy_metadata_is_scored(tmp_path):
    from parauni.toy.geneval import load_toy_geneval, write_metadata

    metas = load_toy_geneval()[:2]
    write_metadata(metas, tmp_path / "toy.jsonl")
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--model", "tiny", "--metadata", str(tmp_path / "toy.jsonl"), "--out", str(out),
                 "--images-per-prompt", "1", "--steps", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_images"] == 2
    assert len((out / "results.jsonl").read_text().splitlines()) == 2


def test_dpg_grids_on_real_prompts(tmp_path, tiny_pipe):
    """Without --prompts the bundled DPG-Bench prompts are used."""
    first = [json.loads(line) for line in _first_lines(dpg_prompts_path(), 2)]
    assert set(first[0]) == {"item_id", "prompt"}
    out = tmp_path / "dpg"
    assert main(["eval", "dpg", "--model", "tiny", "--out", str(out), "--limit", "2",
                 "--steps", "2", "--seed", "5", "--batch-size", "4"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{r['item_id']}.png" for r in first)
    grid = np.asarray(Image.open(out / f"{first[1]['item_id']}.png"))
    assert grid.shape == (32, 32, 3)
    # quadrant k of the prompt on line i is the image drawn with seed + 4 i + k, however batched
    generate = pipeline_generate(tiny_pipe, steps=2)
    singles = generate([first[1]["prompt"]] * 4, [5 + 4 + k for k in range(4)])
    np.testing.assert_allclose(grid.astype(int), make_grid(singles).astype(int), atol=1)


def test_dpg_resumes_and_checks_records(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"item_id": "a", "prompt": "x"}\n{"item_id": "b", "prompt": "y"}\n')
    items = load_dpg_prompts(tmp_path / "p.jsonl")
    calls = []

    def fake(prompts, seeds):
        calls.append(list(seeds))
        return [np.full((4, 4, 3), s, np.uint8) for s in seeds]

    out = tmp_path / "o"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "a.png")
    generate_dpg(fake, items, out, seed=10, batch_size=8)
    assert calls == [[14, 15, 16, 17]]  # "a" was already there
    grid = np.asarray(Image.open(out / "b.png"))
    assert grid[0, 0, 0] == 14 and grid[0, 4, 0] == 15 and grid[4, 0, 0] == 16 and grid[4, 4, 0] == 17
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    with pytest.raises(ValueError, match="item_id"):
        load_dpg_prompts(tmp_path / "bad.jsonl")
