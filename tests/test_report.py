"""``parauni report``: a self-contained HTML page and its Markdown twin from real-format run folders."""

import base64
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser_support import browser_or_skip, screenshot_path
from parauni.cli import main
from parauni.report import build_report, curve_series, load_run


def make_run(root: Path, tiny_pipe=None, per_task: int = 3) -> Path:
    """A run folder with every input the report knows, in the formats the project writes them."""
    from parauni.toy.geneval import make_toy_geneval, score_dir, write_geneval_layout
    from parauni.toy.world import render, scene_from_metadata

    root.mkdir(parents=True)
    (root / "config.yaml").write_text("model:\n  source: toy\ntrain:\n  steps: 30  # <b>not html</b>\n")
    metas = make_toy_geneval(per_task=per_task)
    rng = np.random.default_rng(0)
    layout = root / "eval" / "geneval"
    write_geneval_layout(layout, metas, [[render(scene_from_metadata(m, rng))] for m in metas])
    score_dir(layout)  # results.jsonl + summary.json, as `parauni eval geneval` leaves them
    if tiny_pipe is not None:
        from parauni.eval.reconstruct import evaluate_reconstruction

        images = root / "inputs"
        images.mkdir()
        for i, m in enumerate(metas[:2]):
            Image.fromarray(render(scene_from_metadata(m, rng))).save(images / f"{i}.png")
        evaluate_reconstruction(["tiny"], images, root / "eval" / "reconstruct", clip="toy", steps=1,
                                load=lambda _: tiny_pipe)
    lines = [json.dumps({"step": s, "loss": 1 / (s + 1), "lr": 1e-4, "reward/clip": 0.2 + 0.01 * s,
                         "reward/aesthetic": 5 + 0.02 * s, "note": "text is ignored"}) for s in range(30)]
    (root / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 30, "lo')  # a partly written last line
    (root / "curves").mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(root / "curves" / "pickscore.png")
    ldam = [{"epoch": e, "reward": "clip", "g_s": min(e, 5), "r_s": min(e, 5), "gamma": 0.01 * e,
             "active": e >= 5, "layers": [9, 10, 11]} for e in range(7)]
    (root / "ldam.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ldam))
    return root


class Refs(HTMLParser):
    """Every tag, and every attribute that can point at a resource."""

    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.refs, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for k, v in attrs:
            if k == "src":
                self.srcs.append(v)
            elif k in ("href", "srcset", "poster", "data", "action", "background"):
                self.refs.append((tag, k, v))

    def handle_data(self, data):
        self.text.append(data)


def test_report_html_is_self_contained_and_md_twin_matches(tmp_path, tiny_pipe, capsys):
    run = make_run(tmp_path / "run_a", tiny_pipe)
    other = tmp_path / "run_b" / "eval" / "geneval"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({"tasks": {"counting": 0.25, "single_object": 1.0},
                                                    "overall": 0.625}))
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(run), str(tmp_path / "run_b"), "--out", str(out), "--samples-per-task", "2"]) == 0
    assert "report.md" in capsys.readouterr().out
    text = out.read_text()
    parser = Refs()
    parser.feed(text)
    assert parser.refs == []
    assert "link" not in parser.tags and "script" not in parser.tags
    assert not re.search(r"url\(|@import|https?://", text)
    # 6 tasks x 2 samples, curves for loss / lr / reward, and the PNG under curves/
    assert len(parser.srcs) == 6 * 2 + 3 + 1
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    body = " ".join(parser.text)
    for heading in ("GenEval across runs", "Config", "GenEval samples", "Reconstruction", "Curves", "LDAM"):
        assert heading in body
    assert "<b>not html</b>" in body and "<b>" not in text.replace("&lt;b&gt;", "")
    assert "2 active of 7 decisions" in body
    assert body.count("run_b") >= 2  # comparison row and its own section
    first_prompt = json.loads((run / "eval" / "geneval" / "00000" / "metadata.jsonl").read_text())["prompt"]
    assert first_prompt in body

    md = out.with_suffix(".md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == len(parser.srcs)
    for ref in refs:
        assert ref.startswith("report_files/") and (out.parent / ref).is_file()
    assert sorted(p.name for p in (out.parent / "report_files").iterdir()) == sorted(Path(r).name for r in refs)
    assert "| run | single_object |" in md and "| run_b |" in md
    assert "## run_a" in md and "### LDAM" in md and "```yaml" in md
    assert (out.parent / "report_files" / "run_a_pickscore.png").read_bytes() == \
        (run / "curves" / "pickscore.png").read_bytes()


def test_missing_sections_are_left_out(tmp_path):
    run = tmp_path / "only_metrics"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 0, "loss": 1.0}) + "\n")
    html_path, md_path = build_report([run], tmp_path / "r.html")
    text = html_path.read_text()
    assert "Curves" in text and "GenEval" not in text and "LDAM" not in text and "Config" not in text
    assert md_path.read_text().count("![") == 1


def test_bad_run_dirs_are_clear_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    with pytest.raises(ValueError, match="html"):
        build_report([tmp_path], tmp_path / "r.txt")


def test_curve_series_groups_by_prefix_and_skips_non_numbers():
    recs = [{"step": 1, "loss": 0.5, "reward/a": 1, "reward/b": 2, "flag": True, "x": float("nan")},
            {"step": 2, "loss": 0.4, "reward/a": 3}]
    figs = curve_series(recs)
    assert set(figs) == {"loss", "reward"}
    assert figs["reward"]["reward/a"] == ([1.0, 2.0], [1.0, 3.0]) and figs["reward"]["reward/b"] == ([1.0], [2.0])


def test_load_run_reads_ldam_and_samples(tmp_path):
    run = load_run(make_run(tmp_path / "r", per_task=2), samples_per_task=1)
    assert sum(len(v) for v in run.samples.values()) == 6 and len(run.ldam) == 7 and len(run.metrics) == 30


@pytest.mark.browser
def test_report_renders_in_headless_chromium(tmp_path):
    """The report in headless chromium: every image decodes (complete, non-zero natural size), the headline GenEval
    table is there with a row for the run, and a full-page screenshot is saved (``$PARAUNI_SCREENSHOTS`` when set)."""
    browser = browser_or_skip("playwright")
    from playwright.sync_api import sync_playwright

    html_path, _ = build_report([make_run(tmp_path / "run")], tmp_path / "report.html")
    n_images = html_path.read_text().count("<img")
    assert n_images > 0
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
        page = chrome.new_page(viewport={"width": 1200, "height": 2000})
        page.goto(html_path.resolve().as_uri())
        page.wait_for_load_state("load")
        images = page.evaluate("() => [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == n_images
        assert all(ok and w > 0 and h > 0 for ok, w, h in images), images
        # the headline: the first <h2> is GenEval's, followed (before the next <h2>) by its table with the run's row
        headline = page.evaluate("""() => {
            const h = document.querySelector('h2');
            let el = h.nextElementSibling;
            while (el && el.tagName !== 'H2' && el.tagName !== 'TABLE') el = el.nextElementSibling;
            const rows = el && el.tagName === 'TABLE' ? [...el.querySelectorAll('tr')].map(r => r.innerText) : [];
            return [h.innerText, rows];
        }""")
        title, rows = headline
        assert title == "GenEval", headline
        assert rows and "overall" in rows[0] and any(r.startswith("run") for r in rows[1:]), rows
        shot = screenshot_path(tmp_path, "report.png")
        page.screenshot(path=str(shot), full_page=True)
        chrome.close()
    im = Image.open(shot).convert("RGB")
    a = np.asarray(im)
    assert im.width == 1200 and im.height >= 2000
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50, "the screenshot is (nearly) a single colour"
    dark = (a.sum(-1) < 200).mean()  # text and figures leave dark pixels on the white page
    assert 0.001 < dark < 0.5


def test_report_reads_headline_first_with_notes_seeds_and_enlarged_samples(tmp_path):
    """Headline comparison, then curves, then each run; every table says what it holds; samples under their task,
    32-px toy images enlarged x4 nearest-neighbour; configs folded; runs named <x>_seed<k> give mean ± std."""
    a = make_run(tmp_path / "toy_seed0", per_task=2)
    b = tmp_path / "toy_seed1"
    (b / "eval" / "geneval").mkdir(parents=True)
    summary_a = json.loads((a / "eval" / "geneval" / "summary.json").read_text())
    summary_b = {**summary_a, "tasks": {t: 1.0 for t in summary_a["tasks"]}, "overall": 1.0}
    (b / "eval" / "geneval" / "summary.json").write_text(json.dumps(summary_b))
    (b / "eval" / "wise").mkdir()
    (b / "eval" / "wise" / "summary.json").write_text(json.dumps({
        "protocol": "verified", "wiscore": "score, 0 or 1 (calculate_verified.py)", "overall": 0.5, "scored": 6,
        "overall_weights": {"CULTURE": 0.4, "TIME": 0.12}, "unscored": [],
        "categories": {"CULTURE": {"wiscore": 0.5, "images": 1}, "TIME": {"wiscore": 0.25, "images": 1}}}))
    (b / "eval" / "dpg").mkdir()
    (b / "eval" / "dpg" / "dpg_summary.json").write_text(json.dumps({
        "score": 61.5, "l1": {"entity": 70.0}, "l2": {"entity - whole": 70.0}, "items": 2, "images_per_item": 4,
        "questions": 7, "vqa": "Salesforce/blip-vqa-base"}))
    html_path, md_path = build_report([a, b], tmp_path / "r.html", samples_per_task=1)
    text = html_path.read_text()
    order = [text.index(h) for h in ("<h2>GenEval across runs</h2>", "<h2>WISE</h2>", "<h2>DPG-Bench</h2>",
                                     "<h2>Curves</h2>", "<h2>toy_seed0</h2>", "<h2>toy_seed1</h2>")]
    assert order == sorted(order)
    # the seed group: mean ± sample std of the two runs' overall
    overall = [summary_a["overall"], 1.0]
    mean, std = float(np.mean(overall)), float(np.std(overall, ddof=1))
    assert "toy (mean ± std, 2 seeds)" in text and f"{mean:.3f} ± {std:.3f}" in text
    assert "sample std over the seeds" in text
    # every table is followed by a note that says what its numbers are
    assert text.count("<table>") == text.count('</table>\n<p class="note">') >= 7
    assert "1 image(s) per prompt" in text and "x 100" in text and "WiScore" in text
    # configs folded away
    assert re.search(r"<details><summary>config\.yaml \(\d+ lines\)</summary><pre>", text)
    assert "<details><summary>config.yaml" in md_path.read_text()
    # samples sit under their task heading, enlarged x4 with nearest-neighbour (4x4 blocks of one colour)
    section = text[text.index("<h4>counting"):]
    src = re.search(r'<img src="(data:image/png;base64,[^"]+)"', section).group(1)
    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
    assert im.shape == (128, 128, 3)
    assert np.array_equal(im, np.repeat(np.repeat(im[::4, ::4], 4, 0), 4, 1))
    original = next((a / "eval" / "geneval").glob("*/samples/0000.png"))
    assert Image.open(original).size == (32, 32)


def test_a_report_cut_short_leaves_the_previous_one_whole(tmp_path, monkeypatch, capsys):
    """The new report is built beside the old one under temporary names and swapped in at the end."""
    import parauni.report.curves as curves

    run = make_run(tmp_path / "run_a")
    out = tmp_path / "out" / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    assert "report.md" in before and any(name.endswith(".png") for name in before)

    def broken_plot(records):  # the curves fail midway (after the sample images were written)
        raise KeyboardInterrupt

    monkeypatch.setattr(curves, "plot_metrics", broken_plot)
    assert main(["report", str(run), "--out", str(out), "--samples-per-task", "1"]) == 130
    assert "the previous report was left as it was" in capsys.readouterr().err
    after = {p.name: p.read_bytes() for p in out.parent.rglob("*") if p.is_file()}
    assert after == before  # nothing changed, no temporary file or folder left
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.md", "report_files"]
    monkeypatch.undo()
    assert main(["report", str(run), "--out", str(out), "--samples-per-task", "1"]) == 0
    md = out.with_suffix(".md").read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert refs and all(ref.startswith("report_files/") and (out.parent / ref).is_file() for ref in refs)
    assert sorted(p.name for p in (out.parent / "report_files").iterdir()) == sorted(Path(r).name for r in refs)
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.md", "report_files"]
