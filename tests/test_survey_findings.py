"""What the survey of user mistakes and faults (``benchmarks/survey_nothing_lost.py``) found, each reproduced:

* Ctrl-C or SIGTERM that arrives after a command has finished, while Python shuts down (a fast toy evaluation is
  done in a second), ended in a ``KeyboardInterrupt`` traceback from an atexit handler, or a silent exit -15,
  after the command's own result. The console script ignores both once its command has returned.
* ``toy detector-accuracy --out r.md`` wrote its JSON to r.md and then its table over it.
* ``report --out notes.html`` replaced the user's notes.md and notes_files/ (its twin's names).
* ``--resume`` of a run already past ``train.steps`` / ``train.epochs`` trained nothing without a word.
* A ``metrics.jsonl`` of bytes that are not UTF-8 ended ``train --resume`` and ``report`` in a traceback, and so
  did a row with a 5000-digit number and a ``provenance.json`` holding a list (``toy eval``).
* ``base: toy_stage1.yaml`` in a config outside the shipped folder was not found; a YAML file holding one
  value ended in a traceback.
* A fresh ``train`` / ``rl`` into a folder of other files (an exported pipeline, the user's files) ran among them.
* ``export --out`` inside a checkpoint folder put the pipeline where pruning deletes it.
* ``eval geneval --metadata`` of a binary file ended in a traceback, and so did ``toy eval --model FILE`` and
  ``app --port 70000`` and ``analyze layers --prompts`` of a binary file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def test_an_interrupt_after_the_command_returned_is_ignored_not_a_traceback():
    """The signals are sent right after ``main()`` returns, which is where a late Ctrl-C lands."""
    code = ("import os, signal, sys, time; from parauni.cli import main\n"
            "sys.argv = ['parauni', 'toy', 'eval', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "sys.argv = ['parauni', 'eval', 'geneval', '--score-only', '/nonexistent/x']\n"
            "rc = main()\n"
            "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
            "print('finished', rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "finished 2" in r.stdout and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_a_library_call_of_main_leaves_the_callers_signal_handlers_alone():
    from parauni.cli import main

    before = signal.getsignal(signal.SIGINT)
    assert main(["eval", "geneval", "--score-only", "/nonexistent/x"]) == 2
    assert signal.getsignal(signal.SIGINT) is before


def test_detector_accuracy_out_md_is_refused_not_overwritten_by_its_table(tmp_path, capsys):
    """``--out r.md`` wrote the JSON to r.md, then the table over it (its .md twin is the same file)."""
    from parauni.cli import main

    out = tmp_path / "acc.md"
    assert main(["toy", "detector-accuracy", "--n", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "acc.json" in err and not out.exists(), err
    assert main(["toy", "detector-accuracy", "--n", "2", "--world", "v1", "--out", str(tmp_path / "acc")]) == 0
    assert (tmp_path / "acc").read_text().startswith("{") and (tmp_path / "acc.md").read_text().startswith("world")


def test_report_never_replaces_a_md_or_files_folder_that_is_not_its_own(tmp_path, capsys):
    """``report --out run/config.html`` replaced the user's run/config.md (its Markdown twin's name), and an
    existing config_files/ folder (its images' folder) was swapped out whole."""
    from parauni.cli import main

    (tmp_path / "notes.md").write_text("my notes")
    (tmp_path / "shots_files").mkdir()
    (tmp_path / "shots_files" / "a.png").write_bytes(b"mine")
    for name, kept in (("notes.html", "notes.md"), ("shots.html", "shots_files")):
        assert main(["report", str(tmp_path), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert kept in err and "another --out" in err, err
        assert not (tmp_path / name).exists()
    assert (tmp_path / "notes.md").read_text() == "my notes"
    assert (tmp_path / "shots_files" / "a.png").read_bytes() == b"mine"


def test_resuming_a_run_already_past_train_steps_says_nothing_is_left(tmp_path, caplog):
    """``--resume train.steps=2`` of a run at step 3 trained nothing and exited 0 without a word."""
    from parauni.cli import main

    run = tmp_path / "run"
    tiny = ["model.source=tiny", "data.resolution=16", "train.batch_size=2", "train.logger=none",
            "train.eval_geneval=false", "train.save_every=3", f"train.output_dir={run}"]
    config = str(ROOT / "configs" / "toy_stage1.yaml")
    assert main(["train", config, *tiny, "train.steps=3", "--no-progress"]) == 0
    caplog.clear()
    assert main(["train", config, *tiny, "train.steps=2", "--resume", "--no-progress"]) == 0
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("step 3" in m and "train.steps is 2" in m and "nothing is left to train" in m for m in said), said


def test_resuming_an_rl_run_already_past_train_epochs_says_nothing_is_left(tmp_path, caplog):
    from parauni.cli import main

    small = [str(ROOT / "configs" / "toy_grpo.yaml"), "prompts.per_epoch=2", "sampling.group_size=2",
             "sampling.steps=6", "optim.train_batch=2", "train.eval_geneval=false", "train.save_every=1",
             "train.logger=none", f"train.output_dir={tmp_path / 'rl'}", "--no-progress"]
    assert main(["rl", *small, "train.epochs=2"]) == 0
    caplog.clear()
    assert main(["rl", *small, "train.epochs=1", "--resume"]) == 0
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("epoch 2" in m and "train.epochs is 1" in m and "nothing is left" in m for m in said), said


def test_a_binary_metrics_log_is_dropped_with_a_warning_or_named_not_a_traceback(tmp_path, caplog):
    """A metrics.jsonl of bytes that are not UTF-8 ended ``train --resume`` and ``report`` in a
    UnicodeDecodeError traceback."""
    from parauni.cli.bad_input import bad_input_message
    from parauni.errors import UsageError
    from parauni.utils.checkpoints import truncate_jsonl
    from parauni.utils.jsonl import read_jsonl

    log = tmp_path / "metrics.jsonl"
    log.write_bytes(b'{"step": 1, "loss": 0.5}\n\x00\xff\xfe garbage\n{"step": 2, "loss": 0.4}\n')
    assert read_jsonl(log, skip_malformed=True) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]
    try:
        read_jsonl(log)
        raise AssertionError("a binary line was read")
    except UsageError as err:
        assert "metrics.jsonl" in str(err) and "line 2" in str(err) and "UTF-8" in str(err)
    assert truncate_jsonl(log, lambda row: row["step"] <= 1) == 2
    assert log.read_text() == '{"step": 1, "loss": 0.5}\n'
    assert any("line 2" in r.getMessage() for r in caplog.records)
    try:
        b"\xff".decode()
    except UnicodeDecodeError as err:
        assert "not UTF-8" in bad_input_message(err)


def test_a_provenance_record_that_is_not_an_object_and_a_huge_number_are_named(tmp_path):
    """``provenance.json`` holding ``[]`` ended ``toy eval`` in an AttributeError; a metrics row with a 5000-digit
    number ended ``report`` in Python's integer-digits ValueError."""
    import pytest

    from parauni.errors import UsageError
    from parauni.eval import provenance
    from parauni.utils.jsonl import parse_jsonl

    for text, what in (("[]", "holds a list"), ("\x00", "not valid JSON"), (b"\xff\xfe", "not valid JSON")):
        path = tmp_path / "provenance.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(UsageError, match=what):
            provenance.read(tmp_path)
    huge = '{"step": 1}\n{"step": 2, "loss": ' + "1" * 5000 + "}\n"
    with pytest.raises(UsageError, match="line 2: not valid JSON"):
        parse_jsonl(huge, "metrics.jsonl")
    assert parse_jsonl(huge, "metrics.jsonl", skip_malformed=True) == [{"step": 1}]


def test_a_child_config_in_any_folder_may_name_a_shipped_base_and_a_scalar_file_is_one_line(tmp_path):
    """``base: toy_stage1.yaml`` in a config of the user's own folder was "not found" (the troubleshooting page's
    example reads that way); a YAML file holding one value (``42``) ended in OmegaConf's OSError traceback."""
    import pytest

    from parauni.errors import ConfigError
    from parauni.train.config import load_config

    child = tmp_path / "mine.yaml"
    child.write_text("base: toy_stage1.yaml\ntrain: {steps: 7}\n")
    cfg = load_config(child, [])
    assert cfg.train.steps == 7 and cfg.train.save_every == 200  # the rest from the shipped toy_stage1.yaml
    (tmp_path / "toy_stage1.yaml").write_text("base: toy_stage2.yaml\n")  # a file beside it wins
    assert load_config(child, []).train.stage == "II"
    child.write_text("base: no_such_config.yaml\n")
    with pytest.raises(FileNotFoundError, match="neither a file beside it"):
        load_config(child, [])
    child.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(child, [])


def test_a_fresh_run_into_a_folder_of_other_files_is_refused(tmp_path, capsys):
    """``train.output_dir`` naming an exported pipeline or a folder of the user's files started a run among them
    (its config.yaml, logs and weights beside model_index.json or thesis.tex); --overwrite does not move them."""
    from parauni.cli import main

    config = str(ROOT / "configs" / "toy_stage1.yaml")
    tiny = ["model.source=tiny", "data.resolution=16", "train.batch_size=2", "train.logger=none",
            "train.eval_geneval=false", "train.steps=1", "--no-progress"]
    for name in ("model_index.json", "thesis.tex"):
        out = tmp_path / name.split(".")[0]
        out.mkdir()
        (out / name).write_text("mine")
        for flags in ((), ("--overwrite",)):
            assert main(["train", config, *tiny, f"train.output_dir={out}", *flags]) == 2
            err = capsys.readouterr().err
            assert name in err and "not a run's" in err, err
        assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == [name]
    started = tmp_path / "started"  # a run killed before its first checkpoint: started afresh, as before
    started.mkdir()
    (started / "config.yaml").write_text("train: {steps: 1}\n")
    (started / "metrics.jsonl").write_text("")
    assert main(["train", config, *tiny, f"train.output_dir={started}"]) == 0


def test_export_into_a_checkpoint_folder_is_refused(tmp_path, capsys):
    """``export run/checkpoint-4 --out run/checkpoint-4/pipe`` wrote the pipeline where the run's pruning deletes
    it with the checkpoint."""
    from parauni.cli import main

    ckpt = tmp_path / "run" / "checkpoint-0000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"step": 4}')
    assert main(["export", str(ckpt), "--out", str(ckpt / "pipe")]) == 2
    err = capsys.readouterr().err
    assert "inside the checkpoint folder" in err and "keep_last" in err, err
    assert not (ckpt / "pipe").exists()


def test_binary_geneval_metadata_is_one_line_naming_it(tmp_path):
    """``eval geneval --metadata`` of a PNG renamed .jsonl ended in a UnicodeDecodeError traceback."""
    import pytest

    from parauni.errors import UsageError
    from parauni.eval.geneval_schema import metadata_lines

    path = tmp_path / "meta.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00garbage")
    with pytest.raises(UsageError, match="meta.jsonl, line 1: not UTF-8"):
        metadata_lines(path)


def test_a_model_that_is_a_file_is_one_line(tmp_path):
    """``toy eval --model FILE`` ended in diffusers' ValueError traceback."""
    import pytest

    from parauni.errors import UsageError
    from parauni.pipelines.loading import load_pipeline

    path = tmp_path / "model.safetensors"
    path.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a model"):
        load_pipeline(str(path))


def test_app_port_over_65535_is_one_line(capsys):
    """``parauni app --port 70000`` ended in socket's OverflowError traceback."""
    from parauni.cli import main

    assert main(["app", "--model", "tiny", "--port", "70000"]) == 2
    assert "at most 65535" in capsys.readouterr().err


def test_a_binary_prompt_file_of_analyze_is_one_line(tmp_path):
    import pytest

    from parauni.analysis import read_prompts
    from parauni.errors import UsageError

    path = tmp_path / "p.txt"
    path.write_bytes(b"\xff\xfe\x00\x01" * 8)
    with pytest.raises(UsageError, match="p.txt' is not UTF-8 text"):
        read_prompts(path)
