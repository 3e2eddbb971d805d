"""``parauni toy reproduce``: the plan, the step runner (order, skipping, failures) and a whole small run."""

from __future__ import annotations

import json
import sys

import pytest

from parauni.toy.reproduce import Job, execute, fmt, mean_std, plan, reproduce


def test_plan_wires_world_models_and_dependencies(tmp_path):
    jobs = plan(tmp_path, [0, 1], start="world", scale="quick")
    names = [j.name for j in jobs]
    assert names[:3] == ["world-vlm", "world-prior", "world-rewards"]
    for i, job in enumerate(jobs):  # every dependency comes earlier
        assert all(a in names[:i] for a in job.after), job.name
    by = {j.name: j for j in jobs}
    s2 = by["seed1-last-stage2"]
    assert by["seed1-last-stage2"].after == ["seed1-last-stage1"]
    assert f"model.vlm={tmp_path / 'world' / 'vlm'}" in s2.argv and "train.seed=1" in s2.argv
    assert f"model.init={tmp_path / 'seed1' / 'last' / 'stage1'}" in s2.argv
    assert any(a.endswith("toy_stage2_lastlayer.yaml") for a in s2.argv)
    grpo = by["seed0-grpo_none"]
    assert "ldam.enabled=false" in grpo.argv and grpo.after == ["seed0-all-stage2"]  # the all-layer model only
    assert set(by["seed0-reconstruct"].after) == {"seed0-all-stage2", "seed0-last-stage2"}
    assert f"model.source={tmp_path / 'seed0' / 'all' / 'stage2' / 'final'}" in grpo.argv
    assert any("toy_alignment" in a and "world/alignment" in a for a in grpo.argv)  # the retrained reward
    rl = plan(tmp_path, [3], start="rl")
    assert [j.name for j in rl] == ["seed3-reconstruct", "seed3-layers", "seed3-grpo_ldam", "seed3-grpo_none"]
    assert "model.source=toy-all-layers" in rl[2].argv and not rl[2].after
    with pytest.raises(ValueError, match="--from"):
        plan(tmp_path, [0], start="stage3")
    with pytest.raises(ValueError, match="--scale"):
        plan(tmp_path, [0], scale="huge")


def _writer(path, code: str = "") -> list[str]:
    return [sys.executable, "-c", f"{code}\nimport pathlib; p = pathlib.Path({str(path)!r}); "
                                  "p.parent.mkdir(parents=True, exist_ok=True); p.write_text('ok')"]


def test_execute_orders_skips_and_stops_at_a_failure(tmp_path):
    order = tmp_path / "order.txt"
    log = f"open({str(order)!r}, 'a').write('{{}}\\n')"
    a = Job("a", _writer(tmp_path / "a.done", log.format("a")), tmp_path / "a.done")
    b = Job("b", _writer(tmp_path / "b.done", log.format("b")), tmp_path / "b.done", after=["a"])
    c = Job("c", _writer(tmp_path / "c.done", log.format("c")), tmp_path / "c.done", after=["b"])
    times = execute([c, b, a], tmp_path / "logs", workers=2, echo=lambda s: None)
    assert order.read_text().split() == ["a", "b", "c"] and set(times) == {"a", "b", "c"}
    assert execute([a, b, c], tmp_path / "logs", echo=lambda s: None) == {}  # all done: nothing runs
    bad = Job("bad", [sys.executable, "-c", "raise SystemExit('boom')"], tmp_path / "bad.done")
    after = Job("after", _writer(tmp_path / "after.done"), tmp_path / "after.done", after=["bad"])
    with pytest.raises(RuntimeError, match="step bad failed.*run the same command again"):
        execute([bad, after], tmp_path / "logs", echo=lambda s: None)
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text() and not (tmp_path / "after.done").exists()


def test_mean_std_format():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert fmt([0.5]) == "0.500" and fmt([1.0, 3.0], 1) == "2.0 ± 1.4" and fmt([None, float("nan")]) == "–"


# eight training / evaluation subprocesses; the default run keeps the plan and the step runner above, and each
# step's command has its own tests (eval reconstruct, analyze layers, grpo)
@pytest.mark.slow
def test_reproduce_from_the_shipped_models_end_to_end(tmp_path, capsys):
    """The smallest real run: reconstruction, layer response and GRPO with / without LDAM for two seeds."""
    res = reproduce(tmp_path, seeds=[0, 1], start="rl", scale="test", jobs=2)
    table = (tmp_path / "table.md").read_text()
    for seed in ("0", "1"):
        row = res["per_seed"][seed]
        assert set(row["reconstruct"]) == {"all", "last"} and row["reconstruct"]["all"]["psnr"] > 0
        assert row["rl"]["grpo_ldam"]["after"]["total_images"] == 6  # eval_limit 1 -> one prompt a task
        assert len(row["rl"]["grpo_none"]["rewards"]["toy_geneval"]) == 2
        assert "modes" in row["layers"]
    assert "with LDAM" in table and "without LDAM" in table and "±" in table and "PSNR" in table
    assert (tmp_path / "curves" / "ldam_vs_none.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["from"] == "rl"
    again = reproduce(tmp_path, seeds=[0, 1], start="rl", scale="test")  # everything is done: nothing reruns
    assert again["step_seconds"] == {}


@pytest.mark.slow
def test_reproduce_everything_from_scratch_smoke(tmp_path):
    """World pretraining, stage I / II for both variants, evaluations and RL at the 'test' scale."""
    res = reproduce(tmp_path, seeds=[0], start="world", scale="test", jobs=2)
    row = res["per_seed"]["0"]
    assert set(row["geneval"]) == {"all/stage1", "all/stage2", "last/stage1", "last/stage2"}
    assert "Toy GenEval: all layers vs the last layer" in (tmp_path / "table.md").read_text()
