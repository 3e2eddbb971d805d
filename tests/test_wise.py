"""``parauni eval wise``: WISE's layout (``<prompt_id>.png``), resumable with provenance, and the judge hook with
WISE's WiScore weighting (PKU-YuanGroup/WISE ``WISE_legacy/Calculate.py``, ``calculate_verified.py``)."""

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parauni.cli import main
from parauni.eval.wise import load_wise_prompts, summarize, wiscore

# (prompt_id, Category, file) in WISE's prompt_id ranges: culture 1-400, time/space 401-640, science 641-1000
PROMPTS = {
    "cultural_common_sense": [(1, "Cultural knowledge", "Traditional food of the Mid-Autumn Festival"),
                              (2, "Cultural knowledge", "Holiday celebrating the birth of Jesus Christ")],
    "spatio-temporal_reasoning": [(401, "time", "A street in New York when it is midnight in Beijing"),
                                  (402, "time", "The Eiffel Tower in the year 1850"),
                                  (521, "Space", "A view of a mountain from directly above"),
                                  (522, "Space", "A cup hidden behind a book")],
    "natural_science": [(641, "Biology", "A plant kept for many days beside a bright one-sided window"),
                        (761, "Physical Knowledge", "A straw in a glass of water seen from the side"),
                        (881, "Chemistry", "Sodium dropped into water"),
                        (882, "Chemistry", "An iron nail left in salt water for a month")],
}

# a stand-in for WISE's judge scripts: the same arguments, the same paths (the scores are written to
# os.path.join(output_dir, result_scores), vllm_eval.py l.241 / gpt_eval.py l.215, the images opened as
# os.path.join(image_dir, f"{pid}.png")), the same output records (the paper's 0-2 scores), chosen per prompt so
# that the six categories score differently
JUDGE = '''
import argparse, json, os
from pathlib import Path
from PIL import Image
p = argparse.ArgumentParser()
p.add_argument("--json_path"); p.add_argument("--image_dir"); p.add_argument("--output_dir")
p.add_argument("--result_scores")
a = p.parse_args()
CONSISTENCY = {1: 2, 2: 2, 401: 2, 402: 1, 521: 0, 522: 0, 641: 1, 761: 0, 881: 0, 882: 1}
Path(a.output_dir).mkdir(parents=True, exist_ok=True)
with open(os.path.join(a.output_dir, a.result_scores), "w") as f:
    for rec in json.load(open(a.json_path)):
        im = Image.open(os.path.join(a.image_dir, f"{rec['prompt_id']}.png"))
        assert im.size[0] > 0
        pid = rec["prompt_id"]
        f.write(json.dumps({"prompt_id": pid, "Subcategory": rec["Subcategory"], "consistency": CONSISTENCY[pid],
                            "realism": 0 if pid == 761 else 2, "aesthetic_quality": 1}) + "\\n")
'''
# WiScore (0.7 c + 0.2 r + 0.1 a) / 2 of each prompt above: c 2 -> 0.95, c 1 -> 0.6, c 0 -> 0.25, and 761 -> 0.05
WISCORE = {1: 0.95, 2: 0.95, 401: 0.95, 402: 0.6, 521: 0.25, 522: 0.25, 641: 0.6, 761: 0.05, 881: 0.25, 882: 0.6}
# category means of the full set: all different, so a swapped category or weight shows in the overall
FULL = {"CULTURE": 0.95, "TIME": 0.775, "SPACE": 0.25, "BIOLOGY": 0.6, "PHYSICS": 0.05, "CHEMISTRY": 0.425}
# WISE_legacy/Calculate.py l.240-241, written out
LEGACY_OVERALL = 0.4 * 0.95 + 0.167 * 0.775 + 0.133 * 0.25 + 0.1 * (0.6 + 0.05 + 0.425)


def write_prompts(folder: Path, merged: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    every = []
    for name, recs in PROMPTS.items():
        data = [{"Prompt": p, "Explanation": f"explanation of {i}", "Category": c, "Subcategory": "x", "prompt_id": i}
                for i, c, p in recs]
        (folder / f"{name}.json").write_text(json.dumps(data, indent=4))
        every += data
    if merged:  # data_verified/merge.json: the others again
        (folder / "merge.json").write_text(json.dumps(every))
    return folder


def judge_command(tmp_path: Path) -> str:
    script = tmp_path / "judge.py"
    script.write_text(JUDGE)
    return (f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} --json_path {{prompts}} "
            "--image_dir {images} --output_dir {images}/judge --result_scores {out}")


def test_wise_layout_judge_and_wiscore(tmp_path, capsys, monkeypatch):
    prompts = write_prompts(tmp_path / "wise")
    monkeypatch.chdir(tmp_path)  # a relative --out: the judge gets absolute paths (it joins output_dir + {out})
    out = Path("out")
    args = ["eval", "wise", "--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--steps", "1",
            "--limit", "1", "--judge-command", judge_command(tmp_path)]
    assert main(args) == 0
    # --limit 1: the first prompt of each of the six categories, named as WISE's judges open them
    ids = [1, 401, 521, 641, 761, 881]
    assert sorted(int(p.stem) for p in out.glob("*.png")) == ids
    assert sorted(p.name for p in (out / "prompts").iterdir()) == [f"{n}.json" for n in sorted(PROMPTS)]
    sent = json.loads((out / "prompts" / "spatio-temporal_reasoning.json").read_text())
    assert [r["prompt_id"] for r in sent] == [401, 521] and sent[0]["Explanation"] == "explanation of 401"
    assert sorted(p.name for p in (out / "judge").iterdir()) == [f"{n}_scores_results.jsonl" for n in sorted(PROMPTS)]
    record = json.loads((out / "provenance.json").read_text())
    assert record["layout"] == "wise" and record["seed_rule"] == "seed + prompt_id" and record["prompts"] == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"] == "legacy"
    assert {c: v["wiscore"] for c, v in summary["categories"].items()} == pytest.approx(
        {"CULTURE": 0.95, "TIME": 0.95, "SPACE": 0.25, "BIOLOGY": 0.6, "PHYSICS": 0.05, "CHEMISTRY": 0.25})
    assert all(v["images"] == 1 for v in summary["categories"].values())
    # 6 of the set's 10 prompts scored: no overall (WISE's calculators need the whole set)
    assert summary["overall"] is None and summary["partial"] == "partial: 6 of 10 prompts scored"
    assert summary["unscored"] == [2, 402, 522, 882] and summary["scored"] == 6 and summary["prompts"] == 10
    text = capsys.readouterr().out
    assert "| CULTURE |" in text and "partial: 6 of 10 prompts scored" in text

    # a rerun keeps the images (same provenance); other settings are refused, naming the setting
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == mtimes
    assert main([*args, "--seed", "3"]) == 2
    assert "seed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before

    # the whole set: every category its own mean, the overall with the legacy weights
    full = Path("full")
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(prompts), "--out", str(full), "--steps", "1",
                 "--judge-command", judge_command(tmp_path)]) == 0
    summary = json.loads((full / "summary.json").read_text())
    assert {c: v["wiscore"] for c, v in summary["categories"].items()} == pytest.approx(FULL)
    assert summary["overall"] == pytest.approx(LEGACY_OVERALL) and summary["partial"] is None
    assert f"{LEGACY_OVERALL:.3f}" in capsys.readouterr().out


def test_wise_seed_rule_is_independent_of_limit(tmp_path, monkeypatch):
    monkeypatch.delenv("PARAUNI_WISE_JUDGE", raising=False)
    prompts = write_prompts(tmp_path / "wise", merged=False)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(prompts / "natural_science.json"),
                 "--out", str(a), "--steps", "1", "--limit", "1"]) == 0
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(prompts), "--out", str(b), "--steps", "1",
                 "--batch-size", "3"]) == 0
    assert sorted(int(p.stem) for p in a.glob("*.png")) == [641, 761, 881]
    assert len(list(b.glob("*.png"))) == 10 and not (b / "summary.json").exists()
    for name in ("641.png", "881.png"):
        assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name)))
    assert not np.array_equal(np.asarray(Image.open(b / "881.png")), np.asarray(Image.open(b / "882.png")))


def test_verified_wiscore_and_partial_runs():
    prompts = [{"prompt_id": i, "Category": c, "Prompt": "p"} for recs in PROMPTS.values() for i, c, _ in recs]
    scores = [{"prompt_id": i, "score": s} for i, s in
              [(1, 1), (2, 0), (401, 1), (402, 1), (521, 0), (522, 0), (641, 1), (761, 0), (881, 1), (882, 0),
               (9999, 1)]]
    s = summarize(scores, prompts)
    assert s["protocol"] == "verified" and s["ignored_records"] == 1
    cats = {c: v["wiscore"] for c, v in s["categories"].items()}
    assert cats == {"CULTURE": 0.5, "TIME": 1.0, "SPACE": 0.0, "BIOLOGY": 1.0, "PHYSICS": 0.0, "CHEMISTRY": 0.5}
    # calculate_verified.py: 0.40 culture + 0.12 each other category
    assert s["overall"] == pytest.approx(0.4 * 0.5 + 0.12 * (1 + 0 + 1 + 0 + 0.5))
    part = summarize(scores[:4], prompts)  # no science scores: no overall, the unscored prompts listed
    assert part["overall"] is None and part["unscored"] == [521, 522, 641, 761, 881, 882]
    assert part["partial"] == "partial: 4 of 10 prompts scored"
    # every category present but one prompt unscored: still no overall (calculate_verified.py l.174-181)
    almost = summarize([r for r in scores if r["prompt_id"] != 882], prompts)
    assert almost["overall"] is None and almost["partial"] == "partial: 9 of 10 prompts scored"
    # the legacy weights on the same scores would give another number
    assert s["overall"] != pytest.approx(0.4 * 0.5 + 0.167 * 1 + 0.133 * 0 + 0.1 * (1 + 0 + 0.5))
    assert wiscore({"consistency": 2, "realism": 2, "aesthetic_quality": 2}) == ("legacy", pytest.approx(1.0))
    with pytest.raises(ValueError, match="mix"):
        summarize([{"prompt_id": 1, "score": 1}, {"prompt_id": 2, "consistency": 1, "realism": 1,
                                                  "aesthetic_quality": 1}], prompts)
    with pytest.raises(ValueError, match="0 or 1"):
        wiscore({"prompt_id": 1, "score": 0.5})


def test_wise_bad_inputs(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "wise", merged=False)
    data = json.loads((prompts / "natural_science.json").read_text())
    (prompts / "natural_science_rewrite.json").write_text(json.dumps(data))
    assert load_wise_prompts(prompts / "natural_science.json")["natural_science"][0]["prompt_id"] == 641
    out = tmp_path / "out"
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(prompts), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "prompt_id 641 appears in both natural_science.json and natural_science_rewrite.json" in err
    assert "WISE_legacy/data/ whole is not supported" in err and "only the original files" in err
    # a judge command without {out} is refused before any image is generated
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(prompts / "natural_science.json"),
                 "--out", str(out), "--judge-command", "python judge.py {images}"]) == 2
    assert "{out}" in capsys.readouterr().err and not out.exists()
    # a failing judge is an error naming the command
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(prompts / "natural_science.json"),
                 "--out", str(out), "--steps", "1", "--limit", "1",
                 "--judge-command", f"{shlex.quote(sys.executable)} -c 'raise SystemExit(3)' {{out}}"]) == 2
    err = capsys.readouterr().err
    assert "exited with status 3" in err
    (tmp_path / "bad.json").write_text(json.dumps([{"Prompt": "x", "prompt_id": "7"}]))
    assert main(["eval", "wise", "--model", "tiny", "--prompts", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert "prompt_id must be an integer" in capsys.readouterr().err
