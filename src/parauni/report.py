"""``parauni report``: one self-contained HTML page (and a Markdown twin) for one or more run folders.

A run folder may hold, each optional (sections without their input are left out):

* ``config.yaml`` / ``config.json`` -- the configs used, shown verbatim;
* ``eval/geneval/summary.json`` -- GenEval per-task accuracy and overall (:func:`parauni.toy.geneval.summarize`);
* ``eval/geneval/<index:05d>/{metadata.jsonl,samples/0000.png}`` -- GenEval's layout: sample grids per task;
* ``eval/reconstruct/summary.json`` -- ``parauni eval reconstruct``'s PSNR / SSIM / CLIP-sim per model;
* ``metrics.jsonl`` -- one JSON object a line with ``step`` and numeric keys (``loss``, ``lr``,
  ``reward/<name>`` ...): drawn as curves, one figure per key prefix (``reward/*`` share one);
* ``curves/*.png`` -- figures embedded as they are;
* ``ldam.jsonl`` -- LDAM decisions (``epoch, reward, g_s, r_s, gamma, active, layers``).

The HTML embeds every image as a base64 data URI and its CSS inline (no external resources); the
Markdown twin ``FILE.md`` references the same images as files in ``FILE_files/`` beside it.  With several
runs a GenEval comparison table (per task, across runs) comes first.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .eval.geneval import TASK_ORDER
from .rl.curves import ema

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.yaml", "config.yml", "config.json")
GENEVAL_DIR = Path("eval") / "geneval"
RECONSTRUCT_SUMMARY = Path("eval") / "reconstruct" / "summary.json"
THUMBNAIL = 256  # longest side of embedded sample images
EMA_RATE = 0.1  # curve smoothing, as in the supplementary's reward figures

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;color:#222;
background:#fff;padding:0 16px}
h1{border-bottom:2px solid #444;padding-bottom:6px}h2{border-bottom:1px solid #bbb;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;border:1px solid #ddd;padding:10px;overflow-x:auto;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:150px}
figure img{width:150px;height:auto;image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:12px;color:#444}.curve{max-width:100%;border:1px solid #eee}
.path,.note{color:#666;font-size:13px}
"""


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

    def empty(self) -> bool:
        return not (self.configs or self.geneval or self.reconstruct or self.samples or self.metrics
                    or self.curves or self.ldam)


def read_jsonl(path: Path) -> list[dict]:
    """JSON objects of a JSONL file; malformed lines (e.g. a partly written last line) are skipped with a warning."""
    out, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    if bad:
        logger.warning("%s: skipped %d malformed line(s)", path, bad)
    return out


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
        run.metrics = read_jsonl(path / "metrics.jsonl")
    if (path / "curves").is_dir():
        run.curves = sorted((path / "curves").rglob("*.png"))
    if (path / "ldam.jsonl").is_file():
        run.ldam = read_jsonl(path / "ldam.jsonl")
    if run.empty():
        raise ValueError(f"run folder {str(path)!r} holds nothing to report: expected any of "
                         f"{', '.join(CONFIG_FILES)}, {GENEVAL_DIR}/summary.json, a GenEval layout under "
                         f"{GENEVAL_DIR}/, {RECONSTRUCT_SUMMARY}, metrics.jsonl, curves/*.png, ldam.jsonl")
    return run


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve_series(records: list[dict]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """``{figure: {key: (steps, values)}}`` from metrics records; keys group by the prefix before ``/``."""
    figs: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for i, rec in enumerate(records):
        step = rec.get("step", i)
        if not _is_number(step):
            continue
        for key, v in rec.items():
            if key == "step" or not _is_number(v):
                continue
            xs, ys = figs.setdefault(key.split("/", 1)[0], {}).setdefault(key, ([], []))
            xs.append(float(step))
            ys.append(float(v))
    return figs


def plot_curves(records: list[dict]) -> list[tuple[str, bytes]]:
    """PNG figures ``(name, bytes)`` of the numeric keys of metrics records (matplotlib, Agg backend)."""
    figs = curve_series(records)
    if not figs:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    for name, series in figs.items():
        keys = sorted(series)
        cols = min(len(keys), 3)
        rows = -(-len(keys) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(6.4 if cols == 1 else 3.8 * cols, 3.2 * rows), dpi=100,
                                 squeeze=False)
        for ax in axes.flat[len(keys):]:
            ax.set_visible(False)
        for ax, key in zip(axes.flat, keys, strict=False):  # one panel per key: rewards differ in scale
            xs, ys = series[key]
            order = sorted(range(len(xs)), key=xs.__getitem__)
            xs, ys = [xs[i] for i in order], [ys[i] for i in order]
            if len(ys) > 20:
                ax.plot(xs, ys, alpha=0.3, linewidth=0.8, color="C0", label="raw")
                ax.plot(xs, ema(ys), color="C0", label=f"EMA {EMA_RATE:g}")
                ax.legend(fontsize=8)
            else:
                ax.plot(xs, ys, color="C0", marker="o" if len(ys) < 3 else None)
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        out.append((name, buf.getvalue()))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "x"


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return "–" if v is None else str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1000 or (v != 0 and abs(v) < 0.01) else f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Page:
    """Builds the HTML page and its Markdown twin side by side; images go inline (HTML) and to files (MD)."""

    def __init__(self, files_dir: Path):
        self.html: list[str] = []
        self.md: list[str] = []
        self.files_dir = files_dir
        self.names: set[str] = set()

    def heading(self, text: str, level: int) -> None:
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append(f"{'#' * level} {text}\n")

    def para(self, text: str, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self.html.append(f"<p{attr}>{html.escape(text)}</p>")
        self.md.append(f"{text}\n")

    def pre(self, text: str, title: str) -> None:
        self.html.append(f"<p class=\"note\">{html.escape(title)}</p><pre>{html.escape(text)}</pre>")
        lang = "json" if title.endswith(".json") else "yaml"
        fence = "````" if "```" in text else "```"
        self.md.append(f"`{title}`:\n\n{fence}{lang}\n{text.rstrip()}\n{fence}\n")

    def table(self, headers: list[str], rows: list[list]) -> None:
        cells = [[_fmt(c) for c in row] for row in rows]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
        self.md.append("\n".join(lines) + "\n")

    def image_file(self, png: bytes, stem: str) -> tuple[str, str]:
        """``(data URI, relative path)`` of a PNG, written into the Markdown twin's files folder."""
        name, n = _slug(stem), 1
        while f"{name}.png" in self.names:
            n += 1
            name = f"{_slug(stem)}_{n}"
        self.names.add(f"{name}.png")
        self.files_dir.mkdir(parents=True, exist_ok=True)
        (self.files_dir / f"{name}.png").write_bytes(png)
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        return uri, f"{self.files_dir.name}/{name}.png"

    def image(self, png: bytes, stem: str, alt: str, cls: str = "curve") -> None:
        uri, rel = self.image_file(png, stem)
        self.html.append(f'<p><img class="{cls}" src="{uri}" alt="{html.escape(alt, quote=True)}"></p>')
        self.md.append(f"![{_md_cell(alt)}]({rel})\n")

    def figures(self, items: list[tuple[bytes, str, str]]) -> None:
        """A grid of captioned images: ``(png, stem, caption)``."""
        figs, md_imgs = [], []
        for png, stem, caption in items:
            uri, rel = self.image_file(png, stem)
            cap = html.escape(caption)
            figs.append(f'<figure><img src="{uri}" alt="{html.escape(caption, quote=True)}">'
                        f"<figcaption>{cap}</figcaption></figure>")
            md_imgs.append((rel, caption))
        self.html.append('<div class="grid">' + "".join(figs) + "</div>")
        self.md.append("| " + " | ".join(f"![{_md_cell(c)}]({r})" for r, c in md_imgs) + " |\n"
                       + "|" + "---|" * len(md_imgs) + "\n"
                       + "| " + " | ".join(_md_cell(c) for _, c in md_imgs) + " |\n")


def thumbnail_png(path: Path, size: int = THUMBNAIL) -> bytes:
    """A PNG of the image at ``path``, its longest side at most ``size``."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def _task_order(tags) -> list[str]:
    return [t for t in TASK_ORDER if t in tags] + sorted(t for t in tags if t not in TASK_ORDER)


def _geneval_comparison(page: Page, runs: list[Run]) -> None:
    scored = [r for r in runs if r.geneval]
    if len(runs) < 2 or not scored:
        return
    tags = _task_order({t for r in scored for t in r.geneval.get("tasks", {})})
    page.heading("GenEval across runs", 2)
    page.table(["run", *tags, "overall"],
               [[r.name, *[r.geneval.get("tasks", {}).get(t) for t in tags], r.geneval.get("overall")]
                for r in scored])


def _run_sections(page: Page, run: Run) -> None:
    page.heading(run.name, 2)
    page.para(str(run.path), cls="path")
    if run.configs:
        page.heading("Config", 3)
        for fname, text in run.configs:
            page.pre(text, fname)
    if run.geneval:
        g = run.geneval
        tasks, counts = g.get("tasks", {}), g.get("task_images", {})
        page.heading("GenEval", 3)
        rows = [[t, tasks[t], counts.get(t)] for t in _task_order(tasks)]
        rows.append(["overall (mean of tasks)", g.get("overall"), g.get("total_images")])
        page.table(["task", "accuracy", "images"], rows)
        extra = [f"{k.replace('_', ' ')}: {_fmt(g[k])}" for k in ("total_prompts", "correct_prompts",
                                                                   "correct_images", "mean_partial") if k in g]
        if extra:
            page.para("; ".join(extra), cls="note")
    if run.reconstruct:
        rec = run.reconstruct
        page.heading("Reconstruction", 3)
        page.table(["model", "PSNR", "SSIM", "CLIP-sim", "images"],
                   [[m, v.get("psnr"), v.get("ssim"), v.get("clip_sim"), v.get("n_images")]
                    for m, v in rec.get("models", {}).items()])
        cap = rec.get("psnr_cap")
        note = [f"CLIP: {rec.get('clip')}"] + ([f"PSNR capped at {cap:g} dB"] if _is_number(cap) else [])
        page.para("; ".join([*note, f"{rec.get('n_skipped', 0)} unreadable image(s) skipped"]), cls="note")
    if run.samples:
        page.heading("GenEval samples", 3)
        for tag in _task_order(run.samples):
            page.heading(tag, 4)
            page.figures([(thumbnail_png(p), f"{run.name}_{tag}_{i}", prompt)
                          for i, (p, prompt) in enumerate(run.samples[tag])])
    curves = []
    if run.metrics:
        try:
            curves = plot_curves(run.metrics)
        except ImportError:
            logger.warning("matplotlib is not installed: metrics.jsonl curves left out")
            page.para("(metrics.jsonl curves left out: matplotlib is not installed)", cls="note")
    if curves or run.curves:
        page.heading("Curves", 3)
        for name, png in curves:
            page.image(png, f"{run.name}_curve_{name}", f"{name} (metrics.jsonl)")
        for p in run.curves:
            page.image(p.read_bytes(), f"{run.name}_{p.stem}", str(p.relative_to(run.path)))
    if run.ldam:
        page.heading("LDAM", 3)
        active = [d for d in run.ldam if d.get("active")]
        page.para(f"{len(active)} active of {len(run.ldam)} decisions")
        if active:
            keys = ["epoch", "reward", "g_s", "r_s", "gamma", "layers"]
            page.table(keys, [[d.get(k) for k in keys] for d in active])


def build_report(run_dirs: list[str | Path], out: str | Path, samples_per_task: int = 4,
                 title: str = "ParaUni report") -> tuple[Path, Path]:
    """Write ``out`` (HTML) and its Markdown twin (``.md``, images in ``<stem>_files/``); return both paths."""
    if not run_dirs:
        raise ValueError("give at least one run folder")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must be an .html file, got {str(out)!r}")
    names: list[str] = []
    runs = []
    for d in run_dirs:
        base = Path(d).resolve().name
        name, n = base, 1
        while name in names:
            n += 1
            name = f"{base} ({n})"
        names.append(name)
        runs.append(load_run(d, samples_per_task, name))
    out.parent.mkdir(parents=True, exist_ok=True)
    files_dir = out.with_name(out.stem + "_files")
    if files_dir.is_dir():
        for old in files_dir.glob("*.png"):
            old.unlink()
    page = Page(files_dir)
    page.heading(title, 1)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    page.para(f"{len(runs)} run(s): {', '.join(r.name for r in runs)}; generated {stamp}", cls="note")
    _geneval_comparison(page, runs)
    for run in runs:
        _run_sections(page, run)
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
           + "\n".join(page.html) + "\n</body></html>\n")
    out.write_text(doc, encoding="utf-8")
    md_path = out.with_suffix(".md")
    md_path.write_text("\n".join(page.md), encoding="utf-8")
    return out, md_path
