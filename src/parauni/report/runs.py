"""What a run folder holds, read for the report (:class:`Run`, :func:`load_run`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..utils.jsonl import read_jsonl

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.yaml", "config.yml", "config.json")
GENEVAL_DIR = Path("eval") / "geneval"
# what `parauni toy probe-layers --out RUN` writes (parauni.analysis.probe; spelled here: the report imports no torch)
PROBE_JSON, PROBE_PNG = "layer_probe.json", "layer_probe.png"
RECONSTRUCT_SUMMARY = Path("eval") / "reconstruct" / "summary.json"
WISE_SUMMARY = Path("eval") / "wise" / "summary.json"
DPG_SUMMARY = Path("eval") / "dpg" / "dpg_summary.json"


@dataclass
class Run:
    """What a run folder holds (empty fields: not there)."""

    path: Path
    name: str
    configs: list[tuple[str, str]] = field(default_factory=list)
    geneval: dict | None = None
    reconstruct: dict | None = None
    samples: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    curves: list[Path] = field(default_factory=list)
    ldam: list[dict] = field(default_factory=list)
    wise: dict | None = None
    dpg: dict | None = None
    provenance: dict[str, dict] = field(default_factory=dict)  # benchmark folder name -> provenance.json
    probe: dict | None = None  # layer_probe.json (parauni toy probe-layers --out RUN)
    probe_png: Path | None = None

    def empty(self) -> bool:
        return not (self.configs or self.geneval or self.reconstruct or self.samples or self.metrics
                    or self.curves or self.ldam or self.wise or self.dpg or self.probe)


def read_records(path: Path) -> list[dict]:
    """The JSON objects of a log (``metrics.jsonl``, ``ldam.jsonl``); malformed lines (e.g. a partly written last
    line) and lines that are not objects are skipped with a warning."""
    records = read_jsonl(path, skip_malformed=True)
    objects = [rec for rec in records if isinstance(rec, dict)]
    if len(objects) < len(records):
        logger.warning("%s: skipped %d malformed line(s)", path, len(records) - len(objects))
    return objects


def geneval_samples(folder: Path, per_task: int) -> dict[str, list[tuple[Path, str]]]:
    """For each task, the first sample of the first ``per_task`` distinct prompts of a GenEval layout."""
    out: dict[str, list[tuple[Path, str]]] = {}
    if not folder.is_dir():
        return out
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        meta_file, samples = sub / "metadata.jsonl", sub / "samples"
        if not meta_file.is_file() or not samples.is_dir():
            continue
        try:
            meta = json.loads(meta_file.read_text().splitlines()[0])
        except (json.JSONDecodeError, IndexError):
            continue
        pngs = sorted(samples.glob("*.png"))
        group = out.setdefault(str(meta.get("tag", "untagged")), [])
        if pngs and len(group) < per_task and meta.get("prompt") not in {p for _, p in group}:
            group.append((pngs[0], str(meta.get("prompt", ""))))
    return {k: v for k, v in out.items() if v}


def load_run(path: str | Path, samples_per_task: int = 4, name: str | None = None) -> Run:
    """Read a run folder; an error when it does not exist or holds none of the report's inputs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise NotADirectoryError(f"run folder {str(path)!r} is not a folder")
    run = Run(path, name or path.resolve().name)
    run.configs = [(f, (path / f).read_text()) for f in CONFIG_FILES if (path / f).is_file()]
    if (path / GENEVAL_DIR / "summary.json").is_file():
        run.geneval = json.loads((path / GENEVAL_DIR / "summary.json").read_text())
    if (path / RECONSTRUCT_SUMMARY).is_file():
        run.reconstruct = json.loads((path / RECONSTRUCT_SUMMARY).read_text())
    run.samples = geneval_samples(path / GENEVAL_DIR, samples_per_task)
    if (path / "metrics.jsonl").is_file():
        run.metrics = read_records(path / "metrics.jsonl")
    if (path / "curves").is_dir():
        run.curves = sorted((path / "curves").rglob("*.png"))
    if (path / "ldam.jsonl").is_file():
        run.ldam = read_records(path / "ldam.jsonl")
    if (path / WISE_SUMMARY).is_file():
        run.wise = json.loads((path / WISE_SUMMARY).read_text())
    if (path / DPG_SUMMARY).is_file():
        run.dpg = json.loads((path / DPG_SUMMARY).read_text())
    if (path / PROBE_JSON).is_file():
        run.probe = json.loads((path / PROBE_JSON).read_text())
        run.probe_png = path / PROBE_PNG if (path / PROBE_PNG).is_file() else None
    for bench in ("geneval", "dpg", "wise"):
        record = path / "eval" / bench / "provenance.json"
        if record.is_file():
            try:
                run.provenance[bench] = json.loads(record.read_text())
            except json.JSONDecodeError:
                logger.warning("%s is not valid JSON: left out", record)
    if run.empty():
        raise UsageError(f"run folder {str(path)!r} holds nothing to report: expected any of "
                         f"{', '.join(CONFIG_FILES)}, {GENEVAL_DIR}/summary.json, a GenEval layout under "
                         f"{GENEVAL_DIR}/, {RECONSTRUCT_SUMMARY}, {WISE_SUMMARY}, {DPG_SUMMARY}, metrics.jsonl, "
                         f"curves/*.png, ldam.jsonl, {PROBE_JSON}")
    return run

