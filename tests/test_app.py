"""``parauni app``: the session (the shipped toy model, no web framework), the toy verdict and drawing, the message
without the extra, and the page itself served by ``parauni app`` and driven from headless chromium."""

import ast
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from browser_support import browser_or_skip, screenshot_path
from parauni.app.session import AppSession
from parauni.cli import main
from parauni.errors import UsageError
from parauni.toy.app_view import draw_detections, geneval_record, judge, normalize
from parauni.toy.detect import detect
from parauni.toy.prompts import TASKS, all_metas
from parauni.toy.world import PALETTE, render, scene_from_metadata

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy_session():
    return AppSession("toy-all-layers")


def test_every_toy_geneval_prompt_is_found_and_free_text_is_not():
    for tag in TASKS:
        for meta in all_metas(tag):
            assert geneval_record(meta["prompt"]) == meta
            # GenEval's wording without its "a photo of", in capitals, with a full stop and extra spaces
            assert geneval_record("  " + meta["prompt"][len("a photo of "):].upper() + ". ") == meta
    assert normalize("A Red  Square.") == "a photo of a red square"
    assert geneval_record("a photo of a dog") is None
    assert geneval_record("two red circles and a blue square") is None  # a free caption: no GenEval record


def test_verdict_of_rendered_scenes_follows_the_prompt():
    """A scene the toy world renders for a prompt is judged correct against that prompt and wrong against a
    prompt asking for a different colour; the detections are the detector's own."""
    rng = np.random.default_rng(0)
    meta = geneval_record("a photo of a red square")
    image = render(scene_from_metadata(meta, rng))
    ok = judge(image, "a photo of a red square")
    assert (ok.tag, ok.correct) == ("colors", True)
    assert [(d.color, d.cls) for d in ok.detections] == [(d.color, d.cls) for d in detect(image)] == [("red", "square")]
    bad = judge(image, "a photo of a blue square")
    assert bad.correct is False and "blue" in bad.reason
    free = judge(image, "my favourite square")
    assert free.tag is None and free.correct is None and "no verdict" in free.caption()


def test_detections_are_drawn_on_the_enlarged_image():
    rng = np.random.default_rng(1)
    image = render(scene_from_metadata(geneval_record("a photo of a green circle"), rng))
    from PIL import Image

    im = Image.fromarray(image)
    dets = detect(im)
    shown = draw_detections(im, dets, scale=8)
    assert shown.size == (im.width * 8, im.height * 8)
    a = np.asarray(shown)
    x0, y0, x1, y1 = (int(round(v * 8)) for v in dets[0].bbox)
    edge = a[(y0 + y1) // 2, x0]  # the middle of the box's left edge: the outline in the object's colour
    assert tuple(edge) == PALETTE["green"]
    plain = np.asarray(draw_detections(im, [], scale=8))
    assert (plain[::8, ::8] == image).all()  # without detections: the image, enlarged nearest-neighbour


def test_session_generates_toy_images_with_verdicts(toy_session):
    assert toy_session.is_toy and toy_session.native == 32
    steps_seen = []
    batch = toy_session.generate("a photo of two circles", seed=3, steps=4, guidance=1.0, height=None, width=None,
                                 images=2, on_step=lambda done, total: steps_seen.append((done, total)))
    assert steps_seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [r.seed for r in batch.results] == [3, 4]
    for r in batch.results:
        assert r.image.size == (32, 32) and r.shown.size == (256, 256)
        assert r.verdict.tag == "counting" and r.caption.startswith(f"seed {r.seed}: toy GenEval counting: ")
    # image k is seeded seed + k: the second image of seed 3 is the first of seed 4
    again = toy_session.generate("a photo of two circles", seed=4, steps=4, guidance=1.0, height=32, width=32)
    assert np.array_equal(np.asarray(again.results[0].image), np.asarray(batch.results[1].image))
    free = toy_session.generate("a square", seed=0, steps=2, guidance=1.0, height=None, width=None)
    assert free.results[0].verdict.tag == "single_object"
    other = toy_session.generate("shapes on grey", seed=0, steps=2, guidance=1.0, height=None, width=None)
    assert other.results[0].verdict.tag is None and "no toy GenEval verdict" in other.notes[-1]
    assert "does not know 'shapes', 'on', 'grey'" in other.notes[0]  # the tokenizer's warning, shown in the page


def test_an_exported_toy_folder_is_a_toy_model_and_tiny_is_not(toy_session, tmp_path):
    """Any name load_pipeline knows: a saved pipeline folder of the toy model gets the toy view (told from its VLM,
    not its name) and the same image for the same seed; ``tiny`` (random, not toy) gets its images as they are."""
    toy_session.pipe.save_pretrained(tmp_path / "exported")
    exported = AppSession(str(tmp_path / "exported"))
    assert exported.is_toy and exported.native == 32
    a = exported.generate("a photo of a red square", seed=5, steps=3, guidance=1.0, height=None, width=None)
    b = toy_session.generate("a photo of a red square", seed=5, steps=3, guidance=1.0, height=None, width=None)
    assert np.array_equal(np.asarray(a.results[0].image), np.asarray(b.results[0].image))
    assert a.results[0].caption == b.results[0].caption and a.results[0].verdict.tag == "colors"
    tiny = AppSession("tiny")
    assert not tiny.is_toy
    batch = tiny.generate("a cat", seed=0, steps=2, guidance=4.5, height=None, width=None, images=2)
    assert [r.caption for r in batch.results] == ["seed 0", "seed 1"]
    assert all(r.verdict is None and r.shown is r.image and r.image.size == (tiny.native,) * 2 for r in batch.results)


@pytest.mark.parametrize("fields, message", [
    (dict(prompt="   "), "the prompt is empty"),
    (dict(steps=0), "steps must be from 1 to 1000, got 0"),
    (dict(steps=2.5), "steps: enter a whole number"),
    (dict(height=30), "height 30: this model makes images whose sides are multiples of 4 px (native 32 px); try 32"),
    (dict(width=1024), "width 1024: over 4x this model's native 32 px"),
    (dict(guidance=-1), "guidance must be a number >= 0"),
    (dict(images=9), "images must be from 1 to 8"),
    (dict(seed=None), "seed: enter a whole number"),
])
def test_bad_form_values_are_one_clear_line(toy_session, fields, message):
    values = dict(prompt="a photo of a circle", seed=0, steps=2, guidance=1.0, height=32, width=32, images=1)
    with pytest.raises(UsageError, match="^" + __import__("re").escape(message)):
        toy_session.generate(**{**values, **fields})


def test_other_failures_are_one_line_in_the_page_too():
    from parauni.app.ui import error_line

    assert error_line(UsageError("steps must be from 1 to 1000, got 0")) == "steps must be from 1 to 1000, got 0"
    assert error_line(RuntimeError("boom\n  File x.py, line 3")) == \
        "internal error (RuntimeError: boom); the server's log has the details"
    assert error_line(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")).startswith(
        "out of memory (CUDA out of memory. Tried to allocate 2 GiB); try fewer images or a smaller size")


def test_only_the_page_module_imports_gradio():
    """Gradio is an optional extra: every other module of the package (the core, the CLI, the app's session) must
    import without it."""
    importers = []
    for path in sorted((ROOT / "src" / "parauni").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                importers.append(path.relative_to(ROOT / "src").as_posix())
    assert importers == ["parauni/app/ui.py"]


def test_without_gradio_the_command_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError, as when not installed
    assert main(["app", "--model", "toy-all-layers"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install .[app]" in err, err


def test_a_busy_port_is_one_line_naming_the_fix():
    pytest.importorskip("gradio")
    from parauni.app.ui import serve

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"^cannot serve on 127.0.0.1:{port} .*; pass another --port or --host$"):
            serve("tiny", port=port)


def wait_until_served(proc: subprocess.Popen, url: str, timeout: float = 120.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"parauni app exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"parauni app did not answer on {url} within {timeout:.0f} s")


@pytest.mark.browser
def test_app_page_generates_a_toy_image_in_headless_chromium(tmp_path, free_port):
    """`parauni app --model toy-all-layers` on 127.0.0.1, driven by chromium: one image of a toy GenEval prompt
    appears in the gallery (decoded, enlarged to 256 px) with its verdict, after the progress bar counted the
    denoising steps; then steps of 0 gives one line in the page and no traceback. About 8 s of CPU (most of it
    the server's imports); ``$PARAUNI_SCREENSHOTS/app.png`` keeps the page when set."""
    browser = browser_or_skip("gradio", "playwright")
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "parauni", "app", "--model", "toy-all-layers", "--host",
                             "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_served(proc, url)
        with sync_playwright() as p:
            chrome = p.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
            page = chrome.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.locator("#prompt textarea").fill("a photo of a red square")
            page.locator("#images input").fill("1")
            page.locator("#steps input").fill("300")  # long enough (about a second) to see the progress bar
            page.locator("#generate").click()
            page.wait_for_function(r"() => /denoising[^]*\d+\/300 step/.test(document.body.innerText)",
                                   timeout=60_000)
            page.wait_for_function("() => [...document.querySelectorAll('#gallery img')]"
                                   ".some(i => i.complete && i.naturalWidth > 0)", timeout=60_000)
            sizes = page.evaluate("() => [...document.querySelectorAll('#gallery img')]"
                                  ".map(i => [i.naturalWidth, i.naturalHeight])")
            assert [256, 256] in sizes, sizes
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('Generated 1 image')")
            details = page.locator("#details").inner_text()
            assert "toy GenEval" in details and ("correct" in details or "wrong" in details), details
            page.wait_for_timeout(500)  # the page's fade-in of the new gallery
            shot = screenshot_path(tmp_path, "app.png")
            page.screenshot(path=str(shot), full_page=True)

            page.locator("#steps input").fill("0")
            page.locator("#generate").click()
            page.wait_for_function("() => document.querySelector('#status').innerText.includes('steps must be')")
            text = page.locator("body").inner_text()
            assert "Could not generate: steps must be from 1 to 1000, got 0" in text and "Traceback" not in text
            chrome.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert shot.stat().st_size > 0
