"""Which errors are bad input and which are bugs, and the line each prints.

Bad input prints one ``<prog>: error: <message>`` line (exit status 2); a bug asks for a bug report and keeps its
traceback; Ctrl-C says how to continue the interrupted command (exit status 130)."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys

from ..errors import ConfigError, UsageError

OOM_HINT = ("lower the batch size (--batch-size; train.batch_size, optim.train_batch or sampling.rollout_batch in "
            "a config) or the resolution (--resolution / --height / --width; data.resolution)")


def bad_input_message(err: BaseException) -> str | None:
    """The one-line message for an error caused by the input, or ``None`` for a bug (keeps its traceback).

    Bad input is the project's own errors (:mod:`parauni.errors`: ``UsageError``, ``ConfigError`` and their
    kinds), a missing file or folder, invalid YAML, a text file that is not UTF-8, running out of memory, and the
    environment: an ``OSError`` of the file system (:data:`ENVIRONMENT_ERRNOS`: read-only, full, no permission, a
    file where a folder is expected ...), named by path and errno name. A ``ValueError`` or ``KeyError`` from
    anywhere else is a bug: an input check raises one of the project's errors."""
    if isinstance(err, (UsageError, ConfigError)):
        return str(err)
    if isinstance(err, IsADirectoryError):
        return f"{err.filename!r} is a folder, not a file" if err.filename else str(err)
    if isinstance(err, NotADirectoryError):
        return (f"{err.filename!r} is not a folder (ENOTDIR): a part of this path is a file; give another path"
                if err.filename else str(err))
    if isinstance(err, FileNotFoundError):
        return f"{err.filename!r} does not exist" if err.filename else str(err)
    if isinstance(err, PermissionError) and err.filename:
        return f"{err.filename!r}: permission denied (EACCES); give a path you can write (or read)"
    if is_disk_full(err):
        where = getattr(err, "filename", None)
        at = f" at {where!r}" if where else ""
        return (f"no space left on device{at} (ENOSPC): free some space or write elsewhere, then "
                "rerun (a checkpoint, export or image is written under a temporary name and renamed when complete, so "
                "what was finished is kept and nothing half-written stands under a final name; with --resume a run "
                "goes on from its last complete checkpoint)")
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        return environment_message(err)
    code = _os_error_code(err)  # safetensors (Rust) reports the errno in its text only: "(os error 30)"
    if code in ENVIRONMENT_ERRNOS:
        return f"{' '.join(str(err).split())[:300]}: {errno.errorcode[code]}; {ENVIRONMENT_ERRNOS[code]}"
    if isinstance(err, MemoryError) or is_out_of_memory(err):
        first = (str(err).strip().splitlines() or ["no more memory"])[0]
        return f"out of memory ({first}); {OOM_HINT}"
    if isinstance(err, UnicodeDecodeError):  # a damaged or binary file where text is read
        return (f"a file that should be text is not UTF-8 ({err.reason} at byte {err.start}): a damaged or binary "
                "file; rerun with --debug to see which, then restore or remove it")
    yaml_error = sys.modules.get("yaml")
    if yaml_error is not None and isinstance(err, yaml_error.YAMLError):
        return f"invalid YAML: {' '.join(str(err).split())}"
    return None


# errors of the file system a command writes to (or reads from): the user's environment, not a bug in parauni
ENVIRONMENT_ERRNOS = {
    errno.EROFS: "the file system is read-only: write elsewhere (another --out / train.output_dir)",
    errno.EACCES: "permission denied: give a path you can write (or read)",
    errno.EPERM: "operation not permitted: give a path you can write (or read)",
    errno.EEXIST: "it already exists: remove it or give another path",
    errno.ENOTDIR: "a part of this path is a file, not a folder: give another path",
    errno.EISDIR: "it is a folder where a file is expected: give another path",
    errno.ENOTEMPTY: "the folder is not empty: remove it or give another path",
    errno.EDQUOT: "the disk quota is exceeded: free some space or write elsewhere, then rerun",
    errno.EFBIG: "the file is too large for this file system: write elsewhere",
    errno.ENAMETOOLONG: "the name is too long for this file system: give a shorter path",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
    errno.ENFILE: "too many open files in the system: rerun later",
    errno.EIO: "an input/output error of the disk: check the disk, or write elsewhere",
    errno.ENXIO: "no such device: give another path",
    errno.ENODEV: "no such device: give another path",
    errno.ESTALE: "a stale network file handle: remount the folder, or write elsewhere",
    errno.ELOOP: "too many symbolic links in the path: give another path",
    errno.EXDEV: "the path crosses file systems where a move cannot: write within one file system",
    errno.EBUSY: "the path is busy (in use or a mount point): give another path",
    errno.ETXTBSY: "the file is busy: give another path",
}


def _os_error_code(err: BaseException) -> int | None:
    m = re.search(r"\(os error (\d+)\)", str(err))
    return int(m.group(1)) if m and not isinstance(err, (KeyError, TypeError)) else None


def environment_message(err: OSError) -> str:
    """``<path>: <ERRNO NAME> (<strerror>); <what to do>`` for an error of the file system."""
    name = errno.errorcode.get(err.errno, str(err.errno))
    where = err.filename if err.filename is not None else "a file being written"
    also = f" -> {err.filename2!r}" if err.filename2 else ""
    hint = ENVIRONMENT_ERRNOS[err.errno]
    if err.errno == errno.EEXIST and err.filename is not None and os.path.isfile(err.filename):
        hint = "it is a file where a folder is needed: give a folder path (or remove the file)"
    return f"{str(where)!r}{also}: {name} ({err.strerror or err}); {hint}"


def is_disk_full(err: BaseException) -> bool:
    """A write that failed for lack of space: ``OSError`` ENOSPC, or the messages of torch's zip writer
    (``file write failed``) and safetensors (``No space left on device``), which carry no errno."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or (isinstance(err, RuntimeError) and "file write failed" in text)


BUG_REPORT = ("internal error: this is a bug in parauni, not a problem with your input; please report it (an issue "
              "in the project's tracker) with the command line and the traceback below")


# what an interrupted command leaves and how to continue it, by command (``parauni <command> [<subcommand>]``)
INTERRUPT_HINTS = {
    "train": "continue from the newest checkpoint with the same command plus --resume",
    "rl": "continue from the newest checkpoint with the same command plus --resume",
    "grpo": "continue from the newest checkpoint with the same command plus --resume",
    "eval geneval": "finished images are kept: rerun the same command with --resume to continue",
    "eval dpg": "finished grids are kept: rerun the same command with --resume to continue",
    "eval wise": "finished images are kept: rerun the same command with --resume to continue",
    "toy reproduce": "finished steps are kept: rerun the same command to continue",
    "export": "--out was left as it was: rerun the command",
    "report": "the previous report was left as it was: rerun the command",
}


def interrupt_message(args: argparse.Namespace | None) -> str:
    if args is None:
        return "interrupted"
    sub = getattr(args, "eval_command", None) or getattr(args, "toy_command", None)
    key = f"{args.command} {sub}" if sub else args.command
    return f"interrupted; {INTERRUPT_HINTS.get(key, 'rerun the command to start again')}"


def is_out_of_memory(err: BaseException) -> bool:
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                              or "DefaultCPUAllocator" in text)
