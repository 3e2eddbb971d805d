"""``parauni report``: one self-contained HTML page (and a Markdown twin) for one or more run folders.

A run folder may hold, each optional (sections without their input are left out):

* ``config.yaml`` / ``config.json`` -- the configs used, shown verbatim;
* ``eval/geneval/summary.json`` -- GenEval per-task accuracy and overall (:func:`parauni.toy.geneval.summarize`);
* ``eval/geneval/<index:05d>/{metadata.jsonl,samples/0000.png}`` -- GenEval's layout: sample grids per task;
* ``eval/reconstruct/summary.json`` -- ``parauni eval reconstruct``'s PSNR / SSIM / CLIP-sim per model;
* ``metrics.jsonl`` -- one JSON object a line with ``step`` and numeric keys (``loss``, ``lr``,
  ``reward/<name>`` ...): drawn as curves, one figure per key prefix (``reward/*`` share one);
* ``curves/*.png`` -- figures embedded as they are;
* ``ldam.jsonl`` -- LDAM decisions (``epoch, reward, g_s, r_s, gamma, active, layers``);
* ``eval/wise/summary.json`` (``parauni eval wise``) and ``eval/dpg/dpg_summary.json`` (``parauni eval dpg
  --score``);
* ``eval/<benchmark>/provenance.json`` -- what made the images (images per prompt, seed, steps, guidance), quoted
  under each table.

Reading order: the headline comparison (GenEval per task across runs; WISE and DPG-Bench when there), then the
curves, then each run's details: its tables, each saying what its numbers are, the GenEval samples under the task
they show (small images enlarged by an integer factor, nearest-neighbour, so that 32-px toy images stay sharp),
and its configs folded in ``<details>``.  Runs whose names differ only by a seed suffix (``_seed1``, ``-s2``)
get a mean ± std row (std over seeds, ``ddof=1``).

The HTML embeds every image as a base64 data URI and its CSS inline (no external resources); the
Markdown twin ``FILE.md`` references the same images as files in ``FILE_files/`` beside it. All three are built
under temporary names beside the previous report and swapped in at the end, so a report cut short leaves the
previous one whole.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import logging
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .errors import UsageError
from .eval.geneval import TASK_ORDER
from .rl.curves import ema
from .utils.atomic import atomic_folder, temporary_sibling

logger = logging.getLogger(__name__)

CONFIG_FILES = ("config.yaml", "config.yml", "config.json")
GENEVAL_DIR = Path("eval") / "geneval"
RECONSTRUCT_SUMMARY = Path("eval") / "reconstruct" / "summary.json"
WISE_SUMMARY = Path("eval") / "wise" / "summary.json"
DPG_SUMMARY = Path("eval") / "dpg" / "dpg_summary.json"
THUMBNAIL = 256  # longest side of embedded sample images
MIN_SHOWN = 128  # smaller images are enlarged by an integer factor (nearest-neighbour) to at least this side
SEED_SUFFIX = re.compile(r"[-_.](?:seed|s)[-_]?(\d+)$")
EMA_RATE = 0.1  # curve smoothing, as in the supplementary's reward figures

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1150px;color:#222;
background:#fff;padding:0 16px}
h1{border-bottom:2px solid #444;padding-bottom:6px}h2{border-bottom:1px solid #bbb;margin-top:36px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
pre{background:#f6f6f6;border:1px solid #ddd;padding:10px;overflow-x:auto;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;width:min-content}
figure img{image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:12px;color:#444}.curve{max-width:100%;border:1px solid #eee}
.curves{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.curves img{max-width:560px}
.path,.note{color:#666;font-size:13px}
details{margin:8px 0}summary{cursor:pointer;color:#444}
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
    wise: dict | None = None
    dpg: dict | None = None
    provenance: dict[str, dict] = field(default_factory=dict)  # benchmark folder name -> provenance.json

    def empty(self) -> bool:
        return not (self.configs or self.geneval or self.reconstruct or self.samples or self.metrics
                    or self.curves or self.ldam or self.wise or self.dpg)


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
    if (path / WISE_SUMMARY).is_file():
        run.wise = json.loads((path / WISE_SUMMARY).read_text())
    if (path / DPG_SUMMARY).is_file():
        run.dpg = json.loads((path / DPG_SUMMARY).read_text())
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
                         "curves/*.png, ldam.jsonl")
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


def _is_noisy(ys: list[float]) -> bool:
    """True when the series changes direction on more than a fifth of its steps (a loss, a reward), so an EMA
    helps; a schedule (the learning rate) or a steady counter is drawn raw only."""
    d = [b - a for a, b in zip(ys, ys[1:], strict=False) if b != a]
    turns = sum((x > 0) != (y > 0) for x, y in zip(d, d[1:], strict=False))
    return turns > 0.2 * len(ys)


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
            if len(ys) > 20 and _is_noisy(ys):
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

    def __init__(self, files_dir: Path, link_name: str | None = None):
        """Images are written into ``files_dir`` and linked from the Markdown as ``<link_name>/<image>.png``
        (default the folder's own name; another when the folder is built under a temporary name)."""
        self.html: list[str] = []
        self.md: list[str] = []
        self.files_dir = files_dir
        self.link_name = link_name or files_dir.name
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

    def details(self, summary: str, text: str, title: str) -> None:
        """``text`` (a config) folded under ``summary``: ``<details>`` in both HTML and Markdown."""
        self.html.append(f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre>"
                         "</details>")
        lang = "json" if title.endswith(".json") else "yaml"
        fence = "````" if "```" in text else "```"
        self.md.append(f"<details><summary>{summary}</summary>\n\n{fence}{lang}\n{text.rstrip()}\n{fence}\n\n"
                       "</details>\n")

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
        return uri, f"{self.link_name}/{name}.png"

    def image_row(self, items: list[tuple[bytes, str, str]]) -> None:
        """Figures ``(png, stem, alt)`` side by side (wrapping), e.g. one run's curves."""
        imgs = []
        for png, stem, alt in items:
            uri, rel = self.image_file(png, stem)
            imgs.append(f'<img class="curve" src="{uri}" alt="{html.escape(alt, quote=True)}">')
            self.md.append(f"![{_md_cell(alt)}]({rel})\n")
        self.html.append('<div class="curves">' + "".join(imgs) + "</div>")

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


def thumbnail_png(path: Path, size: int = THUMBNAIL, min_side: int = MIN_SHOWN) -> bytes:
    """A PNG of the image at ``path``: its longest side at most ``size`` (Lanczos), and an image smaller than
    ``min_side`` enlarged by the integer factor that reaches it, nearest-neighbour (a 32-px toy image x4)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        longest = max(im.size)
        if longest < min_side:
            k = -(-min_side // longest)
            im = im.resize((im.width * k, im.height * k), Image.NEAREST)
        elif longest > size:
            im.thumbnail((size, size), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


def _task_order(tags) -> list[str]:
    return [t for t in TASK_ORDER if t in tags] + sorted(t for t in tags if t not in TASK_ORDER)


def seed_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs whose names differ only by a seed suffix (``x_seed0``, ``x-seed1``, ``x_s2``), two or more a group."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        m = SEED_SUFFIX.search(r.name)
        if m:
            groups.setdefault(r.name[:m.start()], []).append(r)
    return {k: v for k, v in groups.items() if len(v) >= 2}


def mean_std(values) -> str | None:
    """``"m ± s"`` (sample std over seeds, ddof=1) of the numbers among ``values``; one number as itself."""
    v = [float(x) for x in values if _is_number(x)]
    if not v:
        return None
    if len(v) == 1:
        return _fmt(v[0])
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}"


def _settings(record: dict | None) -> str:
    """What made a benchmark's images, from its provenance.json: seed rule, steps, guidance, resolution."""
    if not record:
        return "settings: not recorded (no provenance.json)"
    parts = [f"seed {record.get('seed')} ({record.get('seed_rule')})", f"{record.get('steps')} steps",
             f"guidance {_fmt(record.get('guidance'))}"]
    if record.get("resolution"):
        parts.append(f"{record['resolution']} px")
    if record.get("limit") is not None:
        parts.append(f"limit {record['limit']} ({record.get('limit_rule')})")
    return "; ".join(parts)


def _images_per_prompt(run: Run) -> str:
    g, record = run.geneval or {}, run.provenance.get("geneval") or {}
    if record.get("images_per_prompt"):
        return str(record["images_per_prompt"])
    if _is_number(g.get("total_images")) and _is_number(g.get("total_prompts")) and g["total_prompts"]:
        k = g["total_images"] / g["total_prompts"]
        return str(int(k)) if float(k).is_integer() else _fmt(k)
    return "?"


def _headline(page: Page, runs: list[Run]) -> None:
    """The comparison tables: GenEval per task, WISE per category, DPG-Bench, one row per run (+ seed groups)."""
    groups = seed_groups(runs)
    scored = [r for r in runs if r.geneval]
    if scored:
        tags = _task_order({t for r in scored for t in r.geneval.get("tasks", {})})
        page.heading("GenEval across runs" if len(runs) > 1 else "GenEval", 2)
        rows = [[r.name, *[r.geneval.get("tasks", {}).get(t) for t in tags], r.geneval.get("overall"),
                 _images_per_prompt(r), r.geneval.get("total_prompts")] for r in scored]
        for base, members in groups.items():
            members = [m for m in members if m.geneval]
            if len(members) >= 2:
                rows.append([f"{base} (mean ± std, {len(members)} seeds)",
                             *[mean_std(m.geneval.get("tasks", {}).get(t) for m in members) for t in tags],
                             mean_std(m.geneval.get("overall") for m in members), _images_per_prompt(members[0]),
                             members[0].geneval.get("total_prompts")])
        page.table(["run", *tags, "overall", "images / prompt", "prompts"], rows)
        seeds = ("; ± = sample std over the seeds of a group (runs named <name>_seed<k>)" if groups
                 else "; one seed per run (no ± : a run is one seed)")
        page.para("Accuracy: the fraction of a task's images the detector judges correct (GenEval's rules); "
                  "overall: the mean of the task accuracies; images / prompt: samples drawn per prompt, each "
                  "with its own seed" + seeds + ". The settings of each run are under its GenEval table below.",
                  cls="note")
    wise = [r for r in runs if r.wise]
    if wise:
        from .eval.wise import CATEGORIES

        page.heading("WISE", 2)
        page.table(["run", *CATEGORIES, "overall"],
                   [[r.name, *[r.wise.get("categories", {}).get(c, {}).get("wiscore") for c in CATEGORIES],
                     r.wise.get("overall")] for r in wise])
        first = wise[0].wise
        page.para(f"Mean WiScore per category, 1 image per prompt, one seed; WiScore = {first.get('wiscore')}; "
                  f"overall = {_weights(first.get('overall_weights'))} (– : not every category was scored).",
                  cls="note")
    dpg = [r for r in runs if r.dpg]
    if dpg:
        l1 = sorted({k for r in dpg for k in r.dpg.get("l1", {})})
        page.heading("DPG-Bench", 2)
        page.table(["run", "DPG-Bench", *l1, "items", "VQA model"],
                   [[r.name, r.dpg.get("score"), *[r.dpg.get("l1", {}).get(k) for k in l1], r.dpg.get("items"),
                     r.dpg.get("vqa")] for r in dpg])
        page.para("x 100. DPG-Bench: the mean over items of the mean over an item's 4 images (a 2x2 grid, one seed "
                  "per image) of the share of questions answered yes, a question counting 0 when a parent question "
                  "fails; categories: the yes rate of the last image's answers, as ELLA's compute_dpg_bench.py.",
                  cls="note")


def _weights(weights: dict | None) -> str:
    if not weights:
        return "–"
    return " + ".join(f"{w:g} {c.lower()}" for c, w in weights.items())


def _curves(page: Page, runs: list[Run]) -> None:
    figures = []
    for run in runs:
        curves = []
        if run.metrics:
            try:
                curves = plot_curves(run.metrics)
            except ImportError:
                logger.warning("matplotlib is not installed: metrics.jsonl curves left out")
        if curves or run.curves:
            figures.append((run, curves))
    if not figures:
        if any(r.metrics for r in runs):
            page.heading("Curves", 2)
            page.para("(metrics.jsonl curves left out: matplotlib is not installed)", cls="note")
        return
    page.heading("Curves", 2)
    page.para("From each run's metrics.jsonl, one panel per logged value against the training step (a noisy series "
              f"of more than 20 points: faint raw, solid EMA {EMA_RATE:g}); curves/*.png as the run saved them.",
              cls="note")
    for run, curves in figures:
        if len(runs) > 1:
            page.heading(run.name, 3)
        page.image_row([(png, f"{run.name}_curve_{name}", f"{name} (metrics.jsonl)") for name, png in curves]
                       + [(p.read_bytes(), f"{run.name}_{p.stem}", str(p.relative_to(run.path))) for p in run.curves])


def _run_sections(page: Page, run: Run) -> None:
    page.heading(run.name, 2)
    page.para(str(run.path), cls="path")
    if run.geneval:
        g = run.geneval
        tasks, counts = g.get("tasks", {}), g.get("task_images", {})
        page.heading("GenEval", 3)
        rows = [[t, tasks[t], counts.get(t)] for t in _task_order(tasks)]
        rows.append(["overall (mean of tasks)", g.get("overall"), g.get("total_images")])
        page.table(["task", "accuracy", "images"], rows)
        extra = [f"{k.replace('_', ' ')}: {_fmt(g[k])}" for k in ("total_prompts", "correct_prompts",
                                                                   "correct_images", "mean_partial") if k in g]
        page.para(f"Accuracy: the fraction of the task's images judged correct; {_images_per_prompt(run)} image(s) "
                  f"per prompt; {_settings(run.provenance.get('geneval'))}"
                  + (f"; {'; '.join(extra)}" if extra else "") + ".", cls="note")
    if run.samples:
        tasks = (run.geneval or {}).get("tasks", {})
        page.heading("GenEval samples", 3)
        page.para("The first image of the first prompts of each task, under the task it shows; small images are "
                  "enlarged by an integer factor, nearest-neighbour (pixels kept square and sharp).", cls="note")
        for tag in _task_order(run.samples):
            acc = f" (accuracy {_fmt(tasks[tag])})" if _is_number(tasks.get(tag)) else ""
            page.heading(f"{tag}{acc}", 4)
            page.figures([(thumbnail_png(p), f"{run.name}_{tag}_{i}", prompt)
                          for i, (p, prompt) in enumerate(run.samples[tag])])
    if run.reconstruct:
        rec = run.reconstruct
        page.heading("Reconstruction", 3)
        page.table(["model", "PSNR", "SSIM", "CLIP-sim", "images"],
                   [[m, v.get("psnr"), v.get("ssim"), v.get("clip_sim"), v.get("n_images")]
                    for m, v in rec.get("models", {}).items()])
        cap = rec.get("psnr_cap")
        note = ["Means over the input images, one reconstruction each: PSNR in dB, SSIM, CLIP image-image cosine",
                f"CLIP: {rec.get('clip')}"] + ([f"PSNR capped at {cap:g} dB"] if _is_number(cap) else [])
        page.para("; ".join([*note, f"{rec.get('n_skipped', 0)} unreadable image(s) skipped"]) + ".", cls="note")
    if run.wise:
        w = run.wise
        page.heading("WISE", 3)
        page.table(["category", "WiScore", "images"],
                   [[c, v.get("wiscore"), v.get("images")] for c, v in w.get("categories", {}).items()]
                   + [["overall (weighted)", w.get("overall"), w.get("scored")]])
        page.para(f"Mean WiScore, 1 image per prompt ({w.get('protocol')} protocol: {w.get('wiscore')}); "
                  f"{_settings(run.provenance.get('wise'))}; {len(w.get('unscored') or [])} prompt(s) unscored.",
                  cls="note")
    if run.dpg:
        d = run.dpg
        page.heading("DPG-Bench", 3)
        page.table(["category (L2)", "score"], [["DPG-Bench", d.get("score")], *[[k, v] for k, v in
                                                                               d.get("l2", {}).items()]])
        page.para(f"x 100; {d.get('items')} items x {d.get('images_per_item', 4)} images; {d.get('questions')} "
                  f"questions; VQA model {d.get('vqa')}; {_settings(run.provenance.get('dpg'))}.", cls="note")
    if run.ldam:
        page.heading("LDAM", 3)
        active = [d for d in run.ldam if d.get("active")]
        page.para(f"{len(active)} active of {len(run.ldam)} decisions")
        if active:
            keys = ["epoch", "reward", "g_s", "r_s", "gamma", "layers"]
            page.table(keys, [[d.get(k) for k in keys] for d in active])
            page.para("One row per active decision of ldam.jsonl, as logged: the epoch, the reward it acted on, "
                      "its g_s, r_s and gamma, and the VLM layers it targeted.", cls="note")
    if run.configs:
        page.heading("Config", 3)
        for fname, text in run.configs:
            page.details(f"{fname} ({len(text.splitlines())} lines)", text, fname)


def build_report(run_dirs: list[str | Path], out: str | Path, samples_per_task: int = 4,
                 title: str = "ParaUni report") -> tuple[Path, Path]:
    """Write ``out`` (HTML) and its Markdown twin (``.md``, images in ``<stem>_files/``); return both paths."""
    if not run_dirs:
        raise UsageError("give at least one run folder")
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out must be an .html file, got {str(out)!r}")
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
    md_path = out.with_suffix(".md")
    # built beside the previous report under temporary names and swapped in at the end: a report cut short
    # (an error, Ctrl-C) leaves the previous one whole
    html_tmp, md_tmp = temporary_sibling(out), temporary_sibling(md_path)
    try:
        with atomic_folder(files_dir) as files_tmp:
            page = Page(files_tmp, link_name=files_dir.name)
            page.heading(title, 1)
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
            page.para(f"{len(runs)} run(s): {', '.join(r.name for r in runs)}; generated {stamp}", cls="note")
            _headline(page, runs)
            _curves(page, runs)
            for run in runs:
                _run_sections(page, run)
            doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                   f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
                   + "\n".join(page.html) + "\n</body></html>\n")
            html_tmp.write_text(doc, encoding="utf-8")
            md_tmp.write_text("\n".join(page.md), encoding="utf-8")
        os.replace(md_tmp, md_path)
        os.replace(html_tmp, out)
    finally:
        html_tmp.unlink(missing_ok=True)
        md_tmp.unlink(missing_ok=True)
    if files_dir.is_dir() and not any(files_dir.iterdir()):  # a report without images needs no folder
        files_dir.rmdir()
    return out, md_path
