"""The user's environment is not a bug: a read-only folder (EROFS), a full disk (ENOSPC), a file where a folder is
expected (ENOTDIR) give one line with the path and the errno's name, exit status 2, and no partial ``.tmp`` left;
Ctrl-C while parauni is still loading and SIGTERM during a run end with one line (130 / 143), the last complete
checkpoint kept.

Real faults where the system allows: a read-only or a tiny tmpfs (``mount``, as root). Elsewhere the same
``OSError`` is raised at the real write calls (``os.mkdir`` / ``os.open`` / ``open``), which is what is under
test: how our writers and the command line treat it."""

from __future__ import annotations

import builtins
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parauni.cli import main

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")
CONFIG = str(ROOT / "configs" / "toy_stage1.yaml")
TINY = ["model.source=tiny", "data.resolution=16", "train.batch_size=4", "train.logger=none",
        "train.eval_geneval=false"]


def _mount(folder: Path, options: str) -> bool:
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=10)


def _inject(monkeypatch, root: Path, code: int) -> None:
    """Make every write under ``root`` fail with ``code`` at the os level (where no tmpfs can be mounted)."""
    prefix = str(root)

    def guard(fn, is_write):
        def wrapped(path, *args, **kwargs):
            if str(path).startswith(prefix) and is_write(args, kwargs):
                raise OSError(code, os.strerror(code), str(path))
            return fn(path, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "mkdir", guard(os.mkdir, lambda a, k: True))
    monkeypatch.setattr(os, "open", guard(os.open, lambda a, k: bool((a[0] if a else k.get("flags", 0))
                                                                     & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))))
    monkeypatch.setattr(builtins, "open", guard(builtins.open, lambda a, k: any(
        c in (a[0] if a else k.get("mode", "r")) for c in "wax+")))


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """An empty folder on a read-only file system."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if _mount(folder, "size=1m,ro"):
        yield folder
        _umount(folder)
    else:
        _inject(monkeypatch, folder, errno.EROFS)
        yield folder


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err) and "internal error" not in "\n".join(err), err
    return err[-1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny run and its export (for the commands that read one)."""
    root = tmp_path_factory.mktemp("exported")
    run = root / "run"
    assert main(["train", CONFIG, *TINY, "train.steps=1", "train.save_every=1", f"train.output_dir={run}",
                 "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(root / "pipe")]) == 0
    return run, root / "pipe"


def test_a_read_only_folder_is_one_line_naming_the_path_and_erofs(read_only, exported, capsys):
    run, pipe = exported
    commands = {
        "train": ["train", CONFIG, *TINY, "train.steps=1", f"train.output_dir={read_only / 'run'}", "--no-progress"],
        "generate": ["generate", "--model", str(pipe), "--prompt", "a red circle", "--out", str(read_only / "g"),
                     "--steps", "1", "--no-progress"],
        "export": ["export", str(run), "--out", str(read_only / "pipe")],
        "report": ["report", str(run), "--out", str(read_only / "r.html")],
        "toy eval": ["toy", "eval", "--model", "prior", "--out", str(read_only / "te"), "--limit", "1",
                     "--images-per-prompt", "1", "--steps", "1"],
        "eval geneval": ["eval", "geneval", "--model", "prior", "--out", str(read_only / "ge"), "--limit", "1",
                         "--images-per-prompt", "1", "--steps", "1"],
    }
    for name, argv in commands.items():
        capsys.readouterr()
        assert main(argv) == 2, name
        line = one_line(capsys)
        assert "EROFS" in line and str(read_only) in line and "read-only" in line, (name, line)
    assert os.listdir(read_only) == []


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_tmp(tmp_path, monkeypatch, capsys):
    """The survey found a traceback and a 1.8 MB ``checkpoint-*.tmp`` left behind."""
    full = tmp_path / "full"
    full.mkdir()
    mounted = _mount(full, "size=200k")
    try:
        if not mounted:  # the checkpoint's own files: the first write of the caller's part fails as a full disk would
            from parauni.train import trainer

            def no_space(cfg, path):
                Path(path).write_bytes(b"x" * 10)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

            monkeypatch.setattr(trainer, "save_config", no_space)
        run = full / "run"
        assert main(["train", CONFIG, *TINY, "train.steps=2", "train.save_every=1", f"train.output_dir={run}",
                     "--no-progress"]) == 2
        line = one_line(capsys)
        assert "ENOSPC" in line and str(run) in line and "free some space" in line, line
        assert not [p.name for p in run.iterdir() if p.name.startswith("checkpoint-")]
    finally:
        if mounted:
            _umount(full)


def test_a_file_where_a_folder_is_expected_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", CONFIG, *TINY, "train.steps=1", f"train.output_dir={blocker / 'run'}",
                 "--no-progress"]) == 2
    line = one_line(capsys)
    assert "ENOTDIR" in line and str(blocker / "run") in line, line


def test_other_os_errors_of_our_writes_are_environment_errors():
    from parauni.cli.bad_input import bad_input_message

    for code, name in ((errno.EEXIST, "EEXIST"), (errno.EDQUOT, "EDQUOT"), (errno.EIO, "EIO")):
        message = bad_input_message(OSError(code, os.strerror(code), "/data/run/x"))
        assert message.startswith("'/data/run/x': " + name), message
    # safetensors (Rust) gives the errno in its text only
    message = bad_input_message(RuntimeError("Error while serializing: IoError(Os { code: 30, kind: "
                                             "ReadOnlyFilesystem, message: \"Read-only file system\" }) (os error 30)"))
    assert message is not None and "EROFS" in message
    assert bad_input_message(ValueError("a bug")) is None and bad_input_message(KeyError("step")) is None


def _cli(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    code = "import sys; from parauni.cli import main; sys.exit(main(sys.argv[1:]))"
    # SIGINT as a terminal leaves it (a process started with SIGINT ignored, as by `cmd &` in a script, keeps
    # ignoring it, as it should)
    return subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=env, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_while_loading_is_one_line_and_130():
    """The first seconds of every command are spent importing torch and transformers."""
    p = _cli("train", CONFIG, *TINY, "train.output_dir=/nonexistent/never-written")
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, (p.returncode, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("parauni"), err
    assert "interrupted" in err


def test_sigterm_stops_a_run_like_ctrl_c_keeping_its_checkpoint(tmp_path):
    """What a scheduler sends before a kill: one line saying how to resume, exit 143, the last complete checkpoint
    kept and no partial one."""
    run = tmp_path / "run"
    p = _cli("train", CONFIG, *TINY, "train.steps=100000", "train.save_every=2", f"train.output_dir={run}",
             "--no-progress")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (run.is_dir() and any(
                n.startswith("checkpoint-") and not n.endswith(".tmp") for n in os.listdir(run))):
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        err = p.communicate(timeout=120)[1]
    finally:
        p.kill()
    assert p.returncode == 143, (p.returncode, err)
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "terminated (SIGTERM)" in last and "--resume" in last, err
    done = [n for n in os.listdir(run) if n.startswith("checkpoint-")]
    assert done and not [n for n in done if n.endswith(".tmp")], done
