"""Folders written atomically: built under a temporary sibling name, swapped into place only when complete.

``with atomic_folder(out) as tmp:`` yields ``<out>.tmp-<pid>`` (an empty folder beside ``out``); when the block
ends without an exception the temporary folder is renamed to ``out``. An ``out`` that already existed is moved
aside (``<out>.old-<pid>``) just before and deleted only once the new folder is in place, so an interrupted
write never leaves a half-written ``out`` nor loses the old one before the new one is complete. On an exception
(or Ctrl-C) the temporary folder is removed and ``out`` is untouched; temporary folders of killed processes (whose
PID no longer runs) are removed by the next write of the same ``out``.

Files are given the permissions of ordinary new files (``0666`` / folders ``0777``, less the umask): some
writers (safetensors through a temporary file) create them ``0600``, unreadable to the other users of a shared
model folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ..errors import UsageError


def check_out_folder(path: str | Path, option: str = "--out") -> None:
    """Refuse an output folder path that is a file (or lies under one), before any work, naming it."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {str(p)!r}, which is a file"
                raise UsageError(f"{option} {str(path)!r} {what}, not a folder; give a folder path")
            return


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(folder: str | Path) -> None:
    """Give every file under ``folder`` mode ``0666 & ~umask`` and every folder ``0777 & ~umask`` (as
    ``open()`` / ``mkdir`` would), keeping the execute bits of files that have them."""
    mask = current_umask()
    folder = Path(folder)
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            executable = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o777 if executable else 0o666) & ~mask)


def write_failure(folder: str | Path, err: BaseException) -> OSError | None:
    """The file-system error behind a failed write that did not say it: torch's zip writer reports a full disk as
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`` (or ``file write failed``). A 1 MiB
    probe file is written into ``folder`` (and removed): the ``OSError`` it raises (``ENOSPC``, ``EDQUOT``,
    ``EROFS`` ...) names the real cause, with ``folder`` as its path; ``None`` when the probe succeeds or ``err`` is
    already an ``OSError``."""
    if isinstance(err, OSError) or not isinstance(err, (RuntimeError, ValueError)):
        return None
    probe = Path(folder) / f".write-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            data = memoryview(bytes(1 << 20))
            while data:  # a short write first, then the error
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as found:
        return OSError(found.errno, found.strerror, str(folder))
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return None


def temporary_sibling(out: str | Path, tag: str = "tmp") -> Path:
    """``<out>.<tag>-<pid>``: the name a folder is built under before it replaces ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}.{tag}-{os.getpid()}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (signal 0 probes it; another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_stale_siblings(out: str | Path, tag: str = "tmp") -> list[Path]:
    """Remove ``<out>.<tag>-<pid>`` files and folders left by killed processes (their PID no longer runs), e.g. a
    killed export's or report's temporary folder; returns what was removed. Those of running processes stay."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    prefix = f"{out.name}.{tag}-"
    for p in out.parent.glob(f"{glob_escape(prefix)}*"):
        pid = p.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


def _restore_stale_old(out: Path) -> None:
    """A process killed inside :func:`replace_folder` may leave the previous folder as ``<out>.old-<pid>``: put it
    back when ``out`` is missing, else remove it."""
    prefix = f"{out.name}.old-"
    for old in sorted(out.parent.glob(f"{glob_escape(prefix)}*")):
        pid = old.name[len(prefix):]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if not (out.exists() or out.is_symlink()):
            os.replace(old, out)
        elif old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def replace_folder(new: str | Path, out: str | Path) -> None:
    """Move the complete folder ``new`` to ``out``; an existing ``out`` is moved aside first and deleted only
    after ``new`` is in place."""
    new, out = Path(new), Path(out)
    old = None
    if out.exists() or out.is_symlink():
        old = temporary_sibling(out, "old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:  # put the previous folder back
            os.replace(old, out)
        raise
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``out``; on success give its files ordinary permissions and swap
    it into place as ``out`` (:func:`replace_folder`); on failure remove it and leave ``out`` as it was."""
    out = Path(out)
    tmp = temporary_sibling(out)
    remove_stale_siblings(out)  # left by killed processes
    _restore_stale_old(out)
    if tmp.exists():  # left by an earlier process with this pid
        shutil.rmtree(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()
    try:
        yield tmp
        ordinary_permissions(tmp)
        replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
