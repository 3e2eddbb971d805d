"""Survey of "nothing lost": run the real ``parauni`` command on hundreds of user mistakes and faults, classify each.

Each case runs one or more ``parauni`` commands as subprocesses (``OMP_NUM_THREADS=1``, tiny sizes: the toy
models, ``train.steps`` 2..4, one or two RL epochs of 2 prompts x 2 images, ``--limit 1``), one at a time, in its
own folder under ``--work`` that holds copies of small fixtures (a finished stage-I run, a finished RL run, a toy
GenEval folder, an exported pipeline) built once. A step may be killed (SIGINT / SIGTERM / SIGKILL) after a delay
or once a file appears, or run beside another command on the same folder. Every file present before a case is
hashed; the outcome is classified automatically:

- HANG: a step ran past ``--timeout`` seconds;
- TRACEBACK: ``Traceback (most recent call last)`` or ``internal error`` in a step's output;
- LOSS: the content of a file the user had is gone from the case folder (moved aside is fine) or changed,
  unless the case asked for that file to change;
- SILENT: exit status 0 where a one-line refusal was expected, or the case's own check of the result failed
  (a setting ignored, a wrong number of images, ...);
- unclear: a step that should have worked failed with one line, or a stop with an unexpected status;
- OK: otherwise.

Run from the repository root (about 15-25 minutes of one CPU core)::

    PYTHONPATH=$PWD/src OMP_NUM_THREADS=1 python benchmarks/survey_nothing_lost.py \
        [--only SUBSTRING] [--work /tmp/parauni-survey] [--table benchmarks/results/survey_nothing_lost.md]

The table (case, command, expected, outcome, class) and the counts are written to ``--table`` with the commit the
survey ran at, after every case (a survey cut short leaves its rows). ``--src DIR`` runs another checkout's
``src/`` (e.g. ``git archive`` of an older commit, for counts before a fix). ``--rerun TABLE`` runs again the
cases that were not OK in TABLE, those named by ``--also``, and those TABLE lacks, and keeps TABLE's other rows
(each row's class says where it ran); ``--rerun TABLE --missing`` only goes on with the cases TABLE lacks.
The cases are listed in ``benchmarks/survey_cases_list.py`` and ``survey_cases_list2.py`` (helpers in
``survey_cases.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from survey_cases import FIXTURES, Case, Step  # noqa: E402
from survey_cases_list import all_cases  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).parent / "parauni"
PARAUNI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "parauni"]
ORDER = ["HANG", "TRACEBACK", "LOSS", "SILENT", "unclear", "OK"]


SRC = ROOT / "src"


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")
    env.pop("PARAUNI_PLUGINS", None)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha1 of every regular file under ``folder`` (symlinks not followed)."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.name != ".lock":
            try:
                out[str(p.relative_to(folder))] = hashlib.sha1(p.read_bytes()).hexdigest()
            except OSError:
                pass
    return out


def _fmt(argv: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)).replace("{root}", str(ROOT)) for a in argv]


def _wait_for(proc: subprocess.Popen, d: Path, when: float | str, limit: float) -> bool:
    """Wait ``when`` seconds, or until the glob ``when`` (relative to ``d``) matches; False when it never did."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            return False
        if isinstance(when, float | int):
            if time.monotonic() - t0 >= when:
                return True
        elif list(d.glob(when)):
            return True
        time.sleep(0.05)
    return False


def _run_step(step: Step, d: Path, timeout: float) -> tuple[subprocess.Popen, Path]:
    log = d.parent / f"{d.name}.{id(step)}.log"
    fh = log.open("wb")
    proc = subprocess.Popen(PARAUNI + _fmt(step.argv, d), cwd=step.cwd.replace("{d}", str(d)) if step.cwd else ROOT,
                            env=_env(step.env), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    fh.close()
    if step.kill is not None:
        sig, when = step.kill
        if _wait_for(proc, d, when, timeout):
            proc.send_signal(sig)
    return proc, log


def _classify_step(step: Step, rc: int | None, out: str, d: Path) -> tuple[str, str]:
    last = next((ln for ln in reversed(out.strip().splitlines()) if ln.strip()), "")
    if rc is None:
        return "HANG", "timed out"
    if "Traceback (most recent call last)" in out or "internal error" in out:
        return "TRACEBACK", last[:160]
    if step.expect == "refuse":
        if rc == 0:
            return "SILENT", "accepted (exit 0): " + last[:120]
        if rc != 2:
            return "unclear", f"exit {rc}: {last[:120]}"
        return "OK", f"refused: {last[:140]}"
    if step.expect == "stop":
        if rc in (130, 143, 2, 0) or rc < 0 and step.kill and step.kill[0] == signal.SIGKILL:
            return "OK", f"stopped (exit {rc}): {last[:120]}"
        return "unclear", f"exit {rc}: {last[:120]}"
    if step.expect == "either":
        if rc in (0, 2):
            return "OK", f"exit {rc}: {last[:140]}"
        return "unclear", f"exit {rc}: {last[:120]}"
    if step.expect == "bg":
        return "OK", f"exit {rc}: {last[:120]}"
    if rc != 0:
        return "unclear", f"failed (exit {rc}): {last[:120]}"
    return "OK", f"ok: {last[:140]}"


def run_case(case: Case, work: Path, timeout: float) -> tuple[str, str]:
    d = work / "cases" / case.name
    if d.exists():
        subprocess.run(["chmod", "-R", "u+w", str(d)], check=False)
        shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    for fx in case.fixtures:
        shutil.copytree(work / "fixtures" / fx, d / fx, symlinks=True)
    if case.setup:
        case.setup(d)
    before = _snapshot(d)
    results: list[tuple[str, str]] = []
    running: list[tuple[Step, subprocess.Popen, Path]] = []
    for step in case.steps:
        proc, log = _run_step(step, d, timeout)
        running.append((step, proc, log))
        if step.background:
            _wait_for(proc, d, step.then_after, timeout)
            continue
        for st, pr, lg in running:
            if st.background and st is not step:  # a writer beside the step under test: stopped when it is done
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    pass
                if pr.poll() is None:
                    pr.send_signal(signal.SIGINT)
            try:
                rc = pr.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pr.pid, signal.SIGKILL)
                pr.wait()
                rc = None
            results.append(_classify_step(st, rc, lg.read_text(errors="replace"), d))
        running = []
    after = _snapshot(d)  # before the teardown, which unmounts a case's file system
    if case.teardown:
        case.teardown(d)
    have = set(after.values())
    lost = [p for p, h in before.items() if h not in have and not any(Path(p).match(g) for g in case.may_change)]
    if lost:
        results.append(("LOSS", "gone or changed: " + ", ".join(sorted(lost)[:3])))
    if case.check and not any(c in ("HANG", "TRACEBACK") for c, _ in results):
        try:
            why = case.check(d)
        except Exception as err:  # noqa: BLE001 - a result the check cannot even read is a wrong result
            why = f"check failed: {type(err).__name__}: {err}"
        if why:
            results.append(("SILENT", why))
    cls = min((c for c, _ in results), key=ORDER.index, default="OK")
    notes = " / ".join(n for c, n in results if c == cls) if cls != "OK" else results[-1][1] if results else ""
    return cls, notes


def build_fixtures(work: Path, timeout: float) -> None:
    fx = work / "fixtures"
    for name, (argv, post) in FIXTURES.items():
        if (fx / name / ".done").exists():
            continue
        shutil.rmtree(fx / name, ignore_errors=True)
        (fx / name).parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(PARAUNI + _fmt(argv, fx), cwd=ROOT, env=_env({}), capture_output=True, text=True,
                           timeout=timeout * 2)
        if r.returncode != 0:
            raise SystemExit(f"fixture {name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        if post:
            post(fx / name)
        (fx / name / ".done").write_text("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="run only the cases whose name contains this")
    ap.add_argument("--work", default="/tmp/parauni-survey")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--table", default=str(ROOT / "benchmarks/results/survey_nothing_lost.md"))
    ap.add_argument("--rerun", default="", help="a table written before: run again its cases that were not OK, "
                    "those named with --also and the cases it lacks; the new table keeps its other rows")
    ap.add_argument("--missing", action="store_true", help="with --rerun: only the cases the table lacks (a run "
                    "cut short goes on)")
    ap.add_argument("--also", nargs="*", default=[], help="with --rerun: also the cases whose name contains one")
    ap.add_argument("--src", default="", help="run the parauni of this src/ folder (default: the repository's)")
    args = ap.parse_args()
    global SRC
    SRC = Path(args.src).resolve() if args.src else SRC
    work = Path(args.work)
    build_fixtures(work, args.timeout)
    cases = [c for c in all_cases() if args.only in c.name]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    old: dict[str, list[str]] = {}
    if args.rerun:
        for ln in Path(args.rerun).read_text().splitlines():
            cells = [x.strip() for x in ln.split(" | ")]
            if ln.startswith("| ") and len(cells) >= 5 and cells[0] != "| case":
                old[cells[0][2:]] = cells
    todo = [c for c in cases if c.name not in old or not args.missing and (
            not old[c.name][-1].startswith("OK") or any(a in c.name for a in args.also))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    rows: dict[str, tuple[str, ...]] = {}
    counted: Counter = Counter()
    rerun = {c.name for c in todo}
    for case in cases:
        if case.name not in rerun:
            cells = old[case.name]
            cls = cells[-1].split()[0]
            run_at = cells[-1].split("(", 1)[1].rstrip(" |)") if "(" in cells[-1] else "first run"
            rows[case.name] = (case.name, cells[1], cells[2], cells[3], cls, run_at)
            counted[cls] += 1
    t0 = time.monotonic()
    for i, case in enumerate(todo, 1):
        t = time.monotonic()
        cls, notes = run_case(case, work, args.timeout)
        cmd = " ; ".join(("& " if s.background else "") + "parauni " + " ".join(s.argv) for s in case.steps)
        cmd = "`" + cmd.replace("|", "\\|")[:300] + "`"
        rows[case.name] = (case.name, cmd, case.expected(), notes.replace("|", "/")[:200], cls, f"at {commit}")
        print(f"[{i}/{len(todo)}] {cls:9s} {case.name} ({time.monotonic() - t:.0f}s) {notes[:150]}", flush=True)
        _write_table(args, [rows[c.name] for c in cases if c.name in rows], len(todo), t0, commit,
                     final=i == len(todo))


def _write_table(args: argparse.Namespace, rows: list[tuple[str, ...]], ran: int, t0: float, commit: str,
                 final: bool) -> None:
    counts = Counter(r[4] for r in rows)
    dirty = args.src == "" and subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT,
                                              capture_output=True, text=True).stdout.strip()
    head = ("" if final else "(partial: the survey is still running) ") + f"Commit {commit}"
    head += " (plus uncommitted changes in src/)" if dirty else ""
    head += f" (src: {args.src})" if args.src else ""
    head += f"; {ran} cases run in {(time.monotonic() - t0) / 60:.1f} min"
    if args.rerun:
        head += (f", the other {len(rows) - ran} rows kept from {args.rerun} (cases OK there; the class column says "
                 "when each ran)")
    head += "; generated by `benchmarks/survey_nothing_lost.py`"
    head += "".join(f" --{k} {' '.join(v) if isinstance(v, list) else v}" for k, v in
                    (("only", args.only), ("rerun", args.rerun), ("also", args.also)) if v) + "."
    lines = ["# Survey: nothing lost", "", head, "",
             f"{len(rows)} cases. Counts: " + ", ".join(f"{k} {counts.get(k, 0)}" for k in ORDER), "",
             "| case | command | expected | outcome | class |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {cmd} | {exp} | {notes} | {cls} ({run_at}) |" for name, cmd, exp, notes, cls, run_at
              in rows]
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text("\n".join(lines) + "\n")
    if final:
        print("counts:", dict(counts))


if __name__ == "__main__":
    main()
