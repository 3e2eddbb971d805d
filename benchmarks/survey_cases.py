"""The cases of ``benchmarks/survey_nothing_lost.py``: user mistakes and faults, each with what should happen.

A case is one or more ``parauni`` steps (``{d}`` is the case's folder, ``{root}`` the repository) plus fixtures
copied into ``{d}`` first, an optional setup (damage a file, make a symlink, mount a tmpfs) and an optional check
of the result (returns why it is wrong, or None). ``expect`` of a step: ``ok`` (exit 0), ``refuse`` (one line, exit
2), ``stop`` (a signal ends it cleanly), ``either`` (exit 0, or a one-line refusal), ``bg`` (a background writer
whose own status does not matter).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TR = ["train", "configs/toy_stage1.yaml", "train.steps=2", "train.save_every=1", "train.batch_size=4",
      "train.eval_geneval=false", "--no-progress"]
RL = ["rl", "configs/toy_grpo.yaml", "train.epochs=1", "prompts.per_epoch=2", "sampling.group_size=2",
      "sampling.steps=6", "train.eval_geneval=false", "optim.train_batch=2", "train.save_every=1", "--no-progress"]
NFT = ["rl", "configs/toy_nft_redness.yaml", "train.epochs=1", "prompts.per_epoch=2", "prompts.pool=2",
       "sampling.group_size=2", "sampling.steps=4", "optim.train_batch=2", "--no-progress"]
AWM = ["rl", "configs/toy_awm_geneval.yaml", "train.epochs=1", "prompts.per_epoch=2", "sampling.group_size=2",
       "sampling.steps=4", "train.eval_geneval=false", "optim.train_batch=2", "--no-progress"]
TE = ["toy", "eval", "--model", "toy-all-layers", "--limit", "1", "--steps", "2", "--images-per-prompt", "1"]
GE = ["eval", "geneval", "--model", "toy-all-layers", "--limit", "1", "--steps", "2", "--images-per-prompt", "1"]
GEN = ["generate", "--model", "tiny", "--prompt", "a red cube", "--steps", "2", "--no-progress"]

FIXTURES: dict[str, tuple[list[str], Callable[[Path], None] | None]] = {
    "run": (TR[:2] + ["train.steps=4", "train.save_every=2", "train.batch_size=4", "train.eval_geneval=false",
                      "train.keep_last=2", "--no-progress", "train.output_dir={d}/run"], None),
    "rlrun": (RL[:-2] + ["train.epochs=2", "train.save_every=1", "--no-progress", "train.output_dir={d}/rlrun"],
              None),
    "te": (TE + ["--out", "{d}/te"], None),
    "exp": (["export", "{d}/run", "--out", "{d}/exp"], None),
}


@dataclass
class Step:
    argv: list[str]
    expect: str = "refuse"
    kill: tuple[int, float | str] | None = None  # (signal, seconds after start or a glob to wait for)
    background: bool = False  # start it, then the next step after ``then_after`` (seconds or a glob)
    then_after: float | str = 6.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass
class Case:
    name: str
    steps: list[Step]
    fixtures: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    teardown: Callable[[Path], None] | None = None
    check: Callable[[Path], str | None] | None = None
    may_change: tuple[str, ...] = ()

    def expected(self) -> str:
        return " ; ".join(s.expect for s in self.steps)


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    return go


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        for p in sorted(d.glob(rel)):
            data = p.read_bytes()
            p.write_bytes(data[: int(len(data) * keep)])
    return go


def remove(rel: str) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        for p in d.glob(rel):
            if p.is_dir():
                import shutil
                shutil.rmtree(p)
            else:
                p.unlink()
    return go


def symlink(rel: str, target: str) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).symlink_to(target.replace("{d}", str(d)))
    return go


def seq(*fns: Callable[[Path], None]) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        for f in fns:
            f(d)
    return go


def mount_tmpfs(rel: str, size: str = "64k", ro: bool = False, fill: bool = False) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        m = d / rel
        m.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(m)], check=True)
        if fill:
            subprocess.run(["dd", "if=/dev/zero", f"of={m}/filler", "bs=4k", "count=100000"],
                           capture_output=True, check=False)
        if ro:
            subprocess.run(["mount", "-o", "remount,ro", str(m)], check=True)
    return go


def umount(rel: str) -> Callable[[Path], None]:
    def go(d: Path) -> None:
        subprocess.run(["umount", "-l", str(d / rel)], check=False)
    return go


def exists(*rels: str) -> Callable[[Path], str | None]:
    def go(d: Path) -> str | None:
        missing = [r for r in rels if not list(d.glob(r))]
        return f"missing {missing}" if missing else None
    return go


def not_exists(*rels: str) -> Callable[[Path], str | None]:
    def go(d: Path) -> str | None:
        there = [r for r in rels if list(d.glob(r))]
        return f"left behind {there}" if there else None
    return go


def count(glob: str, n: int) -> Callable[[Path], str | None]:
    def go(d: Path) -> str | None:
        k = len(list(d.glob(glob)))
        return None if k == n else f"{k} files match {glob}, expected {n}"
    return go


def last_step(rel: str, step: int) -> Callable[[Path], str | None]:
    def go(d: Path) -> str | None:
        rows = [json.loads(x) for x in (d / rel).read_text().splitlines() if x.strip()]
        got = max((r.get("step", -1) for r in rows if isinstance(r.get("step"), int)), default=None)
        return None if got == step else f"last logged step {got}, expected {step}"
    return go


def image_size(glob: str, w: int, h: int) -> Callable[[Path], str | None]:
    def go(d: Path) -> str | None:
        from PIL import Image
        files = sorted(d.glob(glob))
        if not files:
            return f"no image {glob}"
        got = Image.open(files[0]).size
        return None if got == (w, h) else f"image is {got}, asked {(w, h)}"
    return go


def said(text: str) -> Callable[[Path], str | None]:
    """The case's output (every step's) contains ``text``."""
    def go(d: Path) -> str | None:
        out = "".join(p.read_text(errors="replace") for p in d.parent.glob(f"{d.name}.*.log"))
        return None if text in out else f"never said {text!r}"
    return go


def both(*checks: Callable[[Path], str | None]) -> Callable[[Path], str | None]:
    def go(d: Path) -> str | None:
        for c in checks:
            why = c(d)
            if why:
                return why
        return None
    return go


def refuse(name: str, argv: list[str], **kw) -> Case:
    return Case(name, [Step(argv)], **kw)


def ok(name: str, argv: list[str], **kw) -> Case:
    return Case(name, [Step(argv, "ok")], **kw)


def either(name: str, argv: list[str], **kw) -> Case:
    return Case(name, [Step(argv, "either")], **kw)

