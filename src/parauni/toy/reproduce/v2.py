"""The job graph and the table of ``parauni toy reproduce --world v2``: every step of the v2 pipeline from scratch.

Steps (each a ``parauni`` command with its shipped v2 config; docs/toy_world.md gives each one's measured speed):

1. ``world-vlm`` (``toy_pretrain_vlm_v2.yaml``, the 12-layer VLM), ``world-prior`` (``toy_pretrain_prior_v2.yaml``),
   ``world-rewards`` (``toy_train_rewards_v2.yaml``), into ``<out>/world``; ``world-probe``: the per-layer linear
   probe of the new VLM (``parauni toy probe-layers``) into ``<out>/world/vlm``; ``world-prior-eval``: the v2 toy
   GenEval of the prior with its own text encoder (the bar stage II has to clear), into ``<out>/world/prior_eval``.
2. Per seed: stage I then stage II of four variants (:data:`V2_VARIANTS`): all layers with the reference LIM
   (``toy_stage*_v2.yaml``), the last layer (``toy_stage*_lastlayer_v2.yaml``), and all layers with the two other
   LIM forms (``softmax``, ``prefuse``), each evaluated on the v2 toy GenEval (seen and held-out) at its end.
   Every variant of a seed uses the same ``train.seed``: the same data order and noise, so differences are paired.
3. Per seed: reconstruction of v2 scenes by the four stage-II models; DiffusionNFT, AWM and Flow-GRPO
   (``toy_{nft,awm,grpo}_geneval_v2.yaml``) from the all-layer stage-II model, and DiffusionNFT from the last-layer
   one (the reward curves from each base), each evaluated before and after.

Every pre-training step resumes from its checkpoint (``--resume`` when ``<out>/world/<step>/resume`` exists), and
every training step with ``--resume auto``, so an interrupted reproduction continues where it stopped.

The table (:func:`format_v2`) gives each model's mean ± std over seeds, and each paired contrast
(:data:`V2_CONTRASTS`) as the mean difference over seeds with its 95% t-interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ...utils.stats import paired_interval
from .jobs import Job, _parauni, config_file
from .results import _read, _rows, fmt

# variant -> (stage-I config, stage-II config, overrides of both)
V2_VARIANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "all": ("toy_stage1_v2.yaml", "toy_stage2_v2.yaml", ()),
    "last": ("toy_stage1_lastlayer_v2.yaml", "toy_stage2_lastlayer_v2.yaml", ()),
    "softmax": ("toy_stage1_v2.yaml", "toy_stage2_v2.yaml", ("model.conditioner.fusion=softmax",)),
    "prefuse": ("toy_stage1_v2.yaml", "toy_stage2_v2.yaml", ("model.conditioner.fusion=prefuse",)),
}
# the paired comparisons of the table: (a, b) reports a - b
V2_CONTRASTS = (("all", "last"), ("all", "softmax"), ("all", "prefuse"))
V2_RL = ("nft", "awm", "grpo")  # from the all-layer model
V2_RL_LAST = ("nft",)  # from the last-layer model too (folder <algo>_last)
RECON_METRICS = ("psnr", "ssim", "clip_sim")
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
                 prior_eval=["--limit", "1", "--steps", "4"],
                 grpo=["sampling.sde_window_range=[0, 3]"]),
}


def _pretrain(name: str, command: str, config: str, folder: Path, extra: list[str], done: Path) -> Job:
    resume = ["--resume"] if (folder / "resume" / "state.json").is_file() else []
    return Job(name, _parauni("toy", command, "--config", str(config_file(config)), "--out", str(folder), *extra,
                              *resume), done)


def plan_v2(out: Path, seeds: Sequence[int], scale: str = "quick") -> list[Job]:
    """The jobs of a v2 reproduction, listed in the order they should run (dependencies respected): the world,
    then every seed's all-layer and last-layer models, then DiffusionNFT from the all-layer model, then the other
    LIM forms, the reconstructions and the other RL runs. A partial run thus holds the headline numbers first."""
    sc = V2_SCALES[scale]
    world = out / "world"
    evals = [f"train.eval_images_per_prompt={sc['eval_images']}"] if sc["eval_images"] else []
    jobs = [_pretrain("world-vlm", "pretrain-vlm", "toy_pretrain_vlm_v2.yaml", world / "vlm", sc["vlm"],
                      world / "vlm" / "config.json"),
            _pretrain("world-prior", "pretrain-prior", "toy_pretrain_prior_v2.yaml", world / "prior", sc["prior"],
                      world / "prior" / "transformer" / "config.json"),
            _pretrain("world-rewards", "train-rewards", "toy_train_rewards_v2.yaml", world / "alignment",
                      sc["rewards"], world / "alignment" / "config.json"),
            Job("world-probe", _parauni("toy", "probe-layers", "--vlm", str(world / "vlm"), "--world", "v2",
                                        "--out", str(world / "vlm"), *sc.get("probe", [])),
                world / "vlm" / "layer_probe.json", ["world-vlm"]),
            Job("world-prior-eval", _parauni("toy", "eval", "--model", str(world / "prior"), "--world", "v2",
                                             "--images-per-prompt", str(sc["eval_images"] or 1),
                                             "--steps", str(sc.get("eval_steps", 20)), "--out",
                                             str(world / "prior_eval"), *sc.get("prior_eval", [])),
                world / "prior_eval" / "summary.json", ["world-prior"])]
    over = [f"model.vlm={world / 'vlm'}", f"model.transformer={world / 'prior'}"]

    def final(seed: int, variant: str) -> str:  # a variant's stage-II pipeline
        return str(out / f"seed{seed}" / variant / "stage2" / "final")

    def stages(seed: int, variant: str) -> list[Job]:
        cfg1, cfg2, extra = V2_VARIANTS[variant]
        base = out / f"seed{seed}" / variant
        common = [*over, f"train.seed={seed}", *extra, *evals, *sc["stage"]]
        j1 = Job(f"seed{seed}-{variant}-stage1",
                 _parauni("train", str(config_file(cfg1)), *common, f"train.output_dir={base / 'stage1'}",
                          "--resume", "auto", "--no-progress"),
                 base / "stage1" / "eval" / "geneval" / "summary.json", ["world-vlm", "world-prior"])
        j2 = Job(f"seed{seed}-{variant}-stage2",
                 _parauni("train", str(config_file(cfg2)), *common, f"model.init={base / 'stage1'}",
                          f"train.output_dir={base / 'stage2'}", "--resume", "auto", "--no-progress"),
                 base / "stage2" / "eval" / "geneval" / "summary.json", [j1.name])
        return [j1, j2]

    def rl(seed: int, algo: str, variant: str) -> Job:
        run = out / f"seed{seed}" / (algo if variant == "all" else f"{algo}_{variant}")
        return Job(f"seed{seed}-{algo}" + ("" if variant == "all" else f"-{variant}"),
                   _parauni("rl", str(config_file(f"toy_{algo}_geneval_v2.yaml")),
                            f"model.source={final(seed, variant)}", f"train.seed={seed}", f"train.output_dir={run}",
                            *sc["rl"], *sc.get(algo, []), "--resume", "auto", "--no-progress"),
                   run / "eval" / "geneval" / "summary.json", [f"seed{seed}-{variant}-stage2"])

    for seed in seeds:
        jobs += stages(seed, "all") + stages(seed, "last")
    jobs += [rl(seed, "nft", "all") for seed in seeds]
    for seed in seeds:
        for variant in V2_VARIANTS:
            if variant not in ("all", "last"):
                jobs += stages(seed, variant)
    for seed in seeds:
        root = out / f"seed{seed}"
        models = [a for v in V2_VARIANTS for a in ("--model", final(seed, v))]
        jobs.append(Job(f"seed{seed}-reconstruct",
                        _parauni("eval", "reconstruct", *models, "--images", str(out / "recon_images"), "--out",
                                 str(root / "reconstruct"), "--seed", str(seed), "--clip",
                                 f"toy:{world / 'alignment'}", *sc.get("recon", [])),
                        root / "reconstruct" / "summary.json",
                        [*(f"seed{seed}-{v}-stage2" for v in V2_VARIANTS), "world-rewards"]))
        jobs += [rl(seed, algo, "all") for algo in V2_RL if algo != "nft"]
        jobs += [rl(seed, algo, "last") for algo in V2_RL_LAST]
    return jobs


def _splits(summary: dict | None, key: str = "overall") -> dict[str, float]:
    if not summary:
        return {}
    return {k: v.get(key) for k, v in summary.get("splits", {}).items()}


def _rl_entry(run: Path) -> dict:
    """An RL run's toy GenEval (seen, held-out) before and after, objects per image, and its reward curve."""
    before = _read(run / "eval" / "geneval_before" / "summary.json")
    after = _read(run / "eval" / "geneval" / "summary.json")
    rows = _rows(run / "metrics.jsonl")
    return {"before": _splits(before), "after": _splits(after),
            "objects_before": _splits(before, "objects_per_image"),
            "objects_after": _splits(after, "objects_per_image"),
            "reward": [r.get("reward/total") for r in rows], "seconds": sum(r.get("seconds", 0.0) for r in rows)}


def collect_v2(out: Path, seeds: Sequence[int]) -> dict:
    """The prior's toy GenEval; per seed: toy GenEval (seen, held-out) of each stage and variant, each variant's
    reconstruction scores, and each RL run before and after (with its reward curve)."""
    res: dict = {"world": "v2", "seeds": list(seeds), "per_seed": {},
                 "prior": _splits(_read(out / "world" / "prior_eval" / "summary.json"))}
    for seed in seeds:
        root, row = out / f"seed{seed}", {}
        for variant in V2_VARIANTS:
            for stage in ("stage1", "stage2"):
                row[f"{variant}/{stage}"] = _splits(_read(root / variant / stage / "eval" / "geneval" /
                                                          "summary.json"))
        recon = _read(root / "reconstruct" / "summary.json") or {"models": {}}
        by_model = {str(Path(m)): v for m, v in recon["models"].items()}
        for variant in V2_VARIANTS:
            scores = by_model.get(str(root / variant / "stage2" / "final"), {})
            row[f"{variant}/recon"] = {k: scores.get(k) for k in RECON_METRICS} if scores else {}
        for algo in V2_RL:
            row[f"rl/{algo}"] = _rl_entry(root / algo)
        for algo in V2_RL_LAST:
            row[f"rl/{algo}_last"] = _rl_entry(root / f"{algo}_last")
        res["per_seed"][str(seed)] = row
    return res


def _interval(a: Sequence, b: Sequence | float, digits: int = 3) -> str:
    m, lo, hi, n = paired_interval(a, b)
    if n == 0:
        return "–"
    if n == 1:
        return f"{m:+.{digits}f} (1 seed)"
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def format_v2(res: dict, command: str | None = None) -> str:
    """Mean ± std over seeds of toy GenEval (seen, held-out) and reconstruction for every model, the paired
    contrasts of :data:`V2_CONTRASTS` (mean difference, 95% t-interval over seeds), and the RL runs' changes."""
    per = list(res["per_seed"].values())
    head = [f"`{command}`", ""] if command else []
    prior = res.get("prior") or {}
    lines = head + [f"Toy GenEval v2 and reconstruction, mean ± std over seeds {res['seeds']} (the prior: one "
                    "evaluation, its own text encoder)", "",
                    "| model | GenEval seen | GenEval held-out | PSNR | SSIM | CLIP-sim |", "|---|---|---|---|---|---|",
                    f"| prior (own text encoder) | {fmt([prior.get('seen')])} | {fmt([prior.get('heldout')])} "
                    "| – | – | – |"]
    for variant in V2_VARIANTS:
        for stage in ("stage1", "stage2"):
            vals = [r.get(f"{variant}/{stage}", {}) for r in per]
            recon = [r.get(f"{variant}/recon", {}) for r in per] if stage == "stage2" else []
            rec = [fmt([x.get(k) for x in recon], 2 if k == "psnr" else 3) if recon else "–" for k in RECON_METRICS]
            lines.append(f"| {variant} / {stage} | {fmt([v.get('seen') for v in vals])} | "
                         f"{fmt([v.get('heldout') for v in vals])} | " + " | ".join(rec) + " |")
    lines += ["", "Paired differences after stage II (a − b, the same seeds; mean [95% t-interval])", "",
              "| a − b | GenEval seen | GenEval held-out | PSNR | SSIM | CLIP-sim |", "|---|---|---|---|---|---|"]
    for a, b in V2_CONTRASTS:
        cells = [_interval([r.get(f"{a}/stage2", {}).get(s) for r in per],
                           [r.get(f"{b}/stage2", {}).get(s) for r in per]) for s in ("seen", "heldout")]
        cells += [_interval([r.get(f"{a}/recon", {}).get(k) for r in per],
                            [r.get(f"{b}/recon", {}).get(k) for r in per], 2 if k == "psnr" else 3)
                  for k in RECON_METRICS]
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    all_stage2 = [r.get("all/stage2", {}) for r in per]
    lines.append(f"| all − prior | {_interval([v.get('seen') for v in all_stage2], prior.get('seen', math.nan))} | "
                 f"{_interval([v.get('heldout') for v in all_stage2], prior.get('heldout', math.nan))} | – | – | – |")
    lines += ["", "Stage III (each run's final EMA model against its start; change: mean [95% t-interval])", "",
              "| run | held-out before | held-out after | held-out change | seen change | objects/image change "
              "(held-out) | minutes |", "|---|---|---|---|---|---|---|"]
    for key in [f"rl/{a}" for a in V2_RL] + [f"rl/{a}_last" for a in V2_RL_LAST]:
        runs = [r.get(key, {}) for r in per]

        def get(part: str, split: str, runs=runs) -> list:
            return [x.get(part, {}).get(split) for x in runs]
        lines.append(f"| {key[3:]} | {fmt(get('before', 'heldout'))} | {fmt(get('after', 'heldout'))} | "
                     f"{_interval(get('after', 'heldout'), get('before', 'heldout'))} | "
                     f"{_interval(get('after', 'seen'), get('before', 'seen'))} | "
                     f"{_interval(get('objects_after', 'heldout'), get('objects_before', 'heldout'))} | "
                     f"{fmt([x.get('seconds', 0) / 60 for x in runs if x.get('reward')], 1)} |")
    return "\n".join(lines)
