"""One run per output folder: an advisory exclusive lock on ``<folder>/.lock``.

``with hold_folder_lock(folder):`` (:func:`hold_folder_lock`) takes a non-blocking ``fcntl.flock`` on
``<folder>/.lock`` (creating the folder) and writes the holder's PID and kind (``training run``, ``evaluation``)
into it. A second process asking for the same folder gets a :class:`FolderLockedError` naming the folder, the
first one's PID and kind, instead of two runs silently merging their files. The operating system releases the
lock when the holder exits or is killed, so a crashed run never leaves a stale lock (the file itself stays; only
the lock counts). Within one process the lock is re-entrant.

Locks need a file system with ``flock`` (local disks; on some network file systems flock is local to one host).
Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import UsageError

T = TypeVar("T")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".lock"
_held: dict[str, list] = {}  # resolved folder -> [file descriptor, holders in this process, folder created]


class FolderLockedError(UsageError):
    """Another process holds the folder's lock; the message names it and its PID."""


def _holder(path: Path) -> tuple[str, str]:
    """``(pid, what)`` written by the holder of a lock file (``"unknown"`` where it cannot be read)."""
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    return pid or "unknown", what or "run"


class FolderLock:
    """The lock of one output folder (see the module). :meth:`acquire` takes it or raises
    :class:`FolderLockedError`; :meth:`release` gives it back (both idempotent). A folder the lock created and that
    holds nothing else when the last holder of this process releases it is removed again, so a run refused or failed
    before writing anything leaves no folder behind."""

    def __init__(self, folder: str | Path, what: str = "run"):
        self.folder, self.what, self.held = Path(folder), what, False

    def acquire(self) -> FolderLock:
        if self.held:
            return self
        folder = self.folder
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{str(folder)!r} is a file, not a folder; give a folder path (or remove the file)")
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        key = str(folder.resolve())
        if key in _held:  # re-entrant within one process
            _held[key][1] += 1
            self.held = True
            return self
        path = folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                pid, what = _holder(path)
                raise FolderLockedError(
                    f"{folder} is in use by another {what} (PID {pid}, see {path}): wait for it to end, stop it, or "
                    "give another output folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.what}\n".encode())
        _held[key] = [fd, 1, created]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = str(self.folder.resolve())
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        fd, _, created = _held.pop(key)
        try:
            os.ftruncate(fd, 0)
            if created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                (self.folder / LOCK_FILE).unlink()
                self.folder.rmdir()
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> Path:
        self.acquire()
        return self.folder

    def __exit__(self, *exc) -> None:
        self.release()


def hold_folder_lock(folder: str | Path, what: str = "run") -> FolderLock:
    """``with hold_folder_lock(folder):`` holds the exclusive lock of ``folder`` for the block (see the module)
    and yields the folder; a second process asking for it gets :class:`FolderLockedError` naming this one's PID.
    ``what``: this holder's kind, written into the lock file for the refusal of another (``run``,
    ``evaluation``). Also usable without ``with``: ``lock = hold_folder_lock(folder).acquire()`` ...
    ``lock.release()``."""
    return FolderLock(folder, what)


def lock_holder(folder: str | Path) -> tuple[str, str] | None:
    """``(pid, kind)`` of another process holding ``folder``'s lock now, else ``None`` (no lock file, nobody holds
    it, or this process does). Probes with a shared non-blocking ``flock``, which an exclusive holder refuses;
    creates nothing."""
    folder = Path(folder)
    path = folder / LOCK_FILE
    if fcntl is None or not path.is_file() or str(folder.resolve()) in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _holder(path)
    finally:
        os.close(fd)  # also drops the shared lock when it was taken
    return None


def refuse_if_written(folder: str | Path, reader: str) -> None:
    """Refuse to read ``folder`` (a run or evaluation folder) while another process writes it or one of its
    evaluations (``eval/*``): :class:`FolderLockedError` naming the folder, the writer's kind and PID. ``reader``
    names the command in the message (``report``)."""
    folder = Path(folder)
    candidates = [folder, *sorted(p for p in folder.glob("eval/*") if p.is_dir())] if folder.is_dir() else []
    for sub in candidates:
        held = lock_holder(sub)
        if held is not None:
            pid, what = held
            raise FolderLockedError(
                f"{sub} is being written by a running {what} (PID {pid}, see {sub / LOCK_FILE}): the {reader} would "
                "read half-written files; wait for it to end (or stop it), then rerun")


def owned_lock(owner: object, folder: str | Path, what: str = "run") -> FolderLock:
    """A :class:`FolderLock` of ``folder`` taken now and released when ``owner`` (a trainer) is collected, unless
    released earlier: a run holds its output folder from its construction on."""
    lock = FolderLock(folder, what).acquire()
    weakref.finalize(owner, lock.release)
    return lock


def with_lock(lock: FolderLock | None, fn: Callable[[], T], keep: bool = False) -> T:
    """``fn()`` with ``lock`` held (taken again if an earlier call released it; ``None``: no lock, as on the
    processes other than the main one), released afterwards, or with ``keep`` only when ``fn`` raises."""
    if lock is None:
        return fn()
    lock.acquire()
    try:
        result = fn()
    except BaseException:
        lock.release()
        raise
    if not keep:
        lock.release()
    return result
