"""Resuming stage I / II is exact or refused: the stored config is compared with the new one, corrupt checkpoints
are skipped (or named), an interrupted prune leaves nothing that counts, logs are cut back to the checkpoint, and
an export builds the model the weights were trained for (strict loading)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from parauni.cli import main
from parauni.train.config import load_config
from parauni.train.trainer import STATE_FILE, Trainer, checkpoints
from parauni.utils import checkpoint_files as cf
from parauni.utils import checkpoints as ck
from parauni.utils import resume_config as rc

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "toy_stage1.yaml")
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false", "train.log_every=1", "optim.warmup_steps=2"]
LAST_LAYER = "model.conditioner={fusion: mean, layers: [-1]}"


def cfg(run: Path, *extra):
    return load_config(CONFIG, [*TINY, f"train.output_dir={run}", *extra])


def cli(run: Path, *extra, resume: str | None = None, allow: bool = False) -> int:
    """``parauni train`` through the real command line."""
    argv = ["train", CONFIG, *TINY, f"train.output_dir={run}", *extra, "--no-progress"]
    if resume is not None:
        argv.append("--resume" if resume == "latest" else f"--resume={resume}")
    if allow:
        argv.append("--allow-config-change")
    return main(argv)


def steps_logged(run: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


# -- finding 1: a changed config ------------------------------------------------------------------------------
def test_resume_refuses_a_changed_config_and_keeps_config_yaml(tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(cfg(run, "train.steps=6", "train.save_every=2"), progress=False).run(stop_after=2)
    saved = (run / "config.yaml").read_bytes()
    metrics = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert cli(run, "train.steps=6", "train.save_every=2", "train.batch_size=16", "train.seed=1",
               "optim.betas=[0.9,0.99]", resume="latest") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err  # one line, no traceback
    for change in ("train.batch_size: 4 -> 16", "train.seed: 0 -> 1", "optim.betas: [0.9, 0.95] -> [0.9, 0.99]",
                   "--allow-config-change"):
        assert change in err, (change, err)
    assert "train.steps" not in err and "save_every" not in err  # unchanged or safe keys are not listed
    # nothing of the run was touched: its config, its log, its checkpoints
    assert (run / "config.yaml").read_bytes() == saved and (run / "metrics.jsonl").read_bytes() == metrics
    assert [p.name for p in checkpoints(run)] == ["checkpoint-0000002"]
    assert not (run / rc.CONFIG_CHANGES_FILE).exists()


def test_all_layer_config_refuses_a_last_layer_checkpoint(tmp_path, capsys):
    """With fusion=mean the last-layer and all-layer LIMs have the same weights (names and shapes), so only the
    stored config can tell them apart."""
    run = tmp_path / "last"
    Trainer(cfg(run, "train.steps=4", "train.save_every=2", LAST_LAYER), progress=False).run(stop_after=2)
    capsys.readouterr()
    assert cli(run, "train.steps=4", "train.save_every=2", resume="latest") == 2  # toy_stage1: all layers
    err = capsys.readouterr().err
    assert "model.conditioner.layers: [-1] -> <unset>" in err, err
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["conditioner"]["layers"] == [-1]


def test_allow_config_change_logs_changes_and_counts_samples(tmp_path):
    run = tmp_path / "run"
    Trainer(cfg(run, "train.steps=4", "train.save_every=2"), progress=False).run(stop_after=2)
    assert cli(run, "train.steps=4", "train.save_every=2", "train.batch_size=16", "optim.lr=5e-4",
               resume="latest", allow=True) == 0
    rows = [json.loads(x) for x in (run / rc.CONFIG_CHANGES_FILE).read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2 and rows[0]["checkpoint"].endswith("checkpoint-0000002")
    assert {(c["key"], c["old"], c["new"]) for c in rows[0]["changes"]} == {("train.batch_size", 4, 16),
                                                                          ("optim.lr", 0.001, 0.0005)}
    state = json.loads((run / "checkpoint-0000004" / STATE_FILE).read_text())
    assert state["step"] == 4 and state["samples_seen"] == 2 * 4 + 2 * 16  # not 4 * 16
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"] == 16
    # the allowed optimizer change is in effect (load_state had restored the checkpoint's lr)
    resumed = Trainer(cfg(run, "train.steps=6", "train.save_every=2", "train.batch_size=16", "optim.lr=2e-4"),
                      resume=True, progress=False, allow_config_change=True)
    assert [g["initial_lr"] for g in resumed.opt.param_groups] == [2e-4, 2e-4]
    assert resumed.sched.base_lrs == [2e-4, 2e-4]


def test_safe_changes_resume_silently_and_exactly(tmp_path, capsys):
    """Extending train.steps inside the warm-up, save_every, log_every and keep_last may change: the resumed run
    ends on the weights of an uninterrupted run with the new values. Extending train.steps after the warm-up
    would give the steps already taken other learning rates (the cosine spans train.steps): refused."""
    ref = tmp_path / "ref"
    Trainer(cfg(ref, "train.steps=6", "train.save_every=6", "train.stage=II"), progress=False).run()
    cut = tmp_path / "cut"
    Trainer(cfg(cut, "train.steps=4", "train.save_every=2", "train.stage=II"), progress=False).run(stop_after=3)
    assert steps_logged(cut) == [1, 2, 3] and [p.name for p in checkpoints(cut)] == ["checkpoint-0000002"]
    assert cli(cut, "train.steps=6", "train.save_every=3", "train.log_every=2", "train.keep_last=3",
               "train.stage=II", resume="latest") == 0
    assert not (cut / rc.CONFIG_CHANGES_FILE).exists()
    assert steps_logged(cut) == [1, 2, 4, 6]  # row 3 of the interrupted run is gone (finding 2)
    assert [p.name for p in checkpoints(cut)] == ["checkpoint-0000002", "checkpoint-0000003", "checkpoint-0000006"]
    a, b = load_file(str(cut / "trainable.safetensors")), load_file(str(ref / "trainable.safetensors"))
    assert any(k.startswith("transformer.") for k in a) and set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    capsys.readouterr()
    assert cli(cut, "train.steps=8", "train.stage=II", resume="latest") == 2  # from step 6, past the warm-up
    err = capsys.readouterr().err
    assert "train.steps: 6 -> 8" in err and "cosine" in err, err


# -- finding 2: logs after an interrupted run ------------------------------------------------------------------
def test_interrupted_run_resumes_without_duplicate_metrics_rows(tmp_path):
    run = tmp_path / "run"
    c = cfg(run, "train.steps=8", "train.save_every=4", "train.log_every=2")
    Trainer(c, progress=False).run(stop_after=7)  # killed after step 7: the last checkpoint is step 4
    assert steps_logged(run) == [2, 4, 6, 7]
    Trainer(c, resume=True, progress=False).run()
    assert steps_logged(run) == [2, 4, 6, 8]
    # a torn last line (killed mid-write) is dropped too, atomically (no temporary file left)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')
    assert ck.truncate_jsonl(run / "metrics.jsonl", lambda r: r["step"] <= 8) == 1
    assert steps_logged(run) == [2, 4, 6, 8] and not (run / "metrics.jsonl.tmp").exists()


# -- finding 3: a corrupt newest checkpoint --------------------------------------------------------------------
@pytest.fixture
def two_checkpoints(tmp_path) -> Path:
    run = tmp_path / "base"
    Trainer(cfg(run, "train.steps=4", "train.save_every=2"), progress=False).run()
    assert [p.name for p in checkpoints(run)] == ["checkpoint-0000002", "checkpoint-0000004"]
    return run


@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_corrupt_newest_checkpoint_falls_back_with_a_warning(two_checkpoints, tmp_path, caplog, name):
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    bad = run / "checkpoint-0000004" / name
    truncate(bad)
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg(run, "train.steps=4", "train.save_every=2"), resume="auto", progress=False)
    assert trainer.step == 2
    assert any(str(bad) in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records), caplog.text
    trainer.run()  # rewrites checkpoint 4, intact this time
    assert cf.checkpoint_problems(run / "checkpoint-0000004") == []


def test_named_corrupt_checkpoint_is_an_error_naming_the_older_one(two_checkpoints, capsys):
    run = two_checkpoints
    truncate(run / "checkpoint-0000004" / "optimizer.bin", 0.9)
    capsys.readouterr()
    assert cli(run, "train.steps=4", "train.save_every=2", resume=str(run / "checkpoint-0000004")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(run / "checkpoint-0000004" / "optimizer.bin") in err
    assert f"--resume {run / 'checkpoint-0000002'}" in err, err
    # the plain --resume falls back by itself and finishes the run
    assert cli(run, "train.steps=4", "train.save_every=2", resume="latest") == 0
    assert cf.checkpoint_problems(run / "checkpoint-0000004") == []


def test_checkpoint_problems_read_headers_and_archives(tmp_path):
    st = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(10.0), "b": torch.ones(3, 4)}, str(st))
    assert cf._safetensors_problem(st) is None
    data = st.read_bytes()
    for cut in (4, 12, len(data) - 1):
        st.write_bytes(data[:cut])
        assert cf._safetensors_problem(st), cut
    st.write_bytes(data + b"\0")
    assert f"need {len(data)} bytes but the file has {len(data) + 1}" in cf._safetensors_problem(st)
    pt = tmp_path / "o.bin"
    torch.save({"x": torch.randn(100)}, pt)
    assert cf._zip_problem(pt) is None
    truncate(pt, 0.95)
    assert "truncated" in cf._zip_problem(pt)
    folder = tmp_path / "checkpoint-0000001"
    folder.mkdir()
    (folder / STATE_FILE).write_text('{"step": 1')
    assert [p.split(": ")[0] for p in cf.checkpoint_problems(folder, required=("trainable.safetensors",))] == [
        str(folder / "trainable.safetensors"), str(folder / STATE_FILE)]


# -- finding 4: a kill during pruning ---------------------------------------------------------------------------
def test_interrupted_prune_leaves_no_counted_checkpoint_and_is_cleaned_up(tmp_path, monkeypatch):
    run = tmp_path / "run"
    c = cfg(run, "train.steps=6", "train.save_every=2", "train.keep_last=2")
    Trainer(c, progress=False).run(stop_after=4)
    old = run / "checkpoint-0000002"

    def killed(path, *a, **k):  # the process dies as the folder's removal starts
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ck.shutil, "rmtree", killed)
        with pytest.raises(KeyboardInterrupt):
            ck.prune_checkpoints(run, STATE_FILE, keep_last=1)
    # the state file went first: the half-removed folder no longer counts
    assert old.is_dir() and (old / "trainable.safetensors").is_file() and not (old / STATE_FILE).exists()
    assert [p.name for p in checkpoints(run)] == ["checkpoint-0000004"]
    resumed = Trainer(c, resume=True, progress=False)
    assert resumed.step == 4
    resumed.run()
    assert not old.exists()  # removed by the next prune
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000006"]


def test_checkpoint_without_its_weights_is_skipped(two_checkpoints, caplog):
    """What the old pruning order could leave: the state file without trainable.safetensors."""
    run = two_checkpoints
    (run / "checkpoint-0000004" / "trainable.safetensors").unlink()
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg(run, "train.steps=4", "train.save_every=2"), resume=True, progress=False)
    assert trainer.step == 2 and "trainable.safetensors: missing" in caplog.text


# -- finding 6: export builds the model the weights belong to --------------------------------------------------
def test_export_uses_the_stored_config_and_refuses_other_weights(tmp_path, capsys):
    runs = {}
    for name, conditioner in (("softmax_all", "{fusion: softmax}"), ("mean_last", "{fusion: mean, layers: [-1]}"),
                              ("softmax_last", "{fusion: softmax, layers: [-1]}")):
        runs[name] = tmp_path / name
        Trainer(cfg(runs[name], "train.steps=1", "train.save_every=1", f"model.conditioner={conditioner}"),
                progress=False).run()
    # the last-layer checkpoint exports as a last-layer model, whatever the current configs say
    assert main(["export", str(runs["mean_last"] / "checkpoint-0000001"), "--out", str(tmp_path / "pipe")]) == 0
    from parauni.pipelines import ParaUniPipeline

    pipe = ParaUniPipeline.from_pretrained(tmp_path / "pipe")
    assert len(pipe.conditioner.layer_indices) == 1
    target = runs["softmax_all"] / "checkpoint-0000001"
    for donor, words in (("mean_last", ["missing (1): conditioner.lim.layer_logits"]),
                         ("softmax_last", ["shape mismatch", "conditioner.lim.layer_logits (1,) vs (4,)"])):
        shutil.copy(runs[donor] / "checkpoint-0000001" / "trainable.safetensors", target / "trainable.safetensors")
        capsys.readouterr()
        assert main(["export", str(target), "--out", str(tmp_path / f"bad_{donor}")]) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
        # resuming that checkpoint fails the same way (its config matches, its weights do not)
        assert cli(runs["softmax_all"], "train.steps=2", "train.save_every=1", "model.conditioner={fusion: softmax}",
                   resume=str(target)) == 2
        assert "conditioner.lim.layer_logits" in capsys.readouterr().err
