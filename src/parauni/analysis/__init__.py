"""Layer-response analysis: how each reward moves when one group of VLM layers is perturbed or dropped.

This makes the ParaUni paper's claim behind LDAM ("layers respond unequally to different rewards")
measurable.  For a fixed prompt set and fixed initial latents, :func:`analyze_layers` generates the
baseline images, then for every layer group and mode generates them again with that group altered
and records, per reward, the mean change against the baseline with its standard error over prompts.

Modes (only the conditional branch is altered; the unconditional CFG branch stays the baseline's, so
the change measures what the prompt's layers carry):

- ``perturb``: add ``scale * std * eps`` (``eps ~ N(0, I)``) to the group's query states through the
  conditioner's ``layer_noise``, where ``std`` is the standard deviation of that prompt's query states
  over the group's layers (one scalar per prompt and group).  The noise is drawn per image from a
  generator seeded by ``(seed, prompt index, group index)``, so results do not depend on batching.
  ``scale=0`` reproduces the baseline exactly.
- ``drop``: fuse without the group, through the LIM's own submodules (the LIM is not changed): for
  ``fusion="mean"`` the mean over the remaining layers' connector outputs, for ``"softmax"`` the
  softmax of the remaining layers' logits, for ``"prefuse"`` the per-channel softmax renormalised over
  the remaining layers.  So dropping = the model as if it had read only the other layers, with no
  out-of-distribution input (zeros would be, after the final norm).  A group holding every read layer
  cannot be dropped.

Groups index the layers the conditioner reads (``0 .. L-1``), as in :mod:`parauni.rl.ldam`:
``"thirds"`` (shallow / middle / deep), ``"per-layer"`` (``layer_<vlm index>``) or an explicit dict.

Outputs (:func:`write_outputs`, in :mod:`parauni.analysis.outputs`): ``layer_response.json``,
``layer_response.md`` (one table per mode: rows = groups, columns = reward deltas ± s.e. and the mean absolute
pixel change) and ``layer_response.png`` (a heat map per mode; colour = delta over the column's largest |delta|,
so rewards on different scales share one colour range; cells annotated with the raw delta).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import UsageError
from ..eval.geneval import limit_per_task
from ..pipelines.loading import load_pipeline
from ..rewards.base import build_reward, check_reward_options
from ..rl.ldam import default_layer_groups
from ..utils.images import unit_to_uint8
from ..utils.jsonl import parse_jsonl
from .outputs import format_markdown, write_outputs

logger = logging.getLogger(__name__)

DEFAULT_REWARDS = ("toy_alignment", "toy_quality", "toy_geneval")
MODES = ("perturb", "drop")
DROP_METHOD = {
    "mean": "mean of the LIM's per-layer outputs over the remaining layers",
    "softmax": "softmax over the remaining layers' logits",
    "prefuse": "per-channel softmax weights renormalised over the remaining layers",
}


# ---- inputs --------------------------------------------------------------------------------------------------------

def read_prompts(path: str | Path, limit: int | None = None) -> tuple[list[str], list[dict | None]]:
    """Prompts and reward metadata from a text file (one prompt a line; metadata ``None``) or a GenEval-format
    JSONL (records with ``"prompt"``; each record is that prompt's metadata).

    ``limit``: the first N prompts of each task (the records' ``tag``), as everywhere in ``parauni``; a text
    file or records without tags have no tasks, so there it is the first N prompts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {str(path)!r} not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"prompt file {str(path)!r} is not UTF-8 text (byte {err.start}): give a text file, one "
                         "prompt a line, or a GenEval-format JSONL") from None
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    if path.suffix == ".jsonl" or (lines and lines[0].startswith("{")):
        records = []
        for i, rec in enumerate(parse_jsonl("\n".join(lines), str(path))):
            if not isinstance(rec, dict) or "prompt" not in rec:
                raise UsageError(f"{path}:{i + 1}: a JSONL record needs a 'prompt' field")
            records.append(rec)

        records = limit_per_task(records, limit)
        prompts, metadata = [r["prompt"] for r in records], list(records)
    else:
        if limit is not None and limit < 1:
            raise UsageError(f"--limit must be >= 1, got {limit}")
        prompts = lines[:limit]
        metadata = [None] * len(prompts)
    if not prompts:
        raise UsageError(f"no prompts in {str(path)!r}")
    return prompts, metadata


def layer_groups(num_layers: int, groups: str | Mapping[str, Sequence[int]] = "thirds",
                 vlm_layers: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Groups of read-layer indices: ``"thirds"``, ``"per-layer"`` (named ``layer_<vlm index>``) or a dict."""
    if isinstance(groups, Mapping):
        out = {str(k): sorted(int(i) for i in v) for k, v in groups.items()}
    elif groups == "thirds":
        if num_layers < 3:
            raise UsageError(f"the conditioner reads {num_layers} layer(s): too few for thirds; use per-layer groups")
        out = default_layer_groups(num_layers)
    elif groups == "per-layer":
        names = list(vlm_layers) if vlm_layers is not None else list(range(num_layers))
        out = {f"layer_{names[i]}": [i] for i in range(num_layers)}
    else:
        raise UsageError(f"unknown layer grouping {groups!r}; use 'thirds', 'per-layer' or a dict")
    for name, idx in out.items():
        if not idx or any(not 0 <= i < num_layers for i in idx):
            raise UsageError(f"layer group {name!r} = {idx} must be non-empty indices in [0, {num_layers})")
    return out


def resolve_rewards(rewards: Mapping[str, float | Callable] | Sequence[str] | None,
                    options: Mapping[str, Mapping[str, Any]] | None = None
                    ) -> tuple[dict[str, Callable], dict[str, float], bool]:
    """``(callables, weights, weighted)``: names (or dotted paths) with weights are built with
    :func:`build_reward` (with ``options[name]`` as keyword options, e.g. a weights path); reward objects
    are used as given (weight 1).  ``weighted``: the caller gave a ``{name: weight}`` mapping of two or
    more rewards, so a ``total`` column (the weighted sum) is reported."""
    if rewards is None:
        rewards = list(DEFAULT_REWARDS)
    explicit = isinstance(rewards, Mapping)  # weights given by the caller
    if not explicit:
        rewards = {name: 1.0 for name in rewards}
    if not rewards:
        raise UsageError("give at least one reward")
    fns, weights = {}, {}
    for name, value in rewards.items():
        if callable(value):
            fns[name], weights[name] = value, 1.0
        else:
            fns[name], weights[name] = build_reward(name, **dict((options or {}).get(name, {}))), float(value)
    return fns, weights, explicit and len(rewards) > 1 and not any(callable(v) for v in rewards.values())


# ---- the two alterations --------------------------------------------------------------------------------------------

def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def group_noise(states: torch.Tensor, group: Sequence[int], scale: float, images_per_prompt: int,
                prompt_ids: Sequence[int], seed: int, group_id: int) -> torch.Tensor:
    """Noise for the conditioner's ``layer_noise``: ``(L, B*G, N, D)`` from ``states`` ``(L, B, N, D)``.

    Zero outside ``group``; inside, ``scale * std_b * eps`` with ``std_b`` the std of prompt b's states over the
    group's layers and ``eps`` drawn per image (G images per prompt) from ``(seed, prompt id, group id)``."""
    num_layers, b, n, d = states.shape
    idx = torch.as_tensor(list(group), device=states.device)
    noise = torch.zeros(num_layers, b * images_per_prompt, n, d, dtype=torch.float32)
    for j, pid in enumerate(prompt_ids):
        std = states[idx, j].float().std().item()  # one scalar over (|G|, N, D)
        gen = torch.Generator().manual_seed(_seed(seed, pid, group_id, 1))
        eps = torch.randn(len(group), images_per_prompt, n, d, generator=gen)  # (|G|, G, N, D)
        noise[idx.cpu(), j * images_per_prompt:(j + 1) * images_per_prompt] = scale * std * eps
    return noise.to(states.device)


@torch.no_grad()
def fuse_without(conditioner, states: torch.Tensor, drop: Sequence[int]) -> torch.Tensor:
    """The conditioner's output as if it had read every layer but ``drop``: ``(L, B, N, D)`` -> ``(B, N, C)``.

    The LIM fuses the kept layers only (``keep`` of :class:`~parauni.models.lim.LayerIntegrationModule`); with
    nothing dropped it equals ``conditioner(states)``."""
    keep = [i for i in range(states.shape[0]) if i not in set(drop)]
    if not keep:
        raise UsageError("cannot drop every layer the conditioner reads")
    return conditioner(states, keep=keep)


# ---- the analysis ------------------------------------------------------------------------------------------------

def _score(fns: Mapping[str, Callable], images, prompts, metadata) -> dict[str, np.ndarray]:
    """Each reward's ``(B,)`` scores; a reward that raises scores NaN (reported once per call)."""
    out = {}
    for name, fn in fns.items():
        try:
            out[name] = torch.as_tensor(fn(images, prompts, metadata), dtype=torch.float64).reshape(-1).numpy()
        except Exception as err:  # noqa: BLE001 - one failing reward must not stop the analysis
            logger.warning("reward %s failed on a batch (%s); its scores are NaN", name, err)
            out[name] = np.full(len(images), np.nan)
    return out


def _stats(per_prompt: np.ndarray) -> dict[str, float | int | None]:
    """Mean and standard error over prompts (NaN prompts left out)."""
    v = per_prompt[~np.isnan(per_prompt)]
    if not len(v):
        return {"mean": None, "se": None, "n": 0}
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "se": se, "n": int(len(v))}


def _per_prompt(x: np.ndarray, images_per_prompt: int) -> np.ndarray:
    """``(P*G,)`` per image -> ``(P,)`` NaN-aware mean per prompt."""
    x = x.reshape(-1, images_per_prompt)
    ok = ~np.isnan(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok.any(1), np.where(ok, x, 0).sum(1) / ok.sum(1), np.nan)


@torch.no_grad()
def analyze_layers(pipe, prompts: Sequence[str], metadata: Sequence[dict | None] | None = None,
                   rewards: Mapping[str, float | Callable] | Sequence[str] | None = None,
                   groups: str | Mapping[str, Sequence[int]] = "thirds", modes: Sequence[str] = MODES,
                   scale: float = 1.0, images_per_prompt: int = 2, steps: int = 20, guidance: float = 4.5,
                   seed: int = 0, batch_size: int = 8, height: int | None = None, width: int | None = None,
                   model_name: str | None = None, reward_options: Mapping[str, Mapping[str, Any]] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Reward changes per layer group and mode against the baseline; see the module docstring.

    rewards: names (weight 1), ``{name: weight}`` or ``{name: reward object}``; default the three toy rewards.
    reward_options: per reward name, keyword options for its factory (e.g. ``{"aesthetic": {"head": PATH}}``).
        A reward that is NaN for every baseline image (e.g. ``toy_geneval`` without GenEval records) is left
        out and listed under ``skipped_rewards``.
    batch_size: prompts per batch (each gives ``images_per_prompt`` images).
    progress: a bar over the generations (batches x variants) and the pipeline's bar over the denoising steps
        of the current one; ``False`` shows neither.
    Returns a JSON-ready dict (see :func:`write_outputs`).
    """
    modes, metadata, grp = _check_request(pipe, prompts, metadata, groups, modes, images_per_prompt, batch_size)
    fns, weights, weighted = resolve_rewards(rewards, reward_options)
    sample = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    height, width = height or sample, width or sample
    variants = [("baseline", None)] + [(m, g) for m in modes for g in grp]
    scores, pixels = _generate_and_score(
        pipe, prompts, metadata, fns, grp, variants, scale=scale, images_per_prompt=images_per_prompt,
        seed=seed, batch_size=batch_size, size=(height, width), progress=progress,
        gen_kw=dict(num_inference_steps=steps, guidance_scale=guidance, output_type="np"))
    run = {"model": model_name, "num_prompts": len(prompts), "images_per_prompt": images_per_prompt,
           "steps": steps, "guidance": guidance, "seed": seed, "scale": scale, "resolution": [height, width]}
    return _summarise(run, pipe.conditioner, grp, modes, fns, weights, weighted, scores, pixels)


def _check_request(pipe, prompts, metadata, groups, modes, images_per_prompt: int,
                   batch_size: int) -> tuple[list[str], list[dict | None], dict[str, list[int]]]:
    """:func:`analyze_layers`' arguments checked: the modes in :data:`MODES`' order, one metadata record per
    prompt, and the layer groups (none holding every read layer when a mode drops groups)."""
    modes = [m for m in MODES if m in set(modes)]
    if not modes:
        raise UsageError(f"modes must name some of {MODES}")
    if images_per_prompt < 1 or batch_size < 1:
        raise UsageError("images_per_prompt and batch_size must be >= 1")
    metadata = list(metadata) if metadata is not None else [None] * len(prompts)
    if len(metadata) != len(prompts):
        raise UsageError(f"{len(prompts)} prompts but {len(metadata)} metadata records")
    read = list(pipe.conditioner.layer_indices)
    grp = layer_groups(len(read), groups, read)
    if "drop" in modes:
        full = [g for g, idx in grp.items() if len(set(idx)) == len(read)]
        if full:
            raise UsageError(f"group(s) {full} hold every read layer and cannot be dropped; use mode perturb")
    return modes, metadata, grp


def _variant_condition(cond, variant: tuple[str, str | None], states: torch.Tensor, states_x: torch.Tensor,
                       grp: dict[str, list[int]], scale: float, images_per_prompt: int, ids: list[int],
                       seed: int) -> torch.Tensor:
    """The conditional branch's condition for one variant: ``("baseline", None)``, ``("perturb", group)`` or
    ``("drop", group)``; ``states`` ``(L, B, N, D)`` per prompt, ``states_x`` per image."""
    mode, group = variant
    if mode == "baseline":
        return cond(states_x)
    if mode == "perturb":
        noise = group_noise(states, grp[group], scale, images_per_prompt, ids, seed, list(grp).index(group))
        return cond(states_x, noise)
    return fuse_without(cond, states_x, grp[group])


def _generate_and_score(pipe, prompts, metadata, fns, grp, variants, *, scale: float, images_per_prompt: int,
                        seed: int, batch_size: int, size: tuple[int, int], progress: bool, gen_kw: dict
                        ) -> tuple[dict[tuple, dict[str, list[np.ndarray]]], dict[tuple, list[np.ndarray]]]:
    """Every variant's images, batch by batch from the same initial latents: each reward's scores per variant
    and batch, and each altered variant's mean absolute pixel change against the baseline per batch."""
    cond = pipe.conditioner
    uncond = pipe.encode_prompt([None])  # (1, N, C), shared by every variant
    scores: dict[tuple, dict[str, list[np.ndarray]]] = {v: {} for v in variants}
    pixels: dict[tuple, list[np.ndarray]] = {v: [] for v in variants[1:]}
    n_batches = -(-len(prompts) // batch_size)
    bar = tqdm(total=n_batches * len(variants), desc="layer response", unit="generation", disable=not progress)
    for start in range(0, len(prompts), batch_size):
        ids = list(range(start, min(start + batch_size, len(prompts))))
        batch = [prompts[i] for i in ids]
        logger.info("layer response: prompts %d-%d of %d", ids[0] + 1, ids[-1] + 1, len(prompts))
        states = pipe.layer_states(list(batch))  # (L, B, N, D)
        states_x = states.repeat_interleave(images_per_prompt, dim=1)  # (L, B*G, N, D)
        latents = torch.cat([
            pipe.prepare_latents(images_per_prompt, *size, torch.Generator().manual_seed(_seed(seed, i, 0)),
                                 pipe.transformer.dtype, cond.queries.device) for i in ids])  # (B*G, C, h, w)
        neg = uncond.expand(len(ids) * images_per_prompt, -1, -1)
        img_prompts = [p for p in batch for _ in range(images_per_prompt)]
        img_meta = [metadata[i] for i in ids for _ in range(images_per_prompt)]
        base_images = None
        for variant in variants:
            embeds = _variant_condition(cond, variant, states, states_x, grp, scale, images_per_prompt, ids, seed)
            mode, group = variant
            pipe.set_progress_bar_config(disable=not progress, leave=False, unit="step",
                                         desc=f"{mode}{'' if group is None else ' ' + group} denoising")
            images = pipe(prompt_embeds=embeds, negative_prompt_embeds=neg, latents=latents.clone(), **gen_kw).images
            bar.update(1)
            for name, value in _score(fns, unit_to_uint8(images), img_prompts, img_meta).items():
                scores[variant].setdefault(name, []).append(value)
            if base_images is None:
                base_images = images
            else:
                pixels[variant].append(np.abs(images - base_images).reshape(len(images), -1).mean(1))
    bar.close()
    return scores, pixels


def _summarise(run: dict[str, Any], cond, grp: dict[str, list[int]], modes: list[str], fns, weights, weighted: bool,
               scores: dict[tuple, dict[str, list[np.ndarray]]], pixels: dict[tuple, list[np.ndarray]]
               ) -> dict[str, Any]:
    """The JSON-ready result: ``run`` (the request), the setup, the baseline's scores and, per mode and group,
    each reward's change and the pixel change against the baseline (mean and s.e. over prompts)."""
    images_per_prompt, read = run["images_per_prompt"], list(cond.layer_indices)
    per_image = {v: {k: np.concatenate(x) for k, x in s.items()} for v, s in scores.items()}
    base = per_image[("baseline", None)]
    skipped = {n: "NaN for every baseline image (missing metadata?)" for n in fns if np.isnan(base[n]).all()}
    kept = [n for n in fns if n not in skipped]
    if not kept:
        raise ValueError(f"no reward could score the baseline images: {sorted(skipped)}")
    columns = kept + (["total"] if weighted and len(kept) > 1 else [])
    for s in per_image.values():
        if "total" in columns:
            s["total"] = sum(weights[n] * s[n] for n in kept)
    result: dict[str, Any] = {
        **run, "fusion": cond.lim.fusion, "layers_read": read,
        "groups": {g: {"read": idx, "vlm_layers": [read[i] for i in idx]} for g, idx in grp.items()},
        "rewards": columns, "weights": {n: weights[n] for n in kept}, "skipped_rewards": skipped,
        "perturbation": "noise std = scale x the std of the prompt's query states over the group's layers",
        "drop_method": DROP_METHOD[cond.lim.fusion],
        "baseline": {n: _stats(_per_prompt(base[n], images_per_prompt)) for n in columns},
        "modes": {},
    }
    for mode in modes:
        rows = {}
        for g in grp:
            s = per_image[(mode, g)]
            row = {n: _stats(_per_prompt(s[n] - base[n], images_per_prompt)) for n in columns}
            row["pixel_change"] = _stats(_per_prompt(np.concatenate(pixels[(mode, g)]), images_per_prompt))
            rows[g] = row
        result["modes"][mode] = rows
    return result


# ---- command line -------------------------------------------------------------------------------------------------

def parse_reward_args(items: Sequence[str] | None) -> dict[str, float] | None:
    """``["toy_alignment=0.5", "pkg.mod:Factory=1"]`` -> ``{name: weight}`` (no ``=``: weight 1)."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, weight = item.rpartition("=")
        if not sep:
            name, weight = item, "1"
        try:
            out[name] = float(weight)
        except ValueError as err:
            raise UsageError(f"--rewards {item!r}: expected name=weight with a number") from err
        if not math.isfinite(out[name]):
            raise UsageError(f"--rewards {item!r}: the weight must be a finite number, got {weight!r}")
    return out


def parse_reward_options(text: str | None) -> dict[str, dict] | None:
    """``--reward-options``: a JSON object ``{reward name: {option: value}}``."""
    if not text:
        return None
    try:
        out = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--reward-options must be a JSON object such as "
                         f"'{{\"aesthetic\": {{\"head\": \"PATH\"}}}}': {err}") from err
    if not isinstance(out, dict) or not all(isinstance(v, dict) for v in out.values()):
        raise UsageError("--reward-options must map each reward name to an object of options")
    return out


def run(args) -> dict:
    """``parauni analyze layers``."""
    prompts, metadata = read_prompts(args.prompts, args.limit)
    weights, options = parse_reward_args(args.rewards), parse_reward_options(args.reward_options)
    for name, opts in (options or {}).items():  # a reward option that cannot work fails before the model loads
        check_reward_options(name, opts)
    pipe = load_pipeline(args.model, dtype=getattr(args, "dtype", "auto"), device=args.device)
    modes = MODES if args.mode == "both" else (args.mode,)
    result = analyze_layers(pipe, prompts, metadata, weights, args.groups, modes, args.scale,
                            args.images_per_prompt, args.steps, args.guidance, args.seed, args.batch_size,
                            model_name=args.model, reward_options=options,
                            progress=not getattr(args, "no_progress", False))
    paths = write_outputs(result, args.out)
    print(format_markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return result
