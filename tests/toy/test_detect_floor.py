"""The calibrated toy detector finds nothing where GenEval's detector would find nothing.

Decoded random latents, heavily blurred scenes, specks, empty canvases and pixel noise score at most
``FLOOR`` on every task of toy GenEval, while rendered objects keep being found (see also
``test_geneval.py`` for rendered truth with noise and blur).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from parauni.toy.data import to_image
from parauni.toy.detect import (
    CLUTTER_MARGIN,
    COLOR_RESIDUAL,
    SIDE_RANGE,
    color_residual,
    detect,
    gaussian_blur,
)
from parauni.toy.evaluation import random_latents_floor
from parauni.toy.geneval import evaluate, load_toy_geneval, summarize
from parauni.toy.prior import load_prior
from parauni.toy.prompts import TASKS
from parauni.toy.world import BACKGROUND, COLORS, PALETTE, SHAPES, Scene, ToyObject, render, scene_from_metadata

FLOOR = 0.02  # the most a garbage image set may score on any task
MUSH_SIGMA = 5.0  # px at 32 px: a sixth of the canvas, every shape is a smear


@pytest.fixture(scope="module")
def metas() -> list[dict]:
    return load_toy_geneval()


@pytest.fixture(scope="module")
def prior():
    return load_prior()


def task_accuracy(images: list[np.ndarray], metas: list[dict], calibrated: bool = True) -> dict[str, float]:
    """Per-task accuracy of one image per prompt (``images[i]`` judged against ``metas[i]``)."""
    results = [{"tag": m["tag"], "correct": evaluate(detect(im, calibrated=calibrated), m)[0],
                "metadata": json.dumps(m), "partial": 0.0} for im, m in zip(images, metas, strict=True)]
    return summarize(results)["tasks"]


def assert_floor(acc: dict[str, float]) -> None:
    assert set(acc) == set(TASKS) and max(acc.values()) <= FLOOR, acc


def blur_to_background(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of the image's difference from the background (the canvas stays grey)."""
    bg = np.asarray(BACKGROUND, np.float32)
    diff = img.astype(np.float32) - bg
    out = bg + np.stack([gaussian_blur(diff[..., c], sigma) for c in range(3)], -1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def specks(rng: np.random.Generator, n: int, size: int = 32, sides: tuple[float, float] = (1.5, 5.0)) -> np.ndarray:
    """``n`` small shapes (smaller than any object of the world) of random colours, anywhere, overlapping."""
    objs = [ToyObject(SHAPES[rng.integers(3)], COLORS[rng.integers(6)], *rng.uniform(0, size, 2), rng.uniform(*sides))
            for _ in range(n)]
    return render(Scene(objs, size))


def test_decoded_random_latents_score_nothing(metas, prior):
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        latents = torch.randn((len(metas), *prior.latent_shape), generator=gen)
        images = [to_image(x) for x in prior.decode(latents)]
    old = task_accuracy(images, metas, calibrated=False)
    assert old["single_object"] >= 0.3, old  # the fragments look like objects to the uncalibrated detector
    assert_floor(task_accuracy(images, metas))


def test_random_latents_floor(tmp_path, metas, prior):
    summary = random_latents_floor(prior)
    assert summary["total_images"] == len(metas) and set(summary["tasks"]) == set(TASKS)
    assert max(summary["tasks"].values()) <= FLOOR and summary["mean_partial"] <= FLOOR, summary
    assert random_latents_floor(prior.vae) == summary  # the same latents through the same decoder
    limited = [m for m in metas if m["tag"] == "single_object"][:3]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in limited))
    written = random_latents_floor("prior", tmp_path / "meta.jsonl", images_per_prompt=2, out=tmp_path / "floor")
    assert written["total_images"] == 6 and written["overall"] <= FLOOR
    assert (tmp_path / "floor" / "00002" / "samples" / "0001.png").is_file()
    assert len((tmp_path / "floor" / "results.jsonl").read_text().splitlines()) == 6


def test_heavily_blurred_scenes_score_nothing(metas):
    truth = [render(scene_from_metadata(m, np.random.default_rng([5, i]))) for i, m in enumerate(metas)]
    mush = [blur_to_background(t, MUSH_SIGMA) for t in truth]
    assert task_accuracy(mush, metas, calibrated=False)["single_object"] >= 0.2
    assert_floor(task_accuracy(mush, metas))


def test_specks_score_nothing(metas):
    rng = np.random.default_rng(0)
    images = [specks(rng, int(rng.integers(10, 60))) for _ in metas]
    assert task_accuracy(images, metas, calibrated=False)["single_object"] >= 0.5
    assert_floor(task_accuracy(images, metas))


def test_empty_canvases_score_nothing(metas):
    rng = np.random.default_rng(1)
    flats = [BACKGROUND, *PALETTE.values(), *(tuple(rng.integers(0, 256, 3)) for _ in range(20))]
    canvases = [np.full((32, 32, 3), c, np.uint8) for c in flats]
    for canvas in canvases + [np.full((64, 64, 3), c, np.uint8) for c in PALETTE.values()]:
        assert detect(canvas) == [], canvas[0, 0]
    assert_floor(task_accuracy([canvases[i % len(canvases)] for i in range(len(metas))], metas))


def test_pixel_noise_scores_nothing(metas):
    rng = np.random.default_rng(2)
    palette = np.asarray([BACKGROUND, *PALETTE.values()], np.uint8)
    makers = [
        lambda: rng.integers(0, 256, (32, 32, 3)).astype(np.uint8),  # uniform RGB noise
        lambda: np.clip(np.rint(128 + rng.normal(0, 60, (32, 32, 3))), 0, 255).astype(np.uint8),  # around grey
        lambda: palette[rng.choice(7, (32, 32), p=[0.5] + [0.5 / 6] * 6)],  # palette salt and pepper
    ]
    images = [makers[i % len(makers)]() for i in range(len(metas))]
    assert_floor(task_accuracy(images, metas))


def test_each_calibration_term_rejects_its_case():
    """A clean square is found; it is lost when it is too small, off-palette, faded, smeared or among specks."""
    square = ToyObject("square", "red", 16, 16, 9)
    clean = render(Scene([square]))
    assert [(d.cls, d.color) for d in detect(clean)] == [("square", "red")]
    assert detect(clean)[0].confidence == pytest.approx(detect(clean, calibrated=False)[0].confidence, abs=1e-6)
    # size: a crisp 4-px square, half the smallest object of the world (the uncalibrated detector took it)
    tiny = render(Scene([ToyObject("square", "red", 16, 16, 4)]))
    assert 4 < 32 * np.mean(SIDE_RANGE) and detect(tiny) == [] and detect(tiny, calibrated=False)
    # colour: the same square in a hue that still quantizes to red but lies far from the red line
    off = clean.copy()
    mask = np.all(clean == PALETTE["red"], axis=-1)
    off[mask] = (200, 40, 120)
    assert color_residual(off[mask], "red") > COLOR_RESIDUAL[1]
    assert detect(off) == [] and detect(off, calibrated=False)
    # strength: the same square faded halfway to the background (it still quantizes to red)
    faded = np.rint(0.55 * clean + 0.45 * np.asarray(BACKGROUND)).astype(np.uint8)
    assert detect(faded) == [] and detect(faded, calibrated=False)
    # sharpness: the same square smeared by a 3-px blur
    smeared = blur_to_background(render(Scene([ToyObject("square", "red", 16, 16, 14)])), 3.0)
    assert detect(smeared) == [] and detect(smeared, calibrated=False)
    # clean surroundings: specks (too small to be objects) around it, none touching it
    rng = np.random.default_rng(0)
    busy = clean.copy()
    margin = int(CLUTTER_MARGIN * 32)
    while (busy != clean).any(axis=-1).mean() < 0.1:
        y, x = rng.integers(0, 32, 2)
        if max(abs(y - 16), abs(x - 16)) > 7 and max(abs(y - 16), abs(x - 16)) < 4.5 + margin:
            busy[y, x] = PALETTE[COLORS[rng.integers(6)]]
    assert detect(busy) == [] and detect(busy, calibrated=False)
