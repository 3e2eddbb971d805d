"""The job graph and the table of ``parauni toy reproduce --world v2``: every step of the v2 pipeline from scratch.

Steps (each a ``parauni`` command with its shipped v2 config; docs/toy_world.md gives each one's measured speed):

1. ``world-vlm`` (``toy_pretrain_vlm_v2.yaml``, the 12-layer VLM), ``world-prior`` (``toy_pretrain_prior_v2.yaml``),
   ``world-rewards`` (``toy_train_rewards_v2.yaml``), into ``<out>/world``; ``world-probe``: the per-layer linear
   probe of the new VLM (``parauni toy probe-layers``) into ``<out>/world/vlm``.
2. Per seed: stage I then stage II, all layers (``toy_stage*_v2.yaml``) and last layer
   (``toy_stage*_lastlayer_v2.yaml``), each evaluated on the v2 toy GenEval (seen and held-out) at its end.
3. Per seed: reconstruction of v2 scenes by both stage-II models; DiffusionNFT, AWM and Flow-GRPO
   (``toy_{nft,awm,grpo}_geneval_v2.yaml``) from the all-layer stage-II model, each evaluated before and after.

Every pre-training step resumes from its checkpoint (``--resume`` when ``<out>/world/<step>/resume`` exists), and
every training step with ``--resume auto``, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..world import random_scene, render
from .jobs import Job, _parauni, config_file
from .results import _read, fmt

V2_VARIANTS = {"all": ("toy_stage1_v2.yaml", "toy_stage2_v2.yaml"),
               "last": ("toy_stage1_lastlayer_v2.yaml", "toy_stage2_lastlayer_v2.yaml")}
V2_RL = ("nft", "awm", "grpo")
# run lengths: "full" is the configs' own; "quick" and "test" cut every run as the v1 scales do
V2_SCALES: dict[str, dict] = {
    "full": dict(vlm=[], prior=[], rewards=[], stage=[], rl=[], eval_images=None, recon_images=32),
    "quick": dict(vlm=["--steps", "300"], prior=["--steps", "300", "--ae-steps", "100"], rewards=["--steps", "300"],
                  stage=["train.steps=200"], rl=["train.epochs=30"], eval_images=1, recon_images=16),
    "test": dict(vlm=["--steps", "2", "--batch-size", "4", "--eval-examples", "4"],
                 prior=["--steps", "2", "--ae-steps", "2", "--batch-size", "8"],
                 rewards=["--steps", "2", "--pool", "256", "--batch-size", "32"],
                 stage=["train.steps=2", "optim.warmup_steps=1", "train.save_every=1", "train.eval_limit=1",
                        "train.eval_steps=4"],
                 rl=["train.epochs=1", "prompts.per_epoch=2", "sampling.group_size=4", "sampling.steps=4",
                     "train.eval_steps=4", "optim.train_batch=4", "train.eval_limit=1", "train.save_every=1",
                     "train.eval_guidance_scales=[1.0]", "optim.steps_per_epoch=1"],
                 eval_images=1, recon_images=2, probe=["--n", "40"], recon=["--steps", "4"],
                 grpo=["sampling.sde_window_range=[0, 3]"]),
}


def _pretrain(name: str, command: str, config: str, folder: Path, extra: list[str], done: Path) -> Job:
    resume = ["--resume"] if (folder / "resume" / "state.json").is_file() else []
    return Job(name, _parauni("toy", command, "--config", str(config_file(config)), "--out", str(folder), *extra,
                              *resume), done)


def plan_v2(out: Path, seeds: Sequence[int], scale: str = "quick") -> list[Job]:
    """The jobs of a v2 reproduction, in an order that respects their dependencies."""
    sc = V2_SCALES[scale]
    world = out / "world"
    jobs = [_pretrain("world-vlm", "pretrain-vlm", "toy_pretrain_vlm_v2.yaml", world / "vlm", sc["vlm"],
                      world / "vlm" / "config.json"),
            _pretrain("world-prior", "pretrain-prior", "toy_pretrain_prior_v2.yaml", world / "prior", sc["prior"],
                      world / "prior" / "transformer" / "config.json"),
            _pretrain("world-rewards", "train-rewards", "toy_train_rewards_v2.yaml", world / "alignment",
                      sc["rewards"], world / "alignment" / "config.json")]
    jobs.append(Job("world-probe", _parauni("toy", "probe-layers", "--vlm", str(world / "vlm"), "--world", "v2",
                                            "--out", str(world / "vlm"), *sc.get("probe", [])),
                    world / "vlm" / "layer_probe.json", ["world-vlm"]))
    over = [f"model.vlm={world / 'vlm'}", f"model.transformer={world / 'prior'}"]
    after = ["world-vlm", "world-prior"]
    evals = [f"train.eval_images_per_prompt={sc['eval_images']}"] if sc["eval_images"] else []
    for seed in seeds:
        root = out / f"seed{seed}"
        final: dict[str, str] = {}
        for variant, (cfg1, cfg2) in V2_VARIANTS.items():
            base = root / variant
            common = [*over, f"train.seed={seed}", *evals, *sc["stage"]]
            j1 = Job(f"seed{seed}-{variant}-stage1",
                     _parauni("train", str(config_file(cfg1)), *common, f"train.output_dir={base / 'stage1'}",
                              "--resume", "auto", "--no-progress"),
                     base / "stage1" / "eval" / "geneval" / "summary.json", list(after))
            j2 = Job(f"seed{seed}-{variant}-stage2",
                     _parauni("train", str(config_file(cfg2)), *common, f"model.init={base / 'stage1'}",
                              f"train.output_dir={base / 'stage2'}", "--resume", "auto", "--no-progress"),
                     base / "stage2" / "eval" / "geneval" / "summary.json", [j1.name])
            jobs += [j1, j2]
            final[variant] = str(base / "stage2" / "final")
        stage2 = [f"seed{seed}-{v}-stage2" for v in V2_VARIANTS]
        jobs.append(Job(f"seed{seed}-reconstruct",
                        _parauni("eval", "reconstruct", "--model", final["all"], "--model", final["last"],
                                 "--images", str(out / "recon_images"), "--out", str(root / "reconstruct"),
                                 "--seed", str(seed), "--clip", f"toy:{world / 'alignment'}", *sc.get("recon", [])),
                        root / "reconstruct" / "summary.json", [*stage2, "world-rewards"]))
        for algo in V2_RL:
            run = root / algo
            jobs.append(Job(f"seed{seed}-{algo}",
                            _parauni("rl", str(config_file(f"toy_{algo}_geneval_v2.yaml")),
                                     f"model.source={final['all']}", f"train.seed={seed}",
                                     f"train.output_dir={run}", *sc["rl"], *sc.get(algo, []), "--resume", "auto",
                                     "--no-progress"),
                            run / "eval" / "geneval" / "summary.json", [stage2[0]]))
    return jobs


def write_v2_recon_images(folder: Path, n: int, seed: int = 1234) -> None:
    """``n`` random v2 scenes (32 px PNGs) to reconstruct, the same for every model and seed."""
    if folder.is_dir() and len(list(folder.glob("*.png"))) >= n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(render(random_scene(rng, world="v2"))).save(folder / f"scene_{i:03d}.png")


def _splits(summary: dict | None) -> dict[str, float]:
    if not summary:
        return {}
    return {k: v.get("overall") for k, v in summary.get("splits", {}).items()}


def collect_v2(out: Path, seeds: Sequence[int]) -> dict:
    """Per seed: toy GenEval (seen, held-out) of each stage and variant, and of each RL run before and after."""
    res: dict = {"world": "v2", "seeds": list(seeds), "per_seed": {}}
    for seed in seeds:
        root, row = out / f"seed{seed}", {}
        for variant in V2_VARIANTS:
            for stage in ("stage1", "stage2"):
                row[f"{variant}/{stage}"] = _splits(_read(root / variant / stage / "eval" / "geneval" /
                                                          "summary.json"))
        for algo in V2_RL:
            row[f"{algo}/before"] = _splits(_read(root / algo / "eval" / "geneval_before" / "summary.json"))
            row[f"{algo}/after"] = _splits(_read(root / algo / "eval" / "geneval" / "summary.json"))
        res["per_seed"][str(seed)] = row
    return res


def format_v2(res: dict, command: str | None = None) -> str:
    """Mean ± std over seeds of toy GenEval, seen and held-out, for every model of the v2 reproduction."""
    rows = list(next(iter(res["per_seed"].values()), {}))
    lines = ([f"`{command}`", ""] if command else []) + [
        f"toy GenEval v2, mean ± std over seeds {res['seeds']}", "",
        "| model | seen | held-out |", "|---|---|---|"]
    for name in rows:
        vals = [r.get(name, {}) for r in res["per_seed"].values()]
        lines.append(f"| {name} | {fmt([v.get('seen') for v in vals])} | {fmt([v.get('heldout') for v in vals])} |")
    return "\n".join(lines)
