"""The process runner of ``parauni toy reproduce``: each step a ``parauni`` command in its own process, several
at a time in dependency order, each logged to its own file."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .jobs import Job, _parauni


def execute(jobs: Sequence[Job], logs: Path, workers: int = 1, dry_run: bool = False,
            echo: Callable[[str], None] = print) -> dict[str, float]:
    """Run the jobs whose output is missing, ``workers`` at a time, in dependency order; returns each run
    job's wall time.  A failed job stops the run (the running ones finish) and names its log."""
    pending = [j for j in jobs if not j.done.is_file()]
    skipped = [j.name for j in jobs if j.done.is_file()]
    if skipped:
        echo(f"[reproduce] {len(skipped)} step(s) already done: {', '.join(skipped)}")
    if dry_run:
        for j in pending:
            echo(shlex.join(["parauni", *j.argv[3:]] if j.argv[:3] == _parauni() else j.argv))
        return {}
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    names = {j.name for j in pending}
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    finished: set[str] = set()
    times: dict[str, float] = {}
    failed: str | None = None
    total = len(pending)
    while pending or running:
        ready = [j for j in pending if all(a in finished or a not in names for a in j.after)]
        while ready and len(running) < workers and failed is None:
            job = ready.pop(0)
            pending.remove(job)
            if job.before_run:
                job.before_run()
            log = open(logs / f"{job.name}.log", "w")
            echo(f"[reproduce] start {job.name} ({len(finished) + len(running) + 1}/{total}); "
                 f"log {logs / job.name}.log")
            running[job.name] = (subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env),
                                 time.perf_counter(), log)
        if failed is not None and not running:
            break
        if not running and pending:
            raise RuntimeError(f"steps {[j.name for j in pending]} wait on steps that did not run")
        time.sleep(0.5)
        for name, (proc, t0, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            times[name] = time.perf_counter() - t0
            job = next(j for j in jobs if j.name == name)
            if proc.returncode != 0 or not job.done.is_file():
                failed = failed or name
                echo(f"[reproduce] FAILED {name} (exit {proc.returncode}); see {logs / name}.log")
            else:
                finished.add(name)
                echo(f"[reproduce] done  {name} in {times[name]:.0f}s")
    if failed is not None:
        raise RuntimeError(f"step {failed} failed; fix it and run the same command again to continue "
                           f"(finished steps are kept); log: {logs / failed}.log")
    return times
