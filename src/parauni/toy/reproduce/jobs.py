"""The job graph of ``parauni toy reproduce``: run lengths, the model variants, one :class:`Job` per step and
the inputs the steps share (the scenes to reconstruct, the layer-response prompts)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import UsageError
from ...utils.configs import shipped_config
from ..geneval import load_toy_geneval
from ..world import random_scene, render

VARIANTS = {"all": ("toy_stage1.yaml", "toy_stage2.yaml", "toy-all-layers"),
            "last": ("toy_stage1_lastlayer.yaml", "toy_stage2_lastlayer.yaml", "toy-last-layer")}
VARIANT_NAMES = {"all": "all layers", "last": "last layer"}

# Run lengths. "full" is the shipped recipe (the configs' own lengths and the pretraining commands the
# shipped weights were made with); "quick" keeps every comparison but shortens every run.
SCALES: dict[str, dict] = {
    "full": dict(vlm=["--steps", "3000", "--batch-size", "128", "--lr", "2e-3"],
                 prior=["--space", "latent", "--vae-width", "16", "--ae-steps", "300", "--steps", "1350"],
                 rewards=["--steps", "1500", "--batch-size", "128", "--pool", "40000"], stage1=None, stage2=None,
                 grpo_epochs=None, eval_images=1, recon_images=32, layer_prompts=8),
    "quick": dict(vlm=["--steps", "300", "--batch-size", "32"], prior=["--steps", "300", "--ae-steps", "100"],
                  rewards=["--steps", "300"], stage1=200, stage2=200, grpo_epochs=None, eval_images=1,
                  recon_images=16, layer_prompts=4),
    # a smoke run of the whole pipeline (minutes on a laptop; the numbers mean nothing)
    "test": dict(vlm=["--steps", "2", "--batch-size", "4", "--eval-examples", "4"],
                 prior=["--steps", "2", "--ae-steps", "2", "--batch-size", "8"],
                 rewards=["--steps", "2", "--pool", "256", "--batch-size", "32"],
                 stage1=2, stage2=2, grpo_epochs=2, eval_images=1, recon_images=2, layer_prompts=1, eval_limit=1,
                 grpo=["prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4", "train.eval_steps=4",
                       "sampling.sde_window_range=[0, 3]", "optim.train_batch=4"],
                 layers=["--images-per-prompt", "1", "--steps", "4"], recon=["--steps", "4"],
                 stage=["train.eval_steps=4"]),
}


def config_file(name: str) -> Path:
    """A config shipped with the package (``parauni/configs/``, the repository's ``configs``)."""
    return shipped_config(name)


@dataclass
class Job:
    """One step: a ``parauni`` command, done when ``done`` exists; ``after`` names the jobs it needs."""

    name: str
    argv: list[str]
    done: Path
    after: list[str] = field(default_factory=list)
    before_run: Callable[[], None] | None = None  # e.g. copy a result the command can reuse


def _parauni(*args: str) -> list[str]:
    return [sys.executable, "-m", "parauni", *args]


def plan(out: Path, seeds: Sequence[int], start: str = "stage1", scale: str = "quick", device: str | None = None,
         grpo_epochs: int | None = None) -> list[Job]:
    """The jobs of a reproduction, in an order that respects their dependencies: the world's models
    (``start="world"``), then per seed both variants' stages I and II (unless ``start="rl"``), reconstruction,
    the layer response and Flow-GRPO with and without LDAM."""
    if start not in ("world", "stage1", "rl"):
        raise UsageError(f"--from must be world, stage1 or rl, got {start!r}")
    if scale not in SCALES:
        raise UsageError(f"--scale must be one of {sorted(SCALES)}, got {scale!r}")
    sc = SCALES[scale]
    jobs: list[Job] = []
    model_over: list[str] = []  # stage I / II: which VLM and prior
    align_path: str | None = None  # the toy alignment reward's weights
    if start == "world":
        world = out / "world"
        jobs += _world_jobs(world, sc, device)
        model_over = [f"model.vlm={world / 'vlm'}", f"model.transformer={world / 'prior'}"]
        align_path = str(world / "alignment")
    world_jobs = [j.name for j in jobs]
    opts = json.dumps({"toy_alignment": {"path": align_path}}) if align_path else None
    for seed in seeds:
        root = out / f"seed{seed}"
        models: dict[str, str] = {v: shipped for v, (_, _, shipped) in VARIANTS.items()}
        model_jobs: dict[str, str] = {}  # variant -> the job that makes its stage-II model
        if start != "rl":
            stage_jobs, models, model_jobs = _stage_jobs(root, seed, sc, model_over, world_jobs)
            jobs += stage_jobs
        jobs += _eval_jobs(out, root, seed, sc, models, model_jobs, align_path, opts)
        jobs += _grpo_jobs(root, seed, sc, models, model_jobs, opts, grpo_epochs or sc["grpo_epochs"],
                           reuse_before=start != "rl")
    return jobs


def _world_jobs(world: Path, sc: dict, device: str | None) -> list[Job]:
    """The toy VLM, the toy prior and the toy alignment reward, retrained into ``world``."""
    dev = ["--device", device] if device else []
    if device and device.startswith("cuda"):  # the GPU waits on data: draw it in worker processes
        dev += ["--workers", str(max(1, (os.cpu_count() or 2) - 2))]
    return [Job("world-vlm", _parauni("toy", "pretrain-vlm", "--out", str(world / "vlm"), *sc["vlm"], *dev),
                world / "vlm" / "config.json"),
            Job("world-prior", _parauni("toy", "pretrain-prior", "--out", str(world / "prior"), *sc["prior"]),
                world / "prior" / "transformer" / "config.json"),
            Job("world-rewards", _parauni("toy", "train-rewards", "--out", str(world / "alignment"),
                                          *sc["rewards"]), world / "alignment" / "config.json")]


def _stage_jobs(root: Path, seed: int, sc: dict, model_over: list[str],
                after: list[str]) -> tuple[list[Job], dict[str, str], dict[str, str]]:
    """Stage I then stage II of each variant for one seed: the jobs, each variant's stage-II model and the job
    that makes it."""
    limit = sc.get("eval_limit")
    jobs: list[Job] = []
    models: dict[str, str] = {}
    model_jobs: dict[str, str] = {}
    for variant, (cfg1, cfg2, _) in VARIANTS.items():
        base = root / variant
        common = [*model_over, f"train.seed={seed}", f"train.eval_images_per_prompt={sc['eval_images']}"] + (
            [f"train.eval_limit={limit}"] if limit else []) + sc.get("stage", [])
        s1 = [f"train.output_dir={base / 'stage1'}"] + ([f"train.steps={sc['stage1']}"] if sc["stage1"] else [])
        s2 = [f"train.output_dir={base / 'stage2'}", f"model.init={base / 'stage1'}"] + (
            [f"train.steps={sc['stage2']}"] if sc["stage2"] else [])
        if sc["stage1"] and sc["stage1"] < 100:  # warm-up and checkpoints fit a very short run
            s1 += ["optim.warmup_steps=1", "train.save_every=1"]
            s2 += ["optim.warmup_steps=1", "train.save_every=1"]
        j1 = Job(f"seed{seed}-{variant}-stage1",
                 _parauni("train", str(config_file(cfg1)), *common, *s1, "--resume", "auto", "--no-progress"),
                 base / "stage1" / "eval" / "geneval" / "summary.json", list(after))
        j2 = Job(f"seed{seed}-{variant}-stage2",
                 _parauni("train", str(config_file(cfg2)), *common, *s2, "--resume", "auto", "--no-progress"),
                 base / "stage2" / "eval" / "geneval" / "summary.json", [j1.name])
        jobs += [j1, j2]
        models[variant] = str(base / "stage2" / "final")
        model_jobs[variant] = j2.name
    return jobs, models, model_jobs


def _eval_jobs(out: Path, root: Path, seed: int, sc: dict, models: dict[str, str], model_jobs: dict[str, str],
               align_path: str | None, opts: str | None) -> list[Job]:
    """Reconstruction by both stage-II models and the layer response of the all-layer one, for one seed."""
    recon_dir = root / "reconstruct"
    layers_dir = root / "layers"
    return [Job(f"seed{seed}-reconstruct",
                _parauni("eval", "reconstruct", "--model", models["all"], "--model", models["last"],
                         "--images", str(out / "recon_images"), "--out", str(recon_dir), "--seed", str(seed),
                         "--clip", "toy" if align_path is None else f"toy:{align_path}", *sc.get("recon", [])),
                recon_dir / "summary.json", list(model_jobs.values())),
            Job(f"seed{seed}-layers",
                _parauni("analyze", "layers", "--model", models["all"], "--prompts",
                         str(out / "layer_prompts.jsonl"), "--out", str(layers_dir), "--seed", str(seed),
                         *sc.get("layers", []),
                         *(["--reward-options", opts] if opts else [])),
                layers_dir / "layer_response.json", [model_jobs["all"]] if model_jobs else [])]


def _grpo_jobs(root: Path, seed: int, sc: dict, models: dict[str, str], model_jobs: dict[str, str],
               opts: str | None, epochs: int | None, reuse_before: bool) -> list[Job]:
    """Flow-GRPO from the all-layer stage-II model, with LDAM and without, for one seed; with ``reuse_before``
    each run's "before" score is the stage-II run's own toy GenEval."""
    limit = sc.get("eval_limit")
    jobs = []
    for ldam in (True, False):
        tag = "grpo_ldam" if ldam else "grpo_none"
        run_dir = root / tag
        over = [f"model.source={models['all']}", f"train.seed={seed}", f"ldam.enabled={str(ldam).lower()}",
                f"train.output_dir={run_dir}", "train.eval_geneval=true",
                f"train.eval_images_per_prompt={sc['eval_images']}"]
        if epochs:
            over.append(f"train.epochs={epochs}")
        if limit:
            over.append(f"train.eval_limit={limit}")
        if opts:
            over.append(f"rewards.options={opts}")
        over += sc.get("grpo", [])
        before = (root / "all" / "stage2" / "eval" / "geneval") if reuse_before else None
        argv = _parauni("grpo", str(config_file("toy_grpo.yaml")), *over, "--resume", "auto", "--no-progress")
        jobs.append(Job(f"seed{seed}-{tag}", argv,
                        run_dir / "eval" / "geneval" / "summary.json", [model_jobs["all"]] if model_jobs else [],
                        before_run=_reuse_before(before, run_dir) if before else None))
    return jobs


def _reuse_before(stage2_eval: Path, run_dir: Path) -> Callable[[], None]:
    """The RL run's "before" score is its stage-II model's own toy GenEval (same prompts, steps, CFG, seeds)."""

    def copy() -> None:
        dest = run_dir / "eval" / "geneval_before"
        if stage2_eval.is_dir() and not (dest / "summary.json").is_file():
            shutil.copytree(stage2_eval, dest, dirs_exist_ok=True)

    return copy


def write_layer_prompts(path: Path, per_task: int) -> None:
    """The first ``per_task`` toy GenEval prompts of each task (the layer-response prompt set)."""
    by_task: dict[str, list[dict]] = {}
    for meta in load_toy_geneval():
        by_task.setdefault(meta["tag"], []).append(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(m) + "\n" for group in by_task.values() for m in group[:per_task]))


def write_recon_images(folder: Path, n: int, seed: int = 1234, world: str = "v1") -> None:
    """``n`` random scenes of toy ``world`` (32 px PNGs) to reconstruct, the same for every model and seed."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) >= n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(render(random_scene(rng, world=world))).save(folder / f"scene_{i:03d}.png")
