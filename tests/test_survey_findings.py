"""What the survey of user mistakes and faults (``benchmarks/survey_nothing_lost.py``) found, each reproduced:

* Ctrl-C or SIGTERM that arrives after a command has finished, while Python shuts down (a fast toy evaluation is
  done in a second), ended in a ``KeyboardInterrupt`` traceback from an atexit handler, or a silent exit -15,
  after the command's own result. The console script ignores both once its command has returned."""

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
