"""A run folder holds one run: a fresh start into another run's folder is refused (``--overwrite`` moves that run
aside), pruning never deletes the writing run's checkpoints, damaged state files and checkpoints without their
optimizer state are refused or skipped naming the file and the key, and checkpoint files are readable (0644)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

import pytest

from parauni.cli import main
from parauni.errors import UsageError
from parauni.rl.config import load_grpo_config
from parauni.rl.grpo import RLTrainer
from parauni.train.trainer import STATE_FILE, checkpoints
from parauni.utils import checkpoint_files as cf
from parauni.utils import checkpoints as ck
from parauni.utils.atomic import current_umask

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "toy_stage1.yaml")
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false", "train.log_every=1", "optim.warmup_steps=2"]


def train(run: Path, *extra, flags: tuple[str, ...] = ()) -> int:
    """``parauni train`` through the real command line."""
    return main(["train", CONFIG, *TINY, f"train.output_dir={run}", *extra, "--no-progress", *flags])


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny stage-I run with checkpoints at steps 2 and 4 (kept as a template: tests copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert train(run, "train.steps=4", "train.save_every=2") == 0
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_fresh_start_into_a_finished_run_is_refused_and_overwrite_moves_it_aside(finished, tmp_path, capsys,
                                                                                   caplog):
    """The survey's LOSS: a fresh run into a finished run's folder pruned its own checkpoint and kept the old run's
    newer ones beside its config and metrics."""
    run = copy_run(finished, tmp_path / "run")
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}
    capsys.readouterr()
    assert train(run, "train.steps=2", "train.save_every=2", "optim.lr=5e-3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert all(s in err[0] for s in ("--resume", "--overwrite", "train.output_dir", "checkpoint-0000004")), err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"} == before  # untouched
    # --overwrite: the earlier run is moved aside whole, said in a warning; the folder then holds the new run only
    with caplog.at_level(logging.WARNING):
        assert train(run, "train.steps=2", "train.save_every=2", "optim.lr=5e-3", flags=("--overwrite",)) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.previous-")]
    moved = f"moved the earlier training run (parauni train) in {run} to {aside[0]}"
    assert len(aside) == 1 and any(moved in r.getMessage() for r in caplog.records)
    assert [p.name for p in checkpoints(run)] == ["checkpoint-0000002"]
    assert [p.name for p in checkpoints(aside[0])] == ["checkpoint-0000002", "checkpoint-0000004"]
    assert "0.005" in (run / "config.yaml").read_text() and "0.005" not in (aside[0] / "config.yaml").read_text()
    # the option pair that cannot both apply, and --allow-config-change without --resume, are refused
    assert train(run, "train.steps=2", flags=("--overwrite", "--resume")) == 2
    assert "give one of them" in capsys.readouterr().err
    assert train(run, "train.steps=2", flags=("--allow-config-change",)) == 2
    assert "--allow-config-change applies to a resumed run only" in capsys.readouterr().err


def test_checkpoint_files_are_readable_by_others(finished):
    umask = current_umask()
    files = [p for p in (finished / "checkpoint-0000004").iterdir() if p.is_file()]
    files.append(finished / "trainable.safetensors")  # the run's final weights too
    assert "trainable.safetensors" in [p.name for p in files]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in files), \
        {p.name: oct(p.stat().st_mode) for p in files}


def test_grpo_fresh_start_into_another_run_is_refused_before_any_model(tmp_path):
    run = tmp_path / "grpo"
    old = run / "checkpoint-000006"
    old.mkdir(parents=True)
    (old / "grpo_state.json").write_text('{"epoch": 6}\n')
    cfg = load_grpo_config(ROOT / "configs" / "toy_grpo.yaml", ["model.source=tiny", f"train.output_dir={run}"])
    with pytest.raises(UsageError, match="--overwrite") as err:
        RLTrainer(cfg, progress=False)
    assert "checkpoint-000006" in str(err.value) and "--resume" in str(err.value)
    assert names(run) == ["checkpoint-000006"]
    RLTrainer(cfg, progress=False, overwrite=True)  # the earlier run moved aside, whole
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("grpo.previous-")]
    assert len(aside) == 1 and names(aside[0]) == ["checkpoint-000006"] and not (run / "checkpoint-000006").exists()


def make_checkpoint(out: Path, n: int, state_file: str = STATE_FILE) -> Path:
    folder = out / f"checkpoint-{n:07d}"
    folder.mkdir(parents=True)
    (folder / state_file).write_text(json.dumps({"step": n, "epoch": n}))
    return folder


def test_pruning_never_deletes_the_checkpoint_being_written(tmp_path):
    """A run resumed from an older checkpoint (or any writer) keeps the checkpoint it just wrote, whatever newer
    numbers the folder holds; only older ones are pruned."""
    for n in (2, 6, 8):
        make_checkpoint(tmp_path, n)
    current = make_checkpoint(tmp_path, 4)
    ck.prune_checkpoints(tmp_path, STATE_FILE, keep_last=1, current=current)
    assert names(tmp_path) == ["checkpoint-0000004", "checkpoint-0000006", "checkpoint-0000008"]
    # without a current checkpoint (the old behaviour) the newest numbers would win
    ck.prune_checkpoints(tmp_path, STATE_FILE, keep_last=1)
    assert names(tmp_path) == ["checkpoint-0000008"]


@pytest.mark.parametrize("state, key", [({}, "'step' is missing"), ({"step": "x"}, "'step' is \"x\""),
                                        ([1], "not a JSON object"), ({"step": 2, "samples_seen": -1},
                                                                     "'samples_seen' is -1")])
def test_a_damaged_trainer_state_is_named_with_its_key_and_the_fix(finished, tmp_path, capsys, caplog, state, key):
    run = copy_run(finished, tmp_path / "run")
    bad = run / "checkpoint-0000004" / STATE_FILE
    bad.write_text(json.dumps(state))
    # naming it: refused, with the file, the key and the older checkpoint to pass instead
    capsys.readouterr()
    assert train(run, "train.steps=4", "train.save_every=2", flags=(f"--resume={bad.parent}",)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(bad) in err and key in err and "checkpoint-0000002" in err, err
    # --resume: skipped with a warning naming it, the older one resumed (then the run goes on to step 4)
    with caplog.at_level(logging.WARNING):
        assert train(run, "train.steps=4", "train.save_every=2", flags=("--resume",)) == 0
    assert any(str(bad) in r.getMessage() and key in r.getMessage() for r in caplog.records)
    assert json.loads((run / "checkpoint-0000004" / STATE_FILE).read_text())["step"] == 4


def test_grpo_state_with_a_word_for_the_epoch_is_refused(tmp_path):
    folder = tmp_path / "checkpoint-000006"
    folder.mkdir()
    (folder / "grpo_state.json").write_text('{"epoch": "six"}')
    problems = cf.checkpoint_problems(folder)
    assert len(problems) == 1 and "grpo_state.json" in problems[0] and "'epoch' is \"six\"" in problems[0]
    with pytest.raises(cf.CorruptCheckpointError, match="start afresh without --resume"):
        cf.read_state(folder / "grpo_state.json")
    with pytest.raises(cf.CorruptCheckpointError, match="'epoch'"):
        ck.resume_path(tmp_path, True, "grpo_state.json")


def test_a_checkpoint_without_optimizer_state_is_skipped_naming_it(finished, tmp_path, caplog):
    run = copy_run(finished, tmp_path / "run")
    (run / "checkpoint-0000004" / "optimizer.bin").unlink()
    with caplog.at_level(logging.WARNING):
        assert train(run, "train.steps=4", "train.save_every=2", flags=("--resume",)) == 0
    assert any("optimizer.bin: missing" in r.getMessage() and "checkpoint-0000004" in r.getMessage()
               for r in caplog.records)
    assert (run / "checkpoint-0000004" / "optimizer.bin").is_file()  # made again by the resumed run


def test_a_metrics_row_with_a_word_for_the_step_is_dropped_on_resume(finished, tmp_path, caplog):
    run = copy_run(finished, tmp_path / "run")
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([rows[0], '{"step": "x"}', *rows[1:]]) + "\n")
    ck.remove_checkpoint(run / "checkpoint-0000004", STATE_FILE)  # the resume redoes steps 3 and 4
    with caplog.at_level(logging.WARNING):
        assert train(run, "train.steps=4", "train.save_every=2", flags=("--resume",)) == 0
    assert any("metrics.jsonl" in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_export_of_a_run_folder_names_the_corrupt_checkpoint_it_skips(finished, tmp_path, caplog):
    run = copy_run(finished, tmp_path / "run")
    (run / "trainable.safetensors").unlink()  # no final weights: the newest intact checkpoint is exported
    bad = run / "checkpoint-0000004" / "trainable.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    with caplog.at_level(logging.INFO):
        assert main(["export", str(run), "--out", str(tmp_path / "pipe")]) == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"skipping corrupt checkpoint {bad.parent}" in text and str(bad) in text
    assert "newest intact checkpoint" in text and "checkpoint-0000002" in text


def test_killed_writers_temporary_folders_are_cleaned_up(tmp_path):
    """A killed export or report leaves ``<out>.tmp-<pid>``; the next write of ``out`` removes those whose process
    is gone (and puts back a folder a kill left moved aside), never those of a running process."""
    import subprocess
    import sys

    from parauni.utils.atomic import atomic_folder

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    out = tmp_path / "pipe"
    (tmp_path / f"pipe.tmp-{dead}").mkdir()
    (tmp_path / f"pipe.old-{dead}").mkdir()
    (tmp_path / f"pipe.old-{dead}" / "model_index.json").write_text("{}")
    (tmp_path / "pipe.tmp-1").mkdir()  # PID 1 runs
    with atomic_folder(out) as tmp:
        assert (out / "model_index.json").is_file()  # the moved-aside folder was put back first
        (tmp / "a.txt").write_text("new")
    assert sorted(os.listdir(tmp_path)) == ["pipe", "pipe.tmp-1"]


def test_resume_auto_with_nothing_of_its_own_to_resume_is_a_fresh_start_and_checked_as_one(tmp_path):
    """``--resume auto`` into a folder holding only a finished run's weights, or another recipe's checkpoints, would
    start afresh beside them: refused as any fresh start is."""
    from parauni.utils.run_folder import claim_run_folder

    (tmp_path / "trainable.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="trainable.safetensors"):
        claim_run_folder(tmp_path, "auto", False, state_file=STATE_FILE)
    (tmp_path / "trainable.safetensors").unlink()
    make_checkpoint(tmp_path, 2)  # parauni train's
    with pytest.raises(UsageError, match="checkpoint-0000002"):
        claim_run_folder(tmp_path, "auto", False, state_file="grpo_state.json")
    assert claim_run_folder(tmp_path, "auto", False, state_file=STATE_FILE) is None  # its own: resumed
