"""Nothing lost, nothing silently wrong: exports are written atomically and never replace another model
unasked."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from parauni.cli import main
from parauni.errors import UsageError
from parauni.train.config import load_config
from parauni.train.trainer import Trainer
from parauni.utils.atomic import atomic_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "toy_stage1.yaml")
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false", "train.steps=1", "train.save_every=1"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny stage I runs whose weights differ (their seeds)."""
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (0, 1):
        run = root / f"run{seed}"
        Trainer(load_config(CONFIG, [*TINY, f"train.output_dir={run}", f"train.seed={seed}"]), progress=False).run()
        runs.append(run)
    return runs


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_atomic_folder_keeps_the_old_folder_on_failure(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        assert tmp.name == f"out.tmp-{os.getpid()}" and tmp.parent == tmp_path
        (tmp / "a.txt").write_text("first")
    assert (out / "a.txt").read_text() == "first"
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with atomic_folder(out) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_is_atomic_readable_and_never_replaces_another_model(two_runs, tmp_path, capsys, monkeypatch):
    run0, run1 = two_runs
    out = tmp_path / "pipe"
    assert main(["export", str(run0), "--out", str(out)]) == 0
    # weight files are readable by others, as ordinary new files are (safetensors writes them 0600)
    umask = os.umask(0o022)
    os.umask(umask)
    weights = list(out.rglob("*.safetensors"))
    assert weights and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in weights), \
        [oct(p.stat().st_mode) for p in weights]
    first = _snapshot(out)
    # the same export again: identical, replaced silently
    assert main(["export", str(run0), "--out", str(out)]) == 0
    assert _snapshot(out) == first
    # another model: refused, the folder untouched, no temporary folder left
    capsys.readouterr()
    assert main(["export", str(run1), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "already holds another model" in last and "--overwrite" in last and "safetensors" in last, err
    assert _snapshot(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    # an export cut short (Ctrl-C while writing the weights) leaves the previous folder as it was
    from parauni.pipelines import ParaUniPipeline

    real_save = ParaUniPipeline.save_pretrained

    def interrupted(self, folder, *args, **kwargs):
        real_save(self, folder, *args, **kwargs)
        next(Path(folder).rglob("*.safetensors")).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(ParaUniPipeline, "save_pretrained", interrupted)
    capsys.readouterr()
    assert main(["export", str(run1), "--out", str(out), "--overwrite"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted; --out was left as it was: rerun the command")
    assert _snapshot(out) == first and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    monkeypatch.setattr(ParaUniPipeline, "save_pretrained", real_save)
    # --overwrite replaces it
    assert main(["export", str(run1), "--out", str(out), "--overwrite"]) == 0
    assert _snapshot(out) != first and sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    ParaUniPipeline.from_pretrained(out)


def test_export_refuses_a_file_and_a_folder_of_other_files(two_runs, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    assert main(["export", str(two_runs[0]), "--out", str(afile)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--out {str(afile)!r} is a file; give a folder path")
    assert afile.read_text() == "keep me"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    assert main(["export", str(two_runs[0]), "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds other files (todo.txt)" in err and "--overwrite" in err, err
    assert (other / "todo.txt").read_text() == "mine" and sorted(p.name for p in other.iterdir()) == ["todo.txt"]
    for inside in (two_runs[0], two_runs[0].parent):  # never replaced, even with --overwrite
        assert main(["export", str(two_runs[0]), "--out", str(inside), "--overwrite"]) == 2
        assert "holds the checkpoint" in capsys.readouterr().err
    assert (two_runs[0] / "trainable.safetensors").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(two_runs[0]), "--out", str(empty)]) == 0
    assert (empty / "model_index.json").is_file()


# -- one run per output folder ------------------------------------------------------------------------------------
HOLD = """
import sys, time
from parauni.utils.locks import hold_folder_lock
with hold_folder_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held_folder(tmp_path):
    """A folder whose lock another process holds; yields (folder, that process)."""
    import subprocess
    import sys

    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_process_is_refused_naming_the_first_and_the_lock_dies_with_it(held_folder, capsys, tmp_path):
    from parauni.errors import UsageError
    from parauni.utils.locks import LOCK_FILE, hold_folder_lock

    folder, proc = held_folder
    assert (folder / LOCK_FILE).read_text().strip() == f"{proc.pid} run"
    with pytest.raises(UsageError) as err, hold_folder_lock(folder):
        pass
    assert f"PID {proc.pid}" in str(err.value) and str(folder) in str(err.value)
    # `parauni train` into that folder: one line naming the other run, nothing written
    assert main(["train", CONFIG, *TINY, f"train.output_dir={folder}", "--no-progress"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("parauni train: error:") and f"PID {proc.pid}" in line and str(folder) in line, line
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]
    # `parauni eval geneval` / `eval dpg` / `eval wise` into it: the same
    wise = tmp_path / "wise.json"
    wise.write_text(json.dumps([{"Prompt": "a red circle", "Explanation": "", "Category": "Cultural knowledge",
                                 "Subcategory": "x", "prompt_id": 1}]))
    for argv in (["eval", "geneval", "--model", "prior", "--limit", "1", "--images-per-prompt", "1"],
                 ["eval", "dpg", "--model", "prior", "--limit", "1"],
                 ["eval", "wise", "--model", "prior", "--prompts", str(wise), "--limit", "1"]):
        assert main([*argv, "--steps", "1", "--out", str(folder)]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"in use by another run (PID {proc.pid}" in line, line  # the holder's kind
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]
    # the holder killed (no clean-up of its own): the OS released the lock
    proc.kill()
    proc.wait()
    with hold_folder_lock(folder) as locked:
        assert locked == folder and (folder / LOCK_FILE).read_text().strip() == f"{os.getpid()} run"
    with hold_folder_lock(folder, "evaluation"), pytest.raises(UsageError) as err:  # another process asks
        _try_lock_in_another_process(folder)
    assert f"in use by another evaluation (PID {os.getpid()}" in str(err.value)


def _try_lock_in_another_process(folder):
    """Ask for ``folder``'s lock from a fresh interpreter; re-raise its refusal here as a UsageError."""
    import subprocess
    import sys

    code = ("import sys\nfrom parauni.utils.locks import hold_folder_lock\ntry:\n    hold_folder_lock(sys.argv[1])"
            ".acquire()\nexcept Exception as err:\n    print(err)\n    sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        raise UsageError(proc.stdout.strip())
    assert proc.returncode == 0, proc.stderr


def test_the_lock_is_reentrant_and_leaves_no_folder_when_nothing_was_written(tmp_path):
    from parauni.utils.locks import hold_folder_lock

    folder = tmp_path / "new"
    with hold_folder_lock(folder), hold_folder_lock(folder):  # one process: re-entrant
        assert folder.is_dir()
    assert not folder.exists()


# -- bad input is one line, bugs keep their traceback, Ctrl-C says how to continue --------------------------------
def test_a_diverging_run_is_one_line_not_a_traceback(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", CONFIG, *TINY, "train.steps=2", "optim.lr=1e30", f"train.output_dir={run}",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("parauni train: error: non-finite loss") and "lower optim.lr" in err[-1], err
    assert not any("Traceback" in line or "bug" in line for line in err), err


def test_a_bug_keeps_its_traceback_with_a_line_asking_for_a_report(tmp_path, capsys, monkeypatch):
    import parauni.generate

    def bug(args):
        int("not a number")  # a ValueError that is a bug, not bad input

    monkeypatch.setattr(parauni.generate, "run_generate", bug)
    with pytest.raises(ValueError, match="not a number"):
        main(["generate", "--model", "tiny", "--prompt", "a", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "internal error: this is a bug in parauni" in err and "report it" in err and "error: invalid" not in err

    def bad_key(args):
        return {}["missing"]  # a KeyError from a bug

    monkeypatch.setattr(parauni.generate, "run_generate", bad_key)
    with pytest.raises(KeyError):
        main(["generate", "--model", "tiny", "--prompt", "a", "--out", str(tmp_path)])
    assert "internal error" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path, capsys, monkeypatch):
    import parauni.eval.geneval_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert main(["train", CONFIG, *TINY, f"train.output_dir={tmp_path / 'run'}", "--no-progress"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "parauni train: interrupted; continue from the newest checkpoint with the same command plus --resume"
    monkeypatch.setattr(parauni.eval.geneval_command, "generate_geneval", interrupted)
    assert main(["eval", "geneval", "--model", "prior", "--limit", "1", "--images-per-prompt", "1", "--steps", "1",
                 "--out", str(tmp_path / "geneval")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "parauni eval: interrupted; finished images are kept: rerun the same command with --resume to continue"


def _default_sigint():
    """In the child: SIGINT back to its default action. A test run started in the background by a shell without job
    control (`make test &` in a script, some CI runners) ignores SIGINT, the child inherits that, and Python keeps an
    inherited ignore at start-up, so Ctrl-C would never reach the run (as the shell intends for background jobs)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_a_training_run_exits_130_with_one_line(tmp_path):
    """A real Ctrl-C (SIGINT) to `parauni train` in its own process."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "parauni", "train", CONFIG, *TINY, "train.steps=100000",
                             "train.save_every=100000", f"train.output_dir={run}", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_default_sigint)
    try:
        deadline = time.time() + 240
        # metrics.jsonl is opened right before the training loop: wait for it, then a little longer, so that the
        # signal lands inside the loop (a signal during start-up, while TensorBoard's writer starts, is another case)
        while not (run / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("parauni train: interrupted; continue from the newest checkpoint with "
                                            "the same command plus --resume"), err


# -- sizes and seeds out of range, a quiet load ---------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["generate", "--model", "tiny", "--prompt", "a"],
    ["eval", "geneval", "--model", "prior", "--limit", "1", "--images-per-prompt", "1"],
])
def test_a_seed_over_64_bits_is_refused_before_anything_is_written(tmp_path, capsys, argv):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(out), "--seed", "99999999999999999999"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("argument --seed: expected an integer >= 0 and <= 2**63-1 (9223372036854775807), got "
                        "'99999999999999999999' (see '" + " ".join(["parauni", *argv[:2 if argv[0] == "eval" else 1]])
                        + " --help')"), err
    assert not out.exists()  # no provenance.json, no folder
    assert main(["train", CONFIG, *TINY, f"train.output_dir={out}", "train.seed=99999999999999999999"]) == 2
    assert "train.seed: expected an integer >= 0 and <= 2**63-1" in capsys.readouterr().err
    assert not out.exists()


def test_generate_refuses_sizes_far_beyond_the_model_before_allocating(tmp_path, capsys, tiny_pipe):
    from parauni.generate import check_size

    native = tiny_pipe.transformer.config.sample_size * tiny_pipe.vae_scale_factor
    out = tmp_path / "o"
    assert main(["generate", "--model", "tiny", "--prompt", "a", "--out", str(out), "--height", "100000",
                 "--width", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"parauni generate: error: --height 100000 and --width 100000: over 4x this model's native "
                   f"{native}px side (at most {4 * native}); give a smaller size, or pass --force to try anyway")
    assert not out.exists()
    check_size(tiny_pipe, 4 * native, None)  # 4x is allowed
    with pytest.raises(UsageError, match="--width"):
        check_size(tiny_pipe, None, 4 * native + tiny_pipe.vae_scale_factor)
    check_size(tiny_pipe, 100000, 100000, force=True)


def test_loading_an_export_gives_no_dtype_deprecation_warning(two_runs, tmp_path):
    import warnings

    import torch

    from parauni.pipelines.loading import load_pipeline

    assert main(["export", str(two_runs[0]), "--out", str(tmp_path / "pipe")]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = load_pipeline(str(tmp_path / "pipe"), dtype="bf16")
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.conditioner.dtype == torch.bfloat16


def test_a_pipeline_folder_missing_a_weight_file_is_one_line(two_runs, tmp_path, capsys):
    """diffusers' OSError for a broken folder is bad input (not a bug): one line naming the fix."""
    pipe = tmp_path / "pipe"
    assert main(["export", str(two_runs[0]), "--out", str(pipe)]) == 0
    next((pipe / "transformer").glob("*.safetensors")).unlink()
    capsys.readouterr()
    assert main(["generate", "--model", str(pipe), "--prompt", "a", "--out", str(tmp_path / "o")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"parauni generate: error: could not load the pipeline {str(pipe)!r}") and \
        "transformer" in line and line.endswith("write the folder again (ParaUniPipeline.save_pretrained or "
                                                "`parauni export`)"), line


def test_which_errors_are_bad_input():
    from parauni.cli.bad_input import bad_input_message
    from parauni.errors import ConfigError, DivergedError

    assert bad_input_message(UsageError("--x: bad")) == "--x: bad"
    assert bad_input_message(DivergedError("non-finite loss")) == "non-finite loss"
    assert bad_input_message(ConfigError("optim.lr")) == "optim.lr"
    assert bad_input_message(PermissionError(13, "Permission denied", "/x")) == \
        "'/x': permission denied (EACCES); give a path you can write (or read)"
    for bug in (ValueError("math domain error"), KeyError("missing"), OSError("bad fd"), TypeError("x"),
                RuntimeError("shapes do not match")):
        assert bad_input_message(bug) is None, bug  # a traceback and a bug-report line
