"""The shipped stage-II toy models reproduce their own ``toy_geneval_summary.json``.

That summary was written by the trainer's final evaluation (``Trainer.evaluate`` -> ``toy_geneval``): every toy
GenEval prompt once (image ``i`` is prompt ``i`` drawn with seed ``i``), 20 steps, guidance 4.5, float32 on CPU.
``data/shipped_stage2_geneval.json`` holds the per-image results of a rerun that reproduced both summaries in
every field; the fast test redraws a fixed spread of those images and checks each one exactly, the slow test
redraws all 300 per model and checks the summary itself.
"""

import json
from importlib import resources
from pathlib import Path

import pytest

from parauni.cli import main
from parauni.eval.geneval import TASK_ORDER, pipeline_generate_fn
from parauni.pipelines.loading import load_pipeline
from parauni.toy.detect import detect
from parauni.toy.evaluation import toy_geneval
from parauni.toy.geneval import evaluate, load_toy_geneval, partial_credit

RECORD = json.loads((Path(__file__).parent / "data" / "shipped_stage2_geneval.json").read_text())
# the shipped models and their folders under parauni/toy/weights/stage2/
FOLDERS = {"toy-all-layers": "all_layers", "toy-last-layer": "last_layer"}
MODELS = sorted(FOLDERS)


def _summary(name: str) -> dict:
    folder = resources.files("parauni.toy").joinpath("weights", "stage2", FOLDERS[name])
    return json.loads(folder.joinpath("toy_geneval_summary.json").read_text())


def _subset(metas: list[dict], per_task: int = 6) -> list[int]:
    """``per_task`` indices spread over each task's prompts."""
    by_task: dict[str, list[int]] = {}
    for i, m in enumerate(metas):
        by_task.setdefault(m["tag"], []).append(i)
    return [i for t in TASK_ORDER for i in by_task[t][:: len(by_task[t]) // per_task][:per_task]]


@pytest.fixture(scope="module")
def metas() -> list[dict]:
    return load_toy_geneval()


@pytest.mark.parametrize("name", MODELS)
def test_record_matches_the_shipped_summary(name, metas):
    """The per-image record is the run behind the summary: same per-task accuracy, partial credit, count."""
    rec, summary = RECORD["models"][name], _summary(name)
    assert len(rec["correct"]) == len(rec["partial"]) == len(metas) == summary["total_images"]
    for task, acc in summary["tasks"].items():
        rows = [c == "1" for c, m in zip(rec["correct"], metas, strict=True) if m["tag"] == task]
        assert sum(rows) / len(rows) == pytest.approx(acc, abs=1e-9), task
    assert sum(rec["partial"]) / len(metas) == pytest.approx(summary["mean_partial"], abs=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_reproduces_its_images(name, metas):
    """36 images (6 per task, seeds as in the summary's run) are judged exactly as recorded."""
    rec = RECORD["models"][name]
    idx = _subset(metas)
    generate = pipeline_generate_fn(load_pipeline(name), RECORD["steps"], RECORD["guidance"])
    images = generate([metas[i]["prompt"] for i in idx], [RECORD["seed"] + i for i in idx])
    got, want = [], []
    for i, img in zip(idx, images, strict=True):
        dets = detect(img)
        got.append((i, evaluate(dets, metas[i])[0], round(partial_credit(dets, metas[i]), 6)))
        want.append((i, rec["correct"][i] == "1", rec["partial"][i]))
    assert got == want
    # the subset can fail both ways: it holds images judged right and wrong
    assert 0 < sum(c for _, c, _ in want) < len(want)


def test_eval_geneval_cli_defaults_to_toy_prompts_for_toy_models(tmp_path, capsys):
    """``parauni eval geneval --model toy-all-layers`` without --metadata draws and scores the toy prompts; its
    first image (prompt 0, seed 0) is judged as in the shipped model's record."""
    out = tmp_path / "g"
    assert main(["eval", "geneval", "--model", "toy-all-layers", "--out", str(out), "--limit", "1",
                 "--images-per-prompt", "1", "--steps", str(RECORD["steps"])]) == 0
    assert "toy_geneval_metadata.jsonl" in capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    toy_prompts = {m["prompt"] for m in load_toy_geneval()}
    assert rows and all(r["prompt"] in toy_prompts for r in rows)
    assert json.loads((out / "summary.json").read_text())["total_images"] == len(rows)
    rec = RECORD["models"]["toy-all-layers"]
    assert (rows[0]["correct"], round(rows[0]["partial"], 6)) == (rec["correct"][0] == "1", rec["partial"][0])


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_reproduces_its_summary(name, tmp_path):
    """All 300 images, as the trainer drew them: the summary is reproduced in every field (about 1 min each)."""
    got = toy_geneval(load_pipeline(name), tmp_path, images_per_prompt=1, steps=RECORD["steps"])
    want = _summary(name)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
