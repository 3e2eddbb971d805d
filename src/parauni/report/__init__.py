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

Modules: :mod:`~parauni.report.runs` reads a run folder, :mod:`~parauni.report.curves` draws its metrics,
:mod:`~parauni.report.stats` gives mean ± std over seeds, :mod:`~parauni.report.page` writes HTML and Markdown
side by side, :mod:`~parauni.report.sections` fills the page in reading order, and :mod:`~parauni.report.build`
(:func:`build_report`) swaps the finished files in.
"""

from .build import build_report
from .curves import curve_series
from .runs import Run, load_run

__all__ = ["Run", "build_report", "curve_series", "load_run"]
