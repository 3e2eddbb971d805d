"""The app's model and what one click of "Generate" does, without any web framework (the page is
:mod:`parauni.app.ui`): check the inputs, run the pipeline with a step callback for the progress bar, and for
models of a family with an app view (the toy world's: :mod:`parauni.toy.app_view`) judge each image."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..errors import UsageError
from ..pipelines.loading import load_pipeline
from ..registry import family_of

MAX_IMAGES = 8  # images a click, each with its own seed
MAX_SIZE_FACTOR = 4  # sides over 4x the native side are refused, as `parauni generate` refuses them without --force


@dataclass
class Result:
    """One generated image: what the gallery shows (``shown``: enlarged, detections drawn, for toy models) and
    its caption; ``image`` is the pipeline's own output."""

    image: Image.Image
    shown: Image.Image
    seed: int
    caption: str
    verdict: Any = None  # the family view's verdict (toy models); None without a view


@dataclass
class Batch:
    results: list[Result]
    seconds: float
    notes: list[str] = field(default_factory=list)


def _int(name: str, value, lo: int, hi: int | None = None) -> int:
    """A whole number in ``[lo, hi]`` from a form field (a float, an int, a numeric string or nothing)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name}: enter a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise UsageError(f"{name}: enter a whole number, got {value!r}")
    if number < lo or (hi is not None and number > hi):
        span = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        raise UsageError(f"{name} must be {span}, got {int(number)}")
    return int(number)


class AppSession:
    """A loaded pipeline (any :func:`parauni.pipelines.loading.load_pipeline` name: ``tiny``, ``toy-all-layers``,
    a preset, an exported folder) and its native image side."""

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto"):
        self.model = model
        self.pipe = load_pipeline(model, dtype=dtype, device=device)
        self.pipe.set_progress_bar_config(disable=True)
        family = family_of(self.pipe)
        self.view = family.app_view() if family is not None and family.app_view is not None else None
        self.is_toy = self.view is not None  # the page's toy defaults (prompt, images, guidance) follow it
        sample = getattr(getattr(self.pipe, "transformer", None), "config", None)
        sample = getattr(sample, "sample_size", None)
        self.multiple = int(getattr(self.pipe, "vae_scale_factor", 1))
        self.native = int(sample) * self.multiple if isinstance(sample, int) else None

    def check(self, prompt, seed, steps, guidance, height, width, images) -> tuple:
        """The form's values as the pipeline's arguments; each bad value is a :class:`UsageError` whose message
        names the field and what it accepts."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError("the prompt is empty: describe the image to generate")
        seed = _int("seed", seed, 0, 2**63 - 1)
        steps = _int("steps", steps, 1, 1000)
        try:
            guidance = float(guidance)
        except (TypeError, ValueError):
            raise UsageError(f"guidance: enter a number, got {guidance!r}") from None
        if not math.isfinite(guidance) or guidance < 0:
            raise UsageError(f"guidance must be a number >= 0, got {guidance!r}")
        images = _int("images", images, 1, MAX_IMAGES)
        sides = []
        for name, value in (("height", height), ("width", width)):
            if value in (None, "") and self.native:
                sides.append(self.native)
                continue
            side = _int(name, value, 1)
            if side % self.multiple:
                raise UsageError(f"{name} {side}: this model makes images whose sides are multiples of "
                                 f"{self.multiple} px (native {self.native} px); try {self._nearest(side)}")
            if self.native and side > MAX_SIZE_FACTOR * self.native:
                raise UsageError(f"{name} {side}: over {MAX_SIZE_FACTOR}x this model's native {self.native} px "
                                 f"(at most {MAX_SIZE_FACTOR * self.native})")
            sides.append(side)
        return prompt.strip(), seed, steps, guidance, sides[0], sides[1], images

    def _nearest(self, side: int) -> int:
        return max(self.multiple, round(side / self.multiple) * self.multiple)

    def generate(self, prompt, seed, steps, guidance, height, width, images=1,
                 on_step: Callable[[int, int], None] | None = None) -> Batch:
        """``images`` images of ``prompt``, image ``k`` seeded ``seed + k`` (as ``parauni generate`` seeds the
        images of one prompt), in one pipeline call. ``on_step(done, total)`` after every denoising step."""
        prompt, seed, steps, guidance, height, width, images = self.check(prompt, seed, steps, guidance, height,
                                                                          width, images)
        hook = None
        if on_step is not None:
            def hook(pipe, i, t, tensors):
                on_step(i + 1, steps)
                return {}
        start = time.perf_counter()
        generators = [torch.Generator().manual_seed(seed + k) for k in range(images)]
        with warnings.catch_warnings(record=True) as caught:  # e.g. words the toy tokenizer does not know
            warnings.simplefilter("always", UserWarning)
            out = self.pipe([prompt] * images, num_inference_steps=steps, guidance_scale=guidance, height=height,
                            width=width, generator=generators, callback_on_step_end=hook).images
        results = [self._result(im, prompt, seed + k) for k, im in enumerate(out)]
        notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
        if self.is_toy and results and results[0].verdict is not None and results[0].verdict.tag is None:
            notes.append("no toy GenEval verdict for this prompt (it is not one of the toy GenEval prompts, e.g. "
                         "'a photo of two circles'); the detections are shown")
        return Batch(results, time.perf_counter() - start, notes)

    def _result(self, image: Image.Image, prompt: str, seed: int) -> Result:
        if self.view is None:
            return Result(image, image, seed, f"seed {seed}")
        verdict = self.view.judge(image, prompt)
        return Result(image, self.view.draw(image, verdict), seed, f"seed {seed}: {verdict.caption()}", verdict)
